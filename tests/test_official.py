"""Importing official Rep3D / 3D UX-Net checkpoints: official-layout state_dicts are built here key by key (random
values), the decoder from the same MONAI blocks the official networks use."""

from __future__ import annotations

import argparse
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from torch import nn

import rep3d
from rep3d.cli import main
from rep3d.cli.import_official import add_arguments, run
from rep3d.hub import Rep3DWeightsError
from rep3d.official import MASK_REASON, PRIOR_REASON, load_official_checkpoint

SMALL = dict(in_chans=1, widths=(4, 8, 16, 32), depths=(1, 2, 1, 1), kernel_size=5, hidden_size=16, num_classes=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def official_decoder(in_chans, widths, hidden_size, num_classes) -> nn.Module:
    """The official networks' decoder: MONAI blocks under the official attribute names (encoder1..5, decoder1..5,
    out)."""
    def basic(cin, cout):
        return UnetrBasicBlock(3, cin, cout, kernel_size=3, stride=1, norm_name="instance", res_block=True)

    def up(cin, cout):
        return UnetrUpBlock(3, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name="instance", res_block=True)

    w = widths
    m = nn.Module()
    m.encoder1, m.encoder2, m.encoder3 = basic(in_chans, w[0]), basic(w[0], w[1]), basic(w[1], w[2])
    m.encoder4, m.encoder5 = basic(w[2], w[3]), basic(w[3], hidden_size)
    m.decoder5, m.decoder4, m.decoder3 = up(hidden_size, w[3]), up(w[3], w[2]), up(w[2], w[1])
    m.decoder2, m.decoder1 = up(w[1], w[0]), basic(w[0], w[0])
    m.out = UnetOutBlock(3, w[0], num_classes)
    return m


def official_state(family="rep3d", *, in_chans=1, widths=(4, 8, 16, 32), depths=(1, 2, 1, 1), kernel_size=5,
                   hidden_size=16, num_classes=3, pwconv="grouped", seed=0) -> dict[str, torch.Tensor]:
    """A state_dict with the official key names and shapes, random values."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    def pos(*shape):
        return 1.0 + r(*shape).abs()

    e, k, sd = family, kernel_size, {}
    sd[f"{e}.downsample_layers.0.0.weight"], sd[f"{e}.downsample_layers.0.0.bias"] = r(widths[0], in_chans, 7, 7, 7), r(
        widths[0])
    sd[f"{e}.downsample_layers.0.1.weight"], sd[f"{e}.downsample_layers.0.1.bias"] = pos(widths[0]), r(widths[0])
    for i in (1, 2, 3):
        sd[f"{e}.downsample_layers.{i}.0.weight"], sd[f"{e}.downsample_layers.{i}.0.bias"] = pos(widths[i - 1]), r(
            widths[i - 1])
        sd[f"{e}.downsample_layers.{i}.1.weight"] = r(widths[i], widths[i - 1], 2, 2, 2)
        sd[f"{e}.downsample_layers.{i}.1.bias"] = r(widths[i])
    for i, (c, depth) in enumerate(zip(widths, depths)):
        for j in range(depth):
            p = f"{e}.stages.{i}.{j}."
            if family == "rep3d":
                sd[p + "dwconv.weight"] = r(c, 1, k, k, k)
                sd[p + "norm.weight"], sd[p + "norm.bias"] = pos(c), r(c)
                sd[p + "norm.running_mean"], sd[p + "norm.running_var"] = r(c), pos(c)
                sd[p + "norm.num_batches_tracked"] = torch.tensor(1000)
                sd[p + "prior_map"] = r(1, 1, k, k, k).abs().repeat(c, 1, 1, 1, 1)
                for conv in ("prior_conv", "prior_conv2"):
                    sd[p + conv + ".weight"], sd[p + conv + ".bias"] = r(1, 1, 7, 7, 7), r(1)
                for norm in ("norm_w", "norm_w2"):
                    sd[p + norm + ".weight"], sd[p + norm + ".bias"] = pos(1), r(1)
            else:
                sd[p + "dwconv.weight"], sd[p + "dwconv.bias"] = r(c, 1, k, k, k), r(c)
                sd[p + "norm.weight"], sd[p + "norm.bias"] = pos(c), r(c)
                pw_in = {"grouped": (1, 1, 1, 1), "dense": (c, 1, 1, 1), "linear": (c,)}[pwconv]
                pw_out = {"grouped": (4, 1, 1, 1), "dense": (4 * c, 1, 1, 1), "linear": (4 * c,)}[pwconv]
                sd[p + "pwconv1.weight"], sd[p + "pwconv1.bias"] = r(4 * c, *pw_in), r(4 * c)
                sd[p + "pwconv2.weight"], sd[p + "pwconv2.bias"] = r(c, *pw_out), r(c)
                sd[p + "gamma"] = pos(c)
    for i, c in enumerate(widths):
        sd[f"{e}.norm{i}.weight"], sd[f"{e}.norm{i}.bias"] = pos(c), r(c)
    decoder = official_decoder(in_chans, widths, hidden_size, num_classes)
    sd.update({key: r(*t.shape, scale=0.1) for key, t in decoder.state_dict().items()})
    return sd


def layer_norm_cf(x, weight, bias):
    return F.layer_norm(x.movedim(1, -1), weight.shape, weight, bias, 1e-6).movedim(-1, 1)


def official_uxnet_forward(sd, x, depths, pwconv):
    """3D UX-Net's forward, written from its published definition, on the raw official state_dict."""
    e, feats = "uxnet_3d", []
    h = x
    for i in range(4):
        d = f"{e}.downsample_layers.{i}."
        if i == 0:
            h = F.conv3d(h, sd[d + "0.weight"], sd[d + "0.bias"], stride=2, padding=3)
            h = layer_norm_cf(h, sd[d + "1.weight"], sd[d + "1.bias"])
        else:
            h = F.conv3d(layer_norm_cf(h, sd[d + "0.weight"], sd[d + "0.bias"]), sd[d + "1.weight"], sd[d + "1.bias"],
                         stride=2)
        for j in range(depths[i]):
            p, c = f"{e}.stages.{i}.{j}.", h.shape[1]
            kernel = sd[p + "dwconv.weight"]
            y = F.conv3d(h, kernel, sd[p + "dwconv.bias"], padding=kernel.shape[-1] // 2, groups=c)
            y = layer_norm_cf(y, sd[p + "norm.weight"], sd[p + "norm.bias"])
            groups = c if pwconv == "grouped" else 1
            w1, w2 = sd[p + "pwconv1.weight"], sd[p + "pwconv2.weight"]
            if pwconv == "linear":
                w1, w2 = w1[..., None, None, None], w2[..., None, None, None]
            y = F.conv3d(F.gelu(F.conv3d(y, w1, sd[p + "pwconv1.bias"], groups=groups)), w2, sd[p + "pwconv2.bias"],
                         groups=groups)
            h = h + y * sd[p + "gamma"].view(1, -1, 1, 1, 1)
        feats.append(layer_norm_cf(h, sd[f"{e}.norm{i}.weight"], sd[f"{e}.norm{i}.bias"]))
    dec = official_decoder(x.shape[1], [f.shape[1] for f in feats], sd["encoder5.layer.conv1.conv.weight"].shape[0],
                           sd["out.conv.conv.weight"].shape[0]).eval()
    dec.load_state_dict({k: v for k, v in sd.items() if not k.startswith(e)})
    enc1, enc2, enc3, enc4 = dec.encoder1(x), dec.encoder2(feats[0]), dec.encoder3(feats[1]), dec.encoder4(feats[2])
    out = dec.decoder5(dec.encoder5(feats[3]), enc4)
    out = dec.decoder2(dec.decoder3(dec.decoder4(out, enc3), enc2), enc1)
    return dec.out(dec.decoder1(out))


def volume(channels=1):
    return torch.randn(1, channels, 32, 16, 16, generator=torch.Generator().manual_seed(3))


def test_official_rep3d_layout_maps_every_key_or_reports_why_it_is_dropped(tmp_path):
    sd = official_state("rep3d", widths=(12, 24, 48, 96), depths=(1, 1, 1, 1), hidden_size=192, kernel_size=5)
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "best.pth")
    model, report = load_official_checkpoint(tmp_path / "best.pth")
    assert report.architecture == "rep3d_tiny_vanilla" and report.complete and report.unmapped == []
    assert set(report.mapped) | set(report.dropped) == set(sd) and not set(report.mapped) & set(report.dropped)
    assert any("epoch" in entry for entry in report.ignored)
    assert "rep3d.stages.0.0.prior_map" in report.dropped and "rep3d.stages.0.0.prior_conv.weight" in report.dropped
    for key, reason in report.dropped.items():
        leaf = key.split(".")[-2] if key.endswith(("weight", "bias")) else key.split(".")[-1]
        assert leaf in ("prior_map", "prior_conv", "prior_conv2", "norm_w", "norm_w2")
        assert reason == (PRIOR_REASON if leaf == "prior_map" else MASK_REASON)
    # the reason states what is known (the inference network ignores the generator), not a guess about training
    assert "deploy=True" in MASK_REASON and "cannot be known" in MASK_REASON
    assert "so the saved kernel already carries" not in MASK_REASON
    state = model.state_dict()
    assert all(torch.equal(state[target], sd[key]) for key, target in report.mapped.items())
    assert report.mapped["rep3d.stages.0.0.norm.running_var"] == "encoder.stages.0.0.dwconv.bn.running_var"
    assert not rep3d.models.is_deployed(model) and "residual" in str(report) and "dropped deliberately" in str(report)


def test_imported_rep3d_block_computes_the_official_block(tmp_path):
    sd = official_state("rep3d", **SMALL)
    torch.save(sd, tmp_path / "ckpt.pth")
    model, report = load_official_checkpoint(tmp_path / "ckpt.pth")
    assert report.architecture == "rep3d_base_vanilla" and report.model_args["widths"] == [4, 8, 16, 32]
    model.eval()
    x = torch.randn(1, 8, 6, 6, 6, generator=torch.Generator().manual_seed(0))
    p = "rep3d.stages.1.1."
    conv = F.conv3d(x, sd[p + "dwconv.weight"], padding=2, groups=8)
    official = F.gelu(F.batch_norm(conv, sd[p + "norm.running_mean"], sd[p + "norm.running_var"], sd[p + "norm.weight"],
                                   sd[p + "norm.bias"], eps=1e-5))
    with torch.no_grad():
        ours = model.encoder.stages[1][1](x)
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pwconv", ["grouped", "dense", "linear"])
def test_official_uxnet_layout_imports_to_the_same_function(tmp_path, pwconv):
    sd = official_state("uxnet_3d", pwconv=pwconv, **{**SMALL, "kernel_size": 7})
    torch.save({"model": sd}, tmp_path / "uxnet.pth")
    model, report = load_official_checkpoint(tmp_path / "uxnet.pth")
    assert report.architecture == "uxnet3d_base" and report.complete and not report.dropped
    assert set(report.mapped) == set(sd)
    assert report.model_args["mlp_groups"] == ("depthwise" if pwconv == "grouped" else 1)
    x = volume()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), official_uxnet_forward(sd, x, SMALL["depths"], pwconv),
                                   rtol=1e-4, atol=1e-5)


