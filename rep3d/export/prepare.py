"""What every export format starts from: a folded CPU copy of the model, its example input and its dynamic axes."""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import nn

from rep3d.errors import Rep3DValueError
from rep3d.inference.model_cfg import model_config
from rep3d.layers import RepLKConv3d
from rep3d.layers.depthwise import BACKENDS
from rep3d.models.deploy import is_deployed, reparameterize_model

DYNAMIC_AXES = ("batch", "spatial")
MAX_DYNAMIC_STRIDES = 32  # dynamic spatial sizes go up to 32 strides (512 voxels at stride 16)
FALLBACK_ROI = (96, 96, 96)


def prepare_model(model: nn.Module, backend: str | None = None) -> tuple[nn.Module, bool]:
    """A CPU, eval-mode, folded copy of ``model``; ``folded`` says whether it had to be re-parameterised.

    ``backend`` (``"auto"``, ``"direct"``, ``"fft"``) replaces every large-kernel conv's ``conv_backend``.
    """
    if backend is not None and backend not in BACKENDS:
        raise Rep3DValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    model = copy.deepcopy(model).cpu().float().eval()
    convs = [m for m in model.modules() if isinstance(m, RepLKConv3d)]
    folded = bool(convs) and not is_deployed(model)
    if folded:
        model = reparameterize_model(model, inplace=True)
    if backend is not None:
        for m in convs:
            m.conv_backend = backend
    for p in model.parameters():
        p.requires_grad_(False)
    return model, folded


def model_roi(model: nn.Module, roi: Sequence[int] | None = None) -> tuple[int, int, int]:
    """``roi`` or the model cfg's ``roi_size`` (96³ if none), checked against the network's stride."""
    roi = tuple(int(r) for r in (roi or model_config(model).input.roi_size or FALLBACK_ROI))
    stride = network_stride(model)
    minimum = minimum_roi(model)
    if len(roi) != 3 or any(r < 1 or r % stride for r in roi) or max(roi) < minimum:
        raise Rep3DValueError(f"--roi must be three multiples of the network stride {stride}, the largest at least "
                              f"{minimum} (the model's smallest input: its deepest stage must hold more than one "
                              f"voxel), got {list(roi)}")
    return roi  # type: ignore[return-value]


def minimum_roi(model: nn.Module) -> int:
    """The size the largest input axis must reach (``model.min_input_size``: two strides for rep3d networks)."""
    return int(getattr(model, "min_input_size", None) or network_stride(model))


def network_stride(model: nn.Module) -> int:
    """``model.stride`` when it is a positive int, else 1."""
    stride = getattr(model, "stride", 1)
    return stride if isinstance(stride, int) and stride > 0 else 1


def parse_dynamic(spec: str | Collection[str] | None) -> tuple[str, ...]:
    """``"batch,spatial"`` / ``["batch"]`` / None -> a sorted tuple of known dynamic axes."""
    if spec is None:
        return ()
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in DYNAMIC_AXES]
    if bad:
        raise Rep3DValueError(f"dynamic axes must be among {DYNAMIC_AXES} (comma-separated), got {bad}")
    return tuple(a for a in DYNAMIC_AXES if a in items)


def example_input(model: nn.Module, roi: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A reproducible random ``[batch, in_chans, *roi]`` float32 input."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, int(getattr(model, "in_chans", 1)), *roi, generator=gen)


def dynamic_shapes(model: nn.Module, dynamic: Collection[str]) -> tuple[dict[int, Any]] | None:
    """``torch.export``'s ``dynamic_shapes`` for the model's one input, ``None`` for static shapes."""
    from torch.export import Dim

    if not dynamic:
        return None
    axes: dict[int, Any] = {}
    if "batch" in dynamic:
        axes[0] = Dim("batch", min=1, max=1024)
    if "spatial" in dynamic:
        stride = network_stride(model)
        for axis, name in zip((2, 3, 4), ("depth", "height", "width"), strict=True):
            # at least two strides: the deepest stage keeps two voxels per axis
            axes[axis] = stride * Dim(f"{name}_strides", min=2, max=MAX_DYNAMIC_STRIDES)
    return (axes,)
