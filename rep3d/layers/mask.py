"""Distance-decay prior and the learnable receptive-field mask of Rep3D (DESIGN §1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from rep3d.layers.checks import check_float, is_exporting, kernel_size_3d

MaskMode = Literal["lrbm", "fixed"]


def distance_prior(
    kernel_size: int | Sequence[int],
    beta: float | torch.Tensor = 1.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Distance-decay prior ``P[k] = beta / (||k - c||_2 + beta)`` over kernel offsets, shape ``[kd, kh, kw]``.

    ``beta = 1`` gives ``1 / (1 + d)``: 1 at the centre, 0.5 at a face neighbour. ``beta`` may be a tensor
    (learnable); the result is then differentiable with respect to it.
    """
    kd, kh, kw = kernel_size_3d(kernel_size, minimum=1)
    if isinstance(beta, torch.Tensor):
        dtype = dtype or beta.dtype
        device = device or beta.device
    else:
        if not beta > 0:
            raise ValueError(f"distance_prior: beta must be > 0, got {beta}")
        dtype = dtype or torch.get_default_dtype()
    axes = [torch.arange(k, device=device, dtype=dtype) - (k - 1) / 2 for k in (kd, kh, kw)]
    dist = (axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2).sqrt()
    return beta / (dist + beta)


class MaskGenerator(nn.Module):
    """f_theta: a tiny conv net over the prior volume ``[1, 1, kd, kh, kw]`` -> logits of the same shape.

    conv(k7, same) -> GroupNorm -> sigmoid -> conv(k7, same). GroupNorm normalises over hidden channels *and* kernel
    offsets, so it cannot collapse to its bias the way a LayerNorm over a single channel does (upstream bug, DESIGN §5).
    """

    def __init__(self, hidden_channels: int = 4, kernel_size: int = 7, init_scale: float = 0.1) -> None:
        super().__init__()
        (k, _, _) = kernel_size_3d(kernel_size, name="generator kernel_size")
        self.conv1 = nn.Conv3d(1, hidden_channels, k, padding=k // 2)
        self.norm = nn.GroupNorm(1, hidden_channels)
        self.conv2 = nn.Conv3d(hidden_channels, 1, k, padding=k // 2)
        # Small but non-zero last layer: the mask starts within a few percent of the prior, yet every generator
        # parameter receives gradient from the first backward (a zero-init last layer would starve conv1).
        with torch.no_grad():
            self.conv2.weight.mul_(init_scale)
            self.conv2.bias.zero_()

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.sigmoid(self.norm(self.conv1(prior))))


class ModulatedKernelParam(nn.Module):
    """Kernel modulation ``W -> W * M`` with a mask ``M`` over kernel offsets, shared by all channels.

    Use it inside a layer (``W_eff = modulation(W)``) or as a ``torch.nn.utils.parametrize`` parametrization of any
    conv weight ``[C_out, C_in/groups, kd, kh, kw]``::

        parametrize.register_parametrization(conv, "weight", ModulatedKernelParam(7))

    Modes:
        ``"fixed"``: ``M = P`` (the distance prior; RepUX-Net style), no parameters.
        ``"lrbm"``: ``M = P + f(P)`` with ``f(P) = P * tanh(g_theta(P))``: a learnable correction bounded so that
        ``0 < M < 2P`` (the mask can never flip a kernel element's sign). ``g_theta`` is :class:`MaskGenerator`,
        initialised so that ``M`` is within a few percent of ``P`` at step 0.

    The mask is computed once per call, shape ``[1, 1, kd, kh, kw]``, and broadcast over channels.
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        mode: MaskMode = "lrbm",
        beta: float = 1.0,
        learnable_beta: bool = False,
        hidden_channels: int = 4,
        generator_kernel_size: int = 7,
    ) -> None:
        super().__init__()
        if mode not in ("lrbm", "fixed"):
            raise ValueError(f"ModulatedKernelParam: mode must be 'lrbm' or 'fixed', got {mode!r}")
        if not beta > 0:
            raise ValueError(f"ModulatedKernelParam: beta must be > 0, got {beta}")
        self.kernel_size = kernel_size_3d(kernel_size)
        self.mode = mode
        if learnable_beta:
            # log-parameterised so that beta stays positive under any update
            self.log_beta = nn.Parameter(torch.tensor(math.log(beta)))
        else:
            self.register_buffer("prior", distance_prior(self.kernel_size, beta), persistent=False)
            self.log_beta = None
        self.beta_init = float(beta)
        self.generator = MaskGenerator(hidden_channels, generator_kernel_size) if mode == "lrbm" else None

    @property
    def beta(self) -> float:
        return float(self.log_beta.exp()) if self.log_beta is not None else self.beta_init

    def prior_volume(self) -> torch.Tensor:
        """The distance prior ``P`` as ``[1, 1, kd, kh, kw]``."""
        if self.log_beta is not None:
            return distance_prior(self.kernel_size, self.log_beta.exp())[None, None]
        return self.prior[None, None]

    def mask(self) -> torch.Tensor:
        """The mask ``M`` as ``[1, 1, kd, kh, kw]``."""
        prior = self.prior_volume()
        if self.generator is None:
            return prior
        return prior * (1.0 + torch.tanh(self.generator(prior)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # nested on purpose: TorchScript drops only a block under a bare ``torch.jit.is_scripting()`` test
        if not torch.jit.is_scripting():  # noqa: SIM102
            if not is_exporting(weight):
                self._check_weight(weight)
        return weight * self.mask().to(weight.dtype)

    def _check_weight(self, weight: torch.Tensor) -> None:
        check_float(weight, "ModulatedKernelParam", "weight")
        if weight.ndim != 5 or tuple(weight.shape[2:]) != self.kernel_size:
            raise ValueError(
                f"ModulatedKernelParam was built for kernels [C, C_in, {', '.join(map(str, self.kernel_size))}], "
                f"got weight of shape {tuple(weight.shape)}"
            )

    def extra_repr(self) -> str:
        learn = ", learnable_beta=True" if self.log_beta is not None else ""
        return f"kernel_size={self.kernel_size}, mode={self.mode!r}, beta={self.beta_init}{learn}"
