"""The learning-rate fields of docs/design.md in float64: re-parameterized training == training the merged kernel
with an element-wise lr field."""

import pytest
import torch
import torch.nn.functional as F

from rep3d.layers import RepLKConv3d, csla_lr_field, depthwise_conv3d, distance_prior, mask_lr_field, pad_kernel

K, KS, C, STEPS = 7, 3, 3, 6
TOL = 1e-12


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, 9, 8, 10, generator=g, dtype=torch.float64)
    target = torch.randn(2, C, 9, 8, 10, generator=g, dtype=torch.float64)

    def loss_of(kernel: torch.Tensor) -> torch.Tensor:
        # a non-quadratic loss, so that the gradient changes along the trajectory
        y = F.conv3d(x, kernel, padding=kernel.shape[-1] // 2, groups=C)
        return (torch.tanh(y) - target).pow(2).mean()

    w_large = torch.randn(C, 1, K, K, K, generator=g, dtype=torch.float64) * 0.1
    w_small = torch.randn(C, 1, KS, KS, KS, generator=g, dtype=torch.float64) * 0.1
    return loss_of, w_large, w_small


def _train_merged(loss_of, w0: torch.Tensor, field: torch.Tensor, optimizer: str, steps: int, betas=(0.9, 0.999),
                  momentum: float = 0.0) -> list[torch.Tensor]:
    """Hand-written SGD(momentum) / Adam(eps=0) on one kernel with an element-wise learning rate ``field``."""
    w = w0.clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    out = []
    for t in range(1, steps + 1):
        wr = w.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(wr), wr)
        if optimizer == "sgd":
            m = grad if t == 1 else momentum * m + grad
            w = w - field * m
        else:
            m = betas[0] * m + (1 - betas[0]) * grad
            v = betas[1] * v + (1 - betas[1]) * grad * grad
            m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
            w = w - field * m_hat / v_hat.sqrt()
        out.append(w)
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_csla_two_branch_training_equals_merged_kernel_with_lr_field(optimizer):
    loss_of, w_large0, w_small0 = _problem()
    a_large, a_small, lr_large, lr_small = 0.7, -1.3, 0.05, 0.02
    w_large = w_large0.clone().requires_grad_(True)
    w_small = w_small0.clone().requires_grad_(True)
    if optimizer == "sgd":
        opt = torch.optim.SGD([{"params": [w_large], "lr": lr_large}, {"params": [w_small], "lr": lr_small}],
                              momentum=0.9)
    else:
        opt = torch.optim.Adam([{"params": [w_large], "lr": lr_large}, {"params": [w_small], "lr": lr_small}],
                               eps=0.0)

    def merged() -> torch.Tensor:
        return a_large * w_large + a_small * pad_kernel(w_small, K)

    two_branch = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss_of(merged()).backward()
        opt.step()
        two_branch.append(merged().detach())

    field = csla_lr_field(K, KS, a_large, a_small, lr_large, lr_small, optimizer)
    reference = _train_merged(loss_of, (a_large * w_large0 + a_small * pad_kernel(w_small0, K)), field, optimizer,
                              STEPS, momentum=0.9)
    for step, (got, want) in enumerate(zip(two_branch, reference, strict=True)):
        assert (got - want).abs().max().item() <= TOL, f"step {step}"
    # the trajectory really moved: the test would notice a wrong field
    assert (two_branch[-1] - two_branch[0]).abs().max() > 1e-4


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_constant_mask_training_equals_merged_kernel_with_lr_field(optimizer):
    loss_of, w0, _ = _problem(1)
    mask = distance_prior(K, dtype=torch.float64) * torch.linspace(-1.0, 1.5, K, dtype=torch.float64)  # signs too
    lr = 0.03
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr, momentum=0.9) if optimizer == "sgd" else torch.optim.Adam([w], lr=lr, eps=0.0)
    masked = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss_of(w * mask).backward()
        opt.step()
        masked.append((w * mask).detach())
    reference = _train_merged(loss_of, w0 * mask, mask_lr_field(mask, lr, optimizer), optimizer, STEPS, momentum=0.9)
    for step, (got, want) in enumerate(zip(masked, reference, strict=True)):
        assert (got - want).abs().max().item() <= TOL, f"step {step}"


