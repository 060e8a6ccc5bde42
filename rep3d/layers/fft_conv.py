"""Exact "same" depthwise 3-D convolution by FFT, with an FFT-based backward.

Layout (why the transform is so short): the input sits at ``[0, S)`` of a length-``L`` buffer and the kernel
tap at offset ``d = k - K//2`` sits at ``d mod L`` ("wrapped"). The circular cross-correlation then equals the
"same" zero-padded one on ``[0, S)`` as soon as ``L >= S + K//2``: taps that wrap around only meet the
``L - S >= K//2`` zeros behind the input. The same bound makes both gradients exact:

* ``grad_x[j] = sum_n gy[n] h[j - n]`` uses ``j - n`` in ``(-S, S)``, which never aliases onto the support
  ``[-K//2, K//2]`` of ``h`` when ``L >= S + K//2``;
* ``grad_h[d] = sum_n gy[n] x[n + d]`` reads ``x`` at ``n + d`` in ``[-K//2, S + K//2)``, all zeros outside
  ``[0, S)`` under the same bound.

So one length per axis (:func:`fft_lengths`) serves forward and backward. The kernel must first be cropped to
``min(K, 2S - 1)`` (``useful_kernel_size``): taps beyond that never meet the input and would otherwise alias.
"""

from collections.abc import Sequence

import torch
from torch.fft import irfftn, rfftn

from rep3d.errors import Rep3DValueError
from rep3d.layers.settings import get_engine_settings

SPATIAL_DIMS = (2, 3, 4)

# The channel-group budget and whether the forward keeps its spectra for the backward are engine settings:
# rep3d.layers.settings (get_engine_settings / engine_settings), with their measurements.


def fast_fft_length(n: int) -> int:
    """Smallest 5-smooth integer (``2^a 3^b 5^c``) ``>= n``: the sizes FFT libraries handle fastest."""
    if n < 1:
        raise Rep3DValueError(f"fast_fft_length needs n >= 1, got {n}")
    best = 1 << max(0, (n - 1).bit_length())  # a power of two is always a candidate
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


