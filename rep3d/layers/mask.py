"""Distance-decay prior and the learnable receptive-field mask of Rep3D, with its health statistics (docs/design.md,
"Mask")."""

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

from rep3d.errors import Rep3DTypeError, Rep3DValueError
from rep3d.layers.checks import check_float, is_exporting, kernel_size_3d

Modulation = Literal["lrbm", "fixed"]
"""How a kernel is modulated: ``"lrbm"`` the learnable receptive-field-biased mask (the paper's LRBM: a prior that
decays with distance from the kernel centre, refined by a small learnt generator), ``"fixed"`` the distance prior
alone. Layers that can also go without a mask take ``None`` as well."""
MODULATIONS: tuple[str, ...] = ("lrbm", "fixed")
MaskForm = Literal["additive", "exp", "softmax", "tanh"]
MASK_FORMS: tuple[str, ...] = ("additive", "exp", "softmax", "tanh")
OutputScale = Literal["sqrt_fan_in", "fan_in", "none"]
OUTPUT_SCALES: tuple[str, ...] = ("sqrt_fan_in", "fan_in", "none")
DEFAULT_MASK_FORM: MaskForm = "additive"
RING_RADII: tuple[int, ...] = (0, 1, 2, 4, 8)
"""Distances (in kernel elements) of the rings :meth:`ModulatedKernelParam.mask_stats` reports, plus the edge."""


