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
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from rep3d.configs.folder import CheckedCfg, FolderConfig, config_architecture, load_config_json, read_folder_config
from rep3d.configs.keys import SOURCE_KEYS
from rep3d.errors import Rep3DWeightsError, printable
from rep3d.hub import CONFIG_NAME, hub_download, load_checkpoint
from rep3d.hub.download import hub_where, split_hub_id
from rep3d.hub.weights import read_header_shapes
from rep3d.models.info import model_info
from rep3d.models.registry import ARCH_CFGS, check_name, is_model

__all__ = ["create_model", "create_model_from_folder", "create_model_from_hub", "model_info"]

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
    its ``model.safetensors`` (same commit as the config, sha256-checked, strict). ``kwargs`` override model args.

    The repository is untrusted data: its config is read through :func:`rep3d.configs.folder.read_folder_config`
    (constructor arguments only, checked; no weight source of its own) and checked against the weights' shapes
    before the model is built."""
    name = f"{HF_HUB_PREFIX}{model_id}"
    repo_id, revision = split_hub_id(model_id)
    revision = revision or "main"
    path = Path(hub_download(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir, name=name))
    where = hub_where(repo_id, CONFIG_NAME, revision)
    folder_cfg = _read_folder_config(path, name, where, "hf-hub", "check the repository; a timm model loads with "
                                     "timm.create_model('hf-hub:...')")
    commit = path.parent.name if re.fullmatch(r"[0-9a-f]{40}", path.parent.name) else revision
    source = {"source": "hf-hub", "hf_hub_id": repo_id, "hf_revision": commit,
              "hf_hub_filename": folder_cfg.weights_file, "sha256": folder_cfg.sha256}
    weights = None
    if pretrained:
        weights = Path(hub_download(repo_id, folder_cfg.weights_file, revision=commit, cache_dir=cache_dir,
                                    name=name))
    return _model_from_config(folder_cfg, source, name, pretrained, checkpoint_path, weights, cache_dir=cache_dir,
                              **kwargs)


def create_model_from_folder(folder: str | Path, pretrained: bool = False, *,
                             checkpoint_path: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build the model :func:`rep3d.save_pretrained` wrote into ``folder`` (``create_model("local-dir:FOLDER")``);
    with ``pretrained=True`` load its weights (sha256-checked, strict). ``kwargs`` override model args.

    The folder is untrusted data: its config is checked as for a Hub repository, and its files are read only where
    their resolved path (symlinks followed) stays inside the folder."""
    folder = Path(folder)
    name = f"{LOCAL_DIR_PREFIX}{folder}"
    fix = "point at a folder written by rep3d.save_pretrained"
    if not folder.is_dir():
        raise Rep3DWeightsError(name, str(folder), "the folder does not exist" if not folder.exists() else
                                "this is a file, not a folder", fix, reason="not_found")
    config_path = _inside(folder, CONFIG_NAME, name)
    if not config_path.is_file():
        raise Rep3DWeightsError(name, str(folder), f"the folder has no {CONFIG_NAME}", fix, reason="not_found")
    folder_cfg = _read_folder_config(config_path, name, str(folder / CONFIG_NAME), "local-dir", fix)
    weights = _inside(folder, folder_cfg.weights_file, name)
    source = {"source": "local-dir", "file": str(weights), "sha256": folder_cfg.sha256}
    return _model_from_config(folder_cfg, source, name, pretrained, checkpoint_path, weights if pretrained else None,
                              **kwargs)


def _inside(folder: Path, filename: str, name: str) -> Path:
    """``folder / filename`` with every symlink resolved; refused when that leaves the folder."""
    root = folder.resolve()
    path = (root / filename).resolve()
    if not path.is_relative_to(root):
        raise Rep3DWeightsError(name, str(folder / filename), f"{filename} resolves to {path}, outside the model "
                                "folder (a symlink or '..' leading out of it)", "copy the file into the folder; a "
                                "model folder is read only inside itself", reason="unsafe")
    return path


def _read_folder_config(path: Path, name: str, where: str, source: str, fix: str) -> FolderConfig:
    config = load_config_json(path, name, where)
    arch = config_architecture(config)
    if not isinstance(arch, str) or not is_model(arch):
        raise Rep3DWeightsError(name, where, f"config.json names architecture {printable(repr(arch))[:100]}, which "
                                "is not a rep3d model", fix, reason="config")
    return read_folder_config(config, name, where, source)


def _model_from_config(folder_cfg: FolderConfig, source: dict[str, Any], name: str, pretrained: bool,
                       checkpoint_path: str | Path | None, weights: Path | None, **kwargs: Any) -> nn.Module:
    """Build the folder's architecture with its checked model args and 3-D metadata, weights from ``source``.

    Only the caller's ``kwargs`` may differ from what the weights hold (``num_classes``, ``in_chans``: the head or
    input convs are then adapted, as asked) or pass timm's factory options (``pretrained_strict=False``)."""
    arch = folder_cfg.model.architecture
    config_args = dict(folder_cfg.model.args)
    if weights is not None:
        check_config_fits_weights(arch, config_args, weights, name)
    # the registered architecture's cfg (classifier, first_conv, ...) under the folder's descriptions, then the one
    # weight source the caller resolved: nothing in the folder names where weights come from
    registered = {k: v for k, v in ARCH_CFGS.get(arch, {}).items() if k not in SOURCE_KEYS}
    cfg = CheckedCfg({**registered, **folder_cfg.pretrained_cfg(), "architecture": arch,
                      **{k: v for k, v in source.items() if v is not None}})
    model = timm.create_model(arch, pretrained=pretrained, pretrained_cfg=cfg, **{**config_args, **kwargs})
    if checkpoint_path:
        load_checkpoint(model, checkpoint_path)
    return model


def check_config_fits_weights(arch: str, args: Mapping[str, Any], weights: Path, name: str) -> None:
    """Compare the tensor shapes a model built from ``args`` would hold with those in the safetensors header of
    ``weights``, without allocating either (the model is built on the ``meta`` device, the header read alone).

    Raises :class:`Rep3DWeightsError` (reason ``config``) when a shared tensor differs (a config claiming 5 classes
    for weights with 9): a folder's config must describe its weights; only the caller may ask for adaptation. A
    header that cannot be read is left to the loader, which reports it."""
    shapes = read_header_shapes(weights)
    if shapes is None:
        return
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in timm.create_model(arch, **args).state_dict().items()}
    mismatched = [f"{printable(k)} {shapes[k]} vs {expected[k]}" for k in expected
                  if k in shapes and shapes[k] != expected[k]]
    if mismatched:
        more = f" (+{len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise Rep3DWeightsError(
            name, str(weights), f"config.json does not describe these weights: tensor shapes in the file vs the "
            f"config's model: {'; '.join(mismatched[:3])}{more}",
            "re-publish the folder with rep3d.save_pretrained; to adapt the head or input channels, ask for it: "
            "create_model(..., num_classes=N) or in_chans=C", reason="config")
