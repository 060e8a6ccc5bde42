"""Model zoo: registry parity with timm, shapes, deploy equivalence, features, input errors, parameter counts."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import rep3d
from rep3d.errors import Rep3DValueError
from rep3d.models import Rep3D, Rep3DEncoder, UXNet3D, is_deployed

ALL = rep3d.list_models()


def _small(name: str, **kwargs):
    k = 3 if name.startswith("uxnet3d") else 5
    return rep3d.create_model(name, kernel_size=k, **kwargs)


def test_registry_lists_the_paper_variants():
    for size in ("tiny", "small", "base", "large"):
        for suffix in ("", "_fixed", "_vanilla", "_csla"):
            assert f"rep3d_{size}{suffix}" in ALL
    assert {"uxnet3d_base", "uxnet3d_base_lrbm"} <= set(ALL)
    assert rep3d.list_models("rep3d_tiny*") == ["rep3d_tiny", "rep3d_tiny_csla", "rep3d_tiny_fixed",
                                                "rep3d_tiny_vanilla"]


def test_rep3d_base_has_the_papers_parameter_count():
    with torch.device("meta"):  # no memory, no forward
        model = rep3d.create_model("rep3d_base", num_classes=16, in_chans=1)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 65.8e6) <= 0.01 * 65.8e6, params
    large_kernels = sum(m.weight.numel() for m in model.modules() if isinstance(m, rep3d.layers.RepLKConv3d))
    assert abs(large_kernels - 13.3e6) <= 0.01 * 13.3e6


def test_uxnet3d_base_has_its_papers_parameter_count():
    with torch.device("meta"):
        model = rep3d.create_model("uxnet3d_base", num_classes=16)
    assert abs(sum(p.numel() for p in model.parameters()) - 53.0e6) <= 0.01 * 53.0e6


# Folding is the same code at every size; base and large run at narrower widths (their own depths) so that the ten
# of them take seconds, not minutes, on a 2-core CI machine. The architecture table below checks their real widths.
NARROW = dict(widths=(16, 32, 64, 128), hidden_size=128)


@pytest.mark.parametrize("name", ALL)
def test_train_then_reparameterize_gives_equal_outputs(name):
    torch.manual_seed(0)
    narrow = NARROW if name.startswith(("rep3d_base", "rep3d_large", "uxnet3d_base")) else {}
    model = _small(name, num_classes=3, **narrow)
    x = torch.randn(2, 1, 16, 32, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        out = model(x)
        assert out.shape == (2, 3, 16, 32, 16)
        out.square().mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        y = model(x)
        deployed = rep3d.reparameterize_model(model)
        y_deploy = deployed(x)
    assert is_deployed(deployed) and not is_deployed(model)
    assert deployed.model_args["deploy"] is True
    names = [n for n, _ in deployed.named_parameters()]
    assert not any("modulation" in n or "small_" in n or ".bn." in n for n in names)
    assert (y - y_deploy).abs().max() <= 1e-4 * y.abs().max()
    # the deployed form is rebuildable from its args
    rebuilt = rep3d.create_model(name, **{k: v for k, v in deployed.model_args.items() if k != "kernel_size"},
                                 kernel_size=model.encoder.stages[0][0].dwconv.kernel_size[0]).eval()
    rebuilt.load_state_dict(deployed.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), y_deploy)


# The architecture table, written out here independently of rep3d/models/zoo.py: what each registered name must build.
SIZES = {
    "tiny": dict(widths=(12, 24, 48, 96), depths=(1, 1, 1, 1), hidden_size=192),
    "small": dict(widths=(32, 64, 128, 256), depths=(2, 2, 2, 2), hidden_size=512),
    "base": dict(widths=(48, 96, 192, 384), depths=(2, 2, 2, 2), hidden_size=768),
    "large": dict(widths=(64, 128, 256, 512), depths=(2, 2, 4, 2), hidden_size=1024),
}
# the paper's block (no residual) for every rep3d_* name, the paper's generator for the learnable mask
PAPER_GENERATOR = dict(mask_form="additive", generator_hidden_channels=1, generator_kernel_size=7, generator_depth=2,
                       generator_output_scale="sqrt_fan_in")
VARIANTS = {"": dict(modulation="lrbm", block_residual=False, **PAPER_GENERATOR),
            "_fixed": dict(modulation="fixed", block_residual=False),
            "_vanilla": dict(modulation=None, block_residual=False),
            "_csla": dict(modulation=None, small_kernel=3, block_residual=False)}
EXPECTED = {f"rep3d_{size}{suffix}": (Rep3D, {**spec, **variant})
            for size, spec in SIZES.items() for suffix, variant in VARIANTS.items()}
EXPECTED["uxnet3d_base"] = (UXNet3D, dict(SIZES["base"]))
EXPECTED["uxnet3d_base_lrbm"] = (UXNet3D, dict(SIZES["base"], modulation="lrbm"))


def test_every_registered_name_has_an_expected_architecture():
    assert set(ALL) == set(EXPECTED)


@pytest.mark.parametrize("name", ALL)
def test_registered_name_builds_the_class_from_its_config(name):
    cls, spec = EXPECTED[name]
    with torch.device("meta"):  # structure only: every size stays cheap
        built = rep3d.create_model(name, num_classes=5)
        direct = cls(num_classes=5, **spec)
    assert type(built) is cls
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in direct.state_dict().items()}
    assert built.model_args == {**spec, "in_chans": 1, "num_classes": 5}


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith("rep3d_tiny")])
def test_registered_name_initialises_and_computes_like_the_class_under_the_same_seed(name):
    cls, spec = EXPECTED[name]
    torch.manual_seed(0)
    built = rep3d.create_model(name, num_classes=3, kernel_size=5).eval()
    torch.manual_seed(0)
    direct = cls(num_classes=3, kernel_size=5, **spec).eval()
    built_state, direct_state = built.state_dict(), direct.state_dict()
    assert built_state.keys() == direct_state.keys()
    assert all(torch.equal(v, direct_state[k]) for k, v in built_state.items())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(built(x), direct(x))


@pytest.mark.parametrize("name", ALL)
def test_timm_create_model_sees_every_rep3d_name(name):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=5)
    assert type(model) is EXPECTED[name][0]
    assert model.pretrained_cfg["roi_size"] == ((64,) * 3 if name.startswith("rep3d_tiny") else (96,) * 3)
    assert name in timm.list_models("rep3d_*") + timm.list_models("uxnet3d_*")


@pytest.mark.parametrize("name", ALL)
def test_features_only_returns_the_encoder_maps(name):
    kernel = 3 if name.startswith("uxnet3d") else 5  # a 3^3 side branch needs a larger main kernel
    model = timm.create_model(name, features_only=True, kernel_size=kernel, out_indices=(0, 2, 3))
    feats = model(torch.randn(1, 1, 32, 32, 32))
    widths = model.feature_info.channels()
    assert [f.shape[1] for f in feats] == widths
    assert [f.shape[2:] for f in feats] == [torch.Size([16] * 3), torch.Size([4] * 3), torch.Size([2] * 3)]
    assert model.feature_info.reduction() == [2, 8, 16]
    assert not any("decoder" in k for k in model.state_dict())


def test_encoder_is_a_standalone_backbone():
    enc = Rep3DEncoder(in_chans=2, widths=(8, 16, 24, 32), depths=(1, 1, 1, 1), kernel_size=5)
    feats = enc(torch.randn(1, 2, 32, 16, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 16, 8, 16), (1, 16, 8, 4, 8), (1, 24, 4, 2, 4), (1, 32, 2, 1, 2)]
    assert [f["reduction"] for f in enc.feature_info] == [2, 4, 8, 16]


def test_spatial_size_off_the_stride_names_the_nearest_valid_sizes():
    model = _small("rep3d_tiny")
    with pytest.raises(Rep3DValueError, match=r"divisible by 16, got \(40, 32, 33\).*\(32, 32, 32\).*\(48, 32, 48\)"):
        model(torch.randn(1, 1, 40, 32, 33))


def test_wrong_channel_count_names_in_chans():
    model = _small("rep3d_tiny", in_chans=2)
    with pytest.raises(Rep3DValueError, match=r"in_chans=2.*input has 1"):
        model(torch.randn(1, 1, 32, 32, 32))


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(Rep3DValueError, match=r"unknown rep3d model 'rep3d_bse'.*rep3d_base"):
        rep3d.create_model("rep3d_bse")
    with pytest.raises(Rep3DValueError, match=r"no pretrained tag 'amos'"):
        rep3d.create_model("rep3d_base.amos")


def test_grad_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = _small("rep3d_tiny", num_classes=2)
    twin = copy.deepcopy(model)
    twin.set_grad_checkpointing(True)
    x = torch.randn(1, 1, 32, 32, 32)
    y, y_ckpt = model(x), twin(x)
    torch.testing.assert_close(y, y_ckpt)
    y.square().mean().backward()
    y_ckpt.square().mean().backward()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name, atol=1e-6, rtol=1e-4)


def test_reset_classifier_changes_the_number_of_outputs():
    model = _small("rep3d_tiny", num_classes=4)
    model.reset_classifier(7)
    assert model(torch.randn(1, 1, 32, 32, 32)).shape[1] == 7 and model.num_classes == 7


def test_model_info_counts_params_and_macs_on_the_meta_device():
    info = rep3d.model_info("rep3d_base")
    assert info["params"] == pytest.approx(65.85e6, rel=1e-3)
    assert info["deployed_params"] < info["params"]
    # ~702 GMAC: PyTorch counts transposed convs per input voxel (per output voxel it would be ~757; docs/design.md)
    assert 690e9 < info["macs"] < 760e9
    assert info["roi_size"] == (96, 96, 96) and info["metadata"]["spacing"] == (1.5, 1.5, 2.0)


def test_models_table_command_prints_every_model(capsys):
    from rep3d.cli import main

    assert main(["models", "rep3d_tiny*", "--table"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| rep3d_tiny")]
    assert len(rows) == 4 and "GMACs" in out
    assert "rep3d_tiny.phantom" in rows[0]  # the tag with weights shows on its architecture's row


def test_rep3d_class_defaults_are_the_paper_base():
    model = Rep3D()
    assert model.encoder.widths == (48, 96, 192, 384) and model.encoder.depths == (2, 2, 2, 2)
    assert model.encoder.stages[0][0].dwconv.kernel_size == (21, 21, 21)


# --- the paper's block and generator -------------------------------------------------------------------------------

def _official_block(x, conv):
    """The official Rep3D block: GELU(BN(conv(x, W * M))), no residual, written with plain torch ops."""
    bn = conv.bn
    k = conv.kernel_size[0]
    y = F.conv3d(x, conv.weight * conv.modulation.mask(), padding=k // 2, groups=conv.channels)
    return F.gelu(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))


def _randomise_batchnorms(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))


def test_rep3d_base_blocks_compute_the_official_block_function():
    """The paper's encoder is a plain stack: every rep3d_base block is GELU(BN(dwconv21(x, W * M))), no shortcut."""
    torch.manual_seed(0)
    model = rep3d.create_model("rep3d_base").eval()
    _randomise_batchnorms(model)
    blocks = [b for stage in model.encoder.stages for b in stage]
    assert len(blocks) == 8
    with torch.no_grad():
        for i, block in enumerate(blocks):
            assert block.dwconv.kernel_size == (21, 21, 21) and block.dwconv.modulation_kind == "lrbm"
            x = torch.randn(1, block.dwconv.channels, 4, 5, 3)
            torch.testing.assert_close(block(x), _official_block(x, block.dwconv), rtol=1e-5, atol=1e-5,
                                       msg=f"block {i}")


