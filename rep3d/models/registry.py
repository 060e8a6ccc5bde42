"""One registry for rep3d models, shared with timm: ``rep3d.create_model`` and ``timm.create_model`` see the same names.

3-D metadata (ROI, spacing, intensity window, class names, ...) does not fit timm's ``PretrainedCfg``; it lives in
:data:`VOLUME_METADATA` under the same ``arch`` / ``arch.tag`` keys and is merged into ``model.pretrained_cfg``.
"""

import difflib
from collections.abc import Callable
from typing import Any

import timm
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_pretrained_cfg,
    register_model,
    resolve_pretrained_cfg,
    split_model_name_tag,
)
from torch import nn

from rep3d.configs.folder import CheckedCfg, check_timm_loaded_config, timm_loaded_cfg
from rep3d.configs.keys import (
    MODEL_ARG_KEYS,
    SOURCE_BOUND_KEYS,
    TIMM_CFG_KEYS,
    WEIGHT_CLAIM_KEYS,
    WEIGHT_SOURCE_KEYS,
)
from rep3d.configs.model_args import check_model_args
from rep3d.configs.pretrained import (
    PretrainedCfg,
    drop_mismatched_class_names,
    pop_factory_cfgs,
    select_keys,
    with_values,
    without_keys,
)
from rep3d.errors import Rep3DValueError
from rep3d.hub import BUNDLED_PREFIX, check_weights_available, load_pretrained
from rep3d.hub.config import split_cfg
from rep3d.models.features import wrap_features

_NAMES: set[str] = set()
VOLUME_METADATA: dict[str, dict[str, Any]] = {}
"""rep3d's own cfg keys per ``arch`` / ``arch.tag``: roi_size, spacing, intensity_window, orientation, modality,
class_names, dataset, metrics, synthetic, and the weight-source keys bundled, sha256, hf_revision."""

ARCH_CFGS: dict[str, dict[str, Any]] = {}
"""timm keys of each untagged ``arch`` cfg: what the bare name means when no weights are loaded (see
:func:`build_model`)."""

__all__ = ["ARCH_CFGS", "BUNDLED_PREFIX", "VOLUME_METADATA", "WEIGHT_CLAIM_KEYS", "build_model", "check_name",
           "default_cfgs", "drop_mismatched_class_names", "is_model", "list_models", "register", "resolve_cfg",
           "volume_metadata"]


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
        timm_cfgs[name] = select_keys(cfg, TIMM_CFG_KEYS)
        weights = PretrainedCfg.from_dict(cfg).weights
        if weights.bundled and not weights.file:
            timm_cfgs[name] = with_values(timm_cfgs[name], file=BUNDLED_PREFIX + weights.bundled)
        VOLUME_METADATA[name.rstrip("*")] = without_keys(cfg, TIMM_CFG_KEYS)
        if "." not in name:
            ARCH_CFGS[name.rstrip("*")] = {**timm_cfgs[name], "architecture": name.rstrip("*")}
    return generate_default_cfgs(timm_cfgs)


def volume_metadata(architecture: str, tag: str | None) -> dict[str, Any]:
    """rep3d's 3-D keys of ``architecture``, overlaid by those of ``architecture.tag``."""
    meta = dict(VOLUME_METADATA.get(architecture, {}))
    if tag:
        meta.update(VOLUME_METADATA.get(f"{architecture}.{tag}", {}))
    return meta


