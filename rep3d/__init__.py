"""rep3d: large-kernel re-parameterized 3D convolutions (Rep3D, arXiv 2505.19603).

``import rep3d`` is light: it loads no torch, timm, monai or hub client. The public names below resolve on first use
(PEP 562), and rep3d's models are registered with timm as soon as timm is imported (:mod:`rep3d.timm_registration`),
so ``import rep3d; timm.create_model("rep3d_tiny")`` works as documented.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rep3d import timm_registration
from rep3d.errors import Rep3DError, Rep3DWeightsError
from rep3d.version import __version__

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and the API docs
    from rep3d import data, hub, layers, metrics, models
    from rep3d.allocator import keep_freed_memory
    from rep3d.builder import create_model, model_info
    from rep3d.hub import push_to_hub, save_pretrained
    from rep3d.inference import Predictor
    from rep3d.models import reparameterize_model
    from rep3d.models.registry import list_models
    from rep3d.official import load_official_checkpoint

__all__ = [
    "Predictor",
    "Rep3DError",
    "Rep3DWeightsError",
    "__version__",
    "create_model",
    "data",
    "keep_freed_memory",
    "hub",
    "layers",
    "list_models",
    "load_official_checkpoint",
    "metrics",
    "model_info",
    "models",
    "push_to_hub",
    "reparameterize_model",
    "save_pretrained",
]

# public name -> module that defines it, imported on first access
_LAZY_NAMES = {
    "create_model": "rep3d.builder",
    "list_models": "rep3d.models.registry",  # its one definition; rep3d.builder and rep3d.models do not repeat it
    "model_info": "rep3d.builder",
    "push_to_hub": "rep3d.hub",
    "save_pretrained": "rep3d.hub",
    "reparameterize_model": "rep3d.models",
    "load_official_checkpoint": "rep3d.official",
    "Predictor": "rep3d.inference",
    "keep_freed_memory": "rep3d.allocator",
}
_LAZY_SUBPACKAGES = ("data", "hub", "layers", "metrics", "models")

timm_registration.install()


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    elif name in _LAZY_SUBPACKAGES:
        value = importlib.import_module(f"rep3d.{name}")
    else:
        raise AttributeError(f"module 'rep3d' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