def test_deploy_form_import_folds_and_keeps_the_function(tmp_path):
    from safetensors.torch import save_file

    save_file(official_state("rep3d", **SMALL), str(tmp_path / "ckpt.safetensors"))
    train, _ = load_official_checkpoint(tmp_path / "ckpt.safetensors")
    deployed, report = load_official_checkpoint(tmp_path / "ckpt.safetensors", form="deploy")
    assert report.form == "deploy" and rep3d.models.is_deployed(deployed)
    with torch.no_grad():
        torch.testing.assert_close(deployed.eval()(volume()), train.eval()(volume()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, fix", [("rep3d_base", "rep3d_base_vanilla"), ("rep3d_base_fixed", "rep3d_base_vanilla"),
                                       ("uxnet3d_base", None)])
def test_masked_or_foreign_model_names_are_refused_with_the_reason(tmp_path, name, fix):
    torch.save(official_state("rep3d", **SMALL), tmp_path / "ckpt.pth")
    with pytest.raises(Rep3DWeightsError) as info:
        load_official_checkpoint(tmp_path / "ckpt.pth", name, widths=(4, 8, 16, 32), depths=(1, 2, 1, 1),
                                 hidden_size=16)
    if fix:
        assert info.value.reason == "form" and fix in info.value.fix and "cannot be known" in str(info.value)
    else:
        assert info.value.reason == "architecture"


