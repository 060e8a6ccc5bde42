"""Input validation shared by the layers: one place for the error messages users see."""

from collections.abc import Sequence

import torch

from rep3d.errors import Rep3DTypeError, Rep3DValueError


def is_exporting(x: object = None) -> bool:
    """True while a compiler or exporter traces the caller instead of running it on real tensors.

    Covers ``torch.jit.script`` / ``torch.jit.trace``, dynamo (``torch.compile``, ``torch.export``, ONNX
    ``dynamo=True``) and ``torch.fx.symbolic_trace`` (``x`` is an fx ``Proxy``). Layers skip their Python-level
    input checks then: a traced shape is not a Python int, and the checks already ran in eager mode for the
    shapes users try first. In scripted code guard calls with ``if not torch.jit.is_scripting():``.
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    return isinstance(x, torch.fx.Proxy)


def kernel_size_3d(
    kernel_size: int | Sequence[int], *, name: str = "kernel_size", minimum: int = 3
) -> tuple[int, int, int]:
    """Normalise ``kernel_size`` to an odd ``(kd, kh, kw)`` triple, each ``>= minimum``.

    Raises ``TypeError`` for non-integers and ``ValueError`` for even or too-small sizes, naming what was given.
    """
    if isinstance(kernel_size, bool):
        raise Rep3DTypeError(f"{name} must be an odd int or a triple of odd ints, got {kernel_size!r}")
    if isinstance(kernel_size, int):
        sizes = (kernel_size,) * 3
    elif isinstance(kernel_size, Sequence) and len(kernel_size) == 3:
        sizes = tuple(kernel_size)
    else:
        raise Rep3DTypeError(f"{name} must be an odd int or a triple of odd ints, got {kernel_size!r}")
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, int):
            raise Rep3DTypeError(f"{name} must contain ints, got {kernel_size!r}")
        if k < minimum:
            raise Rep3DValueError(f"{name} must be >= {minimum} on every axis, got {kernel_size!r}")
        if k % 2 == 0:
            raise Rep3DValueError(
                f"{name} must be odd on every axis so that 'same' padding is symmetric, got {kernel_size!r}; "
                f"use {tuple(k + 1 if k % 2 == 0 else k for k in sizes)} instead"
            )
    return sizes  # type: ignore[return-value]


def check_volume(x: torch.Tensor, channels: int | None, who: str) -> None:
    """Require a floating ``[B, C, D, H, W]`` tensor with ``C == channels`` (when given)."""
    if not isinstance(x, torch.Tensor):
        raise Rep3DTypeError(f"{who} expects a torch.Tensor [B, C, D, H, W], got {type(x).__name__}")
    if x.ndim != 5:
        hint = " (add a batch axis with x[None])" if x.ndim == 4 else ""
        raise Rep3DValueError(f"{who} expects a 5-D input [B, C, D, H, W], got {x.ndim}-D shape {tuple(x.shape)}{hint}")
    if channels is not None and x.shape[1] != channels:
        raise Rep3DValueError(
            f"{who} was built for {channels} channels but the input has {x.shape[1]} "
            f"(shape {tuple(x.shape)}); nothing is broadcast: build it with channels={x.shape[1]}"
        )
    if not x.is_floating_point():
        raise Rep3DTypeError(f"{who} expects a floating-point input, got {x.dtype}; convert with x.float()")


def check_float(t: torch.Tensor, who: str, what: str) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise Rep3DTypeError(f"{who} needs a floating-point {what}, got {got}")