def test_block_residual_adds_the_shortcut_as_an_option():
    torch.manual_seed(0)
    plain = rep3d.create_model("rep3d_tiny", kernel_size=5).eval()
    residual = rep3d.create_model("rep3d_tiny", kernel_size=5, block_residual=True).eval()
    residual.load_state_dict(plain.state_dict())  # the shortcut has no parameters
    assert residual.model_args["block_residual"] is True and plain.model_args["block_residual"] is False
    x = torch.randn(2, 12, 4, 4, 4)
    with torch.no_grad():
        want = _official_block(x, plain.encoder.stages[0][0].dwconv)
        torch.testing.assert_close(plain.encoder.stages[0][0](x), want)
        torch.testing.assert_close(residual.encoder.stages[0][0](x), x + want)
    with pytest.raises(ValueError, match="block_residual=True"):
        rep3d.create_model("rep3d_tiny", kernel_size=5, drop_path_rate=0.1)


def test_drop_path_with_block_residual_drops_whole_residual_branches_at_linearly_decaying_rates():
    from timm.layers import DropPath

    torch.manual_seed(0)
    model = rep3d.create_model("rep3d_tiny", kernel_size=5, block_residual=True, drop_path_rate=0.6)
    blocks = [block for stage in model.encoder.stages for block in stage]
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0 for b in blocks]
    assert rates == pytest.approx([0.0, 0.2, 0.4, 0.6])  # timm's stochastic-depth rule: 0 to the rate, linearly
    last = blocks[-1].train()
    x = torch.randn(64, last.dwconv.channels, 2, 2, 2)
    with torch.no_grad():
        y = last(x)
    dropped = [bool(torch.equal(y[i], x[i])) for i in range(len(x))]  # a dropped sample keeps only the shortcut
    assert 10 < sum(dropped) < 54  # about 60 % of 64 samples; kept ones add a non-zero branch
    with torch.no_grad():
        torch.testing.assert_close(last.eval()(x), x + last.act(last.dwconv(x)))  # no drop in eval


