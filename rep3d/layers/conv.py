"""RepLKConv3d: a large depthwise 3-D conv with train-time structure that folds into one conv for deployment."""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rep3d.errors import Rep3DTypeError, Rep3DValueError
from rep3d.layers.checks import check_volume, is_exporting, kernel_size_3d
from rep3d.layers.depthwise import BACKENDS, Backend, depthwise_conv3d, direct_depthwise_conv3d
from rep3d.layers.fusion import centre_pad, fold_batchnorm, pad_kernel
from rep3d.layers.mask import MaskCfg, ModulatedKernelParam
from rep3d.layers.scripted_engine import scripted_depthwise_conv3d

Modulation = Literal["lrbm", "fixed"] | None
"""The kernel modulation of a layer: see :data:`rep3d.layers.mask.Modulation`, or ``None`` for none."""


def engine_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    """:func:`~rep3d.layers.depthwise_conv3d` as one call that TorchScript can also compile.

    ``torch.fx.symbolic_trace`` records it as a single node (the engine picks its path from real shapes when the
    graph runs); a TorchScript compile of such a graph runs :func:`scripted_depthwise_conv3d`, the same engine in
    TorchScript.
    """
    if torch.jit.is_scripting():
        return scripted_depthwise_conv3d(x, weight, bias, backend)
    return depthwise_conv3d(x, weight, bias, backend=backend)


torch.fx.wrap("engine_conv3d")


@dataclass(frozen=True)
class BatchNormCfg:
    """The BatchNorms of :class:`RepLKConv3d`'s branches (``nn.BatchNorm3d`` ``eps`` and ``momentum``)."""

    eps: float = 1e-5
    momentum: float = 0.1

    OPTION_NAMES = ("bn_eps", "bn_momentum")
    """Their flat keyword names in model arguments and in :class:`RepLKConv3d`."""

    def options(self) -> dict[str, float]:
        return {"bn_eps": self.eps, "bn_momentum": self.momentum}


