"""``features_only=True``: a model wrapped so that its forward returns encoder feature maps.

One wrapper per ``feature_cls`` name in :data:`FEATURE_WRAPPERS`; timm's own 2-D wrappers are not used because they
reject channels-first 3-D maps (``output_fmt="NCDHW"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from timm.models import FeatureInfo
from torch import nn

from rep3d.errors import Rep3DValueError


class VolumeFeatureGetter(nn.Module):
    """``[B, in_chans, D, H, W]`` -> the encoder features at ``out_indices``, each ``[B, C_i, D/r_i, H/r_i, W/r_i]``.

    Calls the model's ``forward_intermediates`` (timm's "getter" feature extraction); stages after the last index and
    the decoder are pruned away. ``feature_info.channels()`` / ``.reduction()`` describe the outputs.
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.out_indices = model.prune_intermediate_layers(out_indices, prune_norm=False, prune_head=True)
        self.model = model
        self.feature_info = FeatureInfo(model.feature_info, tuple(self.out_indices))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, norm=True, output_fmt="NCDHW",
                                                intermediates_only=True)


class _Intermediates(nn.Module):
    def __init__(self, model: nn.Module, out_indices: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.out_indices = list(out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, norm=True, output_fmt="NCDHW",
                                                intermediates_only=True)


class VolumeFeatureGraph(nn.Module):
    """:class:`VolumeFeatureGetter` as one ``torch.fx`` graph (timm's ``feature_cls="fx"``): same outputs.

    The graph is ``torch.fx.symbolic_trace`` of the getter's forward; large-kernel convs stay single calls that pick
    their engine from the real input shape when the graph runs. ``self.graph_module`` can be edited or inspected.
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.out_indices = model.prune_intermediate_layers(out_indices, prune_norm=False, prune_head=True)
        self.feature_info = FeatureInfo(model.feature_info, tuple(self.out_indices))
        self.graph_module = torch.fx.symbolic_trace(_Intermediates(model, self.out_indices))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.graph_module(x)


FEATURE_WRAPPERS: dict[str, Callable[..., nn.Module]] = {
    "getter": VolumeFeatureGetter,
    "fx": VolumeFeatureGraph,
}
"""``feature_cls`` name -> wrapper ``(model, out_indices) -> nn.Module``. timm's default (``None``) means "getter"."""


def wrap_features(model: nn.Module, out_indices: int | Sequence[int], feature_cls: str | None = None) -> nn.Module:
    """Wrap ``model`` with the ``feature_cls`` wrapper; raise :class:`Rep3DValueError` for a name rep3d lacks."""
    name = "getter" if feature_cls is None else feature_cls
    if not isinstance(name, str) or name.lower() not in FEATURE_WRAPPERS:
        raise Rep3DValueError(
            f"feature_cls={feature_cls!r} is not supported for rep3d models; supported: "
            f"{', '.join(repr(n) for n in FEATURE_WRAPPERS)} (or None for 'getter')"
        )
    return FEATURE_WRAPPERS[name.lower()](model, out_indices)
