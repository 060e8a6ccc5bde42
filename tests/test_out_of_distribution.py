"""A scan the model was not trained for is flagged, never segmented silently.

The bundled ``rep3d_tiny.phantom`` records its training input distribution; ``rep3d predict`` compares each input
with it: far outside is refused (``--allow-out-of-distribution`` turns that into a warning recorded in the sidecar),
near the edge is warned and recorded.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import rep3d
from rep3d.cli import main
from rep3d.data.phantom import DEFAULT_SPACING, case_seed, make_phantom
from rep3d.inference import OutOfDistributionError, Predictor
from rep3d.inference.distribution import TRAINING_DISTRIBUTION_KEY, compare, scan_statistics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom():
    # the training phantoms' voxel size (a smaller grid at that spacing: a smaller field of view, same anatomy scale)
    return make_phantom(case_seed(7, "test", 0), shape=(64, 64, 48), spacing=DEFAULT_SPACING)


def _write(path, image, affine):
    nib.save(nib.Nifti1Image(np.asarray(image, np.float32), affine), path)
    return path


def _variants(phantom):
    """name -> (image, affine) of the hostile inputs."""
    image, affine = phantom.image, phantom.affine
    rng = np.random.default_rng(0)
    mr = np.where(image > -500, 300 + (image + 200) * 1.5, 0) + rng.normal(0, 5, image.shape)
    coarse, fine = affine.copy(), affine.copy()
    coarse[:3, :3] *= 3.3
    fine[:3, :3] *= 0.3
    return {
        "air_only": (np.full_like(image, -1000.0) + rng.normal(0, 5, image.shape), affine),
        "mr_like": (np.clip(mr, 0, None), affine),
        "scaled_intensity": (image + 1024.0, affine),  # stored unsigned, rescale intercept not applied
        "spacing_0.3x": (image, fine),
        "spacing_3.3x": (image[::3, ::3, ::3], coarse),  # the same field of view in 3.3x coarser voxels
    }


def test_the_bundled_model_records_its_training_distribution_in_config_and_card():
    model = rep3d.create_model("rep3d_tiny.phantom", pretrained=True)
    dist = model.pretrained_cfg[TRAINING_DISTRIBUTION_KEY]
    assert dist["modality"] == "CT" and dist["n_scans"] == 32 and "SYNTHETIC" in dist["source"]
    assert dist["spacing_min"] == [2.0, 2.0, 2.5] and dist["intensity_p01_max"] < -900
    card = rep3d.hub.model_card(model, rep3d.hub.model_config(model))
    assert "Training input distribution" in card and "in window fraction" in card


@pytest.mark.parametrize("name", ["air_only", "mr_like", "scaled_intensity", "spacing_0.3x", "spacing_3.3x"])
def test_out_of_distribution_inputs_are_refused_or_warned_and_recorded(name, phantom, tmp_path, capsys):
    image, affine = _variants(phantom)[name]
    scan = _write(tmp_path / f"{name}.nii.gz", image, affine)
    out = tmp_path / "out"
    code = main(["predict", "rep3d_tiny.phantom", str(scan), "-o", str(out), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    if code != 0:  # refused: one line naming what is wrong and the flag; no label map written
        assert "far outside the model's training input" in err and "--allow-out-of-distribution" in err
        assert not (out / f"{name}_seg.nii.gz").exists()
        code = main(["predict", "rep3d_tiny.phantom", str(scan), "-o", str(out), "--quiet", "--device", "cpu",
                     "--allow-out-of-distribution"])
        err = capsys.readouterr().err
        assert code == 0
    assert "warning:" in err and "training input" in err
    report = json.loads((out / f"{name}_seg.json").read_text())
    assert report["out_of_distribution"]["status"] in ("near", "far")
    assert report["out_of_distribution"]["findings"] and report["warnings"]


@pytest.mark.parametrize("name", ["air_only", "mr_like", "scaled_intensity"])
def test_air_mr_and_unrescaled_ct_through_the_ct_model_are_refused(name, phantom):
    image, affine = _variants(phantom)[name]
    predictor = Predictor(rep3d.create_model("rep3d_tiny.phantom", pretrained=True), device="cpu")
    with pytest.raises(OutOfDistributionError, match="far outside the model's training input"):
        predictor(image[None], affine=affine)


def test_a_training_phantom_is_inside_the_distribution(phantom):
    predictor = Predictor(rep3d.create_model("rep3d_tiny.phantom", pretrained=True), device="cpu")
    pred = predictor(phantom.image[None], affine=phantom.affine)
    assert pred.report["out_of_distribution"]["status"] == "inside"


def test_real_ct_statistics_are_reported_as_outside_the_training_data_not_as_a_wrong_modality():
    """Real abdominal CT in HU at 0.7 x 0.7 x 1.25 mm (values typical of a portal-venous scan, air -1000, padding
    -2048 outside the field of view) through the phantom model: not a units / modality finding."""
    rng = np.random.default_rng(1)
    x = np.full((96, 96, 64), -1000.0)
    x[:8] = -2048.0
    x[16:80, 16:80] = rng.normal(40, 30, (64, 64, 64))  # soft tissue
    x[30:50, 20:40] = rng.normal(-90, 20, (20, 20, 64))  # fat
    dist = rep3d.create_model("rep3d_tiny.phantom", pretrained=True).pretrained_cfg.get(TRAINING_DISTRIBUTION_KEY)
    assert dist is not None
    findings = compare(scan_statistics(x, (-125, 275)), (0.7, 0.7, 1.25), dist, (-125, 275))
    assert all(f.kind not in ("units", "empty") for f in findings)
    assert all("training distribution" in f.message for f in findings if f.kind in ("spacing", "statistics"))