@dataclass(frozen=True)
class MaskCfg:
    """How the learnable mask (``modulation="lrbm"``) is shaped; ``"fixed"`` reads only ``beta``.

    Attributes:
        form: how the generator output turns the prior into the mask (table in :class:`ModulatedKernelParam`).
        beta: sharpness of the distance prior ``P = beta / (d + beta)`` (not BatchNorm's shift).
        learnable_beta: learn ``beta`` too (log-parameterised, stays positive).
        generator_hidden_channels: the generator net's (:class:`MaskGenerator`) ``hidden_channels``.
        generator_kernel_size: its ``kernel_size``.
        generator_depth: its ``depth`` (number of convs).
        generator_output_scale: its ``output_scale``.
    """

    form: MaskForm = DEFAULT_MASK_FORM
    beta: float = 1.0
    learnable_beta: bool = False
    generator_hidden_channels: int = 1
    generator_kernel_size: int = 7
    generator_depth: int = 2
    generator_output_scale: OutputScale = "sqrt_fan_in"

    OPTION_NAMES = ("mask_form", "beta", "learnable_beta", "generator_hidden_channels", "generator_kernel_size",
                    "generator_depth", "generator_output_scale")
    """The flat keyword names of these settings in model arguments and layer constructors (``form`` is
    ``mask_form`` there)."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any], who: str = "MaskCfg") -> "MaskCfg":
        """Build from flat keyword options (:data:`OPTION_NAMES`); an unknown name raises ``Rep3DTypeError``."""
        unknown = sorted(set(options) - set(cls.OPTION_NAMES))
        if unknown:
            raise Rep3DTypeError(f"{who} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; the mask "
                                 f"options are {', '.join(cls.OPTION_NAMES)}")
        return cls(**{("form" if k == "mask_form" else k): v for k, v in options.items()})

    def options(self) -> dict[str, Any]:
        """The flat keyword options that rebuild this config (inverse of :meth:`from_options`)."""
        return {("mask_form" if f.name == "form" else f.name): getattr(self, f.name) for f in fields(self)}


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
            raise Rep3DValueError(f"distance_prior: beta must be > 0, got {beta}")
        dtype = dtype or torch.get_default_dtype()
    axes = [torch.arange(k, device=device, dtype=dtype) - (k - 1) / 2 for k in (kd, kh, kw)]
    dist = (axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2).sqrt()
    return beta / (dist + beta)


class MaskGenerator(nn.Module):
    """f_theta: a tiny conv net over the prior volume ``[1, 1, kd, kh, kw]`` -> an output of the same shape.

    ``depth`` convs (k, "same" padding) with a GroupNorm and a sigmoid gate between consecutive ones::

        conv1(1 -> h) -> GroupNorm -> sigmoid -> conv2(h -> h) -> ... -> conv_depth(h -> 1)

    The default (``hidden_channels=1``, ``kernel_size=7``, ``depth=2``) is the paper's generator: 344 + 2 + 344 = 690
    parameters. GroupNorm with one group normalises over hidden channels *and* kernel offsets, so even with a single
    hidden channel it cannot collapse to its bias the way a LayerNorm over a size-1 channel axis does (upstream bug 2
    in docs/design.md).

    ``output_scale`` multiplies the last conv's output by ``1/sqrt(fan_in)`` (``"sqrt_fan_in"``, the default),
    ``1/fan_in`` (``"fan_in"``) or 1 (``"none"``); fan_in = ``hidden_channels * k³`` = 343 for the paper's
    generator. Adam-type optimisers move every weight by about ``lr`` per step whatever its gradient, so the unscaled
    output moves by up to ~``fan_in * lr / 2`` per step: at the phantom recipe's lr (2e-3) about 0.3, which in a
    short phantom run drove tanh masks into both bounds, exp masks to 1000x the prior in one block and to 0 in
    another, and an additive mask through zero. ``"fan_in"`` froze the deep blocks' masks (they moved ~1e-5 per 10
    steps); ``"sqrt_fan_in"`` kept every mask moving, both ways, with no element near a bound
    (``benchmarks/mask_forms.py``, numbers in docs/guides/layers.md). It changes no architecture: the same 690
    parameters, a different step size for the mask.
    """

    def __init__(self, hidden_channels: int = 1, kernel_size: int = 7, depth: int = 2, init_scale: float = 0.1,
                 output_scale: OutputScale = "sqrt_fan_in") -> None:
        super().__init__()
        (k, _, _) = kernel_size_3d(kernel_size, name="generator_kernel_size", minimum=1)
        if isinstance(hidden_channels, bool) or not isinstance(hidden_channels, int) or hidden_channels < 1:
            raise Rep3DValueError(f"generator_hidden_channels must be a positive int, got {hidden_channels!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
            raise Rep3DValueError(f"generator_depth (number of conv layers) must be an int >= 2, got {depth!r}")
        if output_scale not in OUTPUT_SCALES:
            raise Rep3DValueError(f"generator_output_scale must be one of {OUTPUT_SCALES}, got {output_scale!r}")
        self.hidden_channels, self.kernel_size, self.depth = hidden_channels, k, depth
        widths = [1] + [hidden_channels] * (depth - 1) + [1]
        for i in range(depth):
            self.add_module(f"conv{i + 1}", nn.Conv3d(widths[i], widths[i + 1], k, padding=k // 2))
            if i < depth - 1:
                self.add_module(f"norm{i + 1}", nn.GroupNorm(1, widths[i + 1]))
        last = getattr(self, f"conv{depth}")
        fan_in = hidden_channels * k**3
        self.output_scale = output_scale
        self.output_gain = {"sqrt_fan_in": fan_in**-0.5, "fan_in": 1.0 / fan_in, "none": 1.0}[output_scale]
        # Small but non-zero output: the mask starts within a few percent of the prior, yet every generator
        # parameter receives gradient from the first backward (a zero-init last layer would starve the others).
        with torch.no_grad():
            if output_scale == "none":  # (scaled, the default init already gives a small output)
                last.weight.mul_(init_scale)
            last.bias.zero_()

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._forward_unrolled(prior)
        x = prior
        for i in range(1, self.depth):
            x = torch.sigmoid(getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x)))
        out = getattr(self, f"conv{self.depth}")(x)
        return out if self.output_scale == "none" else out * self.output_gain

    def _forward_unrolled(self, prior: torch.Tensor) -> torch.Tensor:
        # TorchScript cannot look modules up by a computed name; hasattr on a literal is resolved when it compiles
        if hasattr(self, "norm4"):
            raise Rep3DValueError("TorchScript supports mask generators of depth <= 4; export the deployed model")
        x = prior
        if hasattr(self, "norm1"):
            x = torch.sigmoid(self.norm1(self.conv1(x)))
        if hasattr(self, "norm2"):
            x = torch.sigmoid(self.norm2(self.conv2(x)))
        if hasattr(self, "norm3"):
            x = torch.sigmoid(self.norm3(self.conv3(x)))
        if hasattr(self, "conv4"):
            out = self.conv4(x)
        elif hasattr(self, "conv3"):
            out = self.conv3(x)
        else:
            out = self.conv2(x)
        return out if self.output_scale == "none" else out * self.output_gain

    def extra_repr(self) -> str:
        return (f"hidden_channels={self.hidden_channels}, kernel_size={self.kernel_size}, depth={self.depth}, "
                f"output_scale={self.output_scale!r}")


class ModulatedKernelParam(nn.Module):
    """Kernel modulation ``W -> W * M`` with a mask ``M`` over kernel offsets, shared by all channels.

    Use it inside a layer (``W_eff = modulation(W)``) or as a ``torch.nn.utils.parametrize`` parametrization of any
    conv weight ``[C_out, C_in/groups, kd, kh, kw]``::

        parametrize.register_parametrization(conv, "weight", ModulatedKernelParam(7))

    ``modulation``: ``"fixed"``: ``M = P`` (the distance prior; RepUX-Net style), no parameters. ``"lrbm"`` (learnable
    receptive-field-biased mask): a mask learnt by the generator ``f`` (:class:`MaskGenerator`) over the prior, in one
    of four ``mask_form`` s:

    ============  ==============================  ==============  ==================================================
    mask_form     M                               sign of W kept  bounds (what ``mask_stats()["at_bound"]`` counts)
    ============  ==============================  ==============  ==================================================
    ``additive``  ``P + f(P)``                    no              none: the paper's formula, unbounded; counts
                                                                  ``|M/P - 1| >= 0.98`` instead (left the range
                                                                  ``(0, 2P)`` a bounded form could reach)
    ``exp``       ``P * exp(f)``                  yes (M > 0)     ``M -> 0`` only (``M/P <= 0.01``); can overflow
    ``softmax``   ``P * exp(f) / mean(exp f)``    yes (M > 0)     ``M -> 0`` only; ``mean(M/P) = 1`` always: no
                                                                  drift of the overall scale, no overflow
    ``tanh``      ``P * (1 + tanh f)``            yes (0<M<2P)    ``0`` and ``2P`` (within 1 % of the range 2P);
                                                                  saturates: ``tanh'`` -> 0 cuts the gradient
    ============  ==============================  ==============  ==================================================

    ``additive`` is the default: it is the paper's formula, and in the measured short runs (docs/guides/layers.md,
    "Which mask form") it kept moving the most with no element negative once the generator output is scaled by
    ``1/sqrt(fan_in)``. ``mask_stats()["negative"]`` reports a sign flip should one happen. ``softmax`` removes the
    overall-scale direction that BatchNorm (or ``W``) absorbs and along which bounded forms drift into their bound
    (``tanh``: the first bundled weights sat at ``M = 2P``); it is an option until a longer ablation shows it earns
    the default. ``tanh`` and ``exp`` are kept for comparison and for configs that used them.
    The generator is initialised so that ``M`` starts within a few percent of ``P``. The mask is
    computed once per call, shape ``[1, 1, kd, kh, kw]``, and broadcast over channels.
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        modulation: Modulation = "lrbm",
        beta: float = 1.0,
        learnable_beta: bool = False,
        *,
        mask_form: MaskForm = DEFAULT_MASK_FORM,
        generator_hidden_channels: int = 1,
        generator_kernel_size: int = 7,
        generator_depth: int = 2,
        generator_output_scale: OutputScale = "sqrt_fan_in",
        mode: Modulation | None = None,
    ) -> None:
        super().__init__()
        if mode is not None:  # the name before issue 27; one word for the concept now
            warnings.warn("ModulatedKernelParam(mode=...) is deprecated: pass modulation=...", DeprecationWarning,
                          stacklevel=2)
            modulation = mode
        if modulation not in MODULATIONS:
            raise Rep3DValueError(f"ModulatedKernelParam: modulation must be 'lrbm' or 'fixed', got {modulation!r}")
        if mask_form not in MASK_FORMS:
            raise Rep3DValueError(f"ModulatedKernelParam: mask_form must be one of {MASK_FORMS}, got {mask_form!r}")
        if not beta > 0:
            raise Rep3DValueError(f"ModulatedKernelParam: beta must be > 0, got {beta}")
        self.kernel_size = kernel_size_3d(kernel_size)
        self.modulation = modulation
        self.mask_form = mask_form
        if learnable_beta:
            # log-parameterised so that beta stays positive under any update
            self.log_beta = nn.Parameter(torch.tensor(math.log(beta)))
        else:
            self.register_buffer("prior", distance_prior(self.kernel_size, beta), persistent=False)
            self.log_beta = None
        self.beta_init = float(beta)
        self.generator = (
            MaskGenerator(generator_hidden_channels, generator_kernel_size, generator_depth,
                          output_scale=generator_output_scale) if modulation == "lrbm" else None
        )

    @classmethod
    def from_cfg(cls, kernel_size: int | Sequence[int], modulation: Modulation, cfg: MaskCfg) -> "ModulatedKernelParam":
        """The modulation ``modulation`` of ``kernel_size`` kernels shaped by ``cfg``."""
        return cls(kernel_size, modulation, cfg.beta, cfg.learnable_beta, mask_form=cfg.form,
                   generator_hidden_channels=cfg.generator_hidden_channels,
                   generator_kernel_size=cfg.generator_kernel_size, generator_depth=cfg.generator_depth,
                   generator_output_scale=cfg.generator_output_scale)

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
        return apply_mask_form(self.mask_form, prior, self.generator(prior))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # nested on purpose: TorchScript drops only a block under a bare ``torch.jit.is_scripting()`` test
        if not torch.jit.is_scripting():  # noqa: SIM102
            if not is_exporting(weight):
                self._check_weight(weight)
        return weight * self.mask().to(weight.dtype)

    def _check_weight(self, weight: torch.Tensor) -> None:
        check_float(weight, "ModulatedKernelParam", "weight")
        if weight.ndim != 5 or tuple(weight.shape[2:]) != self.kernel_size:
            raise Rep3DValueError(
                f"ModulatedKernelParam was built for kernels [C, C_in, {', '.join(map(str, self.kernel_size))}], "
                f"got weight of shape {tuple(weight.shape)}"
            )

    @torch.no_grad()
    def mask_stats(self) -> dict[str, float | None]:
        """Health of the mask, to spot a saturated or frozen generator (all values plain floats).

        - ``at_bound``: fraction of kernel elements within 1 % of a bound of the form (see the class table). The
          ``additive`` form has no bound; for it this counts the elements whose mask has moved at least 0.98 prior
          units away from the prior (``|M/P - 1| >= 0.98``: outside ``tanh``'s range ``(0, 2P)``, sign flips
          included). 0.0 for ``fixed``;
        - ``prior_distance``: mean ``|M/P - 1|``, how far the mask has moved from the prior, in units of the prior;
        - ``negative``: fraction of elements with ``M < 0`` (sign flips; only ``additive`` can have any);
        - ``ratio_centre``, ``ratio_ring{1,2,4,8}``, ``ratio_edge``: mean ``M / P`` at the centre, on the shells at
          distance r (|d - r| < 0.5) and on the kernel's outer faces (``None`` where the kernel has no such ring);
        - ``generator_grad_norm``: L2 norm of the generator's ``.grad`` (``None`` before any backward, or ``fixed``).
        """
        prior = self.prior_volume()[0, 0]
        ratio = (self.mask()[0, 0] / prior).float()
        stats: dict[str, float | None] = {
            "at_bound": float(_near_bound(self.mask_form if self.generator is not None else "fixed", ratio)
                              .float().mean()),
            "negative": float((ratio < 0).float().mean()),
            "prior_distance": float((ratio - 1).abs().mean()),
        }
        dist, edge = _offset_geometry(self.kernel_size, ratio.device)
        for r in RING_RADII:
            sel = (dist - r).abs() < 0.5
            stats["ratio_centre" if r == 0 else f"ratio_ring{r}"] = float(ratio[sel].mean()) if sel.any() else None
        stats["ratio_edge"] = float(ratio[edge].mean())
        grads = [p.grad for p in (self.generator.parameters() if self.generator is not None else ())
                 if p.grad is not None]
        stats["generator_grad_norm"] = float(torch.stack([g.float().norm() for g in grads]).norm()) if grads else None
        return stats

    def extra_repr(self) -> str:
        learn = ", learnable_beta=True" if self.log_beta is not None else ""
        form = f", mask_form={self.mask_form!r}" if self.generator is not None else ""
        return f"kernel_size={self.kernel_size}, modulation={self.modulation!r}{form}, beta={self.beta_init}{learn}"


