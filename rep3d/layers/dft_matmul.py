"""The FFT engine's convolution with every transform written as a matrix product, for exported graphs.

An exported graph runs in another runtime. onnxruntime's CPU ``DFT`` kernel is far slower than PyTorch's FFT
(measured per layer in benchmarks/README.md, "Export"), while its ``MatMul`` is a tuned GEMM. A discrete Fourier
transform along one axis is a product with a ``[L, S]`` matrix, so the same exact convolution as
:mod:`rep3d.layers.fft_conv` (input at ``[0, S)`` of a length-``L`` buffer, wrapped kernel, ``L >= S + K//2``) can
be stated with ``MatMul`` only:

* the zero padding is folded into the forward matrix (its first ``S`` columns) and the crop into the inverse one
  (its first ``S`` rows), so no padded buffer exists;
* any length works, so the shortest exact one, ``L = S + K//2``, is used (no 5-smooth or power-of-two rounding);
* the last axis keeps ``L//2 + 1`` frequencies (real input), undone with Hermitian weights;
* complex numbers are carried as (real, imaginary) pairs: ONNX ``MatMul`` is real.

A product with an ``[L, S]`` matrix costs ``O(L)`` per sample instead of an FFT's ``O(log L)``: this pays where the
matrix product is much faster than the runtime's FFT, as in onnxruntime on CPU, not in eager PyTorch.
:func:`dft_as_matmul` switches the FFT engine to this form inside a block; :func:`rep3d.export.export_onnx` uses it.
"""

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

from rep3d.layers.fft_conv import _wrap_kernel
from rep3d.layers.settings import engine_settings, get_engine_settings


@contextlib.contextmanager
def dft_as_matmul() -> Iterator[None]:
    """Within the block the FFT engine computes its transforms as matrix products (:func:`matmul_dft_conv3d`):
    ``engine_settings(fft_transforms="matmul")``."""
    with engine_settings(fft_transforms="matmul"):
        yield


def dft_as_matmul_active() -> bool:
    """Whether the engine settings in force ask for matrix-product transforms."""
    return get_engine_settings().fft_transforms == "matmul"


def _angles(rows: int, cols: int, length: int, transpose: bool) -> torch.Tensor:
    # exact integer products reduced mod L before scaling, in float64 (cos/sin of large angles lose digits)
    k = torch.arange(rows, dtype=torch.float64).unsqueeze(1)
    s = torch.arange(cols, dtype=torch.float64).unsqueeze(0)
    angle = 2 * math.pi * torch.remainder(k * s, length) / length
    return angle.T if transpose else angle


def _forward_dft(size: int, length: int, dtype: torch.dtype, half: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """DFT of a length-``size`` signal zero-padded to ``length``: (real, imag) ``[F, size]``, F = L or L//2+1."""
    angle = _angles(length // 2 + 1 if half else length, size, length, transpose=False)
    return torch.cos(angle).to(dtype), (-torch.sin(angle)).to(dtype)


def _inverse_dft(length: int, size: int, dtype: torch.dtype, half: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` samples of the inverse DFT: (real, imag) ``[size, F]``; ``half`` adds Hermitian weights."""
    freqs = length // 2 + 1 if half else length
    angle = _angles(freqs, size, length, transpose=True)
    weight = torch.full((freqs,), 1.0 / length, dtype=torch.float64)
    if half:
        weight[1:] *= 2
        if length % 2 == 0:
            weight[-1] /= 2  # the Nyquist frequency appears once
    return (torch.cos(angle) * weight).to(dtype), (torch.sin(angle) * weight).to(dtype)


def _complex_matmul(ar: torch.Tensor, ai: torch.Tensor, br: torch.Tensor,
                    bi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ar @ br - ai @ bi, ar @ bi + ai @ br


def _spectrum(x: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., D, H, W]`` real -> its zero-padded spectrum, axes ordered ``[..., L1, L0, L2//2+1]``, as (re, im)."""
    depth, height, width = x.shape[-3:]
    cos_w, sin_w = _forward_dft(width, lengths[2], x.dtype, half=True)
    re, im = x @ cos_w.T, x @ sin_w.T  # [..., D, H, M]
    re, im = _complex_matmul(*_forward_dft(height, lengths[1], x.dtype), re, im)  # [..., D, L1, M]
    re, im = re.transpose(-3, -2), im.transpose(-3, -2)  # [..., L1, D, M]: D next to the matrix product
    return _complex_matmul(*_forward_dft(depth, lengths[0], x.dtype), re, im)  # [..., L1, L0, M]


def matmul_dft_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The FFT engine's "same" depthwise conv with matrix-product transforms (same inputs and result).

    ``x`` ``[B, C, D, H, W]``, ``weight`` ``[C, 1, kd, kh, kw]`` cropped to ``<= 2S-1``, ``bias`` ``[C]`` or None ->
    ``[B, C, D, H, W]``. Transform lengths ``S + K//2`` per axis.
    """
    spatial = tuple(x.shape[2:])
    lengths = [s + k // 2 for s, k in zip(spatial, weight.shape[2:], strict=True)]
    kr, ki = _spectrum(_wrap_kernel(weight[:, 0], lengths), lengths)  # [C, L1, L0, M]
    xr, xi = _spectrum(x, lengths)  # [B, C, L1, L0, M]
    yr, yi = xr * kr + xi * ki, xi * kr - xr * ki  # X * conj(K): cross-correlation, as the FFT engine
    yr, yi = _complex_matmul(*_inverse_dft(lengths[0], spatial[0], x.dtype), yr, yi)  # [B, C, L1, D, M]
    yr, yi = yr.transpose(-3, -2), yi.transpose(-3, -2)  # [B, C, D, L1, M]
    yr, yi = _complex_matmul(*_inverse_dft(lengths[1], spatial[1], x.dtype), yr, yi)  # [B, C, D, H, M]
    cos_w, sin_w = _inverse_dft(lengths[2], spatial[2], x.dtype, half=True)  # [W, M]
    y = yr @ cos_w.T - yi @ sin_w.T
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1, 1)
    return y
