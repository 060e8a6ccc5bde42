"""rep3d: large-kernel re-parameterized 3D convolutions (Rep3D, arXiv 2505.19603)."""

__version__ = "0.1.0"

from rep3d import layers  # noqa: E402,F401


def __getattr__(name: str):
    # lazy: importing rep3d must not pull in MONAI / nibabel
    if name == "Predictor":
        from rep3d.inference import Predictor

        return Predictor
    if name == "data":
        import importlib

        return importlib.import_module("rep3d.data")
    raise AttributeError(f"module 'rep3d' has no attribute {name!r}")
