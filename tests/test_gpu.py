"""Correctness on a CUDA device (``pytest -m gpu``, run by ``benchmarks/gpu_suite.py``).

Without CUDA every test here skips with the reason. ``REP3D_TEST_DEVICE=cpu`` runs them on the CPU instead -- the
dry run of ``gpu_suite.py --device cpu`` does, to prove the tests themselves work. There the parts that are
expensive on a CPU run at smaller sizes or skip with the reason: native 21^3 backward references (minutes on CPU),
models other than the tiny ones (tests/test_models.py covers them on CPU) and ``torch.compile`` (~1 min of
tracing on 2 cores).

float32 checks switch TF32 off: they test the engines' float32 arithmetic, not the TF32 setting.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

import rep3d
from rep3d.layers import depthwise_conv3d

pytestmark = pytest.mark.gpu

ALL_MODELS = rep3d.list_models()
ON_CPU_TOO = ("rep3d_tiny", "rep3d_tiny_csla")  # the families' code paths, cheap enough for the CPU dry run


@pytest.fixture(scope="module")
def device() -> torch.device:
    requested = os.environ.get("REP3D_TEST_DEVICE")
    if requested:
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            pytest.skip(f"REP3D_TEST_DEVICE={requested} but CUDA is not available")
        return dev
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (REP3D_TEST_DEVICE=cpu runs these on the CPU, as the gpu_suite dry run does)")
    return torch.device("cuda")


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _native(x, w, b=None):
    return F.conv3d(x, w, b, padding=tuple(k // 2 for k in w.shape[2:]), groups=x.shape[1])


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


# (batch, channels, spatial, kernel): non-cubic, S < K, K = 3..21, a multi-slab direct kernel gradient (24^3)
GRAD_SHAPES = [
    (2, 3, (5, 7, 6), (3, 5, 7)),
    (2, 2, (4, 4, 4), (9, 9, 9)),
    (2, 3, (6, 9, 11), (21, 21, 21)),
    (1, 2, (3, 5, 2), (21, 21, 21)),
    (2, 4, (24, 24, 24), (21, 21, 21)),
]
CPU_GRAD_SHAPES = GRAD_SHAPES[:2]  # native depthwise backward with a 21^3 kernel takes minutes on a CPU
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("backend", ["direct", "fft", "auto"])
def test_engine_output_and_gradients_match_native_float64(device, no_tf32, backend, dtype):
    for i, (b, c, s, k) in enumerate(GRAD_SHAPES if device.type == "cuda" else CPU_GRAD_SHAPES):
        gen = torch.Generator().manual_seed(i)
        x64 = torch.randn(b, c, *s, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        w64 = torch.randn(c, 1, *k, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        b64 = torch.randn(c, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        ref = _native(x64, w64, b64)
        g = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(device)
        ref_grads = torch.autograd.grad(ref, (x64, w64, b64), g)
        x, w, bias = (t.detach().to(dtype).requires_grad_() for t in (x64, w64, b64))
        y = depthwise_conv3d(x, w, bias, backend=backend)
        grads = torch.autograd.grad(y, (x, w, bias), g.to(dtype))
        assert y.dtype == dtype and y.device.type == device.type
        errors = {"y": _rel(y, ref)}
        errors |= {n: _rel(a, r) for n, a, r in zip(("x", "w", "b"), grads, ref_grads, strict=True)}
        assert max(errors.values()) <= TOL[dtype], (s, k, errors)


@pytest.mark.parametrize("backend", ["direct", "fft"])
def test_engine_gradcheck_float64(device, backend):
    x = torch.randn(2, 2, 4, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, 1, 3, 5, 7, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: depthwise_conv3d(*t, backend=backend), (x, w, b))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_deploy_matches_train_outputs_for_every_model(device, no_tf32, name):
    if device.type == "cpu" and name not in ON_CPU_TOO:
        pytest.skip("on CPU tests/test_models.py::test_train_then_reparameterize_gives_equal_outputs covers it")
    torch.manual_seed(0)
    model = rep3d.create_model(name, num_classes=3, kernel_size=3 if name.startswith("uxnet3d") else 5).to(device)
    x = torch.randn(2, 1, 16, 32, 16, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):  # move BatchNorm statistics and the mask away from their initial values
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        y = model(x)
        deployed = rep3d.reparameterize_model(model)
        y_deploy = deployed(x)
    assert rep3d.models.is_deployed(deployed)
    assert (y - y_deploy).abs().max() <= 1e-4 * y.abs().max()


def _tiny_batch(device, roi=32, classes=3):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, roi, roi, roi, generator=gen).to(device)
    y = torch.randint(0, classes, (2, 1, roi, roi, roi), generator=gen).to(device)
    return x, y


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_step_gives_finite_gradients_everywhere(device, amp):
    from monai.losses import DiceCELoss

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    # on CPU float16 convs have no fast kernels: a narrower rep3d_tiny keeps the step under a second
    small = {} if cuda else dict(kernel_size=5, widths=(4, 8, 16, 32), hidden_size=32)
    model = rep3d.create_model("rep3d_tiny", num_classes=3, **small)
    model = model.to(device, memory_format=torch.channels_last_3d).train()
    x, y = _tiny_batch(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # a modest initial scale: the default 2^16 may overflow on a first step by design (the scaler then skips the
    # step and backs off); this test asks for one real step with finite gradients
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10, enabled=dtype == torch.float16)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.autocast(device.type, dtype=dtype):
        loss = loss_fn(model(x.to(memory_format=torch.channels_last_3d)), y)
    assert torch.isfinite(loss)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n}: non-finite gradient under {amp}"
    generator_grads = [p.grad.abs().sum() for n, p in model.named_parameters() if "modulation" in n]
    assert generator_grads and all(g > 0 for g in generator_grads)  # the learnable mask trains under AMP
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == scale  # no overflow: the step was taken, not skipped
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_compile_matches_eager(device, no_tf32, mode):
    if device.type == "cpu":
        pytest.skip("torch.compile of rep3d_tiny takes about a minute of tracing on a 2-core CPU; a CUDA check")
    torch.manual_seed(0)
    eager = rep3d.create_model("rep3d_tiny", num_classes=3).to(device)
    compiled_model = copy.deepcopy(eager)
    eager.train(mode == "train")
    compiled_model.train(mode == "train")
    compiled = torch.compile(compiled_model)
    x, _ = _tiny_batch(device)
    if mode == "eval":
        with torch.no_grad():
            assert _rel(compiled(x), eager(x)) < 1e-4
        return
    out_e, out_c = eager(x), compiled(x)
    assert _rel(out_c, out_e) < 1e-4
    out_e.square().mean().backward()
    out_c.square().mean().backward()
    for (n, pe), (_, pc) in zip(eager.named_parameters(), compiled_model.named_parameters(), strict=True):
        assert _rel(pc.grad, pe.grad) < 1e-3, n
