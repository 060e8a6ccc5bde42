"""The depthwise conv engine in TorchScript: the same crop, engine choice and arithmetic as eager.

A scripted rep3d model must compute what the eager one does (MONAI's ``convert_to_torchscript(verify=True)`` compares
them at ``rtol=1e-4, atol=0``), and it must stay plain TorchScript (a ``model.ts`` runs without rep3d). The eager
engine (:func:`rep3d.layers.depthwise_conv3d`) is Python: an ``autograd.Function`` per engine and a cost model
behind ``"auto"``. :func:`scripted_depthwise_conv3d` re-states its forward in TorchScript:

* the kernel crop to ``min(K, 2S - 1)`` (:func:`~rep3d.layers.depthwise.useful_kernel_size`);
* ``"auto"``: :func:`~rep3d.layers.depthwise.choose_backend` (the CPU cost model, the CUDA rule) with the
  coefficients in force when this module was imported;
* ``"direct"``: the same native conv call; ``"fft"``: the same transform lengths, channel groups, kernel placement
  and spectral product as :mod:`rep3d.layers.fft_conv`.

What it cannot see: :func:`rep3d.layers.engine_settings` changed after import (the scripted graph keeps the default
``chunk_bytes`` / ``save_spectra`` values, which decide channel groups and, with gradients, the engine), and
autocast (eager switches it off inside the engine; a scripted model runs in the input's dtype). Gradients flow through
plain autograd of these ops, not the eager engines' hand-written backward (same values up to rounding).
tests/test_conformance.py checks the engine choice on a grid and the outputs bitwise against eager.
"""

import math

import torch
import torch.nn.functional as F

# TorchScript functions cannot read Python globals, so the eager constants are restated below as literals;
# tests/test_conformance.py checks them against rep3d.layers.depthwise.COST_MODEL / CUDA_RULE and the default engine
# settings (a refit of either must update these too).


def _cost_coefficients(requires_grad: bool) -> tuple[list[float], list[float]]:
    """``COST_MODEL[requires_grad]``: (direct, fft) coefficients."""
    if requires_grad:
        return ([3.290e-06, 2.614e-07, 4.557e-09, 5.783e-06, 2.353e-08, 4.788e-09, 1.672e-03],
                [2.542e-06, 8.112e-03])
    return ([1.045e-06, 9.097e-08, 0.000e00, 1.869e-06, 3.578e-08, 6.000e-10, 4.740e-04], [2.317e-06, 4.133e-03])


def _cuda_fft_flop_weight(requires_grad: bool, dtype_class: str) -> float:
    """``CUDA_RULE["fft_flop_weight"][(requires_grad, dtype_class)]`` (provisional, the same 8 for every key)."""
    return 8.0


def _chunk_bytes(device_type: str) -> int:
    """The default ``chunk_bytes`` engine setting per device type."""
    return 16777216 if device_type == "cpu" else 536870912  # 16 MiB, 512 MiB


def _save_spectra_bytes() -> int:
    """The default ``save_spectra_bytes`` engine setting (``save_spectra=None``: automatic)."""
    return 67108864  # 64 MiB


