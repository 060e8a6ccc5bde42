"""Load verified weights into a rep3d model.

The hub resolves the source (:mod:`rep3d.hub.download`), reads and verifies the bytes (:mod:`rep3d.hub.weight_files`)
and checks the values; the model adapts them. A model family that knows its layout (input channels, head, train and
deploy forms) provides a ``checkpoint_filter_fn(state, model, *, adapt, classifier, metadata, name, where)``, as
timm's models do (the Rep3D family's is :func:`rep3d.models.checkpoint_filter.checkpoint_filter_fn`); the hub calls
it with the model's own filter unless given one, and loads what it returns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rep3d.configs.folder import SOURCE_KEYS, clean_data, load_config_json, rep3d_section
from rep3d.configs.pretrained import PretrainedCfg, WeightFileMetadata, with_values
from rep3d.errors import Rep3DError, Rep3DWeightsError, printable
from rep3d.hub.config import CONFIG_NAME, metadata_from_json
from rep3d.hub.download import WeightsSource, resolve_weights, weights_name
from rep3d.hub.weight_files import (
    check_tensor_storage,
    read_header_shapes,
    read_weights,
    sha256_file,
    unwrap_state_dict,
    verify_sha256,
    weights_format,
)

__all__ = [
    "CheckpointFilter",
    "check_tensor_storage",
    "check_tensor_values",
    "load_checkpoint",
    "load_exact",
    "load_pretrained",
    "read_header_shapes",
    "read_weights",
    "sha256_file",
    "unwrap_state_dict",
    "verify_sha256",
    "weights_format",
]

CheckpointFilter = Callable[..., dict[str, torch.Tensor]]
"""``filter(state, model, *, adapt, classifier, metadata, name, where) -> state``: a model family's adaptation."""


def _apply_filter(model: nn.Module, state: dict[str, torch.Tensor], filter_fn: CheckpointFilter | None, *,
                  adapt: bool, classifier: str | None, metadata: Mapping[str, str], name: str,
                  where: str) -> dict[str, torch.Tensor]:
    filter_fn = filter_fn or getattr(model, "checkpoint_filter_fn", None)
    if filter_fn is None:  # a model without a family filter gets the tensors as they are
        return state
    return filter_fn(state, model, adapt=adapt, classifier=classifier, metadata=metadata, name=name, where=where)


# ------------------------------------------------------------------------------------------------------------ loading

def load_exact(model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool, name: str, where: str,
                metadata: Mapping[str, str]) -> None:
    """Load ``state`` into ``model`` as it is (no adaptation): shape mismatches always, and with ``strict`` missing or
    unexpected keys, raise :class:`Rep3DWeightsError` saying whether the weights belong to another architecture."""
    expected = model.state_dict()
    check_tensor_values(state, expected, name, where)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        arch = PretrainedCfg.of(model).architecture or type(model).__name__
        saved = WeightFileMetadata.from_dict(metadata).architecture
        other = len(missing) + len(unexpected) + len(mismatched) > len(expected) // 2 or (saved and saved != arch)
        what = f"weights saved from {saved!r}" if saved else "a checkpoint of another architecture"
        problem = (f"{what} do not fit {arch!r}: " if other else f"the weights do not fit {arch!r}: ") + _key_report(
            missing, unexpected, [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched])
        if saved and saved != arch:
            fix = f"create the model these weights belong to (rep3d.create_model({saved!r}, ...))"
        else:
            fix = "create the model the weights were trained with (same name and size arguments)"
        if not mismatched:
            fix += ", or pass pretrained_strict=False to load the matching tensors (the rest stays at initialisation)"
        raise Rep3DWeightsError(name, where, problem, fix, reason="architecture" if other else "keys")
    if missing or unexpected:
        warnings.warn(f"{name}: non-strict load from {where}: {_key_report(missing, unexpected, [])}", UserWarning,
                      stacklevel=4)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def check_tensor_values(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], name: str,
                        where: str) -> None:
    """Raise :class:`Rep3DWeightsError` naming the tensor when a weight the model holds as floating point comes as an
    integer, boolean or complex tensor (``load_state_dict`` would cast it silently) or holds NaN / inf.

    Integer buffers of the model (BatchNorm's ``num_batches_tracked``) may stay integers."""
    for key, tensor in state.items():
        target = expected.get(key)
        if target is None or not target.is_floating_point():
            continue
        if not tensor.is_floating_point():
            given, wanted = (str(t.dtype).removeprefix("torch.") for t in (tensor, target))
            raise Rep3DWeightsError(
                name, where, f"tensor {key!r} is {given}, but the model holds it as {wanted}: integer, boolean or "
                "complex values are not trained weights (a quantised or wrongly converted file?)",
                "export the floating-point weights (state_dict of the trained model) and load those", reason="dtype",
            )
        bad = int(tensor.numel() - torch.isfinite(tensor).sum())
        if bad:
            raise Rep3DWeightsError(
                name, where, f"tensor {key!r} holds {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}: a "
                "model loaded from it computes NaN", "use a checkpoint saved before training diverged (or re-export "
                "the weights)", reason="non_finite",
            )


