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


class InstanceNorm3dKeepFormat(nn.Module):
    """Instance normalisation without affine or running statistics that keeps the input's memory format.

    Computes what ``nn.InstanceNorm3d(C)`` (its defaults: ``affine=False``, ``track_running_stats=False``) computes,
    ``(x - mean) / sqrt(var + eps)`` per sample and channel over ``D, H, W``, ``[B, C, D, H, W] -> same``. PyTorch's
    instance norm reshapes to a batch norm over ``[1, B * C, ...]``, which copies a ``channels_last_3d`` input into
    channels-first and hands the next convolution a tensor it must reorder again; this form is a group norm with
    one group per channel, which keeps the layout. :func:`rep3d.models.optimize_for_inference`
    swaps it in for the decoder's instance norms.
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one group per channel is instance norm; PyTorch's group norm has a channels-last CPU kernel (and keeps
        # the format), where a plain var_mean over D, H, W with 12-48 channels innermost ran 2x slower
        return F.group_norm(x, x.shape[1], eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
