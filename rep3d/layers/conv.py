"""RepLKConv3d: a large depthwise 3-D conv with train-time structure that folds into one conv for deployment."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rep3d.layers.checks import check_volume, is_exporting, kernel_size_3d
from rep3d.layers.depthwise import BACKENDS, Backend, depthwise_conv3d, direct_depthwise_conv3d
from rep3d.layers.fusion import fold_batchnorm, pad_kernel
from rep3d.layers.mask import ModulatedKernelParam

Modulation = Literal["lrbm", "fixed"] | None

# torch.fx.symbolic_trace records the engine as one call (it picks its path from real shapes when the graph runs)
torch.fx.wrap("depthwise_conv3d")


class RepLKConv3d(nn.Module):
    """Depthwise large-kernel 3-D conv, stride 1, "same" padding: ``[B, C, D, H, W] -> [B, C, D, H, W]``.

    Train-time form::

        y = BN(conv(x, W * M)) [+ BN_s(conv(x, W_s))]

    where ``M`` is the receptive-field mask (``modulation="lrbm"`` learnable, ``"fixed"`` the distance prior,
    ``None`` no mask) and the optional ``small_kernel`` branch is the CSLA / RepLKNet parallel small conv. With
    ``norm=False`` there is no BatchNorm and the branches are summed as kernels; ``bias=True`` adds a learnable
    per-channel bias after everything (as in 3D UX-Net's depthwise conv).

    :meth:`reparameterize` folds mask, BatchNorms and small branch into one depthwise conv with bias; the module
    then holds only ``weight`` ``[C, 1, k, k, k]`` and ``bias`` ``[C]`` and its state_dict loads into a module built
    with ``deploy=True``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | Sequence[int] = 21,
        *,
        modulation: Modulation = "lrbm",
        small_kernel: int | None = None,
        norm: bool = True,
        bias: bool = False,
        conv_backend: Backend = "auto",
        deploy: bool = False,
        beta: float = 1.0,
        learnable_beta: bool = False,
        mask_hidden_channels: int = 4,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"RepLKConv3d: channels must be a positive int, got {channels!r}")
        if modulation not in ("lrbm", "fixed", None):
            raise ValueError(f"RepLKConv3d: modulation must be 'lrbm', 'fixed' or None, got {modulation!r}")
        if conv_backend not in BACKENDS:
            raise ValueError(f"RepLKConv3d: conv_backend must be one of {BACKENDS}, got {conv_backend!r}")
        self.channels = channels
        self.kernel_size = kernel_size_3d(kernel_size)
        self.small_kernel = None if small_kernel is None else kernel_size_3d(small_kernel, name="small_kernel")
        if self.small_kernel is not None and any(s >= k for s, k in zip(self.small_kernel, self.kernel_size)):
            raise ValueError(
                f"RepLKConv3d: small_kernel {small_kernel} must be smaller than kernel_size {kernel_size} on every axis"
            )
        self.modulation_mode = modulation
        self.norm = norm
        self.conv_backend = conv_backend
        self.deploy = deploy
        self.grad_checkpointing = False

        self.weight = nn.Parameter(torch.empty(channels, 1, *self.kernel_size))
        _init_kernel(self.weight)
        if deploy:
            self.bias = nn.Parameter(torch.zeros(channels))
            return
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.modulation = (
            ModulatedKernelParam(self.kernel_size, modulation, beta=beta, learnable_beta=learnable_beta,
                                 hidden_channels=mask_hidden_channels)
            if modulation is not None else None
        )
        self.bn = nn.BatchNorm3d(channels, eps=bn_eps, momentum=bn_momentum) if norm else None
        if self.small_kernel is not None:
            self.small_weight = nn.Parameter(torch.empty(channels, 1, *self.small_kernel))
            _init_kernel(self.small_weight)
            self.small_bn = nn.BatchNorm3d(channels, eps=bn_eps, momentum=bn_momentum) if norm else None
        else:
            self.register_parameter("small_weight", None)
            self.small_bn = None

    def effective_kernel(self) -> torch.Tensor:
        """Large-branch kernel as the forward uses it: ``W * M`` (or ``W``), ``[C, 1, k, k, k]``."""
        if hasattr(self, "modulation") and self.modulation is not None:
            return self.modulation(self.weight)
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nested on purpose: TorchScript drops only a block under a bare ``torch.jit.is_scripting()`` test
        if not torch.jit.is_scripting():  # noqa: SIM102
            if not is_exporting(x):
                check_volume(x, self.channels, "RepLKConv3d")
        if torch.jit.is_scripting():
            # ``deploy`` is not a constant to TorchScript, but the deployed form has no BatchNorm attribute at all
            if not hasattr(self, "bn"):
                return self._conv(x, self.weight, self.bias)
            return self._train_forward(x)
        if self.deploy:
            return self._conv(x, self.weight, self.bias)
        return self._train_forward(x)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.effective_kernel()
        small_weight = self.small_weight
        if self.bn is None:
            if small_weight is not None:
                weight = weight + _centre_pad(small_weight, self.small_kernel, self.kernel_size)
            return self._conv(x, weight, self.bias)
        y = self.bn(self._conv(x, weight, None))
        if small_weight is not None and self.small_bn is not None:
            y = y + self.small_bn(self._conv(x, small_weight, None))
        bias = self.bias
        return y if bias is None else y + bias.view(1, -1, 1, 1, 1)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if torch.jit.is_scripting():
            return direct_depthwise_conv3d(x, weight, bias)
        if torch.jit.is_tracing():
            # a Python autograd.Function cannot be serialised in a traced graph: plain ops, valid for any size
            return direct_depthwise_conv3d(x, weight, bias)
        if self.grad_checkpointing and torch.is_grad_enabled():
            # Only the conv is recomputed: BatchNorm stays outside, so its running stats update once per step.
            return checkpoint(depthwise_conv3d, x, weight, bias, backend=self.conv_backend, use_reentrant=False)
        return depthwise_conv3d(x, weight, bias, backend=self.conv_backend)

    @torch.no_grad()
    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single ``(weight [C, 1, k, k, k], bias [C])`` equal to this module in eval mode."""
        if self.deploy:
            return self.weight.detach().clone(), self.bias.detach().clone()
        weight = self.effective_kernel()
        bias = torch.zeros(self.channels, dtype=weight.dtype, device=weight.device)
        if self.bias is not None:
            bias = bias + self.bias
        if self.bn is not None:
            weight, bn_bias = _fold(weight, self.bn)
            bias = bias + bn_bias
        if self.small_weight is not None:
            small = self.small_weight
            if self.small_bn is not None:
                small, bn_bias = _fold(small, self.small_bn)
                bias = bias + bn_bias
            weight = weight + pad_kernel(small, self.kernel_size)
        return weight.detach().clone(), bias.detach().clone()

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold mask, small branch and BatchNorms into one depthwise conv with bias (in place; idempotent)."""
        if self.deploy:
            return
        weight, bias = self.fused_kernel()
        for name in ("modulation", "bn", "small_bn"):
            delattr(self, name)
        del self.small_weight, self.weight, self.bias
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.deploy = True

    def extra_repr(self) -> str:
        parts = [f"{self.channels}", f"kernel_size={self.kernel_size}"]
        if self.deploy:
            parts.append("deploy=True")
        else:
            parts += [f"modulation={self.modulation_mode!r}", f"small_kernel={self.small_kernel}", f"norm={self.norm}"]
            if self.bias is not None:
                parts.append("bias=True")
        if self.conv_backend != "auto":
            parts.append(f"conv_backend={self.conv_backend!r}")
        return ", ".join(parts)


def _centre_pad(weight: torch.Tensor, have: tuple[int, int, int] | None, want: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad a ``[C, 1, *have]`` kernel centred to ``want`` (a scriptable :func:`pad_kernel` for known sizes)."""
    assert have is not None
    pads: list[int] = []
    for axis in [2, 1, 0]:
        pads += [(want[axis] - have[axis]) // 2, (want[axis] - have[axis]) // 2]
    return F.pad(weight, pads)


def _init_kernel(weight: nn.Parameter) -> None:
    # same rule as nn.Conv3d's default (kaiming-uniform, a=sqrt(5)) so swapped-in layers start at a familiar scale
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def _fold(weight: torch.Tensor, bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    return fold_batchnorm(weight, None, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