def test_named_unmodulated_model_is_accepted(tmp_path):
    torch.save(official_state("rep3d", **SMALL), tmp_path / "ckpt.pth")
    model, report = load_official_checkpoint(tmp_path / "ckpt.pth", "rep3d_small_vanilla", widths=(4, 8, 16, 32),
                                             depths=(1, 2, 1, 1), hidden_size=16)
    assert report.architecture == "rep3d_small_vanilla" and report.complete


def test_unknown_keys_are_reported_and_strict_refuses(tmp_path):
    sd = official_state("rep3d", **SMALL)
    sd["rep3d.stages.0.0.extra_scale"] = torch.ones(4)
    sd["aux_head.weight"] = torch.ones(2)
    torch.save(sd, tmp_path / "ckpt.pth")
    with pytest.raises(Rep3DWeightsError) as info:
        load_official_checkpoint(tmp_path / "ckpt.pth")
    assert info.value.reason == "keys" and "aux_head.weight" in str(info.value) and "--no-strict" in info.value.fix
    model, report = load_official_checkpoint(tmp_path / "ckpt.pth", strict=False)
    assert sorted(report.unmapped) == ["aux_head.weight", "rep3d.stages.0.0.extra_scale"] and not report.complete
    assert "aux_head.weight" in str(report)


