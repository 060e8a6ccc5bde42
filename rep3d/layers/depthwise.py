"""Exact "same" depthwise 3-D convolution with a choice of engine.

Every large-kernel conv in rep3d goes through :func:`depthwise_conv3d`, so that a faster engine benefits all
layers and models at once.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from rep3d.layers.checks import check_float, check_volume, kernel_size_3d
from rep3d.layers.fusion import crop_kernel

Backend = Literal["auto", "direct", "fft"]
BACKENDS = ("auto", "direct", "fft")


def useful_kernel_size(kernel_size: tuple[int, int, int], spatial: tuple[int, int, int]) -> tuple[int, int, int]:
    """Largest kernel that can ever overlap a ``spatial``-sized input under "same" padding: ``min(K, 2S - 1)``.

    Offsets farther than ``S - 1`` from the centre only ever meet zero padding, so cropping them is exact.
    """
    return tuple(min(k, 2 * s - 1) for k, s in zip(kernel_size, spatial, strict=True))  # type: ignore[return-value]


def depthwise_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Depthwise convolution, stride 1, "same" zero padding.

    Args:
        x: ``[B, C, D, H, W]`` input.
        weight: ``[C, 1, kd, kh, kw]`` kernel, odd size on every axis.
        bias: optional ``[C]``.
        backend: ``"direct"`` (native conv on the exactly-cropped kernel), ``"fft"`` or ``"auto"``.

    Returns:
        ``[B, C, D, H, W]`` in the dtype of ``x``.
    """
    _check_args(x, weight, bias, backend)
    return _direct(x, weight, bias)


def _check_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str) -> None:
    who = "depthwise_conv3d"
    if backend not in BACKENDS:
        raise ValueError(f"{who}: backend must be one of {BACKENDS}, got {backend!r}")
    check_float(weight, who, "weight")
    if weight.ndim != 5 or weight.shape[1] != 1:
        raise ValueError(f"{who}: weight must be [C, 1, kd, kh, kw] (depthwise), got shape {tuple(weight.shape)}")
    kernel_size_3d(tuple(weight.shape[2:]), name="weight kernel size", minimum=1)
    check_volume(x, weight.shape[0], who)
    if bias is not None:
        check_float(bias, who, "bias")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{who}: bias must have shape [{weight.shape[0]}], got {tuple(bias.shape)}")


def _direct(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    k = useful_kernel_size(tuple(weight.shape[2:]), tuple(x.shape[2:]))
    if k != tuple(weight.shape[2:]):
        weight = crop_kernel(weight, k)
    return F.conv3d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                    padding=tuple(s // 2 for s in k), groups=x.shape[1])
