"""``features_only=True``: a model wrapped so that its forward returns encoder feature maps.

:func:`wrap_features` honours timm's ``feature_cfg`` (the keys ``timm.models.build_model_with_cfg`` passes on to its
feature wrappers) or refuses a key by name; nothing is ignored. ``feature_cls``:

* ``None`` / ``"getter"``: :class:`VolumeFeatureGetter`, the model's ``forward_intermediates``;
* ``"fx"``: :class:`VolumeFeatureGraph`, the same as one ``torch.fx`` graph;
* ``"hook"``: timm's ``FeatureHookNet``, forward hooks on the ``feature_info`` modules of the full model;
* a class: called as ``cls(model, out_indices=..., **other keys)``, as timm's builder does.

``"list"`` / ``"dict"`` (timm's ``FeatureListNet`` / ``FeatureDictNet``) re-run the model's top-level children one
after another, which an encoder + decoder network is not, and are refused. Every wrapper returns the normalised
encoder features (the modules ``feature_info`` names, what the decoder reads); ``norm=False`` (getter only) gives the
raw stage outputs.
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.models import FeatureHookNet, FeatureInfo
from torch import nn

from rep3d.errors import Rep3DValueError

OUTPUT_FMT = "NCDHW"


class VolumeFeatureGetter(nn.Module):
    """``[B, in_chans, D, H, W]`` -> the encoder features at ``out_indices``, each ``[B, C_i, D/r_i, H/r_i, W/r_i]``.

    Calls the model's ``forward_intermediates`` (timm's "getter" feature extraction); stages after the last index and
    the decoder are pruned away. ``feature_info.channels()`` / ``.reduction()`` describe the outputs. ``norm=True``
    (default) returns the normalised features the decoder reads, ``norm=False`` the raw stage outputs.
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3), norm: bool = True) -> None:
        super().__init__()
        self.out_indices: list[int] = model.prune_intermediate_layers(out_indices, prune_norm=False, prune_head=True)
        self.model = model
        self.norm = norm
        self.feature_info = FeatureInfo(model.feature_info, tuple(self.out_indices))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if torch.jit.is_scripting():
            # TorchScript: the encoder's plain graph (pruned stages are identities), then the maps asked for
            features = self.model.encoder._forward_plain(x, self.norm)
            return [features[i] for i in self.out_indices]
        return self.model.forward_intermediates(x, self.out_indices, norm=self.norm, output_fmt=OUTPUT_FMT,
                                                intermediates_only=True)


class _Intermediates(nn.Module):
    def __init__(self, model: nn.Module, out_indices: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.out_indices = list(out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, norm=True, output_fmt=OUTPUT_FMT,
                                                intermediates_only=True)


class VolumeFeatureGraph(nn.Module):
    """:class:`VolumeFeatureGetter` as one ``torch.fx`` graph (timm's ``feature_cls="fx"``): same outputs.

    The graph is ``torch.fx.symbolic_trace`` of the getter's forward; large-kernel convs stay single calls that pick
    their engine from the real input shape when the graph runs. ``self.graph_module`` can be edited or inspected.
    ``return_dict=True`` returns ``{str(index): map}`` (timm's ``FeatureGraphNet`` option).
    """

    return_dict: torch.jit.Final[bool]

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3),
                 return_dict: bool = False) -> None:
        super().__init__()
        self.out_indices = model.prune_intermediate_layers(out_indices, prune_norm=False, prune_head=True)
        self.feature_info = FeatureInfo(model.feature_info, tuple(self.out_indices))
        self.graph_module = torch.fx.symbolic_trace(_Intermediates(model, self.out_indices))
        self.return_dict = return_dict
        self.names = [str(i) for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | dict[str, torch.Tensor]:
        out = self.graph_module(x)
        if self.return_dict:
            return {name: t for name, t in zip(self.names, out)}
        return out


def _hook_net(model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3), **kwargs: Any) -> nn.Module:
    # timm's FeatureHookNet on the full model: no rewrite, hooks on the feature_info modules; its output_fmt "NCHW"
    # is a pass-through, so the 3-D maps come out unchanged
    return FeatureHookNet(model, out_indices, output_fmt="NCHW", no_rewrite=True, **kwargs)


FEATURE_WRAPPERS: dict[str, Callable[..., nn.Module]] = {
    "getter": VolumeFeatureGetter,
    "fx": VolumeFeatureGraph,
    "hook": _hook_net,
}
"""``feature_cls`` name -> wrapper ``(model, out_indices, **keys) -> nn.Module``. timm's default (``None``) means
"getter"."""

WRAPPER_KEYS: dict[str, tuple[str, ...]] = {
    "getter": ("norm",),
    "fx": ("return_dict",),
    "hook": ("return_dict", "out_map", "default_hook_type"),
}
"""The ``feature_cfg`` keys each named wrapper honours besides ``out_indices``, ``feature_cls``, ``output_fmt`` and
``flatten_sequential`` (the last two accepted only with their 3-D meaning: ``"NCDHW"``, ``False``)."""


def wrap_features(model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3), feature_cls: Any = None,
                  **feature_cfg: Any) -> nn.Module:
    """Wrap ``model`` as timm's builder does with ``feature_cfg``; raise :class:`Rep3DValueError` for any key or
    value rep3d cannot honour (never ignore one)."""
    output_fmt = feature_cfg.pop("output_fmt", None)
    if output_fmt is not None and str(output_fmt).upper() != OUTPUT_FMT:
        raise Rep3DValueError(f"feature_cfg output_fmt={output_fmt!r} is not supported: the feature maps of rep3d are "
                              f"channels-first 3-D maps, output_fmt='{OUTPUT_FMT}'")
    if feature_cfg.pop("flatten_sequential", False):
        raise Rep3DValueError("feature_cfg flatten_sequential=True is not supported: it rewrites the model as a "
                              "sequence of its children, which an encoder + decoder network is not; leave it False")
    if isinstance(feature_cls, type):
        return feature_cls(model, out_indices=out_indices, **feature_cfg)
    name = "getter" if feature_cls is None else feature_cls
    if not isinstance(name, str) or name.lower() not in FEATURE_WRAPPERS:
        raise Rep3DValueError(
            f"feature_cls={feature_cls!r} is not supported for rep3d models; supported: "
            f"{', '.join(repr(n) for n in FEATURE_WRAPPERS)} (or None for 'getter'), or a wrapper class"
            + ("; 'list' / 'dict' run the model's children in sequence, which a U-Net is not"
               if str(name).lower() in ("list", "dict") else "")
        )
    name = name.lower()
    unknown = sorted(set(feature_cfg) - set(WRAPPER_KEYS[name]))
    if unknown:
        raise Rep3DValueError(
            f"feature_cfg key(s) {', '.join(unknown)} are not supported with feature_cls={name!r}; it accepts "
            f"out_indices, feature_cls, output_fmt, flatten_sequential, {', '.join(WRAPPER_KEYS[name])}"
        )
    return FEATURE_WRAPPERS[name](model, out_indices, **feature_cfg)