@pytest.mark.parametrize("name", ["rep3d_tiny", "rep3d_base"])
def test_paper_named_models_use_the_papers_generator(name):
    with torch.device("meta"):
        model = rep3d.create_model(name)
    for conv in (m for m in model.modules() if isinstance(m, rep3d.layers.RepLKConv3d)):
        assert sum(p.numel() for p in conv.modulation.generator.parameters()) == 690
        assert conv.modulation.mask_form == model.model_args["mask_form"]


def test_generator_knobs_are_saved_and_rebuild_the_same_model(tmp_path):
    torch.manual_seed(0)
    knobs = dict(mask_form="tanh", generator_kernel_size=3, generator_hidden_channels=2, generator_depth=3,
                 block_residual=True)
    model = rep3d.create_model("rep3d_tiny", num_classes=3, kernel_size=5, **knobs).eval()
    _randomise_batchnorms(model)
    rep3d.save_pretrained(model, tmp_path / "m")
    again = rep3d.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()
    for key, value in knobs.items():
        assert again.model_args[key] == value, key
    gen = again.encoder.stages[0][0].dwconv.modulation.generator
    assert (gen.kernel_size, gen.hidden_channels, gen.depth) == (3, 2, 3)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
        deployed = rep3d.reparameterize_model(again)
    assert not [n for n in deployed.state_dict() if "generator" in n or "modulation" in n]


