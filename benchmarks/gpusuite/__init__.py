"""The GPU suite's sections, one module per topic; ``benchmarks/gpu_suite.py`` is the command."""
