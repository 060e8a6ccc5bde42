"""The package version, in a module of its own so that any layer can read it without importing ``rep3d``'s root."""

__version__ = "0.1.0"
