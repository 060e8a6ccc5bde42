"""rep3d: large-kernel re-parameterized 3D convolutions (Rep3D, arXiv 2505.19603)."""

import warnings

with warnings.catch_warnings():
    # timm < 1.0.23 (which nnunetv2's dynamic-network-architectures pins) decorates a class with torch.jit.interface,
    # and torch >= 2.14 warns about that at import: every `rep3d` command would start with two lines of a warning the
    # user cannot act on. Hide that one message while timm is first imported; the filter is restored afterwards.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)
    import timm  # noqa: F401

from rep3d import layers, models  # noqa: F401
from rep3d.builder import create_model, list_models, model_info
from rep3d.errors import Rep3DError, Rep3DWeightsError
from rep3d.hub import push_to_hub, save_pretrained
from rep3d.models import reparameterize_model
from rep3d.official import load_official_checkpoint
from rep3d.version import __version__

__all__ = [
    "Predictor",
    "Rep3DError",
    "Rep3DWeightsError",
    "__version__",
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
    # resolved on first use: `import rep3d` stays free of the consumer layer (NIfTI I/O, resampling, phantoms);
    # rep3d.inference itself imports the builder, which is already loaded here
    if name == "Predictor":
        from rep3d.inference import Predictor

        return Predictor
    if name == "data":
        import importlib

        return importlib.import_module("rep3d.data")
    raise AttributeError(f"module 'rep3d' has no attribute {name!r}")
