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
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that follows a conv into the conv.

    ``BN(conv(x, W) + b) == conv(x, W') + b'`` with ``W' = W * s``, ``b' = (b - mean) * s + bn_bias`` and
    ``s = bn_weight / sqrt(var + eps)`` (``bn_weight`` / ``bn_bias`` are BatchNorm's affine scale and shift, often
    written gamma and beta; rep3d keeps ``beta`` for the mask's distance prior). ``weight`` is ``[C_out, ...]``;
    returns ``(W', b')``, ``b'`` of shape ``[C_out]``.
    """
    scale = torch.rsqrt(running_var + eps)
    if bn_weight is not None:
        scale = scale * bn_weight
    if bias is None:
        bias = torch.zeros_like(running_mean)
    new_bias = (bias - running_mean) * scale
    if bn_bias is not None:
        new_bias = new_bias + bn_bias
    return weight * scale.reshape(-1, *([1] * (weight.ndim - 1))), new_bias


def pad_kernel(weight: torch.Tensor, kernel_size: int | Sequence[int]) -> torch.Tensor:
    """Zero-pad the last three axes of ``weight`` symmetrically up to ``kernel_size``.

    A centred small kernel padded this way gives the same "same"-padded convolution as the small kernel itself,
    which is what lets a parallel small branch merge into the large one.
    """
    target = kernel_size_3d(kernel_size)
    have = tuple(weight.shape[-3:])
    for k_have, k_want in zip(have, target, strict=True):
        if k_have > k_want or (k_want - k_have) % 2:
            raise Rep3DValueError(
                f"cannot centre-pad a kernel of size {have} to {target}: sizes must grow by even amounts")
    return centre_pad(weight, list(have), list(target))


def centre_pad(weight: torch.Tensor, have: list[int], want: list[int]) -> torch.Tensor:
    """Zero-pad the last three axes of ``weight`` from ``have`` to ``want``, centred (unchecked; TorchScript-able).

    The one place kernel padding is computed: :func:`pad_kernel` checks the sizes and calls it, and the train-form
    forward of :class:`~rep3d.layers.RepLKConv3d` (which TorchScript compiles) calls it directly.
    """
    pads: list[int] = []
    for axis in [2, 1, 0]:  # F.pad lists the last axis first
        pads += [(want[axis] - have[axis]) // 2, (want[axis] - have[axis]) // 2]
    return F.pad(weight, pads)


def same_padding(kernel_size: Sequence[int]) -> list[int]:
    """The "same" padding of a stride-1 conv with odd ``kernel_size`` (one int per axis): ``k // 2``."""
    return [k // 2 for k in kernel_size]


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