def _key_report(missing: list[str], unexpected: list[str], mismatched: list[str], show: int = 4) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            more = f", ... (+{len(keys) - show})" if len(keys) > show else ""
            parts.append(f"{len(keys)} {label} ({', '.join(printable(k) for k in keys[:show])}{more})")
    return "; ".join(parts)


def _sidecar_config(source: WeightsSource) -> dict[str, Any]:
    """The ``config.json`` next to Hub weights (same commit), when it is in the cache, or the ``NAME.json`` next to
    bundled ``NAME.safetensors``: its ``rep3d`` section."""
    path = source.path.parent / CONFIG_NAME if source.kind == "hub" else source.path.with_suffix(".json")
    if source.kind not in ("hub", "bundled") or not path.is_file():
        return {}
    try:  # read as untrusted data: size and depth caps, control characters replaced
        section = rep3d_section(clean_data(load_config_json(path, "config.json", str(path))))
    except Rep3DError:
        return {}
    metadata = section.get("metadata")
    if isinstance(metadata, dict):  # descriptions only: never a weight source
        section["metadata"] = {k: v for k, v in metadata.items() if k not in SOURCE_KEYS}
    return section


def _evict(path: Path) -> None:
    """Remove a bad file from the huggingface_hub cache (snapshot link and blob) so the next call downloads again."""
    try:
        blob = path.resolve() if path.is_symlink() else None
        path.unlink(missing_ok=True)
        if blob is not None:
            blob.unlink(missing_ok=True)
    except OSError:
        pass


def load_pretrained(model: nn.Module, cfg: Mapping[str, Any] | None = None, *, cache_dir: str | Path | None = None,
                    strict: bool = True, filter_fn: CheckpointFilter | None = None) -> nn.Module:
    """Load the weights ``cfg`` (default ``model.pretrained_cfg``) points at into ``model``, in place.

    Resolution: explicit ``file``, ``bundled`` package file, then the Hub (``hf_hub_id`` / ``hf_revision`` /
    ``hf_hub_filename``). The file's sha256 is checked when the cfg lists one. The tensors then pass through
    ``filter_fn`` (default: the model's ``checkpoint_filter_fn``), which adapts input channels, head and form. Raises
    :class:`Rep3DWeightsError`; a Hub file that fails the checksum or does not parse is removed from the cache first.
    """
    cfg = dict(model.pretrained_cfg if cfg is None else cfg)
    name = weights_name(cfg)
    source = resolve_weights(cfg, cache_dir=cache_dir, name=name)
    sidecar = _sidecar_config(source)
    sidecar_weights = sidecar.get("weights", {}) if isinstance(sidecar.get("weights"), dict) else {}
    view = PretrainedCfg.from_dict(cfg)
    expected_sha = view.weights.sha256 or sidecar_weights.get("sha256")
    try:
        if expected_sha:
            verify_sha256(source.path, expected_sha, name, source.where)
        state, metadata = read_weights(source.path, name, source.where)
    except Rep3DWeightsError as err:
        if source.kind == "hub" and err.reason in ("checksum", "corrupt"):
            _evict(source.path)
            raise Rep3DWeightsError(name, err.source, err.problem + " (the file was removed from the cache)", err.fix,
                                    err.reason) from err
        raise
    state = _apply_filter(model, state, filter_fn, adapt=True, classifier=view.classifier, metadata=metadata,
                          name=name, where=source.where)
    load_exact(model, state, strict=strict, name=name, where=source.where, metadata=metadata)
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        # a bundled file's cfg is the registry's; its JSON adds only the recorded training distribution. The model
        # gets a new cfg dict: the one it had may be shared (the registry's default), so it is never updated in place
        recorded = {key: value for key, value in metadata_from_json(sidecar.get("metadata") or {}).items()
                    if source.kind == "hub" or key == "training_distribution"}
        model.pretrained_cfg = with_values({**recorded, **model.pretrained_cfg}, weights_source=source.where)
    return model


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True,
                    filter_fn: CheckpointFilter | None = None) -> nn.Module:
    """Load a local checkpoint (safetensors, or ``.pth``/``.bin`` via ``torch.load(weights_only=True)``) strictly.

    ``state_dict`` / ``model`` / ``net`` wrappers and a ``module.`` prefix are accepted; train-form weights fold into
    a deployed model (``filter_fn``, default the model's ``checkpoint_filter_fn``, with ``adapt=False``). No head or
    input-channel adaptation: the checkpoint must match the model.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = weights_name(cfg) if cfg else type(model).__name__
    where = f"checkpoint {path}"
    state, metadata = read_weights(path, name, where)
    state = _apply_filter(model, state, filter_fn, adapt=False, classifier=None, metadata=metadata, name=name,
                          where=where)
    load_exact(model, state, strict=strict, name=name, where=where, metadata=metadata)
    return model
