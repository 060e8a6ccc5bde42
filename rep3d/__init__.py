"""rep3d: large-kernel re-parameterized 3D convolutions (Rep3D, arXiv 2505.19603)."""

__version__ = "0.1.0"

from rep3d import layers, models  # noqa: E402,F401
from rep3d.hub import Rep3DWeightsError, push_to_hub, save_pretrained  # noqa: E402
from rep3d.models import create_model, list_models, model_info, reparameterize_model  # noqa: E402
from rep3d.official import load_official_checkpoint  # noqa: E402

__all__ = [
    "Rep3DWeightsError",
    "create_model",
    "layers",
    "list_models",
    "load_official_checkpoint",
    "model_info",
    "models",
    "push_to_hub",
    "reparameterize_model",
    "save_pretrained",
]
