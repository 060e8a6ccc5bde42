"""Core layers: distance prior, modulated kernel, RepLKConv3d folding, LayerNorm3d, and upstream-bug regressions."""

import copy
import importlib
import pkgutil

import pytest
import timm.utils
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import rep3d
from rep3d.layers import (
    LayerNorm3d,
    ModulatedKernelParam,
    RepLKConv3d,
    crop_kernel,
    distance_prior,
    fold_batchnorm,
    pad_kernel,
)

MODES = {
    "lrbm": dict(modulation="lrbm"),
    "fixed": dict(modulation="fixed"),
    "none": dict(modulation=None),
    "csla": dict(modulation=None, small_kernel=3),
    "csla+lrbm": dict(modulation="lrbm", small_kernel=3),
    "lrbm-no-norm": dict(modulation="lrbm", norm=False, small_kernel=3, bias=True),
    "learnable-beta": dict(modulation="lrbm", learnable_beta=True, beta=2.0),
}


def _train_steps(module: nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    module.train()
    target = None
    for _ in range(steps):
        opt.zero_grad()
        y = module(x + 0.3)
        target = torch.randn_like(y) if target is None else target
        F.mse_loss(y, target).backward()
        opt.step()


# --- distance prior ---------------------------------------------------------------------------------------------

def test_distance_prior_values_and_shape():
    p = distance_prior(5)
    assert p.shape == (5, 5, 5)
    assert p[2, 2, 2] == 1.0
    assert p[1, 2, 2] == pytest.approx(0.5)
    assert p[0, 0, 0] == pytest.approx(1 / (1 + (12**0.5)))
    p2 = distance_prior(5, beta=2.0)
    assert p2[1, 2, 2] == pytest.approx(2 / 3)
    assert distance_prior((3, 5, 7)).shape == (3, 5, 7)


def test_distance_prior_is_differentiable_in_beta():
    beta = torch.tensor(1.5, requires_grad=True)
    distance_prior(3, beta).sum().backward()
    assert beta.grad is not None and beta.grad.abs() > 0


# --- ModulatedKernelParam ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [3, 5, 21])
def test_mask_has_kernel_shape_for_every_kernel_size(k):
    """Upstream bug 1: the second generator conv padded 7 with kernel 7 (29³ mask vs 21³ kernel)."""
    mod = ModulatedKernelParam(k, "lrbm")
    assert mod.mask().shape == (1, 1, k, k, k)
    assert ModulatedKernelParam(k, "fixed").mask().shape == (1, 1, k, k, k)


def test_lrbm_mask_starts_close_to_prior_and_stays_positive_and_bounded():
    torch.manual_seed(0)
    mod = ModulatedKernelParam(9, "lrbm")
    prior = mod.prior_volume()
    ratio = mod.mask() / prior
    assert ((ratio - 1).abs() < 0.1).all()
    # adversarial generator weights: the mask must still not flip signs nor exceed 2P (upstream bug 4: unbounded)
    with torch.no_grad():
        for p in mod.generator.parameters():
            p.normal_(0, 50.0)
    mask = mod.mask()
    assert (mask >= 0).all() and (mask <= 2 * prior + 1e-6).all()


def test_every_generator_parameter_gets_gradient_after_one_backward():
    """Upstream bug 2: a LayerNorm over one channel outputs its bias, so nothing upstream learned."""
    torch.manual_seed(0)
    conv = RepLKConv3d(4, 7, modulation="lrbm", learnable_beta=True)
    conv(torch.randn(2, 4, 6, 6, 6)).square().mean().backward()
    named = dict(conv.modulation.named_parameters())
    assert set(named) >= {"log_beta", "generator.conv1.weight", "generator.norm.weight", "generator.conv2.weight"}
    for name, p in named.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mask_depends_on_generator_parameters():
    mod = ModulatedKernelParam(7, "lrbm")
    before = mod.mask().detach().clone()
    with torch.no_grad():
        mod.generator.conv1.weight.add_(0.5)
    assert not torch.equal(before, mod.mask())


def test_mask_is_computed_once_per_forward_and_broadcast_over_channels():
    """Upstream bug 4: the mask was computed on C copies."""
    conv = RepLKConv3d(16, 7, modulation="lrbm", small_kernel=3)
    shapes = []
    conv.modulation.generator.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    conv(torch.randn(2, 16, 5, 5, 5))
    assert shapes == [(1, 1, 7, 7, 7)]


def test_modulated_kernel_works_as_parametrization_of_a_plain_conv():
    conv = nn.Conv3d(6, 6, 5, padding=2, groups=6)
    w0 = conv.weight.detach().clone()
    parametrize.register_parametrization(conv, "weight", ModulatedKernelParam(5, "lrbm"))
    mod = conv.parametrizations.weight[0]
    torch.testing.assert_close(conv.weight, w0 * mod.mask())
    conv(torch.randn(1, 6, 4, 4, 4)).sum().backward()
    assert conv.parametrizations.weight.original.grad.abs().sum() > 0
    assert mod.generator.conv1.weight.grad.abs().sum() > 0


def test_modulated_kernel_rejects_wrong_weights():
    mod = ModulatedKernelParam(5)
    with pytest.raises(ValueError, match=r"built for kernels .*5, 5, 5.* got weight of shape \(4, 1, 3, 3, 3\)"):
        mod(torch.randn(4, 1, 3, 3, 3))
    with pytest.raises(TypeError, match="floating-point weight"):
        mod(torch.ones(4, 1, 5, 5, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="mode"):
        ModulatedKernelParam(5, "learned")


# --- RepLKConv3d: upstream bug 3 (weight reassigned inside forward) ----------------------------------------------

def test_weight_parameter_object_is_unchanged_by_forward():
    conv = RepLKConv3d(4, 5)
    weight = conv.weight
    before = weight.detach().clone()
    conv(torch.randn(1, 4, 6, 6, 6))
    conv.eval()
    conv(torch.randn(1, 4, 6, 6, 6))
    assert conv.weight is weight
    assert torch.equal(conv.weight, before)


def test_optimizer_step_changes_the_kernel_the_forward_uses():
    torch.manual_seed(0)
    conv = RepLKConv3d(4, 5, modulation="lrbm", norm=False)
    x = torch.randn(1, 4, 6, 6, 6)
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    y0 = conv(x)
    y0.square().mean().backward()
    opt.step()
    y1 = conv(x)
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y1, F.conv3d(x, conv.weight * conv.modulation.mask(), padding=2, groups=4))


def test_repeated_eval_forwards_are_identical_no_mask_compounding():
    conv = RepLKConv3d(4, 5, modulation="lrbm").eval()
    x = torch.randn(2, 4, 6, 6, 6)
    outs = [conv(x) for _ in range(3)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_every_module_in_the_package_imports():
    """Upstream bug 5: modules imported code that was not in the repository."""
    names = [m.name for m in pkgutil.walk_packages(rep3d.__path__, "rep3d.") if m.name != "rep3d.__main__"]
    assert "rep3d.layers.conv" in names
    for name in names:
        importlib.import_module(name)


# --- RepLKConv3d: deploy folding ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(MODES))
def test_deploy_matches_train_outputs(mode):
    torch.manual_seed(0)
    conv = RepLKConv3d(6, 7, **MODES[mode])
    x = torch.randn(2, 6, 8, 7, 9)
    _train_steps(conv, x)
    conv.eval()
    with torch.no_grad():
        y = conv(x)
        deployed = copy.deepcopy(conv)
        deployed.reparameterize()
        y_deploy = deployed(x)
    assert deployed.deploy and set(deployed.state_dict()) == {"weight", "bias"}
    assert [n for n, _ in deployed.named_children()] == []
    assert (y - y_deploy).abs().max() <= 1e-5 * y.abs().max()
    deployed.reparameterize()  # a no-op the second time
    assert torch.equal(deployed(x), y_deploy)


def test_deployed_state_dict_loads_into_module_built_with_deploy_true():
    conv = RepLKConv3d(4, 5, small_kernel=3)
    _train_steps(conv, torch.randn(2, 4, 6, 6, 6))
    conv.eval().reparameterize()
    fresh = RepLKConv3d(4, 5, small_kernel=3, deploy=True)
    fresh.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 6, 6, 6)
    assert torch.equal(fresh(x), conv(x))


@pytest.mark.parametrize("mode", ["lrbm", "csla+lrbm"])
def test_train_state_dict_round_trip(mode):
    conv = RepLKConv3d(4, 5, **MODES[mode])
    _train_steps(conv, torch.randn(2, 4, 6, 6, 6))
    fresh = RepLKConv3d(4, 5, **MODES[mode])
    fresh.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 6, 6, 6)
    conv.eval()
    fresh.eval()
    assert torch.equal(fresh(x), conv(x))


