"""rep3d.Predictor: geometry round trip, window count, blending, TTA, defaults and input errors."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

import rep3d
from rep3d.inference import FALLBACK_ROI, InputError, Predictor, model_grid_affine
from rep3d.inference.options import lateral_permutation
from tests.standins import RGBOracle, SideOracle, ThresholdOracle, WindowMean


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    r = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(t), -math.sin(t), math.sin(t), math.cos(t)
    return r


def oblique_volume(shape=(37, 29, 23), spacing=(0.9, 1.7, 2.3)):
    """An odd-sized, anisotropic, oblique (rotated, one axis flipped) volume: ball + slab, 100 / 0 'HU'."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(2, 25) @ _rotation(0, 12) @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = (10.0, -20.0, 5.0)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    ball = np.linalg.norm(world - centre - (6.0, -4.0, 3.0), axis=-1) < 11
    slab = world[..., 0] > centre[0] + 8
    return np.where(ball | slab, 100.0, 0.0).astype(np.float32), affine


def boundary_band(mask: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour on the other side of the mask's boundary."""

    def dilate(m):
        out = m.copy()
        for ax in range(3):
            out |= np.roll(m, 1, ax) | np.roll(m, -1, ax)
        return out

    return dilate(mask) & dilate(~mask)


def test_oblique_anisotropic_odd_input_comes_back_on_its_own_grid():
    image, affine = oblique_volume()
    predictor = Predictor(ThresholdOracle(), roi_size=16, spacing=(1.5, 1.5, 1.5), intensity_window=(0, 100))
    out = predictor(image[None], affine, probabilities=True)
    assert out.label.shape == image.shape and out.label.dtype == np.uint8
    assert np.array_equal(out.affine, affine)
    truth = image > 50
    wrong = out.label.astype(bool) != truth
    assert wrong.sum() < 0.03 * truth.sum()
    assert not (wrong & ~boundary_band(truth)).any(), "errors away from the boundary: labels landed elsewhere"
    assert out.probabilities.shape == (2, *image.shape)
    assert np.allclose(out.probabilities.sum(0), 1.0, atol=1e-4)


def test_axis_permutation_without_resampling_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    image = np.where(rng.random((21, 18, 13)) > 0.5, 100.0, 0.0).astype(np.float32)
    affine = np.array([[0, -1.5, 0, 3], [0, 0, 2.0, 4], [-1.2, 0, 0, 5], [0, 0, 0, 1.0]])  # "PSL"-like axes
    out = Predictor(ThresholdOracle(), roi_size=8, spacing=None, intensity_window=(0, 100))(
        image[None], affine
    )
    assert np.array_equal(out.label, image > 50)
    saved = nib.load(out.save(tmp_path / "seg.nii.gz"))  # no source header: a fresh one with this affine
    assert np.allclose(saved.affine, affine) and int(saved.header["sform_code"]) == 1
    assert np.array_equal(np.asanyarray(saved.dataobj), out.label)


def test_nifti_path_round_trip_keeps_shape_affine_and_header(tmp_path):
    image, affine = oblique_volume()
    src = nib.Nifti1Image(np.rint(image).astype(np.int16), affine)
    src.set_qform(affine, code=1)
    src.set_sform(affine, code=2)
    src.header.set_xyzt_units("mm", "sec")
    nib.save(src, tmp_path / "scan.nii.gz")
    predictor = Predictor(ThresholdOracle(), roi_size=16, spacing=(2.0, 2.0, 2.0), intensity_window=(0, 100))
    pred = predictor(tmp_path / "scan.nii.gz")
    pred.save(tmp_path / "seg.nii.gz")
    seg, ref = nib.load(tmp_path / "seg.nii.gz"), nib.load(tmp_path / "scan.nii.gz")
    assert seg.shape == ref.shape and seg.get_data_dtype() == np.uint8
    assert np.allclose(seg.affine, ref.affine)
    assert np.allclose(seg.get_qform(), ref.get_qform()) and np.allclose(seg.get_sform(), ref.get_sform())
    assert (int(seg.header["qform_code"]), int(seg.header["sform_code"])) == (1, 2)
    assert seg.header.get_intent()[0] == "label" and seg.header.get_xyzt_units()[0] == "mm"
    wrong = np.asanyarray(seg.dataobj).astype(bool) != (image > 50)
    assert not (wrong & ~boundary_band(image > 50)).any()


@pytest.mark.parametrize(
    ("shape", "roi", "overlap"), [((20, 17, 9), 8, 0.5), ((12, 30, 8), 8, 0.25), ((5, 8, 8), 8, 0.5)]
)
def test_number_of_windows_matches_hand_count(shape, roi, overlap):
    def count(size):  # MONAI: interval int(roi * (1 - overlap)); windows until one reaches the end
        if size <= roi:
            return 1
        return math.ceil((size - roi) / int(roi * (1 - overlap))) + 1

    expected = math.prod(count(s) for s in shape)
    model = WindowMean()
    predictor = Predictor(model, roi_size=roi, overlap=overlap, spacing=None, intensity_window=None)
    predictor(np.zeros((1, *shape), np.float32))
    assert model.calls == expected and sum(model.batch_sizes) == expected
    model = WindowMean()
    predictor = Predictor(
        model, roi_size=roi, overlap=overlap, sw_batch_size=5, spacing=None, intensity_window=None
    )
    predictor(np.zeros((1, *shape), np.float32))
    assert sum(model.batch_sizes) == expected and model.calls == math.ceil(expected / 5)


def test_constant_model_output_stitches_to_a_constant():
    model = WindowMean(offset=-1.0)  # class-1 logit 1 on a zero image
    for blend in ("gaussian", "constant"):
        out = Predictor(model, roi_size=8, blend=blend, spacing=None, intensity_window=None)(
            np.zeros((1, 19, 13, 11), np.float32), probabilities=True
        )
        assert np.allclose(out.probabilities[1], 1 / (1 + math.exp(-1.0)), atol=1e-6)


def test_gaussian_blending_matches_hand_computed_weights():
    # image = index along axis 0; two windows along it (starts 0 and 4, roi 8) with means 3.5 and 7.5
    image = np.broadcast_to(np.arange(12, dtype=np.float32)[:, None, None], (12, 8, 8))[None].copy()
    out = Predictor(WindowMean(offset=5.5), roi_size=8, overlap=0.5, spacing=None, intensity_window=None)(
        image, probabilities=True
    )
    s0, s1 = 1 / (1 + math.exp(2.0)), 1 / (1 + math.exp(-2.0))  # sigmoid(3.5 - 5.5), sigmoid(7.5 - 5.5)

    def g(t):  # MONAI's gaussian importance: centre (roi - 1) / 2, sigma = roi * 0.125 = 1
        return math.exp(-((t - 3.5) ** 2) / 2.0) if 0 <= t < 8 else 0.0

    expected = np.array([(s0 * g(i) + s1 * g(i - 4)) / (g(i) + g(i - 4)) for i in range(12)])
    # central lines: the y/z weights are identical for both windows and above MONAI's clamp, so they cancel
    for j, k in [(3, 3), (3, 4), (4, 4)]:
        assert np.allclose(out.probabilities[1, :, j, k], expected, atol=1e-5)
    # constant blending averages the two windows where they overlap
    out = Predictor(
        WindowMean(offset=5.5), roi_size=8, blend="constant", spacing=None, intensity_window=None
    )(image, probabilities=True)
    assert np.allclose(out.probabilities[1, :, 0, 0], [s0] * 4 + [(s0 + s1) / 2] * 4 + [s1] * 4, atol=1e-6)


def test_flip_tta_runs_every_flip_and_keeps_left_right_classes_apart():
    image = np.zeros((1, 16, 16, 16), np.float32)
    image[0, 2:6, 4:12, 4:12] = 1.0  # patient's left (low index along R)
    image[0, 10:14, 6:10, 6:10] = 1.0  # patient's right
    names = ["background", "left_blob", "right_blob"]
    plain = Predictor(SideOracle(), roi_size=16, spacing=None, intensity_window=None, class_names=names)(
        image
    )
    counted = SideOracle()
    counted.pretrained_cfg = {"tta_flip_axes": [0, 1, 2]}  # as if trained with flips (and left/right swaps)
    tta = Predictor(counted, roi_size=16, spacing=None, intensity_window=None, class_names=names, tta=True)
    assert np.array_equal(tta(image).label, plain.label)
    assert counted.calls == 8
    assert set(np.unique(plain.label[2:6])) == {0, 1} and set(np.unique(plain.label[10:14])) == {0, 2}
    # without left/right names the flipped passes disagree, and the average can no longer tell the sides apart
    blind_model = SideOracle()
    blind_model.pretrained_cfg = {"tta_flip_axes": [0, 1, 2]}
    blind = Predictor(
        blind_model, roi_size=16, spacing=None, intensity_window=None, class_names=["a", "b", "c"], tta=True
    )(image, probabilities=True)
    assert np.allclose(blind.probabilities[1][image[0] > 0.5], 0.5, atol=1e-3)


def test_lateral_pairs_are_found_by_name():
    assert lateral_permutation(["background", "right_kidney", "left_kidney", "liver"]) == [0, 2, 1, 3]
    assert lateral_permutation(["bg", "Kidney_L", "Kidney_R"]) == [0, 2, 1]
    assert lateral_permutation(["background", "liver", "spleen"]) is None
    assert lateral_permutation(None) is None


def test_defaults_come_from_the_pretrained_cfg_with_documented_fallbacks():
    model = ThresholdOracle()
    model.stride = 16
    model.pretrained_cfg = {
        "roi_size": (32, 48, 64),
        "spacing": (1.5, 1.5, 2.0),
        "intensity_window": (-125, 275),
        "orientation": "LPS",
        "class_names": ["background", "x"],
        "modality": "CT",
    }
    p = Predictor(model)
    assert (
        p.roi_size == (32, 48, 64) and p.spacing == (1.5, 1.5, 2.0) and p.intensity_window == (-125.0, 275.0)
    )
    assert p.orientation == "LPS" and p.class_names == ["background", "x"] and p.size_divisor == 16
    mri = ThresholdOracle()
    mri.pretrained_cfg = {"modality": "MRI"}
    assert Predictor(mri).intensity_window == (0.0, 1000.0)
    bare = Predictor(ThresholdOracle())
    assert bare.roi_size == FALLBACK_ROI and bare.spacing is None and bare.intensity_window is None
    assert bare.orientation == "RAS" and bare.class_names is None
    explicit = Predictor(model, spacing=None, intensity_window=None, orientation=None)
    assert explicit.spacing is None and explicit.intensity_window is None and explicit.orientation is None
    assert rep3d.Predictor is Predictor


def test_bad_settings_are_explained():
    model = ThresholdOracle()
    model.stride = 16
    with pytest.raises(ValueError, match=r"multiples of the network stride 16.*; try roi_size=\(32, 32, 96\)"):
        Predictor(model, roi_size=(20, 32, 96))
    with pytest.raises(ValueError, match="overlap"):
        Predictor(model, roi_size=16, overlap=1.0)
    with pytest.raises(ValueError, match="blend"):
        Predictor(model, roi_size=16, blend="max")
    with pytest.raises(ValueError, match="hi > lo"):
        Predictor(model, roi_size=16, intensity_window=(10, 0))


def test_option_groups_and_keywords_configure_the_same_predictor():
    from rep3d.inference import InferenceCfg, InputPolicy

    model = ThresholdOracle()
    model.stride = 16
    grouped = Predictor(model, InferenceCfg(roi_size=(32, 32, 16), overlap=0.25, blend="constant"),
                        InputPolicy(spacing=None, orientation="LPS"))
    keywords = Predictor(model, roi_size=(32, 32, 16), overlap=0.25, blend="constant", spacing=None,
                         orientation="LPS")
    for p in (grouped, keywords):
        assert (p.roi_size, p.overlap, p.blend, p.spacing, p.orientation) == ((32, 32, 16), 0.25, "constant", None,
                                                                             "LPS")
    assert grouped.config == keywords.config and grouped.inputs == keywords.inputs
    # a keyword replaces the field of the group it belongs to
    assert Predictor(model, InferenceCfg(overlap=0.25), overlap=0.75).overlap == 0.75
    with pytest.raises(TypeError, match="unexpected keyword argument 'roi'"):
        Predictor(model, roi=(32, 32, 32))


def test_bad_inputs_say_what_was_expected(tmp_path):
    p = Predictor(ThresholdOracle(), roi_size=8, spacing=None, intensity_window=None)
    with pytest.raises(InputError, match=r"\[C, X, Y, Z\].*x\[None\]"):
        p(np.zeros((10, 10, 10), np.float32))
    with pytest.raises(InputError, match=r"expects 1 channel\(s\), the input has 3"):
        p(np.zeros((3, 10, 10, 10), np.float32))
    with pytest.raises(InputError, match=r"expects 3 channel\(s\), the input has 1"):
        Predictor(RGBOracle(), roi_size=8)(np.zeros((1, 10, 10, 10), np.float32))
    nib.save(nib.Nifti1Image(np.zeros((10, 12), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="flat.nii.gz: expected a 3-D volume, got a 2-D image"):
        p(tmp_path / "flat.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti file" * 8)
    with pytest.raises(InputError, match="junk.nii.gz: cannot read it"):
        p(tmp_path / "junk.nii.gz")
    with pytest.raises(InputError, match="no such file"):
        p(tmp_path / "missing.nii.gz")


def test_large_volumes_stitch_on_cpu_when_the_device_is_short_of_memory(monkeypatch):
    p = Predictor(ThresholdOracle(), roi_size=16, spacing=None, intensity_window=None)
    assert p._stitch_device_for((256, 256, 160)).type == "cpu"  # CPU model: stitch where it runs
    p.device = torch.device("cuda")  # pretend; only the sizing rule is exercised
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2**30, 80 * 2**30))
    assert p._stitch_device_for((64, 64, 64)).type == "cuda"
    assert p._stitch_device_for((512, 512, 400)).type == "cpu"
    p.stitch_device = "cpu"
    assert p._stitch_device_for((8, 8, 8)).type == "cpu"


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_an_array_without_affine_is_taken_as_already_on_the_model_grid(orientation):
    affine = model_grid_affine(orientation, (1.5, 2.0, 2.5))
    assert "".join(nib.aff2axcodes(affine)) == orientation
    rng = np.random.default_rng(1)
    image = np.where(rng.random((1, 12, 10, 9)) > 0.5, 1.0, 0.0).astype(np.float32)
    p = Predictor(
        ThresholdOracle(), roi_size=8, spacing=(1.5, 2.0, 2.5), orientation=orientation, intensity_window=None
    )
    assert np.array_equal(p(image).label, image[0] > 0.5)  # no resampling, nothing moved


def test_foreground_box_is_the_box_training_crops_to():
    from monai.transforms import CropForegroundd

    from rep3d.inference.preprocess import foreground_box, is_foreground

    x = torch.zeros(2, 12, 10, 9)
    x[0, 2:7, 3, 4] = 0.5
    x[1, 5, 1:4, 6:8] = 1.0  # any channel counts
    assert foreground_box(x) == (slice(2, 7), slice(1, 4), slice(4, 8))
    cropped = CropForegroundd(["image"], source_key="image", select_fn=is_foreground, allow_smaller=True)(
        {"image": x})["image"]
    assert torch.equal(torch.as_tensor(cropped), x[(slice(None), *foreground_box(x))])
    assert foreground_box(torch.zeros(1, 4, 4, 4)) is None


def _body_in_air(shape=(40, 36, 32), box=(slice(6, 30), slice(5, 27), slice(4, 28)), seed=0):
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[box] = rng.uniform(-100, 250, size=image[box].shape)
    return image, box


def test_predictor_segments_the_foreground_box_as_training_crops_and_the_air_is_background():
    torch.manual_seed(0)
    model = rep3d.create_model("rep3d_tiny", num_classes=3, kernel_size=7).eval()
    from rep3d.inference.preprocess import BODY_MARGIN

    image, body = _body_in_air()
    box = tuple(slice(b.start - BODY_MARGIN, b.stop + BODY_MARGIN) for b in body)  # the body plus a margin
    common = dict(roi_size=32, spacing=None, orientation=None, intensity_window=(-125.0, 275.0), device="cpu")
    cropped = Predictor(model, **common)
    whole = Predictor(model, crop_foreground=False, **common)
    assert cropped.crop_foreground  # on by default with an intensity window
    out = cropped(image[None], np.eye(4), probabilities=True)
    # the same as segmenting the body box alone
    shifted = np.eye(4)
    shifted[:3, 3] = [b.start for b in box]
    ref = whole(image[box][None], shifted, probabilities=True)
    np.testing.assert_array_equal(out.label[box], ref.label)
    np.testing.assert_allclose(out.probabilities[(slice(None), *box)], ref.probabilities, atol=1e-6)
    outside = np.ones(image.shape, bool)
    outside[box] = False
    assert not out.label[outside].any()
    np.testing.assert_array_equal(out.probabilities[0][outside], 1.0)
    # and not what the whole grid gives: the air around the body changes a large-kernel model's output
    full = whole(image[None], np.eye(4), probabilities=True)
    assert np.abs(full.probabilities[(slice(None), *box)] - ref.probabilities).max() > 1e-3


def test_the_body_crop_keeps_anatomy_below_the_window_and_reports_what_it_left_out():
    """A lung slab at -850 HU lies below a soft-tissue window's floor: the crop keeps it (the old window-floor crop
    cut all of it away and labelled it background)."""
    torch.manual_seed(0)
    model = rep3d.create_model("rep3d_tiny", num_classes=3, kernel_size=3).eval()
    image = np.full((40, 36, 32), -1000.0, dtype=np.float32)
    image[4:20, 4:30, 4:28] = -850.0  # lung slab
    image[24:36, 6:30, 4:28] = 40.0  # soft tissue
    predictor = Predictor(model, roi_size=32, spacing=None, orientation=None, intensity_window=(-125.0, 275.0),
                          device="cpu")
    pred = predictor(image[None], np.eye(4))
    cropped = pred.report["cropped_away"]
    box = cropped["box_on_model_grid"]
    assert box[0][0] <= 4 and box[0][1] >= 36  # the lung slab and the tissue are inside the segmented box
    assert cropped["max_intensity_outside"] <= -950  # only air was left out
    assert cropped["voxels_outside"] == int(np.prod(image.shape)) - int(np.prod([b - a for a, b in box]))


def test_training_crop_never_drops_a_labelled_voxel(tmp_path):
    """A labelled lung at -850 HU: the training crop widens to hold every labelled voxel."""
    import nibabel as nib

    from rep3d.train import build_config
    from rep3d.train.data import preprocessing

    image = np.full((48, 40, 36), -1000.0, dtype=np.float32)
    label = np.zeros(image.shape, np.uint8)
    image[4:20, 4:30, 4:28] = -850.0
    label[4:20, 4:30, 4:28] = 1
    image[26:40, 6:30, 4:28] = 40.0
    label[26:40, 6:30, 4:28] = 2
    image[0, 0, 0] = -980.0  # labelled air voxel far from the body
    label[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "label.nii.gz")
    cfg = build_config("paper", data=str(tmp_path), out=str(tmp_path / "run"), roi_size=(32, 32, 32),
                      spacing=(1.0, 1.0, 1.0), intensity_window=(-125.0, 275.0))
    out = preprocessing(cfg)({"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")})
    kept = np.bincount(np.asarray(out["label"]).astype(np.int64).ravel(), minlength=3)
    assert kept[1] == (label == 1).sum() and kept[2] == (label == 2).sum()


def test_foreground_crop_is_off_without_a_window_or_with_nnunet_normalisation():
    model = rep3d.create_model("rep3d_tiny", num_classes=2, kernel_size=3)
    assert not Predictor(model, intensity_window=None, device="cpu").crop_foreground
    model.pretrained_cfg = dict(model.pretrained_cfg, normalization=[{"scheme": "zscore"}])
    assert not Predictor(model, device="cpu").crop_foreground
    assert Predictor(model, intensity_window=(0, 1), device="cpu", crop_foreground=True).crop_foreground
