"""A dense 3-D convolution that always takes oneDNN's CPU kernel at inference."""

from functools import cache

import torch
from torch import nn

from rep3d.layers.checks import is_exporting

__all__ = ["OneDNNConv3d", "onednn_supports", "uses_onednn"]


def uses_onednn(conv: nn.Conv3d) -> bool:
    """Whether :class:`OneDNNConv3d` routes ``conv``'s shape to oneDNN.

    One exception: a 1x1x1 kernel on a single input channel (the stem's residual projection) ran 3x slower in
    oneDNN than in PyTorch's kernel; it is a scaled copy of the input per output channel, computed as such.
    """
    return (conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not _is_channel_broadcast(conv))


@cache
def onednn_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs convolutions in ``dtype`` on this CPU: float32 always; bfloat16 only with AVX-512
    (BW/VL/DQ) or AVX-NE-CONVERT, without which ``mkldnn_convolution`` raises (PyTorch's own convolution then
    takes another kernel)."""
    if dtype == torch.float32:
        return torch.backends.mkldnn.is_available()
    if dtype == torch.bfloat16:
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _is_channel_broadcast(conv: nn.Conv3d) -> bool:
    return (conv.in_channels == 1 and conv.groups == 1 and all(k == 1 for k in conv.kernel_size)
            and all(s == 1 for s in conv.stride) and all(p == 0 for p in conv.padding))


def _channel_broadcast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv3d(x, weight, bias)`` for ``[B, 1, D, H, W]`` and a ``[C, 1, 1, 1, 1]`` weight, in channels-last."""
    out = torch.empty((x.shape[0], weight.shape[0], *x.shape[2:]), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last_3d)
    torch.mul(x, weight.view(1, -1, 1, 1, 1), out=out)
    return out if bias is None else out.add_(bias.view(1, -1, 1, 1, 1))


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs oneDNN's kernel on CPU whenever no gradient is recorded.

    Same parameters, state-dict keys and function as ``nn.Conv3d`` (``[B, C_in, D, H, W] -> [B, C_out, D', H',
    W']``); only the kernel choice differs. PyTorch sends a float32 convolution to a slow im2col path when
    ``B * C_in * D * H`` is below 20480 and the kernel is at most 3 wide (its heuristic for 2-D images); for the
    volumes rep3d's networks see that covers the 1-channel stem at 96³ and every 3x3x3 convolution at 1/4 and 1/8
    resolution, which oneDNN runs 3-10x faster. Training, autograd, tracing and export take ``nn.Conv3d``'s path
    unchanged. Build one with :meth:`from_conv`; :func:`rep3d.models.optimize_for_inference` does.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv3d) -> "OneDNNConv3d":
        """A ``OneDNNConv3d`` sharing ``conv``'s parameters (no copy)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device="meta")
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.jit.is_scripting() or torch.is_grad_enabled() or x.device.type != "cpu"
                or is_exporting(x) or self.padding_mode != "zeros" or isinstance(self.padding, str)):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype != weight.dtype and not torch.is_autocast_enabled("cpu"):
            return super().forward(x)  # let PyTorch raise its dtype-mismatch error
        broadcast = _is_channel_broadcast(self)
        if not broadcast and not onednn_supports(dtype):
            return super().forward(x)
        if torch.is_autocast_enabled("cpu"):
            # the raw ops are not on autocast's list: cast as autocast would for a convolution
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if broadcast:
            return _channel_broadcast(x, weight, bias)
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(self.padding), list(self.stride),
                                                 list(self.dilation), self.groups)