def test_bundled_weights_build_the_architecture_they_were_trained_with():
    """A tag pins its weights' constructor arguments: changing a default can never silently change what they
    compute, and a bare architecture name still builds the paper's model."""
    from rep3d.models.zoo import WEIGHTS_MODEL_ARGS

    with torch.device("meta"):
        tagged = rep3d.create_model("rep3d_tiny.phantom")
        bare = rep3d.create_model("rep3d_tiny")
        overridden = rep3d.create_model("rep3d_tiny.phantom", block_residual=not WEIGHTS_MODEL_ARGS[
            "rep3d_tiny.phantom"]["block_residual"])
    for key, value in WEIGHTS_MODEL_ARGS["rep3d_tiny.phantom"].items():
        assert tagged.model_args[key] == value, key
    assert bare.model_args["block_residual"] is False and bare.model_args["mask_form"] == "additive"
    assert overridden.model_args["block_residual"] != WEIGHTS_MODEL_ARGS["rep3d_tiny.phantom"]["block_residual"]


# ---------------------------------------------------------------------- timm's feature-extraction arguments, honoured

def _encoder():
    torch.manual_seed(0)
    return Rep3DEncoder(widths=(4, 8, 8, 8), depths=(1, 1, 1, 1), kernel_size=3).eval()


