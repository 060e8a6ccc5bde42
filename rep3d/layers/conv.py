"""RepLKConv3d: a large depthwise 3-D conv with train-time structure that folds into one conv for deployment."""

import inspect
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rep3d.errors import Rep3DValueError
from rep3d.layers.checks import check_volume, is_exporting, kernel_size_3d
from rep3d.layers.depthwise import BACKENDS, Backend, depthwise_conv3d, direct_depthwise_conv3d
from rep3d.layers.fusion import fold_batchnorm, pad_kernel
from rep3d.layers.mask import DEFAULT_MASK_FORM, MaskForm, ModulatedKernelParam, OutputScale
from rep3d.layers.scripted_engine import scripted_depthwise_conv3d

Modulation = Literal["lrbm", "fixed"] | None



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


class RepLKConv3d(nn.Module):
    """Depthwise large-kernel 3-D conv, stride 1, "same" padding: ``[B, C, D, H, W] -> [B, C, D, H, W]``.

    Train-time form::

        y = BN(conv(x, W * M)) [+ BN_s(conv(x, W_s))]

    where ``M`` is the receptive-field mask (``modulation="lrbm"`` learnable, ``"fixed"`` the distance prior,
    ``None`` no mask; ``mask_form`` and the ``generator_*`` knobs shape the learnable one, see
    :class:`~rep3d.layers.ModulatedKernelParam`) and the optional ``small_kernel`` branch is the CSLA / RepLKNet
    parallel small conv. With ``norm=False`` there is no BatchNorm and the branches are summed as kernels;
    ``bias=True`` adds a learnable per-channel bias after everything (as in 3D UX-Net's depthwise conv).

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
        mask_form: MaskForm = DEFAULT_MASK_FORM,
        generator_hidden_channels: int = 1,
        generator_kernel_size: int = 7,
        generator_depth: int = 2,
        generator_output_scale: OutputScale = "sqrt_fan_in",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise Rep3DValueError(f"RepLKConv3d: channels must be a positive int, got {channels!r}")
        if modulation not in ("lrbm", "fixed", None):
            raise Rep3DValueError(f"RepLKConv3d: modulation must be 'lrbm', 'fixed' or None, got {modulation!r}")
        if conv_backend not in BACKENDS:
            raise Rep3DValueError(f"RepLKConv3d: conv_backend must be one of {BACKENDS}, got {conv_backend!r}")
        self.channels = channels
        self.kernel_size = kernel_size_3d(kernel_size)
        self.small_kernel = None if small_kernel is None else kernel_size_3d(small_kernel, name="small_kernel")
        if self.small_kernel is not None and any(s >= k for s, k in zip(self.small_kernel, self.kernel_size)):
            raise Rep3DValueError(
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
                                 mask_form=mask_form, generator_hidden_channels=generator_hidden_channels,
                                 generator_kernel_size=generator_kernel_size, generator_depth=generator_depth,
                                 generator_output_scale=generator_output_scale)
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
            parts += [f"modulation={self.modulation_mode!r}", f"small_kernel={self.small_kernel}", f"norm={self.norm}"]
            if self.bias is not None:
                parts.append("bias=True")
        if self.conv_backend != "auto":
            parts.append(f"conv_backend={self.conv_backend!r}")
        return ", ".join(parts)

    # ------------------------------------------------------------------------------------------------------------
    # Train-form tensors arriving in a deployed module. A deployed module's ``weight`` / ``bias`` have the names and
    # shapes of the train form's unmodulated kernel and (UX-Net) bias, so ``load_state_dict(strict=False)`` or MONAI's
    # ``copy_model_state`` would load an unfolded kernel without its mask, BatchNorm and small branch: a wrong
    # function, silently. The hooks below fold such tensors on load, or refuse when they cannot be folded.

    def __new__(cls, *args: object, **kwargs: object) -> "RepLKConv3d":
        # Remember the constructor arguments: a deployed module needs them to rebuild its train form when train-form
        # tensors arrive (copy / deepcopy / unpickling call __new__ without arguments and restore the attribute).
        self = super().__new__(cls)
        if args or kwargs:
            try:
                bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs)
            except TypeError:  # __init__ reports the bad call itself
                return self
            object.__setattr__(self, "_init_args", {k: v for k, v in bound.arguments.items() if k != "self"})
        return self

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
        if self.deploy:
            own = [k for k in state_dict if k.startswith(prefix)]  # a deployed conv has no children
            extras = [k for k in own if k not in (prefix + "weight", prefix + "bias")]
            unfolded = getattr(state_dict.get(prefix + "weight"), "rep3d_unfolded_kernel", False)
            if extras:
                folded = self._fold_train_form({k[len(prefix):]: state_dict.pop(k) for k in own}, prefix)
                state_dict.update({prefix + k: v for k, v in folded.items()})
            elif unfolded:
                raise Rep3DValueError(
                    f"RepLKConv3d {prefix.rstrip('.') or '(root)'}: an unfolded train-form kernel is being loaded into "
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
                    f"RepLKConv3d {prefix.rstrip('.') or '(root)'}: deployed (folded) weights are being loaded into "
                    "a train-form conv (e.g. load_state_dict(strict=False) or monai.networks.utils.copy_model_state "
                    "from a rep3d.reparameterize_model / deploy=True model): its mask, BatchNorm and small branch "
                    "would be applied on top of the folded kernel, a different function. Load them into a model in "
                    "deploy mode (rep3d.create_model(name, deploy=True), or rep3d.reparameterize_model(model) first)"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _fold_train_form(self, state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """Train-form tensors of this conv -> its folded ``weight`` / ``bias`` (via a train-form twin)."""
        name = prefix.rstrip(".") or "(root)"
        args = getattr(self, "_init_args", None)
        if args is None:
            raise Rep3DValueError(f"RepLKConv3d {name}: train-form tensors ({', '.join(sorted(state))}) cannot be "
                                  "folded into this deployed conv (its construction arguments are unknown); load them "
                                  "into a train-form model and call rep3d.reparameterize_model")
        twin = type(self)(**{**args, "deploy": False})
        result = twin.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise Rep3DValueError(
                f"RepLKConv3d {name}: the train-form tensors do not fit this conv's train form "
                f"(missing {result.missing_keys or 'none'}, unexpected {result.unexpected_keys or 'none'}), so they "
                "cannot be folded; they belong to another variant (mask / BatchNorm / small branch differ)"
            )
        weight, bias = twin.fused_kernel()
        return {"weight": weight, "bias": bias}


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


def is_deployed(model: nn.Module) -> bool:
    """True when every :class:`RepLKConv3d` in ``model`` is in its folded form (and there is at least one)."""
    convs = [m for m in model.modules() if isinstance(m, RepLKConv3d)]
    return bool(convs) and all(m.deploy for m in convs)
