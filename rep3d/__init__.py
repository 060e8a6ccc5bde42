"""rep3d: large-kernel re-parameterized 3D convolutions (Rep3D, arXiv 2505.19603)."""

__version__ = "0.1.0"

from rep3d import layers, models  # noqa: E402,F401
from rep3d.hub import Rep3DWeightsError, push_to_hub, save_pretrained  # noqa: E402
from rep3d.models import create_model, list_models, model_info, reparameterize_model  # noqa: E402
from rep3d.official import load_official_checkpoint  # noqa: E402

__all__ = [
    "Predictor",
    "Rep3DWeightsError",
    "create_model",
    "data",
    "layers",
    "list_models",
    "load_official_checkpoint",
    "model_info",
    "models",
    "push_to_hub",
    "reparameterize_model",
    "save_pretrained",
]


def __getattr__(name: str):
    # lazy: the predictor and data pipeline pull in MONAI's transforms and nibabel
    if name == "Predictor":
        from rep3d.inference import Predictor

        return Predictor
    if name == "data":
        import importlib

        return importlib.import_module("rep3d.data")
    raise AttributeError(f"module 'rep3d' has no attribute {name!r}")