def test_forward_intermediates_norm_false_returns_the_raw_stage_outputs():
    enc = _encoder()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        normed = enc.forward_intermediates(x, norm=True, intermediates_only=True)
        raw = enc.forward_intermediates(x, norm=False, intermediates_only=True)
    for i, (a, b) in enumerate(zip(normed, raw, strict=True)):
        assert not torch.allclose(a, b)
        torch.testing.assert_close(enc.norms[i](b), a)


def test_forward_intermediates_rejects_an_output_format_other_than_ncdhw():
    with pytest.raises(Rep3DValueError, match=r"output_fmt='NHWC'.*'NCDHW'"):
        _encoder().forward_intermediates(torch.randn(1, 1, 32, 32, 32), output_fmt="NHWC")


def test_forward_intermediates_not_only_returns_the_final_features_and_the_intermediates():
    model = _small("rep3d_tiny").eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x, indices=[0, 1], norm=True)
        everything = model.forward_features(x)
    assert len(feats) == 2 and all(torch.equal(a, b) for a, b in zip(feats, everything[:2], strict=True))
    assert torch.equal(final, everything[-1])  # all stages ran although the last index taken is 1


def test_forward_intermediates_stop_early_skips_the_later_stages():
    enc = _encoder()
    calls = []
    enc.stages[3][0].register_forward_hook(lambda *_: calls.append(3))
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        enc.forward_intermediates(x, indices=[1], stop_early=True)
        assert calls == []
        enc.forward_intermediates(x, indices=[1], stop_early=False)  # timm's default: every stage runs
    assert calls == [3]


def test_prune_intermediate_layers_prune_norm_drops_the_feature_norms():
    x = torch.randn(1, 1, 32, 32, 32)
    kept, pruned = _encoder(), _encoder()
    assert kept.prune_intermediate_layers([0, 1], prune_norm=False) == [0, 1]
    assert pruned.prune_intermediate_layers([0, 1], prune_norm=True) == [0, 1]
    with torch.no_grad():
        raw = _encoder().forward_intermediates(x, [0, 1], norm=False, intermediates_only=True)
        pruned_out = pruned.forward_intermediates(x, [0, 1], norm=True, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(pruned_out, raw, strict=True))
        assert not torch.allclose(kept.forward_intermediates(x, [0, 1], norm=True, intermediates_only=True)[0], raw[0])


def test_features_only_honours_feature_cls_getter_and_rejects_the_others():
    model = timm.create_model("rep3d_tiny", features_only=True, feature_cls="getter", kernel_size=3)
    assert len(model(torch.randn(1, 1, 32, 32, 32))) == 4
    with pytest.raises(Rep3DValueError, match=r"feature_cls='list'.*supported: 'getter'"):
        rep3d.create_model("rep3d_tiny", features_only=True, feature_cls="list", kernel_size=3)
