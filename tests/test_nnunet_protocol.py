"""rep3d under nnU-Net v2's network protocol (no nnU-Net import needed): deep supervision, checkpoints both ways,
plans, and the predictor reading data as nnU-Net does."""

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rep3d.errors import Rep3DError, Rep3DValueError
from rep3d.integrations.nnunet import NNUNET_STRIDES, Rep3DnnUNet, check_patch_size
from rep3d.integrations.nnunet.plans import add_rep3d_configuration
from rep3d.integrations.nnunet.weights import rep3d_to_nnunet_state, to_rep3d_model, write_nnunet_pretrained

PATCH = (32, 16, 16)
TINY = dict(model="rep3d_tiny", kernel_size=5, strides=NNUNET_STRIDES)


def make_net(deep_supervision=True, seed=0, num_classes=3, in_chans=1):
    torch.manual_seed(seed)
    return Rep3DnnUNet(in_chans, num_classes, deep_supervision, **TINY)


def nnunet_scales(strides):
    # nnUNetTrainer._get_deep_supervision_scales
    return list(list(i) for i in 1 / np.cumprod(np.vstack(strides), axis=0))[:-1]


def ds_loss(outputs, target, last_weight=0.0):
    # nnU-Net's DeepSupervisionWrapper over CE: weights 1/2^i, the lowest output's set to 0 (nnUNetTrainer._build_loss),
    # normalised; targets downsampled (nearest)
    weights = np.array([1 / 2**i for i in range(len(outputs))])
    weights[-1] = last_weight
    weights = weights / weights.sum()
    loss = 0
    for w, out in zip(weights, outputs):
        t = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
        loss = loss + float(w) * F.cross_entropy(out, t)
    return loss


@pytest.fixture(scope="module")
def trained_net(one_thread):
    """A network after two SGD steps on the DS loss (BatchNorm statistics and every head moved)."""
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randn(2, 1, *PATCH, generator=gen)
        y = torch.randint(0, 3, (2, *PATCH), generator=gen)
        opt.zero_grad()
        ds_loss(net(x), y).backward()
        opt.step()
    return net.eval()


def test_deep_supervision_outputs_follow_nnunet_scale_rule(one_thread):
    net = make_net().train()
    outputs = net(torch.randn(2, 1, *PATCH))
    scales = nnunet_scales(NNUNET_STRIDES)
    assert isinstance(outputs, list) and len(outputs) == len(scales) == 4
    for out, scale in zip(outputs, scales):
        assert tuple(out.shape) == (2, 3, *(int(round(p * s)) for p, s in zip(PATCH, scale)))


def test_deep_supervision_loss_reaches_every_weighted_head_and_the_encoder(one_thread):
    net = make_net().train()
    loss = ds_loss(net(torch.randn(2, 1, *PATCH)), torch.randint(0, 3, (2, *PATCH)), last_weight=1e-6)  # DDP's
    loss.backward()
    assert torch.isfinite(loss)
    for i, head in enumerate(net.decoder.seg_layers):
        assert head.conv.conv.weight.grad.abs().sum() > 0, f"head {i} got no gradient"
    assert net.encoder.downsample_layers[0][0].weight.grad.abs().sum() > 0


def test_train_and_inference_networks_load_each_other_strictly(trained_net):
    x = torch.randn(1, 1, *PATCH)
    inference = make_net(deep_supervision=False, seed=5).eval()
    inference.load_state_dict(trained_net.state_dict(), strict=True)
    back = make_net(deep_supervision=True, seed=6).eval()
    back.load_state_dict(inference.state_dict(), strict=True)
    with torch.no_grad():
        full = trained_net(x)[0]
        torch.testing.assert_close(inference(x), full, rtol=0, atol=0)
        torch.testing.assert_close(back(x)[0], full, rtol=0, atol=0)