def fft_lengths(spatial: Sequence[int], kernel_size: Sequence[int]) -> tuple[int, int, int]:
    """Transform length per axis for an exact "same" conv of an ``S``-sized map with a (cropped) ``K`` kernel.

    The smallest even 5-smooth length ``>= S + K//2`` (the exactness bound derived in the module docstring), or the
    smallest power of two ``>= S + K//2`` under ``engine_settings(fft_lengths="power-of-two")``.
    """
    power_of_two = get_engine_settings().fft_lengths == "power-of-two"
    out = []
    for s, k in zip(spatial, kernel_size, strict=True):
        if k > 2 * s - 1:
            raise Rep3DValueError(
                f"kernel size {tuple(kernel_size)} must be cropped to <= 2S-1 for spatial {tuple(spatial)}"
            )
        # even: MKL's odd-length transforms (15, 27, 45, 75) ran 1.05-1.2x slower end to end than the next
        # even 5-smooth size (16, 30, 48, 80), see benchmarks/README.md
        half = -(-(s + k // 2) // 2)
        out.append(2 * ((1 << max(0, (half - 1).bit_length())) if power_of_two else fast_fft_length(half)))
    return tuple(out)  # type: ignore[return-value]


def channel_chunk(batch: int, channels: int, lengths: Sequence[int], itemsize: int, device_type: str) -> int:
    """Channels per group so that one group's complex spectrum ``[B, c, L0, L1, L2//2+1]`` fits the budget."""
    per_channel = batch * lengths[0] * lengths[1] * (lengths[2] // 2 + 1) * 2 * itemsize
    budget = get_engine_settings().chunk_budget(device_type)
    return max(1, min(channels, budget // per_channel))


def keep_spectra(batch: int, channels: int, lengths: Sequence[int], itemsize: int) -> bool:
    """Whether an FFT forward with gradients keeps its spectra for the backward (``save_spectra`` setting)."""
    settings = get_engine_settings()
    if settings.save_spectra is not None:
        return settings.save_spectra
    spectrum = channels * lengths[0] * lengths[1] * (lengths[2] // 2 + 1) * 2 * itemsize
    return (batch + 1) * spectrum <= settings.save_spectra_bytes


def _wrap_kernel(weight: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """``[c, kd, kh, kw]`` -> ``[c, L0, L1, L2]``, the tap at offset ``d`` from the centre at ``d mod L``."""
    out = weight.new_zeros((weight.shape[0], *lengths))
    ranges = []
    for k, n in zip(weight.shape[1:], lengths, strict=True):
        p = k // 2
        # (source in the kernel, destination in the buffer): the centre and after, then before the centre
        ranges.append([(slice(p, k), slice(0, k - p))] + ([(slice(0, p), slice(n - p, n))] if p else []))
    for sd, dd in ranges[0]:
        for sh, dh in ranges[1]:
            for sw, dw in ranges[2]:
                out[:, dd, dh, dw] = weight[:, sd, sh, sw]
    return out


def _unwrap_kernel(buf: torch.Tensor, kernel_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`_wrap_kernel`: gather ``[c, L0, L1, L2]`` back into ``[c, kd, kh, kw]``."""
    for axis, k in enumerate(kernel_size, start=1):
        p = k // 2
        n = buf.shape[axis]
        buf = torch.cat([buf.narrow(axis, n - p, p), buf.narrow(axis, 0, k - p)], dim=axis)
    return buf


def _kernel_spectrum(weight: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """``[c, k, k, k]`` -> ``[c, L0, L1, L2//2+1]`` spectrum ``H`` with ``y = irfft(X * conj(H))``."""
    return rfftn(_wrap_kernel(weight, lengths), dim=(1, 2, 3))


class _FFTDepthwise(torch.autograd.Function):
    """``y = x (*) w + b`` ("same", depthwise), forward and backward by FFT, one channel group at a time.

    For large maps only ``x`` and ``w`` are saved and the backward recomputes their spectra group by group, so
    the working memory stays proportional to one group's padded volume, not the layer's spectrum (see
    the ``save_spectra`` engine setting).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        spatial = tuple(x.shape[2:])
        lengths = fft_lengths(spatial, tuple(weight.shape[2:]))
        ctx.save_for_backward(x, weight)
        ctx.lengths = lengths
        batch, channels = x.shape[:2]
        step = channel_chunk(batch, channels, lengths, x.element_size(), x.device.type)
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        crop = (..., slice(0, spatial[0]), slice(0, spatial[1]), slice(0, spatial[2]))
        keep = any(ctx.needs_input_grad[:2]) and keep_spectra(batch, channels, lengths, x.element_size())
        ctx.step = step  # the backward must use the forward's groups (the settings may change in between)
        ctx.spectra = []
        for c0 in range(0, channels, step):
            c1 = min(channels, c0 + step)
            spec = rfftn(x[:, c0:c1], s=lengths, dim=SPATIAL_DIMS)
            kspec = _kernel_spectrum(weight[c0:c1, 0], lengths)
            if keep:
                ctx.spectra.append((spec, kspec))
                spec = spec * kspec.conj()
            elif torch.compiler.is_exporting():
                spec = spec * kspec.conj()  # ONNX has no in-place complex conjugate
            else:
                spec.mul_(kspec.conj_physical_())
            y[:, c0:c1] = irfftn(spec, s=lengths, dim=SPATIAL_DIMS)[crop]
        if bias is not None:
            y.add_(bias.view(1, -1, 1, 1, 1))
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        lengths = ctx.lengths
        need_x, need_w, need_b = ctx.needs_input_grad
        spatial = tuple(x.shape[2:])
        ksize = tuple(weight.shape[2:])
        batch, channels = x.shape[:2]
        step = ctx.step
        crop = (..., slice(0, spatial[0]), slice(0, spatial[1]), slice(0, spatial[2]))
        grad_x = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else None
        grad_w = torch.empty_like(weight) if need_w else None
        # with create_graph=True this backward is itself differentiated: then avoid in-place products and the
        # saved spectra (computed without a graph)
        create_graph = torch.is_grad_enabled()
        mul = torch.mul if create_graph else torch.Tensor.mul_
        spectra = [] if create_graph else ctx.spectra
        if need_x or need_w:
            for i, c0 in enumerate(range(0, channels, step)):
                c1 = min(channels, c0 + step)
                saved = spectra[i] if spectra else None
                gspec = rfftn(grad_y[:, c0:c1], s=lengths, dim=SPATIAL_DIMS)
                if need_w:
                    # sum over the batch in frequency space: one inverse transform per channel, not per sample
                    xspec = saved[0] if saved else rfftn(x[:, c0:c1], s=lengths, dim=SPATIAL_DIMS)
                    xspec = mul(xspec, gspec.conj())
                    corr = xspec.sum(0) if batch > 1 else xspec[0]
                    grad_w[c0:c1, 0] = _unwrap_kernel(irfftn(corr, s=lengths, dim=(1, 2, 3)), ksize)
                if need_x:
                    gspec = mul(gspec, saved[1] if saved else _kernel_spectrum(weight[c0:c1, 0], lengths))
                    grad_x[:, c0:c1] = irfftn(gspec, s=lengths, dim=SPATIAL_DIMS)[crop]
        ctx.spectra = []
        grad_b = grad_y.sum((0, 2, 3, 4)) if need_b else None
        return grad_x, grad_w, grad_b


def fft_depthwise_conv3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """FFT engine on validated tensors of one float32/float64 dtype; ``weight`` cropped to ``<= 2S-1``.

    ``x`` ``[B, C, D, H, W]``, ``weight`` ``[C, 1, kd, kh, kw]``, ``bias`` ``[C]`` or None ->
    ``[B, C, D, H, W]``.
    Use :func:`rep3d.layers.depthwise_conv3d` unless you do the checks, cropping and casting yourself.
    """
    return _FFTDepthwise.apply(x, weight, bias)
