"""The model builder, rep3d's front door: ``create_model`` parses a name, builds the model and has its weights
resolved and loaded through :mod:`rep3d.hub` (as timm's ``_factory`` / ``_builder`` call its ``_hub``).

Names it understands:

* ``"rep3d_base"``, ``"rep3d_tiny.phantom"``: a registered ``arch[.tag]`` (:mod:`rep3d.models.registry`);
* ``"hf-hub:org/name[@revision]"``: a model published with :func:`rep3d.push_to_hub` (its ``config.json`` says which
  architecture and arguments);
* ``"local-dir:PATH"``: a folder written by :func:`rep3d.save_pretrained`.

Layering (see docs/design.md): ``rep3d.errors`` <- ``rep3d.layers`` <- ``rep3d.hub`` <- ``rep3d.models`` <- this
module <- consumers (inference, train, data, analysis, demo, official, bundle, metrics, export) <- ``rep3d.cli``.
Consumers import the builder from here, never from ``rep3d.models.registry``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import timm
from torch import nn

from rep3d.errors import Rep3DWeightsError
from rep3d.hub import CONFIG_NAME, DEFAULT_FILENAME, hub_download, load_checkpoint, read_config
from rep3d.hub.config import metadata_from_json, rep3d_section, weights_section
from rep3d.hub.download import hub_where, split_hub_id
from rep3d.models.info import model_info
from rep3d.models.registry import check_name, is_model, list_models

__all__ = ["create_model", "create_model_from_folder", "create_model_from_hub", "list_models", "model_info"]

LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"


def create_model(
    model_name: str,
    pretrained: bool = False,
    *,
    checkpoint_path: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model (``"rep3d_base"``, ``"rep3d_tiny.phantom"``), one published on the Hub
    (``"hf-hub:org/name[@revision]"``) or one saved by :func:`rep3d.save_pretrained` (``"local-dir:PATH"``).

    ``pretrained=True`` loads the tag's weights (an explicit ``pretrained_cfg_overlay=dict(file=...)``, the file bundled
    with rep3d, or the Hugging Face Hub, in that order) and fails with a clear error where none exist.
    ``checkpoint_path`` loads a local checkpoint after creation (strict). Other kwargs go to the model constructor
    (``num_classes``, ``in_chans``, ``kernel_size``, ``conv_backend``, ``deploy``, ...). An unknown name raises
    :class:`rep3d.errors.Rep3DValueError` listing close matches.
    """
    if model_name.startswith(LOCAL_DIR_PREFIX):
        return create_model_from_folder(model_name[len(LOCAL_DIR_PREFIX):], pretrained=pretrained,
                                        checkpoint_path=checkpoint_path, **kwargs)
    if model_name.startswith(HF_HUB_PREFIX):
        return create_model_from_hub(model_name[len(HF_HUB_PREFIX):], pretrained=pretrained,
                                     checkpoint_path=checkpoint_path, **kwargs)
    check_name(model_name)
    model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    if checkpoint_path:
        load_checkpoint(model, checkpoint_path)
    return model