def test_exported_rep3d_model_equals_full_resolution_output_train_and_deployed(trained_net, tmp_path):
    from rep3d.builder import create_model
    from rep3d.hub import save_pretrained
    from rep3d.models.deploy import reparameterize_model

    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        full = trained_net(x)[0]
        model = to_rep3d_model(trained_net).eval()
        assert not any("seg_layers" in k for k in model.state_dict())
        torch.testing.assert_close(model(x), full, rtol=0, atol=0)
        folder = save_pretrained(model, tmp_path / "exported")
        loaded = create_model(f"local-dir:{folder}", pretrained=True).eval()
        torch.testing.assert_close(loaded(x), full, rtol=0, atol=0)
        deployed = reparameterize_model(loaded)
        scale = full.abs().max()
        assert (deployed(x) - full).abs().max() <= 1e-5 * scale


def test_nnunet_pretrained_file_keys_match_the_nnunet_network(trained_net, tmp_path):
    model = to_rep3d_model(trained_net)
    path = write_nnunet_pretrained(model, tmp_path / "pretrained.pth")
    saved = torch.load(path, weights_only=True)["network_weights"]
    target = make_net(num_classes=5, seed=3).state_dict()  # another dataset: other class count
    # nnU-Net's load_pretrained_weights: every key without '.seg_layers.' present with the same shape
    for key, value in target.items():
        if ".seg_layers." not in key:
            assert key in saved and saved[key].shape == value.shape, key
    assert set(saved) - set(target) == set()  # nothing left over but heads nnU-Net skips anyway
    assert rep3d_to_nnunet_state(model.state_dict()).keys() == saved.keys()


def test_wrong_strides_are_refused_with_the_expected_value():
    bad = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    with pytest.raises(Rep3DValueError, match=r"strides must be .*\[\[1, 1, 1\], \[2, 2, 2\]"):
        Rep3DnnUNet(1, 2, True, model="rep3d_tiny", kernel_size=5, strides=bad)
    with pytest.raises(Rep3DValueError, match="strides"):
        Rep3DnnUNet(1, 2, True, model="rep3d_tiny", kernel_size=5, strides=NNUNET_STRIDES[:4])


def test_patch_sizes_off_16_are_refused_with_a_fix(one_thread):
    with pytest.raises(Rep3DValueError, match=r"multiples of 16.*\[32, 80, 96\]"):
        check_patch_size([20, 80, 96])
    check_patch_size([32, 80, 96])
    net = make_net().eval()
    with pytest.raises(ValueError, match="divisible by 16"), torch.no_grad():
        net(torch.randn(1, 1, 20, 32, 16))


def _plans(patch, spacing):
    return {"plans_name": "nnUNetPlans", "configurations": {
        "2d": {"patch_size": patch[1:]},
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "patch_size": patch, "spacing": spacing,
                       "batch_size": 2, "architecture": {"network_class_name": "x.PlainConvUNet",
                                                         "arch_kwargs": {}, "_kw_requires_import": []}}}}


def test_nnunet_plans_adds_an_inheriting_configuration_and_never_overwrites(tmp_path):
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(_plans([20, 80, 90], [2.5, 0.8, 0.8])))
    warnings = add_rep3d_configuration(path, "3d_fullres_rep3d", model="rep3d_tiny", kernel_size=21, batch_size=3)
    plans = json.loads(path.read_text())
    cfg = plans["configurations"]["3d_fullres_rep3d"]
    assert cfg["inherits_from"] == "3d_fullres" and "data_identifier" not in cfg  # preprocessed data reused
    assert cfg["patch_size"] == [32, 80, 96] and cfg["batch_size"] == 3
    assert cfg["architecture"]["arch_kwargs"] == {"model": "rep3d_tiny", "kernel_size": 21, "strides": NNUNET_STRIDES}
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [20, 80, 90]
    assert any("rounded up" in w for w in warnings) and any("anisotropic" in w for w in warnings)
    before = path.read_bytes()
    with pytest.raises(Rep3DValueError, match="--overwrite"):
        add_rep3d_configuration(path, "3d_fullres_rep3d", model="rep3d_small")
    assert path.read_bytes() == before
    add_rep3d_configuration(path, "3d_fullres_rep3d", model="rep3d_small", overwrite=True)
    assert json.loads(path.read_text())["configurations"]["3d_fullres_rep3d"]["architecture"]["arch_kwargs"][
        "model"] == "rep3d_small"


