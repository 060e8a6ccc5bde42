"""Pretrained weights as I/O and verification: resolution (local file, bundled file, Hugging Face Hub), reading
without executing code, checksum and form checks, adaptation, loading into a given model, and publishing
(``save_pretrained`` / ``push_to_hub``).

This package never builds a model from a name and never imports the model registry: building is
:mod:`rep3d.builder`'s job (``create_model("hf-hub:...")``, ``"local-dir:..."``), which calls into here. Every failure
to provide weights that were asked for raises :class:`Rep3DWeightsError` (a ``RuntimeError``) naming the model / tag,
the source and the fix; random weights are never returned in their place.
"""

from rep3d.errors import Rep3DWeightsError
from rep3d.hub.config import BUNDLED_PREFIX, CONFIG_NAME, DEFAULT_FILENAME, read_config
from rep3d.hub.download import (
    WEIGHTS_DIR_ENV,
    WeightsSource,
    bundled_weights_dir,
    check_weights_available,
    hub_download,
    resolve_weights,
)
from rep3d.hub.publish import model_card, model_config, push_to_hub, save_pretrained
from rep3d.hub.weights import (
    load_checkpoint,
    load_pretrained,
    read_weights,
    unwrap_state_dict,
)

__all__ = [
    "BUNDLED_PREFIX",
    "CONFIG_NAME",
    "DEFAULT_FILENAME",
    "WEIGHTS_DIR_ENV",
    "Rep3DWeightsError",
    "WeightsSource",
    "bundled_weights_dir",
    "check_weights_available",
    "hub_download",
    "load_checkpoint",
    "load_pretrained",
    "model_card",
    "model_config",
    "push_to_hub",
    "read_config",
    "read_weights",
    "resolve_weights",
    "save_pretrained",
    "unwrap_state_dict",
]