def create_model_from_hub(model_id: str, pretrained: bool = False, *, checkpoint_path: str | Path | None = None,
                          cache_dir: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build the model published at ``"org/name[@revision]"`` from its ``config.json``; with ``pretrained=True`` load
    its ``model.safetensors`` (same commit as the config, sha256-checked, strict). ``kwargs`` override model args."""
    name = f"{HF_HUB_PREFIX}{model_id}"
    repo_id, revision = split_hub_id(model_id)
    revision = revision or "main"
    path = Path(hub_download(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir, name=name))
    where = hub_where(repo_id, CONFIG_NAME, revision)
    config = read_config(path, name, where)
    _check_architecture(config, name, where, "check the repository; a timm model loads with "
                        "timm.create_model('hf-hub:...')")
    commit = path.parent.name if re.fullmatch(r"[0-9a-f]{40}", path.parent.name) else revision
    filename, sha256 = _weights_entry(config, name, where)
    source = {"source": "hf-hub", "hf_hub_id": repo_id, "hf_revision": commit, "hf_hub_filename": filename,
              "sha256": sha256}
    return _model_from_config(config, source, name, pretrained, checkpoint_path, cache_dir=cache_dir, **kwargs)


def create_model_from_folder(folder: str | Path, pretrained: bool = False, *,
                             checkpoint_path: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build the model :func:`rep3d.save_pretrained` wrote into ``folder`` (``create_model("local-dir:FOLDER")``);
    with ``pretrained=True`` load its weights (sha256-checked, strict). ``kwargs`` override model args."""
    folder = Path(folder)
    name = f"{LOCAL_DIR_PREFIX}{folder}"
    fix = "point at a folder written by rep3d.save_pretrained"
    if not folder.is_dir():
        raise Rep3DWeightsError(name, str(folder), "the folder does not exist" if not folder.exists() else
                                "this is a file, not a folder", fix, reason="not_found")
    if not (folder / CONFIG_NAME).is_file():
        raise Rep3DWeightsError(name, str(folder), f"the folder has no {CONFIG_NAME}", fix, reason="not_found")
    config = read_config(folder / CONFIG_NAME, name, str(folder / CONFIG_NAME))
    _check_architecture(config, name, str(folder), fix)
    filename, sha256 = _weights_entry(config, name, str(folder / CONFIG_NAME))
    source = {"source": "local-dir", "file": str(folder / filename), "sha256": sha256}
    return _model_from_config(config, source, name, pretrained, checkpoint_path, **kwargs)


def _check_architecture(config: Mapping[str, Any], name: str, where: str, fix: str) -> None:
    arch = config.get("architecture")
    if not isinstance(arch, str) or not is_model(arch):
        raise Rep3DWeightsError(name, where, f"config.json names architecture {arch!r}, which is not a rep3d model",
                                fix, reason="config")


def _weights_entry(config: Mapping[str, Any], name: str, where: str) -> tuple[str, str | None]:
    """``(file name, sha256)`` of ``config["rep3d"]["weights"]``, checked: the file must be a plain path inside the
    folder / repository (no absolute path, no ``..``) and the sha256 64 hex digits."""
    weights = weights_section(config)
    filename, sha256 = weights.get("file", DEFAULT_FILENAME), weights.get("sha256")
    fix = "re-publish the folder with rep3d.save_pretrained / push_to_hub"
    parts = PurePosixPath(filename).parts if isinstance(filename, str) else ()
    if not parts or PurePosixPath(filename).is_absolute() or PureWindowsPath(filename).is_absolute() or any(
            part in ("..", "") for part in parts) or "\\" in filename:
        raise Rep3DWeightsError(name, where, f"config.json names the weight file {filename!r}; it must be a file "
                                "inside the model's folder (a relative path without '..')", fix, reason="config")
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise Rep3DWeightsError(name, where, f"config.json gives the weights' sha256 as {sha256!r}; it must be 64 "
                                "hexadecimal digits", fix, reason="config")
    return filename, sha256


def _model_from_config(config: Mapping[str, Any], source: dict[str, Any], name: str, pretrained: bool,
                       checkpoint_path: str | Path | None, **kwargs: Any) -> nn.Module:
    """Build ``config["architecture"]`` with its model args and 3-D metadata, weights from ``source``."""
    fix = "re-publish the folder with rep3d.save_pretrained / push_to_hub (or fix model_args in its config.json)"
    config_args = config.get("model_args")
    if config_args is None:
        config_args = {}
    if not isinstance(config_args, dict):
        raise Rep3DWeightsError(name, CONFIG_NAME, f"model_args must be a JSON object of constructor arguments, got "
                                f"{type(config_args).__name__} {config_args!r}", fix, reason="config")
    cfg = {**(config.get("pretrained_cfg") or {}), **metadata_from_json(rep3d_section(config).get("metadata") or {}),
           "architecture": config["architecture"], **source}
    if config.get("label_names"):
        cfg["label_names"] = config["label_names"]
    model_args = {**config_args, **kwargs}
    try:
        model = timm.create_model(config["architecture"], pretrained=pretrained, pretrained_cfg=cfg, **model_args)
    except TypeError as err:
        unknown = re.search(r"unexpected keyword argument '([^']+)'", str(err))
        if unknown is None:
            raise
        key = unknown[1]
        given = "config.json's model_args" if key in config_args and key not in kwargs else "the keyword arguments"
        raise Rep3DWeightsError(name, CONFIG_NAME, f"{given} hold {key!r}, which {config['architecture']} does not "
                                "take", fix if given.startswith("config") else "remove the argument", reason="config"
                                ) from err
    if checkpoint_path:
        load_checkpoint(model, checkpoint_path)
    return model
