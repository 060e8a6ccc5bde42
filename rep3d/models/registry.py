"""One registry for rep3d models, shared with timm: ``rep3d.create_model`` and ``timm.create_model`` see the same names.

3-D metadata (ROI, spacing, intensity window, class names, ...) does not fit timm's ``PretrainedCfg``; it lives in
:data:`VOLUME_METADATA` under the same ``arch`` / ``arch.tag`` keys and is merged into ``model.pretrained_cfg``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet
from timm.models._pretrained import PretrainedCfg
from timm.models._registry import get_pretrained_cfg, split_model_name_tag
from torch import nn

_TIMM_KEYS = {f.name for f in dataclasses.fields(PretrainedCfg)}
_NAMES: set[str] = set()
VOLUME_METADATA: dict[str, dict[str, Any]] = {}
"""rep3d's own cfg keys per ``arch`` / ``arch.tag``: roi_size, spacing, intensity_window, orientation, modality,
class_names, dataset, metrics, synthetic, and the weight-source keys bundled, sha256, hf_revision."""

MODEL_ARG_KEYS = ("in_chans", "num_classes")
BUNDLED_PREFIX = "rep3d-bundled:"
"""timm ``file`` value of a tag whose weights ship in ``rep3d/weights/`` (set from its ``bundled`` key): it makes timm
count the tag as having weights; rep3d resolves it to the installed file."""
_SOURCE_KEYS = ("file", "url", "hf_hub_id", "bundled")  # an overlay naming one replaces the registered source
_SOURCE_BOUND_KEYS = ("bundled", "sha256", "hf_revision", "hf_hub_filename")  # describe one registered weight file


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``timm.models.register_model`` that also remembers the name as a rep3d model."""
    _NAMES.add(fn.__name__)
    return register_model(fn)


def default_cfgs(cfgs: dict[str, dict[str, Any]]) -> dict:
    """Split combined cfg dicts into timm's default cfgs (returned) and rep3d's :data:`VOLUME_METADATA`.

    A cfg with ``bundled="NAME.safetensors"`` (a file in ``rep3d/weights/``) gets ``file=BUNDLED_PREFIX + NAME``.
    """
    timm_cfgs = {}
    for name, cfg in cfgs.items():
        timm_cfgs[name] = {k: v for k, v in cfg.items() if k in _TIMM_KEYS}
        if cfg.get("bundled") and not cfg.get("file"):
            timm_cfgs[name]["file"] = BUNDLED_PREFIX + cfg["bundled"]
        VOLUME_METADATA[name.rstrip("*")] = {k: v for k, v in cfg.items() if k not in _TIMM_KEYS}
    return generate_default_cfgs(timm_cfgs)


def volume_metadata(architecture: str, tag: str | None) -> dict[str, Any]:
    meta = dict(VOLUME_METADATA.get(architecture, {}))
    if tag:
        meta.update(VOLUME_METADATA.get(f"{architecture}.{tag}", {}))
    return meta


def _split_cfg(cfg: Any) -> tuple[Any, dict[str, Any]]:
    """A cfg dict -> (timm keys, rep3d keys); anything else (None, a tag string, a PretrainedCfg) passes through."""
    if not isinstance(cfg, dict):
        return cfg, {}
    return {k: v for k, v in cfg.items() if k in _TIMM_KEYS}, {k: v for k, v in cfg.items() if k not in _TIMM_KEYS}


def resolve_cfg(variant: str, pretrained_cfg: Any = None, overlay: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full cfg (timm keys + rep3d keys) of ``variant`` with ``pretrained_cfg`` / ``overlay`` applied.

    rep3d keys may be given in either dict. An overlay that names a weight source (``file``, ``hf_hub_id``,
    ``bundled``, ...) replaces the registered source entirely: the registered ``bundled``, ``sha256`` and
    ``hf_revision`` (which describe the registered file) are dropped unless the overlay gives them too. A
    ``pretrained_cfg`` dict replaces the registered cfg, source keys included.
    """
    base, base_extra = _split_cfg(pretrained_cfg)
    timm_overlay, overlay_extra = _split_cfg(overlay)
    cfg = resolve_pretrained_cfg(variant, base, timm_overlay).to_dict()
    meta = volume_metadata(variant, cfg.get("tag"))
    overlay_all = {**(timm_overlay or {}), **overlay_extra}
    if isinstance(base, dict) or any(overlay_all.get(k) for k in _SOURCE_KEYS):
        for key in _SOURCE_BOUND_KEYS:
            meta.pop(key, None)
    if any(overlay_all.get(k) for k in _SOURCE_KEYS):
        for key in _SOURCE_KEYS + _SOURCE_BOUND_KEYS:
            if key not in overlay_all:
                cfg.pop(key, None)
                base_extra.pop(key, None)
    cfg.update({**meta, **base_extra, **overlay_extra})
    return cfg


def build_model(model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build ``model_cls`` for a registered ``variant``; load weights ourselves (local file, bundled, Hub).

    Accepts timm's factory kwargs (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``, ``features_only``,
    ``out_indices``, ``pretrained_strict``) besides the model's own; both cfg dicts may carry rep3d keys. With
    ``pretrained=True`` a cfg without any weight source fails before the model is built.
    """
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    feature_cls = kwargs.pop("feature_cls", None) or "getter"
    if feature_cls not in ("getter", "fx"):
        raise ValueError(
            f"feature_cls={feature_cls!r} is not supported by rep3d models; use 'getter' (the default: the encoder's "
            "forward_intermediates) or 'fx' (a torch.fx graph of the encoder)"
        )
    kwargs.pop("pretrained_model_args", None)  # timm's copy of a Hub config's model_args (already in kwargs)
    cache_dir = kwargs.pop("cache_dir", None)
    strict = kwargs.pop("pretrained_strict", True)
    cfg = resolve_cfg(variant, kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None))
    if pretrained:
        from rep3d.hub.download import check_weights_available

        check_weights_available(cfg)
    model_args = dict(kwargs)
    timm_cfg, extra = _split_cfg(cfg)
    model = build_model_with_cfg(model_cls, variant, pretrained=False, pretrained_cfg=timm_cfg, **kwargs)
    cfg = model.pretrained_cfg
    cfg.update(extra)
    model_args.update({k: getattr(model, k) for k in MODEL_ARG_KEYS})
    model.model_args = model_args
    if pretrained:
        from rep3d.hub import load_pretrained

        load_pretrained(model, cfg, cache_dir=cache_dir, strict=strict)
    if features_only:
        if feature_cls == "fx":
            from timm.models._features_fx import FeatureGraphNet

            # feature_info names modules relative to the encoder, which the fx graph is traced from
            feature_model = FeatureGraphNet(model.encoder, out_indices=out_indices)
        else:
            feature_model = FeatureGetterNet(model, out_indices=out_indices)
        feature_model.pretrained_cfg = feature_model.default_cfg = cfg
        feature_model.in_chans = model.in_chans
        return feature_model
    return model


