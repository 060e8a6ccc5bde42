"""Exact "same" depthwise 3-D convolution with a choice of engine.

Every large-kernel conv in rep3d goes through :func:`depthwise_conv3d`, so that a faster engine benefits all
layers and models at once. Two exact engines:

* ``"direct"``: native ``conv3d`` on the kernel cropped to what can ever touch the input
  (``min(K, 2S - 1)``), with a backward made of native *forward* convolutions. PyTorch's own depthwise 3-D
  backward is extremely slow on CPU (minutes for a 21^3 kernel, seconds even for 3^3); its forwards are fast.
* ``"fft"``: FFT convolution of minimal exact length (see :mod:`rep3d.layers.fft_conv`).

``"auto"`` asks :func:`~rep3d.layers.engine_choice.choose_backend` (:mod:`rep3d.layers.engine_choice`): on CPU a cost
model measured on the calibration CPU, on CUDA a separate, provisional rule that no GPU has measured yet.
"""

import contextlib
import operator
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from rep3d.errors import Rep3DValueError
from rep3d.layers.checks import check_float, check_volume, is_exporting, kernel_size_3d
from rep3d.layers.dft_matmul import dft_as_matmul_active, matmul_dft_conv3d
from rep3d.layers.engine_choice import (  # the "auto" rule, also reachable here under its historical module
    COST_MODEL,
    CUDA_RULE,
    cached_backend,
    choose_backend,
    cost_features,
    dtype_class,
    estimate_ms,
    flop_estimates,
)
from rep3d.layers.fft_conv import fft_depthwise_conv3d
from rep3d.layers.fusion import crop_kernel, same_padding
from rep3d.layers.settings import get_engine_settings

__all__ = [
    "BACKENDS",
    "COST_MODEL",
    "CUDA_RULE",
    "Backend",
    "cached_backend",
    "choose_backend",
    "cost_features",
    "depthwise_conv3d",
    "direct_depthwise_conv3d",
    "dtype_class",
    "estimate_ms",
    "flop_estimates",
    "useful_kernel_size",
]

Backend = Literal["auto", "direct", "fft"]
BACKENDS = ("auto", "direct", "fft")


def useful_kernel_size(
    kernel_size: tuple[int, int, int], spatial: tuple[int, int, int]
) -> tuple[int, int, int]:
    """Largest kernel that can overlap a ``spatial``-sized input under "same" padding: ``min(K, 2S - 1)``.

    Offsets farther than ``S - 1`` from the centre only ever meet zero padding, so cropping them is exact.
    """
    return tuple(min(k, 2 * s - 1) for k, s in zip(kernel_size, spatial, strict=True))  # type: ignore[return-value]