def test_a_non_official_or_unsafe_checkpoint_is_refused(tmp_path):
    torch.save(rep3d.create_model("rep3d_tiny_vanilla", **SMALL).state_dict(), tmp_path / "ours.pth")
    with pytest.raises(Rep3DWeightsError) as info:
        load_official_checkpoint(tmp_path / "ours.pth")
    assert info.value.reason == "architecture" and "checkpoint_path" in info.value.fix
    torch.save({"state_dict": official_state("rep3d", **SMALL), "args": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(Rep3DWeightsError) as info:
        load_official_checkpoint(tmp_path / "evil.pth")
    assert info.value.reason == "unsafe"


class _Evil:
    def __reduce__(self):
        return (pickle.loads, (pickle.dumps(0),))


def test_cli_writes_a_loadable_folder_and_prints_the_report(tmp_path, capsys):
    torch.save(official_state("uxnet_3d", **{**SMALL, "kernel_size": 7}), tmp_path / "uxnet.pth")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(tmp_path / "uxnet.pth"), "-o", str(tmp_path / "out"), "--form", "deploy"])) == 0
    out = capsys.readouterr().out
    assert "mapped:" in out and "not understood (unmapped): 0" in out and str(tmp_path / "out") in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".rep3d-outputs.json", "README.md", "config.json",
                                                                 "model.safetensors"]
    expected, _ = load_official_checkpoint(tmp_path / "uxnet.pth", form="deploy")
    loaded = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    got, want = loaded.state_dict(), expected.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    assert main(["import-official", str(tmp_path / "bad.pth"), "-o", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rep3d import-official: error: ") and "corrupt" in err and "Traceback" not in err
    assert not (tmp_path / "out2").exists()
