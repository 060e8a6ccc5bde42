"""Pretrained weights: resolution (local file, bundled file, Hugging Face Hub), verification, adaptation, loading,
publishing (``save_pretrained`` / ``push_to_hub``) and models built from the Hub (``hf-hub:org/name[@revision]``).

Every failure to provide weights that were asked for raises :class:`Rep3DWeightsError` (a ``RuntimeError``) naming the
model / tag, the source and the fix; random weights are never returned in their place.
"""

from rep3d.hub.download import (
    WEIGHTS_DIR_ENV,
    WeightsSource,
    bundled_weights_dir,
    check_weights_available,
    hub_download,
    resolve_weights,
)
from rep3d.hub.errors import Rep3DWeightsError
from rep3d.hub.publish import create_model_from_hub, model_card, model_config, push_to_hub, save_pretrained
from rep3d.hub.weights import (
    INPUT_CONV_KEYS,
    adapt_input_channels,
    adapt_state_dict,
    load_checkpoint,
    load_pretrained,
    read_weights,
    unwrap_state_dict,
)

__all__ = [
    "INPUT_CONV_KEYS",
    "WEIGHTS_DIR_ENV",
    "Rep3DWeightsError",
    "WeightsSource",
    "adapt_input_channels",
    "adapt_state_dict",
    "bundled_weights_dir",
    "check_weights_available",
    "create_model_from_hub",
    "hub_download",
    "load_checkpoint",
    "load_pretrained",
    "model_card",
    "model_config",
    "push_to_hub",
    "read_weights",
    "resolve_weights",
    "save_pretrained",
    "unwrap_state_dict",
]
