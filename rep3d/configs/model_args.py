"""The constructor arguments of rep3d's models as a schema: which names exist, their types and their bounds.

One table serves two readers:

* the models themselves (:class:`rep3d.models.Rep3D` and the registry's ``build_model``) check every argument when
  they are built, so a typo or an absurd size fails with a message naming the model, not deep inside torch;
* the trust boundary (a ``config.json`` from a model folder or a Hub repository): its ``model_args`` may hold only
  these names, and timm's factory options (``checkpoint_path``, ``pretrained_cfg_overlay``, ...) are refused by name,
  because timm would act on them (``checkpoint_path`` makes timm unpickle a file).

The bounds admit every registered model with room for sensible choices (kernels up to 63, 2048 channels, 64 blocks
per stage, 512 classes); what they refuse is a config that asks for tens of gigabytes before anything else is read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rep3d.errors import Rep3DTypeError, Rep3DValueError
from rep3d.layers.depthwise import BACKENDS
from rep3d.layers.mask import MASK_FORMS, OUTPUT_SCALES

MAX_KERNEL = 63
MAX_WIDTH = 2048
MAX_DEPTH = 64
MAX_CLASSES = 512
MAX_IN_CHANS = 64
MAX_HIDDEN = 8192
MAX_PARAMETERS = 1_000_000_000
"""Bound on the parameters a model may hold, estimated from its arguments before anything is allocated (large-kernel
weights plus the decoder's dense 3x3x3 convs): rep3d_base has 66e6; one fp32 copy of the bound is 4 GiB."""

FACTORY_KEYS = frozenset({
    "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "pretrained_model_args",
    "checkpoint_path", "cache_dir", "features_only", "feature_cfg", "feature_cls", "out_indices", "output_stride",
    "scriptable", "exportable", "no_jit", "kwargs_filter", "model_cfg",
})
"""timm's ``create_model`` / ``build_model_with_cfg`` options: a caller may pass them in code; a model folder may not
set any of them (``checkpoint_path`` alone makes timm call ``torch.load(weights_only=False)``)."""


class _Spec:
    def check(self, model: str, name: str, value: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


def _bad(model: str, name: str, expected: str, value: Any, type_error: bool = False) -> Exception:
    cls = Rep3DTypeError if type_error else Rep3DValueError
    return cls(f"{model}: {name} must be {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Int(_Spec):
    low: int
    high: int
    odd: bool = False
    hint: str = ""
    """Added to the message for a value below ``low``."""

    def check(self, model: str, name: str, value: Any) -> int:
        if not _is_int(value):
            raise _bad(model, name, f"an int in [{self.low}, {self.high}]", value, type_error=True)
        if not self.low <= value <= self.high or (self.odd and value % 2 == 0):
            odd = "an odd int" if self.odd else "an int"
            raise Rep3DValueError(f"{model}: {name} must be {odd} in [{self.low}, {self.high}], got {value!r}"
                                  + (f"; {self.hint}" if self.hint and value < self.low else ""))
        return value


@dataclass(frozen=True)
class Kernel(_Spec):
    """An odd int or a triple of odd ints, each in ``[low, high]``."""

    low: int
    high: int

    def check(self, model: str, name: str, value: Any) -> int | tuple[int, int, int]:
        sizes = (value,) if _is_int(value) else tuple(value) if isinstance(value, Sequence) and not isinstance(
            value, str) and len(value) == 3 else None
        if sizes is None or not all(_is_int(k) for k in sizes):
            raise _bad(model, name, "an odd int or a triple of odd ints", value, type_error=True)
        if not all(self.low <= k <= self.high and k % 2 for k in sizes):
            raise Rep3DValueError(f"{model}: {name} must be odd and in [{self.low}, {self.high}] on every axis, got "
                                  f"{value!r}")
        return value if _is_int(value) else sizes  # type: ignore[return-value]


@dataclass(frozen=True)
class Ints(_Spec):
    """A sequence of exactly ``length`` ints, each in ``[low, high]``."""

    length: int
    low: int
    high: int

    def check(self, model: str, name: str, value: Any) -> tuple[int, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(_is_int(v) for v in value):
            raise _bad(model, name, f"a sequence of {self.length} ints", value, type_error=True)
        if len(value) != self.length or not all(self.low <= v <= self.high for v in value):
            raise Rep3DValueError(f"{model}: {name} must be {self.length} ints, each in [{self.low}, {self.high}], "
                                  f"got {value!r}")
        return tuple(value)


@dataclass(frozen=True)
class Float(_Spec):
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def check(self, model: str, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(model, name, "a number", value, type_error=True)
        ok = math.isfinite(value) and (self.low < value if self.low_open else self.low <= value) and (
            value < self.high if self.high_open else value <= self.high)
        if not ok:
            interval = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
            raise Rep3DValueError(f"{model}: {name} must be a finite number in {interval}, got {value!r}")
        return value


@dataclass(frozen=True)
class Choice(_Spec):
    values: tuple[Any, ...]

    def check(self, model: str, name: str, value: Any) -> Any:
        # bool is an int: True must not pass as 1, nor 1 as True
        if not any(value is v or (type(value) is type(v) and value == v) for v in self.values):
            raise Rep3DValueError(f"{model}: {name} must be one of {list(self.values)}, got {value!r}")
        return value


@dataclass(frozen=True)
class MlpGroups(_Spec):
    def check(self, model: str, name: str, value: Any) -> str | int:
        if value == "depthwise" or (_is_int(value) and 1 <= value <= MAX_WIDTH):
            return value
        raise _bad(model, name, f"'depthwise' or an int in [1, {MAX_WIDTH}]", value)


@dataclass(frozen=True)
class NormName(_Spec):
    """MONAI's ``norm_name`` of the decoder: a name, or in code a ``(name, {option: number})`` pair."""

    names: tuple[str, ...] = ("instance", "batch", "group", "layer")

    def check(self, model: str, name: str, value: Any) -> Any:
        base, options = (value, {}) if isinstance(value, str) else (value[0], value[1]) if (
            isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], Mapping)) else (None, None)
        if base not in self.names or not all(
                isinstance(k, str) and (isinstance(v, (int, float, bool)) and not (isinstance(v, float) and not
                                                                                  math.isfinite(v)))
                for k, v in options.items()):
            raise _bad(model, name, f"one of {list(self.names)} or a (name, {{option: number}}) pair", value)
        return value


BOOL = Choice((True, False))
COMMON_ARGS: dict[str, _Spec] = {
    "in_chans": Int(1, MAX_IN_CHANS, hint="a model reads at least one channel"),
    "num_classes": Int(1, MAX_CLASSES, hint="rep3d models have no head-less form: for encoder features create the "
                       "model with features_only=True (rep3d.create_model(name, features_only=True))"),
    "widths": Ints(4, 1, MAX_WIDTH),
    "depths": Ints(4, 1, MAX_DEPTH),
    "kernel_size": Kernel(3, MAX_KERNEL),
    "modulation": Choice(("lrbm", "fixed", None)),
    "hidden_size": Int(1, MAX_HIDDEN),
    "drop_path_rate": Float(0.0, 1.0, high_open=True),
    "conv_backend": Choice(tuple(BACKENDS)),
    "deploy": BOOL,
    "norm_name": NormName(),
    "deep_supervision_heads": BOOL,
    "stem_kernel_size": Int(1, 15, odd=True),
    # the large-kernel conv's own options (RepLKConv3d and its mask)
    "beta": Float(0.0, 1000.0, low_open=True),
    "learnable_beta": BOOL,
    "mask_form": Choice(tuple(MASK_FORMS)),
    "generator_hidden_channels": Int(1, 64),
    "generator_kernel_size": Int(1, 15, odd=True),
    "generator_depth": Int(2, 8),
    "generator_output_scale": Choice(tuple(OUTPUT_SCALES)),
    "bn_eps": Float(0.0, 1.0, low_open=True, high_open=True),
    "bn_momentum": Float(0.0, 1.0),
}
BLOCK_ARGS: dict[str, dict[str, _Spec]] = {
    "replk": {"small_kernel": Kernel(3, MAX_KERNEL), "block_residual": Choice((True, False, None))},
    "ux": {"mlp_ratio": Int(1, 16), "mlp_groups": MlpGroups(), "layer_scale_init_value": Float(0.0, 10.0),
           "block_residual": Choice((True, None))},
}
NONE_ALLOWED = frozenset({"small_kernel"})


def accepted_args(block: str | None) -> dict[str, _Spec]:
    """The constructor arguments of a model whose blocks are ``block``; ``None``: the caller chooses the block kind
    (``block`` is an argument then) and the replk block's arguments are listed."""
    if block is None:
        return {**COMMON_ARGS, "block": Choice(tuple(BLOCK_ARGS)), **BLOCK_ARGS["replk"]}
    return {**COMMON_ARGS, **BLOCK_ARGS[block]}


def check_model_args(model: str, args: Mapping[str, Any], *, block: str | None = None) -> dict[str, Any]:
    """Check constructor ``args`` of ``model`` (a name for messages) against the schema; return them with sequences
    as tuples. ``block`` fixes the block kind (``"ux"`` for 3D UX-Net, which takes no ``block`` argument); ``None``
    lets ``args["block"]`` choose (default ``"replk"``).

    Raises :class:`~rep3d.errors.Rep3DValueError` / ``Rep3DTypeError`` naming the model and the argument: unknown
    names list the accepted ones; timm factory options are named as such."""
    chosen = block or args.get("block", "replk")
    if chosen not in BLOCK_ARGS:
        raise Rep3DValueError(f"{model}: block must be one of {sorted(BLOCK_ARGS)}, got {chosen!r}")
    specs = {**COMMON_ARGS, **BLOCK_ARGS[chosen], **({"block": Choice(tuple(BLOCK_ARGS))} if block is None else {})}
    unknown = sorted(set(args) - set(specs))
    if unknown:
        factory = [k for k in unknown if k in FACTORY_KEYS]
        what = (f"{model}: {factory[0]!r} is a timm factory option, not a constructor argument" if factory else
                f"{model} does not take {', '.join(repr(k) for k in unknown)}")
        raise Rep3DValueError(f"{what}; the accepted arguments are {', '.join(sorted(specs))}")
    out = {}
    for name, value in args.items():
        out[name] = None if value is None and name in NONE_ALLOWED else specs[name].check(model, name, value)
    _check_budget(model, out)
    return out


def estimated_parameters(args: Mapping[str, Any]) -> int:
    """The dominant parameter count of a model built with ``args`` (checked values): every block's large kernel
    (channels x kernel volume) plus the decoder's dense 3x3x3 convs, computed without building anything; 15-45% above
    the real count for the registered models (it counts the decoder's convs generously)."""
    kernel = args.get("kernel_size", 21)
    volume = kernel**3 if isinstance(kernel, int) else math.prod(kernel)
    widths, depths = args.get("widths", (48, 96, 192, 384)), args.get("depths", (2, 2, 2, 2))
    hidden = args.get("hidden_size", 768)
    kernels = volume * sum(w * d for w, d in zip(widths, depths))
    decoder = 27 * (hidden * hidden + 2 * hidden * widths[3] + 6 * sum(w * w for w in widths))
    return kernels + decoder


def _check_budget(model: str, args: Mapping[str, Any]) -> None:
    count = estimated_parameters(args)
    if count > MAX_PARAMETERS:
        shown = {k: args[k] for k in ("kernel_size", "widths", "depths", "hidden_size") if k in args}
        raise Rep3DValueError(
            f"{model}: the arguments {shown} ask for about {count:.3g} parameters ({count * 4 / 2**30:.0f} GiB in "
            f"fp32), more than the bound of {MAX_PARAMETERS:.0e}; use a smaller kernel, fewer channels or fewer blocks")