def resolve_cfg(variant: str, pretrained_cfg: Any = None, overlay: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full cfg (timm keys + rep3d keys) of ``variant`` with ``pretrained_cfg`` / ``overlay`` applied.

    rep3d keys may be given in either dict. An overlay that names a weight source (``file``, ``hf_hub_id``,
    ``bundled``, ...) replaces the registered source entirely: the registered ``bundled``, ``sha256`` and
    ``hf_revision`` (which describe the registered file) are dropped unless the overlay gives them too. A
    ``pretrained_cfg`` dict replaces the registered cfg, source keys included.
    """
    base, base_extra = split_cfg(pretrained_cfg)
    timm_overlay, overlay_extra = split_cfg(overlay)
    cfg = resolve_pretrained_cfg(variant, base, timm_overlay).to_dict()
    meta = volume_metadata(variant, PretrainedCfg.from_dict(cfg).tag)
    overlay_all = {**(timm_overlay or {}), **overlay_extra}
    own_source = PretrainedCfg.from_dict(overlay_all).weights.names_weights
    if isinstance(base, dict) or own_source:
        meta = without_keys(meta, SOURCE_BOUND_KEYS)
    if own_source:
        replaced = [key for key in WEIGHT_SOURCE_KEYS + SOURCE_BOUND_KEYS if key not in overlay_all]
        cfg, base_extra = without_keys(cfg, replaced), without_keys(base_extra, replaced)
    return {**cfg, **meta, **base_extra, **overlay_extra}


def build_model(model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build ``model_cls`` for a registered ``variant`` and, with ``pretrained=True``, load its weights through
    :mod:`rep3d.hub` (local file, bundled, Hub) -- the entrypoint body every registered name uses, so that
    ``timm.create_model(name, pretrained=True)`` loads rep3d's verified weights too.

    Accepts timm's factory kwargs (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``, ``features_only``,
    ``feature_cfg``, ``out_indices``, ``feature_cls``, ``pretrained_strict``) besides the model's own (an unknown one
    is named with the accepted list); both cfg dicts may carry rep3d
    keys. With ``pretrained=True`` a cfg without any weight source fails before the model is built.
    """
    features_only = kwargs.pop("features_only", False)
    feature_cfg = _feature_cfg(variant, features_only, kwargs)
    kwargs.pop("pretrained_model_args", None)  # timm's copy of a Hub config's model_args (already in kwargs)
    cache_dir = kwargs.pop("cache_dir", None)
    strict = kwargs.pop("pretrained_strict", True)
    pretrained_cfg, overlay = pop_factory_cfgs(kwargs)
    if isinstance(pretrained_cfg, dict) and not isinstance(pretrained_cfg, CheckedCfg) and PretrainedCfg.from_dict(
            pretrained_cfg).weights.source in ("hf-hub", "local-dir"):
        # timm.create_model("hf-hub:..." / "local-dir:...") read this from a folder's config.json itself: weights come
        # only from the folder / repository timm named, never from a source the file names
        check_timm_loaded_config(pretrained_cfg, cache_dir)
        pretrained_cfg = timm_loaded_cfg(pretrained_cfg)
    own_source = PretrainedCfg.from_dict(overlay).weights.names_weights
    if pretrained_cfg is None and variant in ARCH_CFGS and (not pretrained or own_source):
        # A bare name means the architecture. timm would resolve it to the default tag's cfg (for rep3d_tiny the
        # phantom weights': 9 classes and their names, phantom spacing, "SYNTHETIC"), which describes weights that are
        # not loaded here: none, or the caller's own file. Only pretrained=True alone loads the default tag.
        pretrained_cfg = dict(ARCH_CFGS[variant])
    cfg = resolve_cfg(variant, pretrained_cfg, overlay)
    if not pretrained:  # the weights a cfg describes are not loaded: nothing about them may travel with the model
        # ...unless the caller states it for this model
        cfg = without_keys(cfg, [key for key in WEIGHT_CLAIM_KEYS if key not in (overlay or {})])
    if pretrained:
        check_weights_available(cfg, list_models(pretrained=True))
    # the model's own arguments, checked under the registered name (a typo such as timm's drop_rate names this model
    # and lists what it accepts instead of failing in an inner layer)
    check_model_args(variant, kwargs, block=getattr(model_cls, "fixed_block", None))
    model_args = dict(kwargs)
    timm_cfg, extra = split_cfg(cfg)
    model = build_model_with_cfg(model_cls, variant, pretrained=False, pretrained_cfg=timm_cfg, **kwargs)
    cfg = drop_mismatched_class_names({**model.pretrained_cfg, **extra}, model.num_classes)
    model.pretrained_cfg = model.default_cfg = cfg  # a new dict: timm's and the registry's stay as they were
    model_args.update({k: getattr(model, k) for k in MODEL_ARG_KEYS})
    model.model_args = model_args
    if pretrained:
        load_pretrained(model, cfg, cache_dir=cache_dir, strict=strict)
    if not features_only:
        return model
    feature_model = wrap_features(model, **feature_cfg)
    feature_model.pretrained_cfg = feature_model.default_cfg = model.pretrained_cfg  # as loading left it
    feature_model.in_chans = model.in_chans
    return feature_model


def _feature_cfg(variant: str, features_only: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm's builder rule: ``feature_cfg`` with ``out_indices`` / ``feature_cls`` given as kwargs taking precedence
    (popped from ``kwargs``). Without ``features_only`` a feature key would be ignored: refused instead."""
    feature_cfg = dict(kwargs.pop("feature_cfg", None) or {})
    for key in ("out_indices", "feature_cls"):
        if key in kwargs:
            feature_cfg[key] = kwargs.pop(key)
    if feature_cfg and not features_only:
        raise Rep3DValueError(f"{variant}: {', '.join(sorted(feature_cfg))} only apply with features_only=True "
                              "(they choose the feature maps and their wrapper); pass features_only=True or drop them")
    return feature_cfg


def is_model(name: str) -> bool:
    return split_model_name_tag(name)[0] in _NAMES


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """rep3d model names matching ``pattern``; with ``pretrained=True``, the ``arch.tag`` names that have weights."""
    names = timm.list_models(pattern, pretrained=pretrained, include_tags=pretrained)
    return sorted(n for n in names if split_model_name_tag(n)[0] in _NAMES)


def check_name(model_name: str) -> None:
    """Raise :class:`Rep3DValueError` (with close matches) unless ``model_name`` is a registered ``arch[.tag]``."""
    arch, tag = split_model_name_tag(model_name)
    if arch not in _NAMES:
        close = difflib.get_close_matches(arch, sorted(_NAMES), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(sorted(_NAMES))}"
        raise Rep3DValueError(f"unknown rep3d model {model_name!r}{hint} (rep3d.list_models() lists them all)")
    if tag and not _has_tag(model_name):
        tags = [n for n in timm.list_models(arch, include_tags=True) if "." in n]
        raise Rep3DValueError(f"{arch!r} has no pretrained tag {tag!r}; registered tags: {tags or 'none'}")


def _has_tag(model_name: str) -> bool:
    try:
        return get_pretrained_cfg(model_name, allow_unregistered=False) is not None
    except RuntimeError:  # timm raises for a tag its registry does not know
        return False