def depthwise_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
    check_finite: bool = False,
) -> torch.Tensor:
    """Depthwise convolution, stride 1, "same" zero padding, exact on every backend.

    Non-finite input: a NaN or infinity in ``x`` makes the outputs it touches non-finite, and the engines differ in
    which outputs those are. ``"direct"`` spreads it to the kernel's footprint around the voxel (as ``F.conv3d``
    does); ``"fft"`` spreads it to the whole ``[D, H, W]`` map of its channel, since every frequency sums every
    voxel. Pass ``check_finite=True`` to refuse such input instead (one extra pass over ``x``).

    Args:
        x: ``[B, C, D, H, W]`` input, float16/bfloat16/float32/float64, any spatial size (also smaller
            than the kernel).
        weight: ``[C, 1, kd, kh, kw]`` kernel, odd size on every axis; cast to the compute dtype.
        bias: optional ``[C]``.
        backend: ``"direct"`` (native conv on the exactly-cropped kernel), ``"fft"`` or ``"auto"``
            (:func:`choose_backend`).
        check_finite: raise :class:`~rep3d.errors.Rep3DValueError` if ``x`` holds a NaN or infinity.

    Returns:
        ``[B, C, D, H, W]`` in the dtype of ``x``. The FFT path computes float16/bfloat16 inputs in float32.
        Autocast is switched off inside: the dtype of ``x`` decides the precision, as for autocast's float32
        ops (a sum over 21^3 taps is where low precision hurts).

    Under compilers: ``"auto"`` is resolved once per call signature by :func:`cached_backend`, which dynamo treats
    as a constant, so ``torch.compile(fullgraph=True)`` sees one engine and no cost model. ``torch.compile``
    specialises on the volume size (one graph per size, up to dynamo's ``recompile_limit``; bucket sizes, e.g. a
    fixed sliding-window ROI). ``torch.export`` with a dynamic batch or dynamic spatial sizes gets the direct engine
    (dynamic spatial sizes: uncropped), the one whose graph does not depend on them; ``"fft"`` refuses them.
    """
    if not is_exporting(x):
        _check_args(x, weight, bias, backend)
        if check_finite and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise Rep3DValueError(
                f"depthwise_conv3d: x holds {bad} non-finite value(s) (NaN or inf) of {x.numel()}; "
                "the fft engine would spread each one over its whole channel: clean the input first"
            )
    if x.numel() == 0:  # batch 0 or a zero-size axis: an empty output of the input's shape, as F.conv3d gives
        y = x + weight.sum().to(x.dtype) * 0  # keeps weight (and bias) in the graph: zero gradients, not None
        return y if bias is None else y + bias.to(x.dtype).view(1, -1, 1, 1, 1)
    kernel = tuple(weight.shape[2:])
    spatial = tuple(x.shape[2:])
    batch = x.shape[0]
    if backend != "direct" and torch.compiler.is_dynamo_compiling():
        # dynamo presents symbolic sizes as ints; operator.index pins them (a guard: one graph per volume size), so
        # that the engine choice, the crop and the FFT lengths are constants of the graph
        spatial = tuple(operator.index(s) for s in spatial)
        batch = operator.index(batch)
    if not _all_ints(spatial):
        # symbolic spatial sizes (torch.export / ONNX with dynamic D, H, W): the crop and the FFT lengths depend on
        # the size, so only the uncropped direct conv is shape-polymorphic (and exact: the cropped taps only ever
        # meet zero padding)
        _check_polymorphic(backend, "spatial sizes")
        backend = "direct"
    else:
        ksize = useful_kernel_size(kernel, spatial)
        if ksize != kernel:
            weight = crop_kernel(weight, ksize)
        if backend == "auto":
            needs_grad = torch.is_grad_enabled() and (
                x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
            )
            if isinstance(batch, int):
                backend = cached_backend((batch, x.shape[1], *spatial), ksize, x.device.type, x.dtype, needs_grad)
            else:
                backend = "direct"  # a dynamic batch (torch.export): the FFT engine sizes its work by the batch
        elif not isinstance(batch, int):
            _check_polymorphic(backend, "batch size")
    with _no_autocast(x.device.type):
        if backend == "fft":
            compute = torch.float64 if x.dtype == torch.float64 else torch.float32
            # dft_as_matmul (ONNX export): the same convolution with MatMul transforms, see rep3d.layers.dft_matmul
            conv = matmul_dft_conv3d if dft_as_matmul_active() else fft_depthwise_conv3d
            y = conv(
                x.to(compute), weight.to(compute), None if bias is None else bias.to(compute)
            )
            return y.to(x.dtype)
        return _DirectDepthwise.apply(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def _check_polymorphic(backend: str, what: str) -> None:
    if backend == "fft":
        raise Rep3DValueError(
            f"depthwise_conv3d: the FFT engine cannot be exported with a dynamic {what} (its transform lengths and "
            f"work split depend on it); export with conv_backend='auto' or 'direct' (a native conv, shape-"
            f"polymorphic), or with a static {what}"
        )


def _all_ints(sizes: Sequence[object]) -> bool:
    return all(isinstance(s, int) for s in sizes)


def direct_depthwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Uncropped native depthwise conv, "same" padding, plain autograd: the ``torch.jit.trace`` path of every layer.

    A trace can neither record nor serialise a Python ``autograd.Function``, and a traced graph must hold for any
    input size, so the shape-dependent crop and engine choice are left out (``torch.jit.script`` runs the engine
    itself, :mod:`rep3d.layers.scripted_engine`). Exact, but slower than
    :func:`depthwise_conv3d` (native depthwise backward is very slow on CPU; fine for inference).
    ``x`` ``[B, C, D, H, W]``, ``weight`` ``[C, 1, kd, kh, kw]`` (odd sizes), ``bias`` ``[C]`` or None.
    """
    return F.conv3d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                    padding=same_padding(weight.shape[2:]),
                    groups=weight.shape[0])


def _check_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str) -> None:
    who = "depthwise_conv3d"
    if backend not in BACKENDS:
        raise Rep3DValueError(f"{who}: backend must be one of {BACKENDS}, got {backend!r}")
    check_float(weight, who, "weight")
    if weight.ndim != 5 or weight.shape[1] != 1:
        raise Rep3DValueError(
            f"{who}: weight must be [C, 1, kd, kh, kw] (depthwise), got shape {tuple(weight.shape)}"
        )
    kernel_size_3d(tuple(weight.shape[2:]), name="weight kernel size", minimum=1)
    check_volume(x, weight.shape[0], who)
    if bias is not None:
        check_float(bias, who, "bias")
        if bias.shape != (weight.shape[0],):
            raise Rep3DValueError(f"{who}: bias must have shape [{weight.shape[0]}], got {tuple(bias.shape)}")


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class _DirectDepthwise(torch.autograd.Function):
    """Native depthwise conv whose backward is made of native *forward* convs (exact, same math as autograd).

    ``grad_x`` is the same conv with the flipped kernel; ``grad_w`` is ``x`` correlated with ``grad_y``,
    written as a depthwise conv over ``B * C`` groups whose "kernel" is ``grad_y`` and whose output is
    ``K``-sized.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return F.conv3d(x, weight, bias, padding=same_padding(weight.shape[2:]), groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        batch, channels = x.shape[:2]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = F.conv3d(grad_y, weight.flip(2, 3, 4), padding=same_padding(weight.shape[2:]), groups=channels)
        if need_w:
            grad_w = _direct_grad_weight(x, grad_y, tuple(weight.shape[2:]))
        if need_b:
            grad_b = grad_y.sum((0, 2, 3, 4))
        return grad_x, grad_w, grad_b


def _direct_grad_weight(x: torch.Tensor, grad_y: torch.Tensor, kernel_size: tuple[int, ...]) -> torch.Tensor:
    """``grad_w [C, 1, *K]`` of a "same" depthwise conv: ``x`` correlated with ``grad_y``, as native convs.

    ``x`` and ``grad_y`` are ``[B, C, D, H, W]``. The correlation is a depthwise conv over ``B * C`` groups
    whose "kernel" is a depth slab of ``grad_y`` and whose output is ``K``-sized, summed over slabs and batch.
    Each tap sums ``x * grad_y`` over the whole volume; one float32 sum over 10^5 products per tap drifts to a
    relative error of ~1e-5 (measured 1.9e-5 at 64^3). Summing depth slabs of at most ``grad_w_slab_voxels``
    (engine setting) voxels per map separately, then adding the partial kernels, keeps it at the forward's
    level with the same multiply-adds.
    """
    batch, channels, depth, *plane = x.shape
    pad_d, pad_h, pad_w = same_padding(kernel_size)
    rows = max(1, min(depth, get_engine_settings().grad_w_slab_voxels // (plane[0] * plane[1])))
    grad_w = None
    for start in range(0, depth, rows):
        stop = min(depth, start + rows)
        lo, hi = start - pad_d, stop + pad_d  # x rows that meet grad_y rows [start, stop)
        before, after = max(0, -lo), max(0, hi - depth)
        xs = x[:, :, max(lo, 0) : min(hi, depth)].reshape(batch * channels, -1, *plane).unsqueeze(0)
        gs = grad_y[:, :, start:stop].reshape(batch * channels, 1, stop - start, *plane)
        if before != after:  # an edge slab: pad its one side explicitly
            xs, before = F.pad(xs, (0, 0, 0, 0, before, after)), 0
        if _pad_inside_conv(x.device.type, (stop - start, *plane), kernel_size):
            conv_pad: tuple[int, ...] | int = (before, pad_h, pad_w)
        else:
            xs, conv_pad = F.pad(xs, (pad_w, pad_w, pad_h, pad_h, before, before)), 0
        part = F.conv3d(xs, gs, padding=conv_pad, groups=batch * channels)
        part = part.reshape(batch, channels, 1, *kernel_size).sum(0)
        grad_w = part if grad_w is None else grad_w + part
    return grad_w


# oneDNN (CPU) JIT-compiles a padded conv whose kernel is as large as its input -- the grad_w conv above,
# kernel S, output K -- into code that grows like prod(S * K): measured one-time 0.5 s / 0.36 GB at S=12,
# K=21, but 10 s / 5.6 GB at S=24, K=21 (an OOM with 48 channels), kept in oneDNN's primitive cache.
# Padding the input explicitly avoids that but runs 1.3-4x slower, so it is used only above S*K = 260.
_ONEDNN_PAD_LIMIT = 260**3


def _pad_inside_conv(device_type: str, spatial: Sequence[int], kernel_size: Sequence[int]) -> bool:
    if device_type != "cpu":
        return True
    # an explicit product, not math.prod over a generator: dynamo traces this inside a compiled backward
    size = 1
    for s, k in zip(spatial, kernel_size, strict=True):
        size *= s * k
    return size <= _ONEDNN_PAD_LIMIT