def apply_mask_form(form: str, prior: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The mask ``M`` from the prior ``P`` and the generator output ``f(P)`` (same shapes) for ``form``."""
    if form == "additive":
        return prior + out
    if form == "exp":
        return prior * torch.exp(out)
    if form == "softmax":  # P * exp(f) / mean(exp f): mean(M / P) = 1 exactly, computed without overflow
        n = out[0, 0].numel()
        return prior * torch.softmax(out.flatten(), 0).view_as(out) * n
    if form == "tanh":
        return prior * (1.0 + torch.tanh(out))
    # spelled out (no global, no !r): TorchScript compiles this function for scripted train-form models
    raise Rep3DValueError("mask_form must be one of additive, exp, softmax, tanh; got '" + form + "'")


def _near_bound(form: str, ratio: torch.Tensor) -> torch.Tensor:
    """Boolean map of the elements whose ``M / P`` lies within 1 % of a bound of ``form``."""
    if form == "tanh":  # range (0, 2P): 1 % of it is 0.02 P
        return (ratio <= 0.02) | (ratio >= 1.98)
    if form in ("exp", "softmax"):  # (0, inf) / (0, N): only the lower bound can be reached
        return ratio <= 0.01
    if form == "additive":  # unbounded: count what no bounded form could reach, as far out as tanh's bounds
        return (ratio - 1).abs() >= 0.98
    return torch.zeros_like(ratio, dtype=torch.bool)


def _offset_geometry(kernel_size: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance of every kernel offset from the centre, and the map of the kernel's outer faces."""
    axes = [torch.arange(k, device=device, dtype=torch.float32) - (k - 1) / 2 for k in kernel_size]
    grid = torch.meshgrid(*axes, indexing="ij")
    dist = sum(g * g for g in grid).sqrt()
    edge = torch.zeros(kernel_size, dtype=torch.bool, device=device)
    for g, k in zip(grid, kernel_size):
        edge |= g.abs() == (k - 1) / 2
    return dist, edge


def mask_health(model: nn.Module) -> dict[str, dict[str, float | None]]:
    """:meth:`ModulatedKernelParam.mask_stats` of every learnable mask in ``model``, keyed by the module's name."""
    return {name.removesuffix(".modulation"): m.mask_stats() for name, m in model.named_modules()
            if isinstance(m, ModulatedKernelParam) and m.generator is not None}


def mask_health_scalars(model: nn.Module, prefix: str = "mask/",
                        log_name: Callable[[str], str] | None = None) -> dict[str, float]:
    """:func:`mask_health` flattened for a metrics log: ``{prefix}{module}/{stat}`` floats (``nan`` for ``None``),
    plus ``{prefix}at_bound_max`` and ``{prefix}generator_grad_norm`` (over all masks). Empty without a learnable mask.

    ``{module}`` is ``log_name(module name)``; by default the model's own ``log_name`` method when it has one (a model
    family knows its layout and can shorten its names), else the module name unchanged.
    """
    health = mask_health(model)
    out: dict[str, float] = {}
    if not health:
        return out
    out[f"{prefix}at_bound_max"] = max(float(s["at_bound"]) for s in health.values())
    grads = [s["generator_grad_norm"] for s in health.values()]
    out[f"{prefix}generator_grad_norm"] = (
        math.sqrt(sum(g * g for g in grads)) if all(g is not None for g in grads) else math.nan
    )
    log_name = log_name or getattr(model, "log_name", None) or (lambda name: name)
    for name, stats in health.items():
        short = log_name(name)
        for key, value in stats.items():
            out[f"{prefix}{short}/{key}"] = math.nan if value is None else float(value)
    return out
