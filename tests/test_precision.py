"""Inference precision and layout: ``precision="bf16"`` keeps the phantom Dice, the FFT engine transforms in float32
under autocast, and the channels-last inference copy computes the model's function with its current weights."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import rep3d
from rep3d.cli import main
from rep3d.data.phantom import case_seed, make_phantom
from rep3d.errors import Rep3DValueError
from rep3d.inference import LabelledCase, Predictor, evaluate_cases
from rep3d.layers import depthwise_conv3d, fft_conv
from rep3d.layers.onednn_conv import onednn_supports
from rep3d.models import optimize_for_inference, reparameterize_model
from rep3d.presets import PHANTOM_CLASSES


@pytest.mark.skipif(not onednn_supports(torch.bfloat16),
                    reason="this CPU has no bfloat16 convolution kernels: Predictor refuses bf16 here (tested below)")
def test_bf16_changes_the_phantom_test_dice_by_at_most_0_002(tmp_path):
    model = rep3d.create_model("rep3d_tiny.phantom", pretrained=True)
    cases = []
    for i in range(2):  # the first cases of the phantom test split, as NIfTI files (rep3d evaluate's path)
        # 80 x 80 x 64 at the phantom spacing instead of 96 x 96 x 80: one window per volume, Dice still ~0.98
        phantom = make_phantom(case_seed(0, "test", i), (80, 80, 64))
        image, label = tmp_path / f"case{i}.nii.gz", tmp_path / f"case{i}_label.nii.gz"
        nib.save(nib.Nifti1Image(phantom.image, phantom.affine), image)
        nib.save(nib.Nifti1Image(phantom.label, phantom.affine), label)
        cases.append(LabelledCase(f"test {i}", image, label))
    dice = {precision: evaluate_cases(Predictor(model, device="cpu", precision=precision), cases,
                                      PHANTOM_CLASSES)["mean"]
            for precision in ("fp32", "bf16")}
    assert dice["fp32"] > 0.8, dice  # the check means something only where the model segments
    assert abs(dice["bf16"] - dice["fp32"]) <= 0.002, dice


def test_the_fft_engine_transforms_in_float32_under_bf16_autocast(monkeypatch):
    seen = []
    real = fft_conv.rfftn

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(fft_conv, "rfftn", spy)
    torch.manual_seed(0)
    x, w = torch.randn(1, 3, 12, 12, 12).bfloat16(), torch.randn(3, 1, 7, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = depthwise_conv3d(x, w, backend="fft")
    assert seen and set(seen) == {torch.float32}
    assert y.dtype == torch.bfloat16
    reference = depthwise_conv3d(x.float(), w, backend="fft").bfloat16()
    assert torch.equal(y, reference)


@pytest.mark.parametrize("name", ["rep3d_tiny", "uxnet3d_base"])
def test_the_channels_last_inference_copy_matches_the_model_within_fp32_tolerance(name):
    torch.manual_seed(0)
    kwargs = dict(widths=(8, 8, 16, 16), hidden_size=16) if name == "uxnet3d_base" else {}
    model = reparameterize_model(rep3d.create_model(name, num_classes=3, **kwargs).eval())
    fast = optimize_for_inference(model)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = model(x)
        got = fast(x.contiguous(memory_format=torch.channels_last_3d))
    assert not any(isinstance(m, torch.nn.InstanceNorm3d) for m in fast.modules())
    assert fast.state_dict().keys() == model.state_dict().keys()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_predictor_follows_weights_changed_after_it_was_built():
    torch.manual_seed(0)
    model = rep3d.create_model("rep3d_tiny", num_classes=3)
    predictor = Predictor(model, roi_size=32, device="cpu", spacing=None, orientation=None,
                          intensity_window=None)
    assert predictor.channels_last
    image = np.random.default_rng(0).standard_normal((1, 32, 32, 32)).astype(np.float32)
    predictor(image)
    with torch.no_grad():  # make class 2 win everywhere
        model.decoder.out.conv.conv.bias.copy_(torch.tensor([0.0, 0.0, 1e4]))
    assert (predictor(image).label == 2).all()


def test_precision_is_checked():
    model = rep3d.create_model("rep3d_tiny", num_classes=3)
    with pytest.raises(Rep3DValueError, match="precision must be one of fp32, bf16"):
        Predictor(model, device="cpu", precision="fp16")
    with pytest.raises(Rep3DValueError, match="pass only one"):
        Predictor(model, device="cpu", amp=True, precision="bf16")


def test_bf16_is_refused_on_a_cpu_without_bfloat16_kernels(monkeypatch, tmp_path, capsys):
    """Emulated bfloat16 convolutions ran ~100x slower than float32 on an AVX2 CPU: a speed option must not do that."""
    import rep3d.layers.onednn_conv as onednn_conv

    monkeypatch.setattr(onednn_conv, "onednn_supports", lambda dtype: dtype == torch.float32)
    model = rep3d.create_model("rep3d_tiny", num_classes=3)
    for options in (dict(precision="bf16"), dict(amp=True)):
        with pytest.raises(Rep3DValueError, match="no bfloat16 convolution kernels.*Use precision 'fp32'"):
            Predictor(model, device="cpu", **options)
    Predictor(model, device="cpu", precision="fp32")  # float32 is unaffected
    phantom = make_phantom(case_seed(0, "test", 0), (48, 48, 40))
    nib.save(nib.Nifti1Image(phantom.image, phantom.affine), tmp_path / "scan.nii.gz")
    assert main(["predict", "rep3d_tiny.phantom", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "out"),
                 "--precision", "bf16"]) == 1
    assert "no bfloat16 convolution kernels" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_predict_refuses_amp_with_bf16_before_building_the_model(tmp_path, capsys):
    assert main(["predict", "rep3d_tiny.phantom", str(tmp_path), "-o", str(tmp_path / "out"), "--amp",
                 "--precision", "bf16"]) == 1
    assert "--amp and --precision bf16" in capsys.readouterr().err


def test_resampling_back_gives_the_same_labels_whatever_the_slab_size():
    from rep3d.inference.resample import to_input_grid

    probs = torch.softmax(torch.randn(4, 10, 12, 9, generator=torch.Generator().manual_seed(0)), dim=0)
    grid, scan = np.diag([1.5, 1.5, 2.0, 1.0]), np.diag([0.9, 1.1, 2.5, 1.0])
    whole, p_whole = to_input_grid(probs, grid, scan, (16, 15, 7), keep=True, slab_voxels=1 << 20)
    slabs, p_slabs = to_input_grid(probs, grid, scan, (16, 15, 7), keep=True, slab_voxels=15 * 7 * 3)
    assert np.array_equal(whole, slabs) and np.array_equal(p_whole, p_slabs)