def split_conv_options(options: Mapping[str, Any], mask: MaskCfg | None = None, batchnorm: BatchNormCfg | None = None,
                       who: str = "RepLKConv3d") -> tuple[MaskCfg, BatchNormCfg]:
    """Flat keyword options (``mask_form``, ``beta``, ``generator_*``, ``bn_eps``, ``bn_momentum``) -> the two configs.

    Refuses a name that is neither, and flat options given together with the config they belong to.
    """
    mask_options = {k: v for k, v in options.items() if k in MaskCfg.OPTION_NAMES}
    bn_options = {k: v for k, v in options.items() if k in BatchNormCfg.OPTION_NAMES}
    unknown = sorted(set(options) - set(mask_options) - set(bn_options))
    if unknown:
        raise Rep3DTypeError(f"{who} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    for cfg, flat, name in ((mask, mask_options, "mask"), (batchnorm, bn_options, "batchnorm")):
        if cfg is not None and flat:
            raise Rep3DTypeError(f"{who}: pass either {name}=... or {', '.join(sorted(flat))}, not both")
    if mask is None:
        mask = MaskCfg.from_options(mask_options, who)
    if batchnorm is None:
        batchnorm = BatchNormCfg(eps=bn_options.get("bn_eps", 1e-5), momentum=bn_options.get("bn_momentum", 0.1))
    return mask, batchnorm


class RepLKConv3d(nn.Module):
    """Depthwise large-kernel 3-D conv, stride 1, "same" padding: ``[B, C, D, H, W] -> [B, C, D, H, W]``.

    Train-time form::

        y = BN(conv(x, W * M)) [+ BN_s(conv(x, W_s))]

    where ``M`` is the receptive-field mask (``modulation="lrbm"``: the learnable receptive-field-biased mask,
    ``"fixed"``: the distance prior, ``None``: no mask; ``mask`` (:class:`~rep3d.layers.MaskCfg`) shapes it, see
    :class:`~rep3d.layers.ModulatedKernelParam`) and the optional ``small_kernel`` branch is the CSLA / RepLKNet
    parallel small conv. With ``norm=False`` there is no BatchNorm and the branches are summed as kernels;
    ``bias=True`` adds a learnable per-channel bias after everything (as in 3D UX-Net's depthwise conv). The mask
    settings may also be given as flat keywords (``mask_form=``, ``beta=``, ``generator_depth=``, ...; ``bn_eps=``,
    ``bn_momentum=`` for ``batchnorm``), the names model arguments use.

    Folding lives in one place: :meth:`fused_kernel` computes the single conv equal to the train form, and
    :meth:`reparameterize` swaps it in (the module then holds only ``weight`` ``[C, 1, k, k, k]`` and ``bias``
    ``[C]``, as a module built with ``deploy=True``). A deployed conv keeps its construction settings, so train-form
    tensors that reach it are folded by :meth:`fold_state` (the same :meth:`fused_kernel`, on a train-form twin).
    """

    # plain-data settings: kept for fold_state and repr, never used by the forward TorchScript compiles
    __jit_ignored_attributes__ = ["mask_cfg", "batchnorm_cfg"]

    def __init__(
        self,
        channels: int,
        kernel_size: int | Sequence[int] = 21,
        *,
        modulation: Modulation = "lrbm",
        small_kernel: int | Sequence[int] | None = None,
        norm: bool = True,
        bias: bool = False,
        conv_backend: Backend = "auto",
        deploy: bool = False,
        mask: MaskCfg | None = None,
        batchnorm: BatchNormCfg | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise Rep3DValueError(f"RepLKConv3d: channels must be a positive int, got {channels!r}")
        if modulation not in ("lrbm", "fixed", None):
            raise Rep3DValueError(f"RepLKConv3d: modulation must be 'lrbm', 'fixed' or None, got {modulation!r}")
        if conv_backend not in BACKENDS:
            raise Rep3DValueError(f"RepLKConv3d: conv_backend must be one of {BACKENDS}, got {conv_backend!r}")
        self.mask_cfg, self.batchnorm_cfg = split_conv_options(options, mask, batchnorm)
        self.channels = channels
        self.kernel_size = kernel_size_3d(kernel_size)
        self.small_kernel = None if small_kernel is None else kernel_size_3d(small_kernel, name="small_kernel")
        if self.small_kernel is not None and any(s >= k for s, k in zip(self.small_kernel, self.kernel_size)):
            raise Rep3DValueError(
                f"RepLKConv3d: small_kernel {small_kernel} must be smaller than kernel_size {kernel_size} on every axis"
            )
        # ``self.modulation`` is the mask module (its name is fixed by the state_dict keys); this is its kind
        self.modulation_kind = modulation
        self.has_batchnorm = norm
        self.has_bias = bias
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
            ModulatedKernelParam.from_cfg(self.kernel_size, modulation, self.mask_cfg) if modulation is not None
            else None
        )
        bn = self.batchnorm_cfg
        self.bn = nn.BatchNorm3d(channels, eps=bn.eps, momentum=bn.momentum) if norm else None
        if self.small_kernel is not None:
            self.small_weight = nn.Parameter(torch.empty(channels, 1, *self.small_kernel))
            _init_kernel(self.small_weight)
            self.small_bn = nn.BatchNorm3d(channels, eps=bn.eps, momentum=bn.momentum) if norm else None
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
                small_kernel = self.small_kernel
                assert small_kernel is not None
                weight = weight + centre_pad(small_weight, list(small_kernel), list(self.kernel_size))
            return self._conv(x, weight, self.bias)
        y = self.bn(self._conv(x, weight, None))
        if small_weight is not None and self.small_bn is not None:
            y = y + self.small_bn(self._conv(x, small_weight, None))
        bias = self.bias
        return y if bias is None else y + bias.view(1, -1, 1, 1, 1)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if torch.jit.is_scripting():
            # the eager engine restated in TorchScript: a scripted model computes what the eager one does
            return scripted_depthwise_conv3d(x, weight, bias, self.conv_backend)
        if torch.jit.is_tracing():
            # a Python autograd.Function cannot be serialised in a traced graph: plain ops, valid for any size
            return direct_depthwise_conv3d(x, weight, bias)
        if self.grad_checkpointing and torch.is_grad_enabled():
            # Only the conv is recomputed: BatchNorm stays outside, so its running stats update once per step.
            return checkpoint(depthwise_conv3d, x, weight, bias, backend=self.conv_backend, use_reentrant=False)
        return engine_conv3d(x, weight, bias, self.conv_backend)

    def mask_stats(self) -> dict[str, float | None] | None:
        """:meth:`ModulatedKernelParam.mask_stats` of the mask, or ``None`` without one (unmodulated or deployed)."""
        modulation = getattr(self, "modulation", None)
        return modulation.mask_stats() if modulation is not None else None

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
            parts += [f"modulation={self.modulation_kind!r}", f"small_kernel={self.small_kernel}",
                      f"norm={self.has_batchnorm}"]
            if self.bias is not None:
                parts.append("bias=True")
        if self.conv_backend != "auto":
            parts.append(f"conv_backend={self.conv_backend!r}")
        return ", ".join(parts)

    def train_form(self) -> "RepLKConv3d":
        """A freshly initialised train-form conv with this conv's settings (what ``deploy=False`` builds)."""
        return RepLKConv3d(self.channels, self.kernel_size, modulation=self.modulation_kind,
                           small_kernel=self.small_kernel, norm=self.has_batchnorm, bias=self.has_bias,
                           conv_backend=self.conv_backend, mask=self.mask_cfg, batchnorm=self.batchnorm_cfg)

    def fold_state(self, state: Mapping[str, torch.Tensor], name: str = "(root)") -> dict[str, torch.Tensor]:
        """Train-form tensors of this conv (keys without prefix) -> its folded ``{"weight", "bias"}``.

        The state-dict side of :meth:`reparameterize`: the tensors are loaded into :meth:`train_form` and folded by
        :meth:`fused_kernel`. Raises :class:`~rep3d.errors.Rep3DValueError` when they belong to another variant.
        """
        twin = self.train_form()
        result = twin.load_state_dict(dict(state), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise Rep3DValueError(
                f"RepLKConv3d {name}: the train-form tensors do not fit this conv's train form "
                f"(missing {result.missing_keys or 'none'}, unexpected {result.unexpected_keys or 'none'}), so they "
                "cannot be folded; they belong to another variant (mask / BatchNorm / small branch differ)"
            )
        weight, bias = twin.fused_kernel()
        return {"weight": weight, "bias": bias}

    # ------------------------------------------------------------------------------------------------------------
    # The generic PyTorch idioms. A deployed module's ``weight`` / ``bias`` have the names and shapes of the train
    # form's unmodulated kernel and (UX-Net) bias, so ``load_state_dict(strict=False)`` or MONAI's
    # ``copy_model_state`` would load an unfolded kernel without its mask, BatchNorm and small branch: a wrong
    # function, silently. The hooks below fold such tensors on load (fold_state), or refuse when they cannot be
    # folded; the reverse (folded weights into a train-form conv) is refused.

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + "weight"
        if not self.deploy and not keep_vars and key in destination and self._train_form_differs():
            # in-memory provenance of the unfolded kernel: a deployed module refuses it when it arrives alone
            # (copy_model_state keeps only the keys the destination has, so the BatchNorm never comes with it)
            destination[key].rep3d_unfolded_kernel = True
        elif self.deploy and not keep_vars and key in destination:
            # and the reverse: a folded kernel arriving in a train-form module would be modulated by a mask and
            # BatchNorm it was never trained with
            destination[key].rep3d_folded_kernel = True

    def _train_form_differs(self) -> bool:
        return any(getattr(self, name, None) is not None for name in ("modulation", "bn", "small_weight"))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        name = prefix.rstrip(".") or "(root)"
        if self.deploy:
            own = [k for k in state_dict if k.startswith(prefix)]  # a deployed conv has no children
            extras = [k for k in own if k not in (prefix + "weight", prefix + "bias")]
            unfolded = getattr(state_dict.get(prefix + "weight"), "rep3d_unfolded_kernel", False)
            if extras:
                folded = self.fold_state({k[len(prefix):]: state_dict.pop(k) for k in own}, name)
                state_dict.update({prefix + k: v for k, v in folded.items()})
            elif unfolded:
                raise Rep3DValueError(
                    f"RepLKConv3d {name}: an unfolded train-form kernel is being loaded into "
                    "a deployed (folded) conv without its mask / BatchNorm / small-branch tensors (e.g. by "
                    "monai.networks.utils.copy_model_state, which keeps only the keys the deployed model has): "
                    "the result would compute a different function. Load the full train-form state_dict (it is "
                    "folded on load), or load into a train-form model and call rep3d.reparameterize_model"
                )
        elif self._train_form_differs():
            folded = getattr(state_dict.get(prefix + "weight"), "rep3d_folded_kernel", False)
            deployed_layout = (prefix + "bias") in state_dict and getattr(self, "bias", None) is None and not any(
                k.startswith((prefix + "bn.", prefix + "modulation.", prefix + "small_weight")) for k in state_dict)
            if folded or deployed_layout:
                raise Rep3DValueError(
                    f"RepLKConv3d {name}: deployed (folded) weights are being loaded into "
                    "a train-form conv (e.g. load_state_dict(strict=False) or monai.networks.utils.copy_model_state "
                    "from a rep3d.reparameterize_model / deploy=True model): its mask, BatchNorm and small branch "
                    "would be applied on top of the folded kernel, a different function. Load them into a model in "
                    "deploy mode (rep3d.create_model(name, deploy=True), or rep3d.reparameterize_model(model) first)"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _init_kernel(weight: nn.Parameter) -> None:
    # same rule as nn.Conv3d's default (kaiming-uniform, a=sqrt(5)) so swapped-in layers start at a familiar scale
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def _fold(weight: torch.Tensor, bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    return fold_batchnorm(weight, None, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def is_deployed(model: nn.Module) -> bool:
    """True when every :class:`RepLKConv3d` in ``model`` is in its folded form (and there is at least one)."""
    convs = [m for m in model.modules() if isinstance(m, RepLKConv3d)]
    return bool(convs) and all(m.deploy for m in convs)
