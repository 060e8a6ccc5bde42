"""The depthwise conv engine: exactness of both backends, gradients, half precision, the auto rule, bad input.

All shapes are tiny: native 21^3 depthwise backward takes minutes, so the reference here is native conv3d on
small maps only (benchmarks/conv_backends.py covers the large shapes).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from rep3d.errors import Rep3DError
from rep3d.layers import (
    RepLKConv3d,
    choose_backend,
    depthwise,
    depthwise_conv3d,
    engine_settings,
    fft_conv,
    fft_lengths,
    get_engine_settings,
    useful_kernel_size,
)
from rep3d.layers.fft_conv import fast_fft_length

BACKENDS = ("direct", "fft")


def _native(x, w, b=None):
    return F.conv3d(x, w, b, padding=tuple(k // 2 for k in w.shape[2:]), groups=x.shape[1])


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def _is_5_smooth(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


def test_fast_fft_length_is_smallest_5_smooth_at_or_above_n():
    for n in range(1, 400):
        m = fast_fft_length(n)
        assert m >= n and _is_5_smooth(m)
        assert not any(_is_5_smooth(k) for k in range(n, m))


def test_fft_length_is_even_5_smooth_and_covers_s_plus_half_kernel():
    for s, k in itertools.product(range(1, 70), (1, 3, 5, 7, 21)):
        k = min(k, 2 * s - 1)
        (n, *_) = fft_lengths((s, s, s), (k, k, k))
        assert n >= s + k // 2 and n % 2 == 0 and _is_5_smooth(n)
    # the stage shapes of Rep3D at 96^3 / 128^3 patches with a 21^3 kernel
    assert [fft_lengths((s,) * 3, (min(21, 2 * s - 1),) * 3)[0] for s in (48, 24, 12, 6)] == [60, 36, 24, 12]
    assert [fft_lengths((s,) * 3, (min(21, 2 * s - 1),) * 3)[0] for s in (64, 32, 16, 8)] == [80, 48, 30, 16]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(
        2, 1, 3, 5, 7, dtype=torch.float64, requires_grad=True
    )  # wider than the map on the last axis
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: depthwise_conv3d(x, w, b, backend=backend), (x, w, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradgradcheck_float64(backend):
    torch.manual_seed(1)
    x = torch.randn(1, 2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: depthwise_conv3d(x, w, backend=backend), (x, w))


# (batch, channels, spatial, kernel): non-cubic maps, maps smaller than the kernel, batch 2, several K
SHAPES = [
    (2, 3, (5, 7, 6), (3, 5, 7)),
    (1, 4, (9, 9, 9), (3, 3, 3)),
    (2, 2, (8, 6, 7), (5, 5, 5)),
    (1, 3, (6, 6, 6), (7, 7, 7)),
    (2, 2, (4, 4, 4), (9, 9, 9)),
    (2, 2, (6, 9, 11), (21, 21, 21)),
    (1, 2, (3, 5, 2), (21, 21, 21)),
    (2, 3, (1, 1, 1), (21, 21, 21)),
    (1, 2, (12, 3, 7), (9, 21, 3)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("batch", "channels", "spatial", "kernel"), SHAPES)
def test_backend_matches_native_forward_and_all_gradients(backend, batch, channels, spatial, kernel):
    torch.manual_seed(hash((batch, channels, spatial, kernel)) % 2**31)
    x = torch.randn(batch, channels, *spatial, dtype=torch.float64, requires_grad=True)
    w = torch.randn(channels, 1, *kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(channels, dtype=torch.float64, requires_grad=True)
    ref = _native(x, w, b)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (x, w, b), g)
    y = depthwise_conv3d(x, w, b, backend=backend)
    grads = torch.autograd.grad(y, (x, w, b), g)
    assert y.shape == ref.shape and y.dtype == torch.float64
    assert _rel(y, ref) < 1e-12
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.shape == want.shape
        assert _rel(got, want) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_matches_float64_reference_within_1e_5(backend):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 10, 12, 9)
    w = torch.randn(3, 1, 21, 21, 21)
    ref = _native(x.double(), w.double())
    assert _rel(depthwise_conv3d(x, w, backend=backend), ref) < 1e-5


@pytest.mark.parametrize("slab_voxels", [1, 30, 60])
@pytest.mark.parametrize(
    ("spatial", "kernel"), [((7, 5, 6), (5, 3, 5)), ((4, 3, 5), (9, 5, 7)), ((9, 2, 3), (3, 3, 3))]
)
def test_direct_kernel_gradient_summed_over_depth_slabs_matches_native(slab_voxels, spatial, kernel):
    # large maps sum grad_w over depth slabs (float32 accuracy); tiny limits force edge, middle and ragged slabs
    torch.manual_seed(5)
    x = torch.randn(2, 3, *spatial, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, *kernel, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, *spatial, dtype=torch.float64)
    want = torch.autograd.grad(_native(x, w), (x, w), g)
    with engine_settings(grad_w_slab_voxels=slab_voxels):
        got = torch.autograd.grad(depthwise_conv3d(x, w, backend="direct"), (x, w), g)
    for a, b in zip(got, want, strict=True):
        assert _rel(a, b) < 1e-12


def test_direct_kernel_gradient_of_a_large_map_is_float32_accurate():
    # 40^3 voxels per map: one float32 sum per tap drifted to ~1e-5; the slabs keep it at the forward's level
    torch.manual_seed(6)
    x = torch.randn(1, 2, 40, 40, 40)
    w = torch.randn(2, 1, 5, 5, 5, requires_grad=True)
    g = torch.randn_like(x)
    (gw,) = torch.autograd.grad(depthwise_conv3d(x, w, backend="direct"), (w,), g)
    (want,) = torch.autograd.grad(_native(x.double(), w.double()), (w,), g.double())
    assert _rel(gw, want) < 3e-6


def test_fft_channel_groups_give_the_same_result_as_one_group():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 1, 5, 5, 5, dtype=torch.float64, requires_grad=True)
    whole = depthwise_conv3d(x, w, backend="fft")
    gx, gw = torch.autograd.grad(whole.square().sum(), (x, w))
    with engine_settings(chunk_bytes={"cpu": 1}):  # one channel per group
        assert fft_conv.channel_chunk(2, 5, (8, 8, 8), 8, "cpu") == 1
        split = depthwise_conv3d(x, w, backend="fft")
        sx, sw = torch.autograd.grad(split.square().sum(), (x, w))
    for a, b in ((whole, split), (gx, sx), (gw, sw)):
        assert _rel(a, b) < 1e-13


@pytest.mark.parametrize("save", [True, False])
def test_fft_saved_and_recomputed_spectra_give_the_same_gradients(save):
    torch.manual_seed(10)
    x = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 7, 5, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    ref = torch.autograd.grad(_native(x, w), (x, w), g)
    with engine_settings(save_spectra=save):
        assert fft_conv.keep_spectra(2, 3, (8, 8, 8), 8) is save
        got = torch.autograd.grad(depthwise_conv3d(x, w, backend="fft"), (x, w), g)
        small = (x[:1, :2], w[:2])
        assert torch.autograd.gradgradcheck(lambda x, w: depthwise_conv3d(x, w, backend="fft"), small)
    for a, b in zip(got, ref, strict=True):
        assert _rel(a, b) < 1e-12


def test_backward_after_the_settings_changed_still_matches_its_forward():
    # the forward keeps spectra per channel group; a backward run under another group size must use the forward's
    torch.manual_seed(11)
    x = torch.randn(2, 5, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 1, 5, 7, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 5, 6, 5, 7, dtype=torch.float64)
    ref = torch.autograd.grad(_native(x, w), (x, w), g)
    with engine_settings(save_spectra=True, chunk_bytes={"cpu": 1}):
        y = depthwise_conv3d(x, w, backend="fft")
    with engine_settings(chunk_bytes={"cpu": 2**30}):
        got = torch.autograd.grad(y, (x, w), g)
    for a, b in zip(got, ref, strict=True):
        assert _rel(a, b) < 1e-12


def test_engine_settings_restore_the_previous_values_also_after_an_error():
    before = get_engine_settings()
    with pytest.raises(RuntimeError, match="boom"), engine_settings(save_spectra=False, chunk_bytes={"cpu": 4096}):
        now = get_engine_settings()
        assert now.save_spectra is False and now.chunk_budget("cpu") == 4096
        assert now.chunk_budget("cuda") == before.chunk_budget("cuda")  # entries merge
        assert now.chunk_budget("xpu") == before.chunk_budget("cuda")  # other devices use cuda's budget
        raise RuntimeError("boom")
    assert get_engine_settings() == before


@pytest.mark.parametrize(
    "kwargs",
    [dict(save_spectra="yes"), dict(chunk_bytes={"cpu": 0}), dict(chunk_bytes=5), dict(grad_w_slab_voxels=-1),
     dict(save_spectra_bytes=1.5)],
)
def test_invalid_engine_settings_are_refused_before_anything_changes(kwargs):
    before = get_engine_settings()
    with pytest.raises(Rep3DError), engine_settings(**kwargs):
        pass
    assert get_engine_settings() == before


# Half precision. Reference: float64 conv of the *same* rounded inputs, so what is measured is the engine's
# own error. Stated tolerance (max abs error / max |reference|): bf16 <= 1e-2, fp16 <= 2e-3, for outputs and
# all gradients; measured 2-5e-3 (bf16) and 2-6e-4 (fp16), i.e. the rounding of the result to 8 / 11 bits.
HALF_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_give_finite_outputs_within_tolerance(backend, dtype):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 7, 6, 5).to(dtype).requires_grad_()
    w = (torch.randn(3, 1, 9, 9, 9) / 9).to(dtype).requires_grad_()
    b = torch.randn(3).to(dtype).requires_grad_()
    y = depthwise_conv3d(x, w, b, backend=backend)
    assert y.dtype == dtype and torch.isfinite(y).all()
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), g)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = _native(x64, w64, b64)
    ref_grads = torch.autograd.grad(ref, (x64, w64, b64), g.double())
    assert _rel(y, ref) <= HALF_TOL[dtype]
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert _rel(got, want) <= HALF_TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_is_switched_off_inside_and_output_keeps_input_dtype(backend):
    torch.manual_seed(5)
    x = torch.randn(1, 2, 6, 6, 6)
    w = torch.randn(2, 1, 7, 7, 7)
    plain = depthwise_conv3d(x, w, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = depthwise_conv3d(x, w, backend=backend)
    assert y.dtype == torch.float32
    assert _rel(y, plain) < 1e-6


def test_weight_is_cast_to_the_input_dtype_and_gradient_returns_in_weight_dtype():
    x = torch.randn(1, 2, 5, 5, 5, requires_grad=True)
    w = torch.randn(2, 1, 5, 5, 5, dtype=torch.float64, requires_grad=True)
    for backend in BACKENDS:
        y = depthwise_conv3d(x, w, backend=backend)
        assert y.dtype == torch.float32
        (gw,) = torch.autograd.grad(y.sum(), w)
        assert gw.dtype == torch.float64


def test_non_contiguous_input_is_handled():
    torch.manual_seed(6)
    x = torch.randn(2, 7, 5, 6, 3).permute(0, 4, 1, 2, 3)  # [2, 3, 7, 5, 6], channels-last memory
    assert not x.is_contiguous()
    w = torch.randn(3, 1, 5, 5, 5)
    ref = _native(x.contiguous().double(), w.double())
    for backend in BACKENDS:
        assert _rel(depthwise_conv3d(x, w, backend=backend), ref) < 1e-5


def test_kernel_is_cropped_to_what_can_touch_the_input():
    assert useful_kernel_size((21, 21, 21), (6, 1, 48)) == (11, 1, 21)
    x = torch.randn(1, 2, 2, 3, 1, dtype=torch.float64)
    w = torch.randn(2, 1, 21, 21, 21, dtype=torch.float64)
    for backend in BACKENDS:
        assert _rel(depthwise_conv3d(x, w, backend=backend), _native(x, w)) < 1e-12


# ---- the auto rule (pure function of shapes; the timings that justify it are in benchmarks/README.md)


def _pick(shape, k, requires_grad, device="cpu", dtype=torch.float32):
    spatial = shape[2:]
    return choose_backend(shape, useful_kernel_size((k,) * 3, spatial), device, dtype, requires_grad)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_auto_picks_fft_for_large_maps_with_large_kernels(requires_grad):
    for shape in [(1, 48, 48, 48, 48), (2, 96, 24, 24, 24), (1, 48, 64, 64, 64), (1, 96, 32, 32, 32)]:
        assert _pick(shape, 21, requires_grad) == "fft"


def _direct_flops(shape, kernel, requires_grad):
    # written out from the documented formula, not through flop_estimates: 2 flops per multiply-add, 3 convs in
    # training (forward, grad_x, grad_w)
    batch, channels, *spatial = shape
    return 2 * batch * channels * math.prod(spatial) * math.prod(kernel) * (3 if requires_grad else 1)


def test_flop_estimates_direct_count_matches_the_closed_form():
    for shape in [(1, 48, 6, 6, 6), (2, 384, 12, 12, 12), (2, 8, 12, 10, 7)]:
        for kernel in [(3, 3, 3), (11, 11, 11), (7, 5, 3)]:
            for grad in (False, True):
                assert depthwise.flop_estimates(shape, kernel, grad)["direct"] == _direct_flops(shape, kernel, grad)


def test_flop_estimates_fft_count_matches_the_closed_form_in_inference():
    # forward: 2B + 1 real transforms of N = L^3 points at 2.5 N log2 N flops, plus 6 flops per complex product
    for shape, kernel in [((1, 48, 24, 24, 24), (21, 21, 21)), ((2, 8, 12, 10, 7), (7, 5, 3))]:
        batch, channels = shape[:2]
        points = math.prod(fft_lengths(shape[2:], kernel))
        want = 2.5 * channels * (2 * batch + 1) * points * math.log2(points) + 6 * channels * batch * points / 2
        assert depthwise.flop_estimates(shape, kernel, False)["fft"] == pytest.approx(want, rel=1e-12)


CUDA_GRID = [((b, c, s, s, s), k) for b in (1, 2) for c in (48, 384) for s in (4, 6, 8, 12, 16, 24, 48)
             for k in (3, 7, 11, 21)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_cuda_choice_is_fft_exactly_when_weighted_fft_flops_are_below_direct_flops(requires_grad, dtype, monkeypatch):
    key = (requires_grad, {torch.float32: "float32", torch.bfloat16: "half", torch.float64: "float64"}[dtype])
    weights = dict(depthwise.CUDA_RULE["fft_flop_weight"])
    for (shape, k) in CUDA_GRID:
        kernel = useful_kernel_size((k,) * 3, shape[2:])
        ratio = _direct_flops(shape, kernel, requires_grad) / depthwise.flop_estimates(shape, kernel, requires_grad)[
            "fft"]
        assert _pick(shape, k, requires_grad, "cuda", dtype) == ("fft" if weights[key] < ratio else "direct")
        # the rule reads the weight of this (gradients, dtype) and no other: move it across the ratio, and only it
        others = {kk: (1e-9 if weights[key] >= ratio else 1e9) for kk in weights if kk != key}
        monkeypatch.setitem(depthwise.CUDA_RULE, "fft_flop_weight", {**others, key: ratio * 0.99})
        assert _pick(shape, k, requires_grad, "cuda", dtype) == "fft"
        monkeypatch.setitem(depthwise.CUDA_RULE, "fft_flop_weight", {**others, key: ratio * 1.01})
        assert _pick(shape, k, requires_grad, "cuda", dtype) == "direct"
        monkeypatch.setitem(depthwise.CUDA_RULE, "fft_flop_weight", weights)


def test_cpu_and_cuda_follow_different_rules():
    # the device type decides, both ways: a 12^3 map with a 21^3 kernel is direct on the CPU model and FFT under
    # the CUDA rule (flops x 8); a 48^3 map with a 7^3 kernel the reverse
    assert (_pick((2, 48, 12, 12, 12), 21, False, "cpu"), _pick((2, 48, 12, 12, 12), 21, False, "cuda")) == (
        "direct", "fft")
    assert (_pick((2, 48, 48, 48, 48), 7, False, "cpu"), _pick((2, 48, 48, 48, 48), 7, False, "cuda")) == (
        "fft", "direct")


def test_cuda_rule_shape_large_maps_fft_tiny_maps_and_small_kernels_direct():
    # what the provisional (unmeasured) weights were chosen to give on Rep3D's stages, B = 2
    assert not depthwise.CUDA_RULE["measured"]
    for requires_grad in (False, True):
        for c, s in ((48, 48), (96, 24), (192, 12), (48, 64), (96, 32), (192, 16)):
            assert _pick((2, c, s, s, s), 21, requires_grad, "cuda") == "fft"
        assert _pick((2, 384, 6, 6, 6), 21, requires_grad, "cuda") == "direct"
        assert _pick((2, 48, 48, 48, 48), 3, requires_grad, "cuda") == "direct"


def test_flop_estimates_count_three_convs_with_gradients():
    shape, kernel = (2, 8, 12, 12, 12), (7, 7, 7)
    fwd = depthwise.flop_estimates(shape, kernel, False)
    bwd = depthwise.flop_estimates(shape, kernel, True)
    assert fwd["direct"] == 2 * 2 * 8 * 12**3 * 7**3
    assert bwd["direct"] == 3 * fwd["direct"]
    assert bwd["fft"] > 2 * fwd["fft"]


def test_auto_picks_direct_for_tiny_maps_and_small_kernels_in_inference():
    assert _pick((1, 384, 6, 6, 6), 21, False) == "direct"
    assert _pick((1, 64, 2, 2, 2), 21, False) == "direct"
    for k in (3, 5, 7):
        assert _pick((1, 48, 48, 48, 48), k, False) == "direct"
        assert _pick((2, 96, 24, 24, 24), k, True) == "direct"


def test_auto_result_equals_both_backends():
    torch.manual_seed(7)
    x = torch.randn(1, 3, 9, 8, 7, dtype=torch.float64)
    w = torch.randn(3, 1, 21, 21, 21, dtype=torch.float64)
    auto = depthwise_conv3d(x, w)
    for backend in BACKENDS:
        assert _rel(depthwise_conv3d(x, w, backend=backend), auto) < 1e-12


def test_replkconv_backends_agree_in_forward_and_backward():
    torch.manual_seed(8)
    x = torch.randn(2, 4, 7, 6, 5, dtype=torch.float64, requires_grad=True)
    outs = []
    for backend in BACKENDS:
        torch.manual_seed(9)
        m = RepLKConv3d(4, 9, small_kernel=3, conv_backend=backend).double()
        y = m(x)
        gx, gw = torch.autograd.grad(y.square().sum(), (x, m.weight))
        outs.append((y, gx, gw))
    for a, b in zip(*outs, strict=True):
        assert _rel(a, b) < 1e-12


# ---- bad input: errors name what was expected and what was given


@pytest.mark.parametrize(
    ("x", "w", "b", "backend", "err", "match"),
    [
        (
            (1, 2, 4, 4, 4),
            (2, 1, 3, 3, 3),
            None,
            "cudnn",
            ValueError,
            r"one of \('auto', 'direct', 'fft'\), got 'cudnn'",
        ),
        ((1, 2, 4, 4, 4), (2, 1, 4, 3, 3), None, "auto", ValueError, r"odd on every axis.*\(4, 3, 3\)"),
        (
            (1, 2, 4, 4, 4),
            (2, 2, 3, 3, 3),
            None,
            "auto",
            ValueError,
            r"\[C, 1, kd, kh, kw\].*\(2, 2, 3, 3, 3\)",
        ),
        (
            (1, 3, 4, 4, 4),
            (2, 1, 3, 3, 3),
            None,
            "fft",
            ValueError,
            r"built for 2 channels but the input has 3",
        ),
        ((2, 4, 4, 4), (2, 1, 3, 3, 3), None, "fft", ValueError, r"5-D input.*got 4-D"),
        (
            (1, 2, 4, 4, 4),
            (2, 1, 3, 3, 3),
            (3,),
            "direct",
            ValueError,
            r"bias must have shape \[2\], got \(3,\)",
        ),
        (
            (1, 2, 4, 4, 4),
            (2, 1, 3, 3, 3),
            (1, 2),
            "direct",
            ValueError,
            r"bias must have shape \[2\], got \(1, 2\)",
        ),
    ],
)
def test_bad_input_errors_name_expected_and_given(x, w, b, backend, err, match):
    with pytest.raises(err, match=match):
        depthwise_conv3d(
            torch.zeros(x), torch.zeros(w), None if b is None else torch.zeros(b), backend=backend
        )


def test_integer_input_is_rejected_with_a_hint():
    with pytest.raises(TypeError, match=r"floating-point input, got torch.int64"):
        depthwise_conv3d(torch.zeros(1, 2, 4, 4, 4, dtype=torch.long), torch.zeros(2, 1, 3, 3, 3))
    with pytest.raises(TypeError, match=r"floating-point weight, got torch.int64"):
        depthwise_conv3d(torch.zeros(1, 2, 4, 4, 4), torch.zeros(2, 1, 3, 3, 3, dtype=torch.long))


def test_stage_shape_transform_lengths_are_small():
    # the whole point of the wrapped layout: length S + K//2, not S + K - 1
    spatial, k = (48, 48, 48), (21, 21, 21)
    assert math.prod(fft_lengths(spatial, k)) <= 60**3 < (48 + 20) ** 3