def test_lr_field_values_match_the_closed_forms():
    sgd = csla_lr_field(5, 3, 2.0, 0.5, 0.1, 0.4, "sgd")
    assert sgd[0, 0, 0].item() == pytest.approx(4 * 0.1)
    assert sgd[2, 2, 2].item() == pytest.approx(4 * 0.1 + 0.25 * 0.4)
    adam = csla_lr_field(5, 3, -2.0, 0.5, 0.1, 0.4, "adam")
    assert adam[1, 1, 1].item() == pytest.approx(2 * 0.1 + 0.5 * 0.4)
    assert adam[0, 2, 2].item() == pytest.approx(2 * 0.1)
    with pytest.raises(ValueError, match="optimizer"):
        mask_lr_field(torch.ones(3), 0.1, "rmsprop")


# --- the same theory through RepLKConv3d itself (its own parameters, engines and optimizer state) ----------------

def _layer_problem(backend: str, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, 9, 8, 10, generator=g, dtype=torch.float64)
    target = torch.randn(2, C, 9, 8, 10, generator=g, dtype=torch.float64)

    def loss_of_output(y: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(y) - target).pow(2).mean()

    def loss_of(kernel: torch.Tensor) -> torch.Tensor:  # the merged-kernel problem, same engine as the layer
        return loss_of_output(depthwise_conv3d(x, kernel, backend=backend))

    return x, loss_of_output, loss_of


def _optimizer(optimizer: str, groups: list[dict]) -> torch.optim.Optimizer:
    if optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9)
    return torch.optim.Adam(groups, eps=0.0)


@pytest.mark.parametrize("backend", ["fft", "direct"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_replkconv_fixed_mask_training_follows_the_mask_lr_field(optimizer, backend):
    x, loss_of_output, loss_of = _layer_problem(backend)
    conv = RepLKConv3d(C, K, modulation="fixed", norm=False, conv_backend=backend).double()
    lr = 0.03
    opt = _optimizer(optimizer, [{"params": list(conv.parameters()), "lr": lr}])
    mask = conv.modulation.mask()[0, 0].detach()
    w_eff0 = conv.effective_kernel().detach().clone()
    got = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss_of_output(conv(x)).backward()
        opt.step()
        got.append(conv.effective_kernel().detach().clone())
    reference = _train_merged(loss_of, w_eff0, mask_lr_field(mask, lr, optimizer), optimizer, STEPS, momentum=0.9)
    for step, (a, b) in enumerate(zip(got, reference, strict=True)):
        assert (a - b).abs().max().item() <= TOL, f"step {step}"
    assert (got[-1] - w_eff0).abs().max() > 1e-4  # it really trained


@pytest.mark.parametrize("backend", ["fft", "direct"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_replkconv_csla_branches_train_like_the_merged_kernel_with_the_csla_field(optimizer, backend):
    x, loss_of_output, loss_of = _layer_problem(backend, seed=3)
    conv = RepLKConv3d(C, K, modulation=None, small_kernel=KS, norm=False, conv_backend=backend).double()
    lr_large, lr_small = 0.02, 0.05
    opt = _optimizer(optimizer, [{"params": [conv.weight], "lr": lr_large},
                                 {"params": [conv.small_weight], "lr": lr_small}])

    def merged() -> torch.Tensor:
        return (conv.weight + pad_kernel(conv.small_weight, K)).detach().clone()

    w0 = merged()
    got = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss_of_output(conv(x)).backward()
        opt.step()
        got.append(merged())
    field = csla_lr_field(K, KS, 1.0, 1.0, lr_large, lr_small, optimizer)
    reference = _train_merged(loss_of, w0, field, optimizer, STEPS, momentum=0.9)
    for step, (a, b) in enumerate(zip(got, reference, strict=True)):
        assert (a - b).abs().max().item() <= TOL, f"step {step}"
    # the centre moved differently from the rest: a uniform field would fail
    assert (got[-1] - w0).abs().max() > 1e-4
