"""Normalisation layers for channels-first 5-D tensors."""

import torch
import torch.nn.functional as F
from torch import nn

from rep3d.errors import Rep3DValueError
from rep3d.layers.checks import is_exporting


class LayerNorm3d(nn.LayerNorm):
    """LayerNorm over the channel axis of a channels-first volume ``[B, C, D, H, W]``."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nested on purpose: TorchScript drops only a block under a bare ``torch.jit.is_scripting()`` test
        if not torch.jit.is_scripting():  # noqa: SIM102
            if not is_exporting(x):
                self._check_input(x)
        x = x.permute(0, 2, 3, 4, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 4, 1, 2, 3)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.normalized_shape[0]:
            raise Rep3DValueError(
                f"LayerNorm3d expects [B, {self.normalized_shape[0]}, D, H, W], got shape {tuple(x.shape)}"
            )


def _column_sums(rows: torch.Tensor) -> torch.Tensor:
    """``rows.sum(1, keepdim=True)`` for ``[B, N, C]`` with small ``C``, in two stages: PyTorch's reduction over a
    non-innermost dimension with 12-48 channels innermost vectorises poorly (10x slower at 12 channels)."""
    batch, n, channels = rows.shape
    block = 16 if n % 16 == 0 else 1
    return rows.reshape(batch, n // block, block * channels).sum(1).view(batch, block, channels).sum(1, keepdim=True)


def instance_norm_channels_last(x: torch.Tensor, eps: float = 1e-5, inplace: bool = False) -> torch.Tensor:
    """Instance norm of a ``channels_last_3d`` volume with two-pass statistics: ``[B, C, D, H, W] -> same``.

    ``(x - mean) / sqrt(var + eps)`` per sample and channel over ``D, H, W``, returned in ``channels_last_3d``. The
    variance is taken of the centred values (no ``E[x^2] - E[x]^2`` cancellation): on 12- and 48-channel 96³
    volumes it is within 2e-5 of the float64 result, also where the mean is 100 standard deviations, where
    PyTorch's channels-last group norm is 4e-4 off (and 0.8 at that mean). A call that allocates its result costs
    more than the group norm from 24 channels up (``benchmarks/instance_norm.py`` times both per shape and in the
    whole forward, where the decoder's norms run in place). ``inplace`` overwrites ``x`` (which must then be
    ``channels_last_3d``-contiguous) instead of allocating the result: on a CPU, a fresh 40 MB tensor costs as much
    as the arithmetic.
    """
    batch, channels = x.shape[:2]
    rows = x.permute(0, 2, 3, 4, 1).reshape(batch, -1, channels)  # a view for channels-last input
    n = rows.shape[1]
    mean = _column_sums(rows) / n  # [B, 1, C]
    centred = rows.sub_(mean) if inplace else rows - mean
    if channels <= 16:  # the Gram matrix's diagonal: one GEMM pass, cheap while C x C is small
        squares = torch.bmm(centred.transpose(1, 2), centred).diagonal(dim1=1, dim2=2).unsqueeze(1)
    else:
        squares = _column_sums(centred.square())
    centred.mul_(torch.rsqrt(squares / n + eps))
    return centred.view(batch, *x.shape[2:], channels).permute(0, 4, 1, 2, 3)


class InstanceNorm3dKeepFormat(nn.Module):
    """Instance normalisation without affine or running statistics that keeps the input's memory format.

    Computes what ``nn.InstanceNorm3d(C)`` (its defaults: ``affine=False``, ``track_running_stats=False``) computes,
    ``(x - mean) / sqrt(var + eps)`` per sample and channel over ``D, H, W``, ``[B, C, D, H, W] -> same``. PyTorch's
    instance norm reshapes to a batch norm over ``[1, B * C, ...]``, which copies a ``channels_last_3d`` input into
    channels-first and hands the next convolution a tensor it must reorder again. This one keeps the layout for
    float32 channels-last inputs without gradients (what :class:`rep3d.Predictor` runs) with
    :func:`instance_norm_channels_last`; ``inplace=True`` overwrites the input there (only where the caller drops its
    input, such as a norm right after a convolution). With gradients, under export, or for other layouts it calls
    ``F.instance_norm``, as the layer it replaced did. :func:`rep3d.models.optimize_for_inference` swaps it in for the
    decoder's instance norms.
    """

    def __init__(self, eps: float = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not torch.is_grad_enabled()
                and not is_exporting(x)):
            if torch.is_autocast_enabled(x.device.type):
                # bf16/fp16 activations: PyTorch's channels-last group norm (one group per channel) keeps the
                # format. Its one-pass variance loses digits where a channel's mean is many standard deviations,
                # but there the low-precision input has already lost more (bf16 keeps 8 bits of the mean).
                return F.group_norm(x, x.shape[1], eps=self.eps)
            if x.dtype == torch.float32:
                # Not the group norm here: its one-pass E[x^2] - E[x]^2 was 4e-4 off float64 inside a trained
                # decoder (channel means tens of standard deviations), enough to move an nnU-Net-trained model's
                # probabilities by 1e-3. benchmarks/instance_norm.py measures both forms' error and time.
                return instance_norm_channels_last(x, self.eps, inplace=self.inplace)
        return F.instance_norm(x, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}" + (", inplace=True" if self.inplace else "")
