"""How ``backend="auto"`` picks the engine of :func:`~rep3d.layers.depthwise_conv3d`: a pure function of the call's
shapes, device and dtype (no timing), memoised per call signature.

On CPU a cost model measured on the calibration CPU (``benchmarks/calibrate_auto.py``); on CUDA a separate,
provisional rule (:data:`CUDA_RULE`) that no GPU has measured yet (``benchmarks/gpu_suite.py`` measures it and refits
it). ``rep3d.layers.scripted_engine`` restates both in TorchScript.
"""

import math
from collections.abc import Sequence
from typing import Literal

import torch

from rep3d.layers.fft_conv import fft_lengths, keep_spectra
from rep3d.layers.settings import get_engine_settings

# Cost model behind "auto": each engine's time is estimated as a non-negative linear combination of a few work
# terms (cost_features), least-squares fitted to the relative error of CPU measurements (2 threads, float32,
# torch 2.14) by ``benchmarks/calibrate_auto.py --fit`` on the calibration grids and the stage table; the data and
# how well the rule does on it are in benchmarks/README.md ("The auto rule"). Units: milliseconds.
_BIG_BYTES = 16 * 2**20  # above this a float32 [B, C, *S] tensor costs the direct path more per element
_L2_BYTES = 2**20
COST_MODEL: dict[bool, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # requires_grad: (direct coefficients, fft coefficients), in the order of cost_features
    False: (
        (1.045e-06, 9.097e-08, 0.000e00, 1.869e-06, 3.578e-08, 6.000e-10, 4.740e-04),
        (2.317e-06, 4.133e-03),
    ),
    True: (
        (3.290e-06, 2.614e-07, 4.557e-09, 5.783e-06, 2.353e-08, 4.788e-09, 1.672e-03),
        (2.542e-06, 8.112e-03),
    ),
}


def cost_features(
    x_shape: Sequence[int], kernel_size: Sequence[int], requires_grad: bool
) -> tuple[list[float], list[float]]:
    """Work terms of the two engines for one call: ``(direct, fft)`` regressors of :data:`COST_MODEL`.

    Direct (``V = B*C*S^3`` outputs): ``V``, ``V*K^2``, ``V*K^3`` (memory, kernel rows, multiply-adds; the
    mix captures oneDNN's higher efficiency at large K), ``G = V * log2(4V / 16 MiB)`` and ``G*K^2`` for
    tensors above 16 MiB (page faults and cache misses grow with size), ``V*K^3 * log2(P / 1 MiB)`` once
    the padded input ``P`` of a 16-channel block exceeds the L2 cache, and ``B*C`` per-map overhead.
    FFT: transform elements ``C * n_transforms * L^3`` (``2B + 1`` forward; with gradients ``4B + 2`` when
    the spectra are kept, else ``5B + 3``) and ``C`` per-channel overhead.
    """
    batch, channels = x_shape[0], x_shape[1]
    spatial = tuple(x_shape[2:])
    vol = batch * channels * math.prod(spatial)
    taps = math.prod(kernel_size)
    area = taps ** (2 / 3)
    big = vol * max(0.0, math.log2(4 * vol / _BIG_BYTES))
    # oneDNN works on blocks of 16 channels (one AVX-512 register): once a block's padded input outgrows the
    # ~1 MiB L2 cache, its multiply-adds slow down
    block = 16 * 4 * math.prod(s + k - 1 for s, k in zip(spatial, kernel_size, strict=True))
    spill = vol * taps * max(0.0, math.log2(block / _L2_BYTES))
    direct = [vol, vol * area, vol * taps, big, big * area, spill, batch * channels]
    lengths = fft_lengths(spatial, kernel_size)
    if not requires_grad:
        transforms = 2 * batch + 1
    elif keep_spectra(batch, channels, lengths, 4):
        transforms = 4 * batch + 2
    else:
        transforms = 5 * batch + 3
    return direct, [channels * transforms * math.prod(lengths), channels]


def estimate_ms(x_shape: Sequence[int], kernel_size: Sequence[int], requires_grad: bool) -> dict[str, float]:
    """The model's time per engine on the calibrated CPU, ``{"direct": ms, "fft": ms}``."""
    direct, fft = cost_features(x_shape, kernel_size, requires_grad)
    cd, cf = COST_MODEL[requires_grad]
    return {
        "direct": sum(a * b for a, b in zip(cd, direct, strict=True)),
        "fft": sum(a * b for a, b in zip(cf, fft, strict=True)),
    }


