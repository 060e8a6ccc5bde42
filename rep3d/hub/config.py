"""The on-disk vocabulary shared by weight folders and registered cfgs: file names, the split between timm's
``PretrainedCfg`` keys and rep3d's own 3-D keys, and reading a ``config.json``.

``config.json`` follows timm's Hub format (``architecture``, ``num_classes``, ``label_names``, ``model_args``,
``pretrained_cfg`` with timm keys only), plus a ``rep3d`` section::

    "rep3d": {"version": ..., "form": "train" | "deploy",
              "weights": {"file": "model.safetensors", "format": "safetensors", "sha256": ...},
              "metadata": {roi_size, spacing, intensity_window, orientation, modality, class_names, dataset,
                           metrics, command, synthetic, origin, ...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rep3d.configs.folder import load_config_json
from rep3d.configs.keys import TIMM_CFG_KEYS, TUPLE_KEYS

CONFIG_NAME = "config.json"
DEFAULT_FILENAME = "model.safetensors"
CARD_NAME = "README.md"
BUNDLED_PREFIX = "rep3d-bundled:"
"""timm ``file`` value of a tag whose weights ship in ``rep3d/weights/`` (set from its ``bundled`` key): it makes timm
count the tag as having weights; rep3d resolves it to the installed file."""
__all__ = ["BUNDLED_PREFIX", "CARD_NAME", "CONFIG_NAME", "DEFAULT_FILENAME", "TIMM_CFG_KEYS", "TUPLE_KEYS",
           "metadata_from_json", "read_config", "split_cfg"]


def split_cfg(cfg: Any) -> tuple[Any, dict[str, Any]]:
    """A cfg dict -> (timm keys, rep3d keys); anything else (None, a tag string, a PretrainedCfg) passes through."""
    if not isinstance(cfg, dict):
        return cfg, {}
    return ({k: v for k, v in cfg.items() if k in TIMM_CFG_KEYS},
            {k: v for k, v in cfg.items() if k not in TIMM_CFG_KEYS})


def metadata_from_json(meta: Mapping[str, Any]) -> dict[str, Any]:
    """3-D metadata read from config.json, with the triplets as tuples (as registered cfgs have them)."""
    return {k: tuple(v) if k in TUPLE_KEYS and isinstance(v, list) else v for k, v in meta.items()}


def read_config(path: Path, name: str, where: str) -> dict[str, Any]:
    """Parse a ``config.json`` under the size and depth caps of :func:`rep3d.configs.folder.load_config_json`; raise
    :class:`Rep3DWeightsError` (reason ``config``) when it is too large, too deep, not JSON or not a JSON object."""
    return load_config_json(path, name, where)