def test_timm_reparameterize_model_folds_a_model_containing_replkconv3d():
    model = nn.Sequential(nn.Conv3d(1, 4, 1), RepLKConv3d(4, 5, small_kernel=3), nn.GELU())
    x = torch.randn(2, 1, 6, 6, 6)
    _train_steps(model, x)
    model.eval()
    deployed = timm.utils.reparameterize_model(model)
    assert deployed[1].deploy and not model[1].deploy
    torch.testing.assert_close(deployed(x), model(x), atol=1e-5, rtol=1e-5)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    conv = RepLKConv3d(4, 5, small_kernel=3)
    twin = copy.deepcopy(conv)
    twin.grad_checkpointing = True
    x = torch.randn(2, 4, 6, 6, 6)
    conv(x).square().sum().backward()
    twin(x).square().sum().backward()
    for (name, a), b in zip(conv.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    torch.testing.assert_close(conv.bn.running_mean, twin.bn.running_mean)  # BN stats updated once, not twice


@pytest.mark.parametrize("backend", ["auto", "direct"])
def test_torch_compile_fullgraph_matches_eager_in_train_and_eval(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    conv = RepLKConv3d(4, 5, small_kernel=3, conv_backend=backend)
    twin = copy.deepcopy(conv)
    x = torch.randn(2, 4, 6, 6, 6)
    try:
        compiled = torch.compile(twin, fullgraph=True)  # fails on any graph break
        y = compiled(x)
    except Exception as exc:  # pragma: no cover - platform dependent
        if "compiler" in str(exc).lower() or "cpp" in str(exc).lower():
            pytest.skip(f"no working C++ compiler for torch.compile here: {exc}")
        raise
    ref = conv(x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    y.square().mean().backward()
    ref.square().mean().backward()
    for (name, a), b in zip(conv.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
    conv.eval(), twin.eval()
    for size in (6, 9):  # a second volume size: one more graph, no failure
        x = torch.randn(1, 4, size, size, size)
        torch.testing.assert_close(compiled(x), conv(x), atol=1e-5, rtol=1e-5)


# --- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(kernel_size=4), ValueError, r"odd.*got 4"),
        (dict(kernel_size=1), ValueError, r">= 3.*got 1"),
        (dict(kernel_size=(5, 5)), TypeError, "triple"),
        (dict(kernel_size=5.0), TypeError, "odd int"),
        (dict(modulation="learned"), ValueError, "modulation"),
        (dict(small_kernel=7, kernel_size=7), ValueError, "smaller than kernel_size"),
        (dict(conv_backend="cudnn"), ValueError, "conv_backend"),
    ],
)
def test_replkconv3d_rejects_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        RepLKConv3d(4, **kwargs)


def test_replkconv3d_rejects_bad_input_naming_expected_and_given():
    conv = RepLKConv3d(4, 5)
    with pytest.raises(ValueError, match=r"5-D input .* got 4-D .*x\[None\]"):
        conv(torch.randn(4, 6, 6, 6))
    with pytest.raises(ValueError, match=r"built for 4 channels but the input has 3"):
        conv(torch.randn(1, 3, 6, 6, 6))
    with pytest.raises(TypeError, match="floating-point input"):
        conv(torch.ones(1, 4, 6, 6, 6, dtype=torch.int32))


# --- pure kernel algebra and LayerNorm3d --------------------------------------------------------------------------

def test_fold_batchnorm_matches_conv_then_batchnorm():
    torch.manual_seed(0)
    bn = nn.BatchNorm3d(3)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    bn.eval()
    w, b = torch.randn(3, 1, 3, 3, 3), torch.randn(3)
    x = torch.randn(2, 3, 5, 5, 5)
    fw, fb = fold_batchnorm(w, b, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    torch.testing.assert_close(F.conv3d(x, fw, fb, padding=1, groups=3), bn(F.conv3d(x, w, b, padding=1, groups=3)))


def test_pad_and_crop_kernel_are_exact_inverses_and_preserve_same_conv():
    w = torch.randn(2, 1, 3, 3, 3)
    big = pad_kernel(w, (7, 5, 3))
    assert big.shape == (2, 1, 7, 5, 3)
    assert torch.equal(crop_kernel(big, (3, 3, 3)), w)
    x = torch.randn(1, 2, 6, 6, 6)
    torch.testing.assert_close(F.conv3d(x, big, padding=(3, 2, 1), groups=2), F.conv3d(x, w, padding=1, groups=2))
    with pytest.raises(ValueError, match="centre-pad"):
        pad_kernel(pad_kernel(w, 5), 3)


def test_layernorm3d_normalises_over_channels():
    ln = LayerNorm3d(4)
    x = torch.randn(2, 4, 3, 5, 6) * 3 + 1
    y = ln(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 3, 5, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(2, 3, 5, 6), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match=r"expects \[B, 4, D, H, W\]"):
        ln(torch.randn(2, 3, 4, 4, 4))