def test_nnunet_plans_warns_about_thin_patches(tmp_path):
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(_plans([12, 64, 64], [1.0, 1.0, 1.0])))
    warnings = add_rep3d_configuration(path, "rep3d")
    assert any("fewer than 32 voxels along axis 0" in w for w in warnings)
    assert not any("anisotropic" in w for w in warnings)


def test_predictor_reads_volumes_as_nnunet_does(one_thread):
    """axis order z, y, x (the file's voxel axes reversed), no reorientation, CT clip + z-score before resampling."""
    from rep3d.inference import Predictor

    net = make_net(deep_supervision=False).eval()
    model = to_rep3d_model(net).eval()
    norm = {"scheme": "clip_zscore", "clip": [-100.0, 200.0], "mean": 40.0, "std": 60.0}
    model.pretrained_cfg.update(roi_size=list(PATCH), spacing=[2.0, 1.0, 1.5], axis_order="zyx",
                                orientation="native", normalization=[norm])
    volume = torch.randn(1, 16, 16, 32) * 150  # file voxel axes (i, j, k) = reversed PATCH
    affine = np.diag([1.5, 1.0, 2.0, 1.0])  # spacing along i, j, k = reversed model spacing: no resampling
    affine[0, 0] = -1.5  # an LPS-like axis must not be reoriented
    pred = Predictor(model, device="cpu")(volume, affine, probabilities=True)
    x = ((volume.clamp(-100, 200) - 40) / 60).permute(0, 3, 2, 1)[None]
    with torch.no_grad():
        expected = torch.softmax(model(x), 1)[0].permute(0, 3, 2, 1)
    np.testing.assert_allclose(pred.probabilities, expected.numpy(), atol=1e-5)
    assert pred.label.shape == (16, 16, 32)


def test_importing_rep3d_and_the_integration_does_not_import_nnunet(monkeypatch):
    import importlib

    import rep3d

    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # any `import nnunetv2` now raises ImportError
    for name in [n for n in sys.modules if n.startswith("rep3d.integrations")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.reload(rep3d)
    for name in ("nnunet", "nnunet.network", "nnunet.plans", "nnunet.weights"):
        importlib.import_module(f"rep3d.integrations.{name}")
    for name in ("nnunet_plans", "nnunet_export", "nnunet_pretrained", "nnunet_trainer_path"):
        importlib.reload(importlib.import_module(f"rep3d.cli.{name}"))
    assert not any(n.startswith("rep3d.integrations") for n in vars(rep3d))


def test_missing_nnunet_is_a_clear_rep3d_error(monkeypatch):
    import rep3d.integrations.nnunet as integration

    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # import fails as if not installed
    with pytest.raises(Rep3DError, match=r'pip install "rep3d\[nnunet\]"'):  # quoted: zsh expands [...]
        integration.require_nnunet()


def test_export_records_nnunet_normalisation_and_refuses_what_the_predictor_cannot_reproduce():
    from rep3d.errors import Rep3DDataError
    from rep3d.integrations.nnunet.weights import normalisation

    props = {"0": {"percentile_00_5": -50.0, "percentile_99_5": 250.0, "mean": 80.0, "std": 40.0}}
    plans = {"foreground_intensity_properties_per_channel": props}
    ct = normalisation({"normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False]}, plans)
    assert ct == [{"scheme": "clip_zscore", "clip": [-50.0, 250.0], "mean": 80.0, "std": 40.0}]
    mri = normalisation({"normalization_schemes": ["ZScoreNormalization", "NoNormalization"],
                         "use_mask_for_norm": [False, False]}, plans)
    assert mri == [{"scheme": "zscore"}, {"scheme": "none"}]
    with pytest.raises(Rep3DDataError, match="non-zero mask"):
        normalisation({"normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [True]}, plans)
    with pytest.raises(Rep3DDataError, match="RescaleTo01Normalization"):
        normalisation({"normalization_schemes": ["RescaleTo01Normalization"], "use_mask_for_norm": [False]}, plans)