# CUDA (and any other non-CPU device): NOT MEASURED ON A GPU YET. The CPU model above is wall-clock on one CPU and
# says nothing about cuDNN and cuFFT, so the GPU gets a separate, deliberately simple rule: FFT when its
# floating-point work, weighted by ``fft_flop_weight``, is below the direct conv's (flop_estimates). The weight
# stands for how much worse an FFT flop runs than a direct multiply-add (cuFFT is memory-bound; cuDNN's depthwise
# 3-D conv has no fast path either, PyTorch issue 37406). The provisional 8 is a guess chosen to reproduce the
# expected shape of the rule -- FFT for large maps and kernels, direct for tiny maps (Rep3D's 6^3 stage) and
# small kernels -- not a measurement. ``benchmarks/gpu_suite.py`` times both engines on CUDA and
# ``benchmarks/calibrate_auto.py --fit-cuda`` refits one weight per (gradients, dtype class) from that table.
CUDA_RULE: dict[str, object] = {
    "measured": False,
    "source": "provisional guess (flop ratio x 8), not yet measured on a GPU",
    # (requires_grad, dtype class) -> weight of an FFT flop relative to a direct multiply-add
    "fft_flop_weight": {
        (grad, kind): 8.0 for grad in (False, True) for kind in ("float64", "float32", "half")
    },
}


def dtype_class(dtype: torch.dtype) -> str:
    """``"float64"``, ``"float32"`` or ``"half"`` (float16 / bfloat16): the dtype keys of :data:`CUDA_RULE`."""
    if dtype == torch.float64:
        return "float64"
    if dtype in (torch.float16, torch.bfloat16):
        return "half"
    return "float32"


def flop_estimates(x_shape: Sequence[int], kernel_size: Sequence[int], requires_grad: bool) -> dict[str, float]:
    """Floating-point operations of one call per engine, ``{"direct": flops, "fft": flops}`` (device-free).

    Direct: ``2 * B*C*S^3 * K^3`` per conv, three convs with gradients (forward, ``grad_x``, ``grad_w``). FFT:
    ``2.5 * N * log2(N)`` per real transform of ``N = L^3`` points, times the transforms of
    :func:`cost_features`, plus 6 flops per complex product.
    """
    direct_terms, (transform_points, channels) = cost_features(x_shape, kernel_size, requires_grad)
    vol, taps = direct_terms[0], math.prod(kernel_size)
    lengths = fft_lengths(tuple(x_shape[2:]), kernel_size)
    points = math.prod(lengths)
    batch = x_shape[0]
    products = channels * batch * (3 if requires_grad else 1) * points / 2
    return {
        "direct": 2.0 * vol * taps * (3 if requires_grad else 1),
        "fft": 2.5 * transform_points * math.log2(points) + 6.0 * products,
    }


def choose_backend(
    x_shape: Sequence[int],
    kernel_size: Sequence[int],
    device_type: str,
    dtype: torch.dtype,
    requires_grad: bool,
) -> Literal["direct", "fft"]:
    """Pick the faster exact engine for a "same" depthwise conv (a pure function of its arguments, no timing).

    Args:
        x_shape: ``(B, C, D, H, W)``.
        kernel_size: ``(kd, kh, kw)`` *after* cropping with :func:`useful_kernel_size`.
        device_type: ``x.device.type``. ``"cpu"``: the engine with the lower :func:`estimate_ms` (a cost
            model fitted on CPU float32). Anything else (``"cuda"``, ...): :data:`CUDA_RULE`, a separate rule
            on :func:`flop_estimates` whose weights are provisional until measured on a GPU.
        dtype: ``x.dtype``. On CUDA a key of the rule (:func:`dtype_class`). On CPU the float32 model serves
            every dtype (float64 doubles both engines' work alike; half-precision inputs are computed by the
            FFT engine in float32 and were not part of the calibration).
        requires_grad: whether a backward will follow (the engines' backward costs differ a lot).
    """
    if device_type == "cpu":
        est = estimate_ms(x_shape, kernel_size, requires_grad)
        return "fft" if est["fft"] < est["direct"] else "direct"
    flops = flop_estimates(x_shape, kernel_size, requires_grad)
    weight = CUDA_RULE["fft_flop_weight"][(bool(requires_grad), dtype_class(dtype))]  # type: ignore[index]
    return "fft" if weight * flops["fft"] < flops["direct"] else "direct"


# The choice per (shape, kernel, device, dtype, grad, engine settings) is a pure function of hashable values,
# computed once and cached. Marked constant for dynamo: torch.compile and torch.export call it while tracing and
# bake the engine into the graph (guarded by the shape specialisation they already make), instead of tracing the
# cost model.
_CHOICES: dict[tuple, str] = {}


@torch.compiler.assume_constant_result
def cached_backend(
    x_shape: tuple[int, ...],
    kernel_size: tuple[int, ...],
    device_type: str,
    dtype: torch.dtype,
    requires_grad: bool,
) -> str:
    """:func:`choose_backend` for one call signature, memoised; invisible to ``torch.compile`` graphs."""
    args = (tuple(x_shape), tuple(kernel_size), device_type, dtype, bool(requires_grad))
    settings = get_engine_settings()
    key = (*args, settings.save_spectra, settings.save_spectra_bytes)  # these settings enter the cost model
    choice = _CHOICES.get(key)
    if choice is None:
        choice = _CHOICES[key] = choose_backend(*args)
    return choice
