"""Adapters that run rep3d models inside other frameworks. Each one imports its framework only when used:
``import rep3d`` never imports them."""
