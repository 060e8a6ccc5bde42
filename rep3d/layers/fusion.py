"""Pure kernel algebra used to fold train-time structure into one deployable conv."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rep3d.errors import Rep3DValueError
from rep3d.layers.checks import kernel_size_3d


def fold_batchnorm(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that follows a conv into the conv.

    ``BN(conv(x, W) + b) == conv(x, W') + b'`` with ``W' = W * s``, ``b' = (b - mean) * s + beta`` and
    ``s = gamma / sqrt(var + eps)``. ``weight`` is ``[C_out, ...]``; returns ``(W', b')``, ``b'`` of shape ``[C_out]``.
    """
    scale = torch.rsqrt(running_var + eps)
    if gamma is not None:
        scale = scale * gamma
    if bias is None:
        bias = torch.zeros_like(running_mean)
    new_bias = (bias - running_mean) * scale
    if beta is not None:
        new_bias = new_bias + beta
    return weight * scale.reshape(-1, *([1] * (weight.ndim - 1))), new_bias


def pad_kernel(weight: torch.Tensor, kernel_size: int | Sequence[int]) -> torch.Tensor:
    """Zero-pad the last three axes of ``weight`` symmetrically up to ``kernel_size``.

    A centred small kernel padded this way gives the same "same"-padded convolution as the small kernel itself,
    which is what lets a parallel small branch merge into the large one.
    """
    target = kernel_size_3d(kernel_size)
    have = tuple(weight.shape[-3:])
    pads: list[int] = []
    for k_have, k_want in zip(reversed(have), reversed(target), strict=True):
        if k_have > k_want or (k_want - k_have) % 2:
            raise Rep3DValueError(
                f"cannot centre-pad a kernel of size {have} to {target}: sizes must grow by even amounts")
        pads += [(k_want - k_have) // 2] * 2
    return F.pad(weight, pads)


def crop_kernel(weight: torch.Tensor, kernel_size: Sequence[int]) -> torch.Tensor:
    """Keep the central ``kernel_size`` of the last three axes (the inverse of :func:`pad_kernel`)."""
    slices = []
    for k_have, k_want in zip(weight.shape[-3:], kernel_size, strict=True):
        if k_want > k_have or (k_have - k_want) % 2:
            raise Rep3DValueError(
                f"cannot centre-crop a kernel of size {tuple(weight.shape[-3:])} to {tuple(kernel_size)}")
        start = (k_have - k_want) // 2
        slices.append(slice(start, start + k_want))
    return weight[(..., *slices)]