def _fast_fft_length(n: int) -> int:
    # rep3d.layers.fft_conv.fast_fft_length: smallest 2^a 3^b 5^c >= n
    best = 1
    while best < n:
        best *= 2
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _fft_lengths(spatial: list[int], kernel: list[int]) -> list[int]:
    # rep3d.layers.fft_conv.fft_lengths: the smallest even 5-smooth length >= S + K//2
    return [2 * _fast_fft_length((s + k // 2 + 1) // 2) for s, k in zip(spatial, kernel)]


def _log2(value: float) -> float:
    # TorchScript has no math.log2; log(v) / log(2) can differ from it in the last bit, which changes the engine
    # choice only where the two estimates tie to 1e-16 (the grid test in tests/test_conformance.py)
    return math.log(value) / math.log(2.0)


def _prod(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _keep_spectra(batch: int, channels: int, lengths: list[int], itemsize: int) -> bool:
    spectrum = channels * lengths[0] * lengths[1] * (lengths[2] // 2 + 1) * 2 * itemsize
    return (batch + 1) * spectrum <= _save_spectra_bytes()


def _cost_features(shape: list[int], kernel: list[int], requires_grad: bool) -> tuple[list[float], list[float]]:
    # rep3d.layers.depthwise.cost_features, term by term
    batch, channels = shape[0], shape[1]
    spatial = shape[2:]
    vol = batch * channels * _prod(spatial)
    taps = _prod(kernel)
    area = float(taps) ** (2 / 3)
    big = float(vol) * max(0.0, _log2(float(4 * vol) / 16777216.0))
    block = 16 * 4 * _prod([s + k - 1 for s, k in zip(spatial, kernel)])
    spill = float(vol * taps) * max(0.0, _log2(float(block) / 1048576.0))
    direct = [float(vol), float(vol) * area, float(vol * taps), big, big * area, spill, float(batch * channels)]
    lengths = _fft_lengths(spatial, kernel)
    if not requires_grad:
        transforms = 2 * batch + 1
    elif _keep_spectra(batch, channels, lengths, 4):
        transforms = 4 * batch + 2
    else:
        transforms = 5 * batch + 3
    return direct, [float(channels * transforms * _prod(lengths)), float(channels)]


def _cpu_choice(shape: list[int], kernel: list[int], requires_grad: bool) -> str:
    direct, fft = _cost_features(shape, kernel, requires_grad)
    cd, cf = _cost_coefficients(requires_grad)
    # summed left to right from 0, as Python's sum() does in estimate_ms
    est_direct = 0.0 + cd[0] * direct[0] + cd[1] * direct[1] + cd[2] * direct[2] + cd[3] * direct[3]
    est_direct = est_direct + cd[4] * direct[4] + cd[5] * direct[5] + cd[6] * direct[6]
    est_fft = 0.0 + cf[0] * fft[0] + cf[1] * fft[1]
    return "fft" if est_fft < est_direct else "direct"


def _cuda_choice(shape: list[int], kernel: list[int], dtype: torch.dtype, requires_grad: bool) -> str:
    # rep3d.layers.depthwise.flop_estimates + CUDA_RULE
    direct_terms, fft_terms = _cost_features(shape, kernel, requires_grad)
    lengths = _fft_lengths(shape[2:], kernel)
    points = _prod(lengths)
    passes = 3 if requires_grad else 1
    products = float(int(fft_terms[1]) * shape[0] * passes * points) / 2
    direct = 2.0 * direct_terms[0] * float(_prod(kernel)) * float(passes)  # Python's left-to-right order
    fft = 2.5 * fft_terms[0] * _log2(float(points)) + 6.0 * products
    kind = "float32"
    if dtype == torch.float64:
        kind = "float64"
    elif dtype == torch.float16 or dtype == torch.bfloat16:
        kind = "half"
    weight = _cuda_fft_flop_weight(requires_grad, kind)
    return "fft" if weight * fft < direct else "direct"


def scripted_choose_backend(shape: list[int], kernel: list[int], device_type: str, dtype: torch.dtype,
                            requires_grad: bool) -> str:
    """:func:`~rep3d.layers.depthwise.choose_backend` in TorchScript (``kernel`` already cropped)."""
    if device_type == "cpu":
        return _cpu_choice(shape, kernel, requires_grad)
    return _cuda_choice(shape, kernel, dtype, requires_grad)


def _wrap_kernel(weight: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    # [c, kd, kh, kw] -> [c, L0, L1, L2] with the tap at offset d from the centre at d mod L (fft_conv._wrap_kernel)
    out = weight.new_zeros([weight.shape[0], lengths[0], lengths[1], lengths[2]])
    kd, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    out[:, :kd, :kh, :kw] = weight
    return torch.roll(out, [-(kd // 2), -(kh // 2), -(kw // 2)], [1, 2, 3])


def _fft_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # rep3d.layers.fft_conv._FFTDepthwise.forward on the compute dtype
    spatial = [x.shape[2], x.shape[3], x.shape[4]]
    kernel = [weight.shape[2], weight.shape[3], weight.shape[4]]
    lengths = _fft_lengths(spatial, kernel)
    batch, channels = x.shape[0], x.shape[1]
    per_channel = batch * lengths[0] * lengths[1] * (lengths[2] // 2 + 1) * 2 * x.element_size()
    budget = _chunk_bytes(x.device.type)
    step = max(1, min(channels, budget // per_channel))
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    for c0 in range(0, channels, step):
        c1 = min(channels, c0 + step)
        spec = torch.fft.rfftn(x[:, c0:c1], s=lengths, dim=[2, 3, 4])
        kspec = torch.fft.rfftn(_wrap_kernel(weight[c0:c1, 0], lengths), dim=[1, 2, 3])
        full = torch.fft.irfftn(spec * kspec.conj(), s=lengths, dim=[2, 3, 4])
        y[:, c0:c1] = full[:, :, : spatial[0], : spatial[1], : spatial[2]]
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1, 1)
    return y


def scripted_depthwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              backend: str) -> torch.Tensor:
    """:func:`~rep3d.layers.depthwise_conv3d` (``"auto"``, ``"direct"`` or ``"fft"``) for TorchScript.

    ``x`` ``[B, C, D, H, W]``, ``weight`` ``[C, 1, kd, kh, kw]`` (odd sizes), ``bias`` ``[C]`` or None.
    """
    if x.numel() == 0:
        return F.conv3d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                        padding=[weight.shape[2] // 2, weight.shape[3] // 2, weight.shape[4] // 2],
                        groups=weight.shape[0])
    spatial = [x.shape[2], x.shape[3], x.shape[4]]
    kernel: list[int] = []
    for i in range(3):
        kernel.append(min(weight.shape[2 + i], 2 * spatial[i] - 1))
    starts = [(weight.shape[2] - kernel[0]) // 2, (weight.shape[3] - kernel[1]) // 2,
              (weight.shape[4] - kernel[2]) // 2]
    weight = weight[:, :, starts[0]: starts[0] + kernel[0], starts[1]: starts[1] + kernel[1],
                    starts[2]: starts[2] + kernel[2]]
    if backend == "auto":
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
        shape = [x.shape[0], x.shape[1], spatial[0], spatial[1], spatial[2]]
        backend = scripted_choose_backend(shape, kernel, x.device.type, x.dtype, needs_grad)
    if backend == "fft":
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = _fft_conv(x.to(compute), weight.to(compute), None if bias is None else bias.to(compute))
        return y.to(x.dtype)
    return F.conv3d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                    padding=[kernel[0] // 2, kernel[1] // 2, kernel[2] // 2], groups=x.shape[1])