def is_model(name: str) -> bool:
    return split_model_name_tag(name)[0] in _NAMES


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """rep3d model names matching ``pattern``; with ``pretrained=True``, the ``arch.tag`` names that have weights."""
    names = timm.list_models(pattern, pretrained=pretrained, include_tags=pretrained)
    return sorted(n for n in names if split_model_name_tag(n)[0] in _NAMES)


def _check_name(model_name: str) -> None:
    arch, tag = split_model_name_tag(model_name)
    if arch not in _NAMES:
        close = difflib.get_close_matches(arch, sorted(_NAMES), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(sorted(_NAMES))}"
        raise ValueError(f"unknown rep3d model {model_name!r}{hint} (rep3d.list_models() lists them all)")
    if tag and not _has_tag(model_name):
        tags = [n for n in timm.list_models(arch, include_tags=True) if "." in n]
        raise ValueError(f"{arch!r} has no pretrained tag {tag!r}; registered tags: {tags or 'none'}")


def _has_tag(model_name: str) -> bool:
    try:
        return get_pretrained_cfg(model_name, allow_unregistered=False) is not None
    except RuntimeError:  # timm raises for a tag its registry does not know
        return False


def create_model(
    model_name: str,
    pretrained: bool = False,
    *,
    checkpoint_path: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model (``"rep3d_base"``, ``"rep3d_tiny.phantom"``), one published on the Hub
    (``"hf-hub:org/name[@revision]"``) or one saved by :func:`rep3d.save_pretrained` (``"local-dir:PATH"``).

    ``pretrained=True`` loads the tag's weights (an explicit ``pretrained_cfg_overlay=dict(file=...)``, the file bundled
    with rep3d, or the Hugging Face Hub, in that order) and fails with a clear error where none exist.
    ``checkpoint_path`` loads a local checkpoint after creation (strict). Other kwargs go to the model constructor
    (``num_classes``, ``in_chans``, ``kernel_size``, ``conv_backend``, ``deploy``, ...).
    """
    if model_name.startswith("local-dir:"):
        from rep3d.hub.publish import create_model_from_folder

        return create_model_from_folder(model_name[len("local-dir:"):], pretrained=pretrained,
                                        checkpoint_path=checkpoint_path, **kwargs)
    if model_name.startswith("hf-hub:"):
        from rep3d.hub import create_model_from_hub

        return create_model_from_hub(model_name[len("hf-hub:"):], pretrained=pretrained,
                                     checkpoint_path=checkpoint_path, **kwargs)
    _check_name(model_name)
    model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    if checkpoint_path:
        from rep3d.hub import load_checkpoint

        load_checkpoint(model, checkpoint_path)
    return model


def model_info(model_name: str, **kwargs: Any) -> dict[str, Any]:
    """Parameters (train and deployed form), MACs at the cfg ROI and 3-D metadata, computed on the meta device."""
    from rep3d.models.deploy import count_macs, reparameterize_model

    _check_name(model_name)
    with torch.device("meta"):
        model = timm.create_model(model_name, **kwargs)
    cfg = dict(model.pretrained_cfg)
    roi = tuple(cfg.get("roi_size") or (96, 96, 96))
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, (1, model.in_chans, *roi))
    deployed = reparameterize_model(model, inplace=True)
    return {
        "name": model_name,
        "params": params,
        "deployed_params": sum(p.numel() for p in deployed.parameters()),
        "macs": macs,
        "roi_size": roi,
        "in_chans": model.in_chans,
        "num_classes": model.num_classes,
        "pretrained_tags": [n for n in list_models(split_model_name_tag(model_name)[0], pretrained=True) if "." in n],
        "metadata": {k: v for k, v in cfg.items() if k in volume_metadata(cfg.get("architecture", ""), None)
                     or k in ("license", "paper_ids", "paper_name")},
    }

