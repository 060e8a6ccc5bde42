"""Prediction-time honesty and FreeSurfer input: weights trained on synthetic data say so on every ``Predictor`` call
and every ``rep3d predict`` run (and in the JSON sidecar); ``.mgz`` volumes are segmented on their own grid."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from rep3d import cli, inference
from rep3d.cli import predict as predict_command
from tests.standins import threshold_oracle
from tests.test_predictor import oblique_volume


def synthetic_oracle(name: str = "rep3d_tiny.phantom", checkpoint: str | None = None):
    model = threshold_oracle(name, checkpoint)
    model.pretrained_cfg.update(architecture="rep3d_tiny", tag="phantom", dataset="rep3d-phantom", synthetic=True)
    return model


@pytest.fixture
def build_with(monkeypatch):
    """Make ``rep3d predict``'s ``create_model`` return the given stand-in."""

    def use(factory):
        monkeypatch.setattr(predict_command, "create_model",
                            lambda name, pretrained=False, checkpoint_path=None: factory(name, checkpoint_path))

    return use


def write_nifti(path, shape=(20, 18, 16)):
    image, affine = oblique_volume(shape, (1.1, 1.3, 1.7))
    nib.save(nib.Nifti1Image(np.rint(image).astype(np.int16), affine), path)
    return image, affine


def test_predictor_warns_on_every_call_when_the_weights_are_synthetic():
    image, affine = oblique_volume((20, 18, 16), (1.1, 1.3, 1.7))
    predictor = inference.Predictor(synthetic_oracle(), device="cpu")
    for _ in range(2):  # every call, not once per call site
        with pytest.warns(inference.SyntheticWeightsWarning, match="SYNTHETIC data .rep3d-phantom.") as record:
            pred = predictor(image[None], affine)
        assert len([w for w in record if w.category is inference.SyntheticWeightsWarning]) == 1
        assert "\n" not in str(record[0].message)
        assert "rep3d_tiny.phantom" in pred.notices["synthetic_training_data"]
        assert pred.sidecar()["notices"]["synthetic_training_data"] == pred.notices["synthetic_training_data"]


def test_predictor_of_real_data_weights_gives_no_notice():
    image, affine = oblique_volume((20, 18, 16), (1.1, 1.3, 1.7))
    predictor = inference.Predictor(threshold_oracle("x"), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", inference.SyntheticWeightsWarning)
        pred = predictor(image[None], affine)
    assert predictor.notice is None and pred.notices == {}


def test_predictor_profile_splits_the_time_and_counts_windows():
    image, affine = oblique_volume((20, 18, 16), (1.1, 1.3, 1.7))
    pred = inference.Predictor(threshold_oracle("x"), device="cpu", overlap=0.0)(image[None], affine)
    profile = pred.profile
    assert set(profile["timings_s"]) == {"read", "resample", "infer", "stitch"}
    assert all(t >= 0 for t in profile["timings_s"].values())
    assert profile["windows"] >= 1 and len(profile["model_grid_shape"]) == 3
    box = profile["foreground_box"]
    assert box is not None and all(0 <= a < b <= n for (a, b), n in zip(box, profile["model_grid_shape"]))


def test_predict_cli_prints_the_notice_once_and_records_it_in_each_sidecar(tmp_path, build_with, capsys):
    build_with(synthetic_oracle)
    write_nifti(tmp_path / "a.nii.gz")
    write_nifti(tmp_path / "b.nii.gz")
    code = cli.main(["predict", "rep3d_tiny.phantom", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"),
                     "-o", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if line.startswith("rep3d predict: notice:")]
    assert len(notices) == 1 and "SYNTHETIC" in notices[0]
    for stem in ("a", "b"):
        side = json.loads((tmp_path / "out" / f"{stem}_seg.json").read_text())
        assert "SYNTHETIC" in side["notices"]["synthetic_training_data"]
        assert side["model"] == "rep3d_tiny.phantom" and side["source"].endswith(f"{stem}.nii.gz")
        assert set(side["profile"]["timings_s"]) == {"read", "resample", "infer", "stitch", "write"}


def test_predict_cli_with_real_data_weights_prints_no_notice(tmp_path, build_with, capsys):
    build_with(threshold_oracle)
    write_nifti(tmp_path / "a.nii.gz")
    assert cli.main(["predict", "m", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert "notice" not in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "a_seg.json").read_text())["notices"] == {}


def test_a_foreign_sidecar_is_never_overwritten(tmp_path, build_with, capsys):
    build_with(threshold_oracle)
    write_nifti(tmp_path / "a.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_seg.json").write_text('{"mine": 1}')
    code = cli.main(["predict", "m", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "out"), "--quiet",
                     "--overwrite"])
    assert code == 1 and "was not written by rep3d" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "a_seg.json").read_text()) == {"mine": 1}


def write_mgz(path, shape=(20, 18, 16)):
    image, affine = oblique_volume(shape, (1.1, 1.3, 1.7))
    nib.save(nib.MGHImage(np.rint(image).astype(np.float32), affine), str(path))
    return image, affine


def test_mgz_volume_is_segmented_on_its_own_grid(tmp_path):
    image, affine = write_mgz(tmp_path / "T1.mgz")
    predictor = inference.Predictor(threshold_oracle("x"), device="cpu")
    from_file = predictor(tmp_path / "T1.mgz")
    from_array = predictor(image[None], from_file.affine)  # MGH stores the affine in float32
    assert from_file.label.shape == image.shape
    np.testing.assert_allclose(from_file.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(from_file.label, from_array.label)
    assert from_file.label.any()


def test_predict_cli_reads_mgz_files_and_folders(tmp_path, build_with):
    build_with(threshold_oracle)
    (tmp_path / "in").mkdir()
    image, affine = write_mgz(tmp_path / "in" / "brain.mgz")
    assert cli.main(["predict", "m", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    seg = nib.load(str(tmp_path / "out" / "brain_seg.nii.gz"))
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-4)


def test_an_unreadable_mgz_is_refused_by_name(tmp_path):
    (tmp_path / "bad.mgz").write_bytes(b"not an mgz")
    with pytest.raises(inference.InputError, match="bad.mgz: cannot read it as FreeSurfer MGZ"):
        inference.Predictor(threshold_oracle("x"), device="cpu")(tmp_path / "bad.mgz")


def test_evaluate_prints_the_synthetic_notice_once_and_records_it(tmp_path, capsys):
    """`rep3d evaluate` with synthetic weights: one notice line for the run (not a Python warning per case), and the
    notice in its --json."""
    from rep3d.data import write_msd_dataset

    write_msd_dataset(tmp_path / "ds", num_train=1, num_test=2, seed=0, shape=(40, 40, 32))
    code = cli.main(["evaluate", "rep3d_tiny.phantom", "--data", str(tmp_path / "ds"), "--device", "cpu",
                     "--json", str(tmp_path / "dice.json")])
    assert code == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "SYNTHETIC" in line] == [
        line for line in err.splitlines() if line.startswith("rep3d evaluate: notice:")]
    assert len([line for line in err.splitlines() if line.startswith("rep3d evaluate: notice:")]) == 1
    assert "SYNTHETIC" in json.loads((tmp_path / "dice.json").read_text())["notices"]["synthetic_training_data"]
