"""Core layers: distance prior, modulated kernel, RepLKConv3d folding, LayerNorm3d, and upstream-bug regressions."""

import copy
import importlib
import math
import pkgutil
import shutil

import pytest
import timm.utils
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import rep3d
from rep3d.errors import Rep3DTypeError, Rep3DValueError
from rep3d.layers import (
    MASK_FORMS,
    LayerNorm3d,
    ModulatedKernelParam,
    RepLKConv3d,
    crop_kernel,
    distance_prior,
    fold_batchnorm,
    mask_health,
    mask_health_scalars,
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
    "lrbm-additive": dict(modulation="lrbm", mask_form="additive"),
    "lrbm-tanh": dict(modulation="lrbm", mask_form="tanh"),
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


def test_lrbm_mask_starts_close_to_prior():
    torch.manual_seed(0)
    for form in MASK_FORMS:
        mod = ModulatedKernelParam(9, "lrbm", mask_form=form)
        mask, prior = mod.mask(), mod.prior_volume()
        # multiplicative forms start within 20 % of P everywhere; the additive one within 0.05 of it (absolute)
        assert ((mask - prior).abs() < (0.05 if form == "additive" else 0.2 * prior)).all(), form


@pytest.mark.parametrize("form", ["exp", "softmax", "tanh"])
def test_sign_keeping_forms_never_flip_a_kernel_sign_even_with_adversarial_generators(form):
    """Upstream bug 4: the official mask is unbounded and can flip signs; the exp and tanh forms promise not to."""
    torch.manual_seed(0)
    mod = ModulatedKernelParam(9, "lrbm", mask_form=form)
    prior = mod.prior_volume()
    with torch.no_grad():
        for p in mod.generator.parameters():
            p.normal_(0, 3.0)
    mask = mod.mask()
    assert (mask >= 0).all()
    if form == "tanh":
        assert (mask <= 2 * prior + 1e-6).all()


def _set_generator_output(mod: ModulatedKernelParam, value: float) -> None:
    """Make the generator output the constant ``value`` everywhere (last conv: zero weight, bias = value / gain)."""
    last = getattr(mod.generator, f"conv{mod.generator.depth}")
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(value / mod.generator.output_gain)


class _FixedOutput(nn.Module):
    """Stands in for the generator: returns a given tensor (and has no parameters)."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        return self.out


@pytest.mark.parametrize(("form", "expected"), [
    ("additive", lambda p, f: p + f), ("exp", lambda p, f: p * f.exp()),
    ("softmax", lambda p, f: p * f.exp() / f.exp().mean()), ("tanh", lambda p, f: p * (1 + f.tanh())),
])
def test_mask_forms_compute_their_formula(form, expected):
    mod = ModulatedKernelParam(5, "lrbm", mask_form=form)
    f = torch.randn(1, 1, 5, 5, 5, generator=torch.Generator().manual_seed(0))
    mod.generator = _FixedOutput(f)
    prior = mod.prior_volume()
    torch.testing.assert_close(mod.mask(), expected(prior, f))


def test_softmax_form_keeps_the_mean_ratio_at_one_and_cannot_overflow():
    """The mask's overall scale is absorbed by BatchNorm (or W): softmax removes that direction instead of letting the
    generator drift along it (into tanh's ceiling, or exp's overflow)."""
    mod = ModulatedKernelParam(7, "lrbm", mask_form="softmax")
    for value in (0.0, 5.0, 200.0):
        _set_generator_output(mod, value)
        torch.testing.assert_close(mod.mask(), mod.prior_volume())  # a constant output changes nothing
    f = torch.zeros(1, 1, 7, 7, 7)
    f[0, 0, 3, 3, 3] = 500.0  # exp(500) overflows float32; softmax does not
    mod.generator = _FixedOutput(f)
    ratio = mod.mask() / mod.prior_volume()
    assert torch.isfinite(ratio).all() and ratio.mean().item() == pytest.approx(1.0)
    assert ratio[0, 0, 3, 3, 3].item() == pytest.approx(7**3)


def test_paper_generator_has_690_parameters_and_every_one_learns_at_init():
    """The paper's generator: two k7 convs with one hidden channel, GroupNorm and a sigmoid gate between them.
    GroupNorm over 1 channel x 21³ offsets normalises over the volume, so unlike upstream's LayerNorm over a
    size-1 channel axis it does not collapse to its bias: every parameter gets gradient from the first backward."""
    torch.manual_seed(0)
    conv = RepLKConv3d(3, 21)
    gen = conv.modulation.generator
    assert sum(p.numel() for p in gen.parameters()) == 344 + 2 + 344
    assert [type(m).__name__ for m in gen.children()] == ["Conv3d", "GroupNorm", "Conv3d"]
    conv(torch.randn(2, 3, 6, 6, 6)).square().mean().backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("scale", "low", "high"),
                         [("fan_in", 0.0, 2.0), ("sqrt_fan_in", 2.0, 20.0), ("none", 40.0, math.inf)])
def test_one_adam_step_moves_the_generator_output_by_the_scaled_amount(scale, low, high):
    """Adam moves every weight by ~lr; unscaled, the 343 weights of the last conv add up to ~100x lr on the output."""
    torch.manual_seed(0)
    conv = RepLKConv3d(3, 21, generator_output_scale=scale)
    gen, prior = conv.modulation.generator, conv.modulation.prior_volume()
    before = gen(prior).detach()
    lr = 1e-3
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    conv(torch.randn(2, 3, 6, 6, 6)).square().mean().backward()
    opt.step()
    moved = (gen(prior).detach() - before).abs().max().item()
    assert low * lr < moved <= high * lr


def test_replkconv_passes_the_generator_knobs_on():
    conv = RepLKConv3d(4, 21, generator_kernel_size=5, generator_hidden_channels=3, generator_depth=3)
    gen = conv.modulation.generator
    assert (gen.kernel_size, gen.hidden_channels, gen.depth) == (5, 3, 3)
    convs = [m for m in gen.modules() if isinstance(m, nn.Conv3d)]
    assert [c.kernel_size for c in convs] == [(5, 5, 5)] * 3
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 3), (3, 3), (3, 1)]
    assert conv.modulation.mask().shape == (1, 1, 21, 21, 21)
    with pytest.raises(ValueError, match="generator_depth"):
        RepLKConv3d(4, 7, generator_depth=1)
    with pytest.raises(ValueError, match="generator_kernel_size"):
        RepLKConv3d(4, 7, generator_kernel_size=4)
    with pytest.raises(ValueError, match="mask_form"):
        RepLKConv3d(4, 7, mask_form="sigmoid")


def test_folding_removes_every_generator_parameter_whatever_its_shape():
    torch.manual_seed(0)
    conv = RepLKConv3d(4, 7, generator_kernel_size=3, generator_hidden_channels=2, generator_depth=4)
    x = torch.randn(2, 4, 6, 6, 6)
    _train_steps(conv, x)
    conv.eval()
    with torch.no_grad():
        y = conv(x)
        conv.reparameterize()
        assert set(conv.state_dict()) == {"weight", "bias"}
        assert (conv(x) - y).abs().max() <= 1e-5 * y.abs().max()


# --- mask health -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("form", "value", "at_bound", "ratio", "negative"), [
    ("tanh", 10.0, 1.0, 2.0, 0.0),            # the ceiling 2P: the failure seen in the first bundled weights
    ("tanh", -10.0, 1.0, 0.0, 0.0),           # the floor 0
    ("tanh", 0.0, 0.0, 1.0, 0.0),
    ("exp", -10.0, 1.0, math.exp(-10), 0.0),  # M -> 0, the only bound of exp
    ("exp", 3.0, 0.0, math.exp(3), 0.0),      # exp has no upper bound to saturate at
    ("softmax", 7.0, 0.0, 1.0, 0.0),          # a constant output is a no-op for softmax
    ("additive", -3.0, 1.0, None, 1.0),       # every sign flipped: every element beyond |M/P - 1| >= 0.98
    ("additive", 0.0, 0.0, 1.0, 0.0),         # at the prior
])
def test_mask_stats_reports_a_constructed_saturation_exactly(form, value, at_bound, ratio, negative):
    mod = ModulatedKernelParam(21, "lrbm", mask_form=form)
    _set_generator_output(mod, value)
    stats = mod.mask_stats()
    assert stats["at_bound"] == at_bound and stats["negative"] == negative
    if ratio is not None:
        for key in ("ratio_centre", "ratio_ring1", "ratio_ring2", "ratio_ring4", "ratio_ring8", "ratio_edge"):
            assert stats[key] == pytest.approx(ratio, rel=1e-4, abs=1e-6), key
    assert stats["generator_grad_norm"] is None  # no backward yet


def test_additive_mask_stats_count_elements_far_from_the_prior_by_hand():
    # M = P + 0.25 on a 5³ kernel, P = 1 / (1 + d): |M/P - 1| = 0.25 (1 + d) >= 0.98 exactly where d >= 2.92, i.e.
    # at the 24 offsets (±2, ±2, ±1) and permutations (d = 3) and the 8 corners (d = sqrt 12); (±2, ±2, 0) has
    # d = 2.83 and stays below
    mod = ModulatedKernelParam(5, "lrbm", mask_form="additive")
    _set_generator_output(mod, 0.25)
    stats = mod.mask_stats()
    assert stats["at_bound"] == pytest.approx(32 / 125)
    d = [math.sqrt(i * i + j * j + k * k) for i in range(-2, 3) for j in range(-2, 3) for k in range(-2, 3)]
    assert stats["prior_distance"] == pytest.approx(sum(0.25 * (1 + x) for x in d) / 125, rel=1e-5)
    assert stats["negative"] == 0.0


def test_mask_stats_counts_a_softmax_mask_collapsed_onto_one_element():
    mod = ModulatedKernelParam(21, "lrbm", mask_form="softmax")
    f = torch.zeros(1, 1, 21, 21, 21)
    f[0, 0, 10, 10, 10] = 40.0
    mod.generator = _FixedOutput(f)
    stats = mod.mask_stats()
    assert stats["at_bound"] == pytest.approx((21**3 - 1) / 21**3)  # every element but the centre is ~0
    assert stats["ratio_centre"] == pytest.approx(21**3, rel=1e-4)


def test_mask_stats_rings_and_gradient_norm():
    mod = ModulatedKernelParam(5, "lrbm", mask_form="additive")
    _set_generator_output(mod, 0.25)
    stats = mod.mask_stats()
    prior = distance_prior(5)
    assert stats["ratio_centre"] == pytest.approx(1.25)                   # P = 1 at the centre
    # shell 1 (0.5 < d < 1.5): 6 face neighbours (P = 1/2) and 12 edge neighbours (P = 1/(1 + sqrt 2))
    assert stats["ratio_ring1"] == pytest.approx((6 * 1.5 + 12 * (1 + 0.25 * (1 + math.sqrt(2)))) / 18, rel=1e-5)
    assert stats["ratio_ring4"] is None and stats["ratio_ring8"] is None  # a 5³ kernel has no such shells
    edge = torch.ones(5, 5, 5, dtype=torch.bool)
    edge[1:-1, 1:-1, 1:-1] = False
    assert stats["ratio_edge"] == pytest.approx(float((1 + 0.25 / prior[edge]).mean()), rel=1e-5)
    mod(torch.randn(2, 1, 5, 5, 5)).square().sum().backward()
    want = torch.cat([p.grad.flatten() for p in mod.generator.parameters()]).norm()
    assert mod.mask_stats()["generator_grad_norm"] == pytest.approx(float(want), rel=1e-5)
    assert ModulatedKernelParam(5, "fixed").mask_stats()["at_bound"] == 0.0
    assert RepLKConv3d(2, 5, modulation=None).mask_stats() is None


def test_mask_health_collects_every_learnable_mask_of_a_model():
    model = nn.Sequential(RepLKConv3d(2, 5), RepLKConv3d(2, 5, modulation="fixed"),
                          RepLKConv3d(2, 5, mask_form="tanh"))
    _set_generator_output(model[2].modulation, 10.0)
    health = mask_health(model)
    assert sorted(health) == ["0", "2"]
    scalars = mask_health_scalars(model)
    assert scalars["mask/at_bound_max"] == 1.0 and scalars["mask/2/at_bound"] == 1.0
    assert math.isnan(scalars["mask/generator_grad_norm"])  # no gradient yet
    assert all(isinstance(v, float) for v in scalars.values())
    assert mask_health_scalars(nn.Sequential(RepLKConv3d(2, 5, modulation=None))) == {}


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
    with pytest.raises(Rep3DValueError, match=r"built for kernels .*5, 5, 5.* got weight of shape \(4, 1, 3, 3, 3\)"):
        mod(torch.randn(4, 1, 3, 3, 3))
    with pytest.raises(Rep3DTypeError, match="floating-point weight"):
        mod(torch.ones(4, 1, 5, 5, 5, dtype=torch.int64))
    with pytest.raises(Rep3DValueError, match="modulation must be 'lrbm' or 'fixed', got 'learned'"):
        ModulatedKernelParam(5, "learned")


def test_modulated_kernel_old_mode_keyword_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="modulation="):
        mod = ModulatedKernelParam(5, mode="fixed")
    assert mod.modulation == "fixed" and mod.generator is None


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
    # decided before compiling: an error message that merely mentions "compiler" must never turn into a skip
    if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler on PATH for torch.compile's CPU backend")
    compiled = torch.compile(twin, fullgraph=True)  # fails on any graph break
    y = compiled(x)
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
        (dict(kernel_size=4), Rep3DValueError, r"odd.*got 4"),
        (dict(kernel_size=1), Rep3DValueError, r">= 3.*got 1"),
        (dict(kernel_size=(5, 5)), Rep3DTypeError, "triple"),
        (dict(kernel_size=5.0), Rep3DTypeError, "odd int"),
        (dict(modulation="learned"), Rep3DValueError, "modulation"),
        (dict(small_kernel=7, kernel_size=7), Rep3DValueError, "smaller than kernel_size"),
        (dict(conv_backend="cudnn"), Rep3DValueError, "conv_backend"),
    ],
)
def test_replkconv3d_rejects_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        RepLKConv3d(4, **kwargs)


def test_replkconv3d_rejects_bad_input_naming_expected_and_given():
    conv = RepLKConv3d(4, 5)
    with pytest.raises(Rep3DValueError, match=r"5-D input .* got 4-D .*x\[None\]"):
        conv(torch.randn(4, 6, 6, 6))
    with pytest.raises(Rep3DValueError, match=r"built for 4 channels but the input has 3"):
        conv(torch.randn(1, 3, 6, 6, 6))
    with pytest.raises(Rep3DTypeError, match="floating-point input"):
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
    with pytest.raises(Rep3DValueError, match="centre-pad"):
        pad_kernel(pad_kernel(w, 5), 3)


def test_layernorm3d_normalises_over_channels():
    ln = LayerNorm3d(4)
    x = torch.randn(2, 4, 3, 5, 6) * 3 + 1
    y = ln(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 3, 5, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(2, 3, 5, 6), atol=1e-3, rtol=0)
    with pytest.raises(Rep3DValueError, match=r"expects \[B, 4, D, H, W\]"):
        ln(torch.randn(2, 3, 4, 4, 4))
