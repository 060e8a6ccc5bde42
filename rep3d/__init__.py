"""rep3d: large-kernel re-parameterized 3D convolutions (Rep3D, arXiv 2505.19603)."""

__version__ = "0.1.0"

from rep3d import layers  # noqa: E402,F401
