"""``rep3d predict``: files and folders in, ``<stem>_seg.nii.gz`` out, per-file errors, no clobbering."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from rep3d import cli, inference
from rep3d.cli import predict as predict_command
from tests.standins import threshold_oracle
from tests.test_predictor import boundary_band, oblique_volume


def predict(argv: list[str]) -> int:
    """Run ``rep3d predict ARGV`` through the real entry point (its error handler included)."""
    return cli.main(["predict", *argv])


@pytest.fixture
def oracle(monkeypatch):
    """Stand-in for the model zoo, in this test module only: the command's ``create_model`` returns a thresholding
    oracle with a cfg."""
    built = []

    def build(name, pretrained=False, checkpoint_path=None):
        built.append((name, checkpoint_path))
        return threshold_oracle(name, checkpoint_path)

    monkeypatch.setattr(predict_command, "create_model", build)
    return built


def write_scan(path, shape=(37, 29, 23), spacing=(0.9, 1.7, 2.3), channels=None):
    image, affine = oblique_volume(shape, spacing)
    data = np.rint(image).astype(np.int16)
    if channels:
        data = np.stack([data] * channels, -1)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return image, affine


def test_predict_writes_one_label_map_per_input_on_the_input_grid(tmp_path, oracle):
    (tmp_path / "in").mkdir()
    a, aff_a = write_scan(tmp_path / "in/a.nii.gz")
    b, aff_b = write_scan(tmp_path / "b.nii", shape=(20, 25, 17), spacing=(1.1, 0.8, 3.0))
    (tmp_path / "in/notes.txt").write_text("ignored")
    code = predict(
        [
            "rep3d_tiny",
            str(tmp_path / "in"),
            str(tmp_path / "b.nii"),
            "-o",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0 and oracle == [("rep3d_tiny", None)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".rep3d-outputs.json", "a_seg.json", "a_seg.nii.gz", "b_seg.json", "b_seg.nii.gz"]
    for name, image, affine in (("a", a, aff_a), ("b", b, aff_b)):
        seg = nib.load(tmp_path / f"out/{name}_seg.nii.gz")
        assert seg.shape == image.shape and np.allclose(seg.affine, affine)
        wrong = np.asanyarray(seg.dataobj).astype(bool) != (image > 50)
        assert not (wrong & ~boundary_band(image > 50)).any()


def test_a_corrupt_file_is_reported_by_name_and_the_others_still_run(tmp_path, oracle, capsys):
    write_scan(tmp_path / "good.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b definitely not a volume")
    code = predict(
        [
            "m",
            str(tmp_path / "broken.nii.gz"),
            str(tmp_path / "good.nii.gz"),
            "-o",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert (tmp_path / "out/good_seg.nii.gz").is_file() and not (tmp_path / "out/broken_seg.nii.gz").exists()
    assert "broken.nii.gz: cannot read it" in err and "1 failed: broken.nii.gz" in err
    # no temporary leftovers
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".rep3d-outputs.json", "good_seg.json",
                                                                    "good_seg.nii.gz"]


def test_2d_and_wrong_channel_inputs_fail_with_expected_versus_given(tmp_path, oracle, capsys):
    nib.save(nib.Nifti1Image(np.zeros((12, 14), np.int16), np.eye(4)), tmp_path / "slice.nii.gz")
    write_scan(tmp_path / "rgb.nii.gz", channels=3)
    write_scan(tmp_path / "ok.nii.gz")
    code = predict(["m", str(tmp_path), "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "slice.nii.gz: expected a 3-D volume, got a 2-D image of shape (12, 14)" in err
    assert "rgb.nii.gz: the model expects 1 channel(s), the input has 3" in err
    assert (tmp_path / "out/ok_seg.nii.gz").is_file()


def test_existing_outputs_are_not_overwritten_without_the_flag(tmp_path, oracle, capsys):
    write_scan(tmp_path / "a.nii.gz")
    out = tmp_path / "out"
    assert predict(["m", str(tmp_path / "a.nii.gz"), "-o", str(out), "--quiet"]) == 0
    earlier = (out / "a_seg.nii.gz").read_bytes()
    assert predict(["m", str(tmp_path / "a.nii.gz"), "-o", str(out), "--quiet"]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "a_seg.nii.gz").read_bytes() == earlier
    (out / "a_seg.nii.gz").unlink()
    write_scan(out / "a_seg.nii.gz")  # not an earlier output: --overwrite never replaces it
    assert predict(["m", str(tmp_path / "a.nii.gz"), "-o", str(out), "--quiet", "--overwrite"]) == 1
    assert "was not written by rep3d" in capsys.readouterr().err
    (out / "a_seg.nii.gz").write_bytes(earlier)
    assert predict(["m", str(tmp_path / "a.nii.gz"), "-o", str(out), "--quiet", "--overwrite"]) == 0
    assert nib.load(out / "a_seg.nii.gz").shape == (37, 29, 23)


def test_probabilities_are_written_classes_last(tmp_path, oracle):
    image, affine = write_scan(tmp_path / "a.nii.gz")
    assert (
        predict(
            [
                "m",
                str(tmp_path / "a.nii.gz"),
                "-o",
                str(tmp_path),
                "--probabilities",
                "--tta",
                "--quiet",
                "--overlap",
                "0.25",
                "--sw-batch-size",
                "2",
                "--checkpoint",
                "w.safetensors",
            ]
        )
        == 0
    )
    assert oracle == [("m", "w.safetensors")]
    prob = nib.load(tmp_path / "a_prob.nii.gz")
    assert prob.shape == (*image.shape, 2) and prob.get_data_dtype() == np.float32
    assert np.allclose(prob.affine, affine)
    assert np.allclose(np.asanyarray(prob.dataobj).sum(-1), 1.0, atol=1e-4)


def test_missing_inputs_and_model_failures_are_reported(tmp_path, monkeypatch, capsys):
    write_scan(tmp_path / "a.nii.gz")
    (tmp_path / "empty").mkdir()

    def broken(name, pretrained=False, checkpoint_path=None):
        raise RuntimeError(f"unknown model {name!r}")

    monkeypatch.setattr(predict_command, "create_model", broken)
    code = predict(
        [
            "nope",
            str(tmp_path / "a.nii.gz"),
            str(tmp_path / "missing.nii.gz"),
            str(tmp_path / "empty"),
            "-o",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "missing.nii.gz: no such file or folder" in err and "empty: folder holds no .nii" in err
    assert "nope: cannot build the model: RuntimeError: unknown model 'nope'" in err


def test_invalid_settings_stop_before_any_volume(tmp_path, oracle, capsys):
    write_scan(tmp_path / "a.nii.gz")
    assert (
        predict(["m", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "o"), "--overlap", "1.5", "--quiet"])
        == 1
    )
    err = capsys.readouterr().err
    assert "rep3d predict: error: overlap must be in [0, 1), got 1.5" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_duplicate_output_names_are_refused(tmp_path, oracle, capsys):
    (tmp_path / "x").mkdir()
    write_scan(tmp_path / "a.nii.gz")
    write_scan(tmp_path / "x/a.nii")
    assert (
        predict(
            ["m", str(tmp_path / "a.nii.gz"), str(tmp_path / "x/a.nii"), "-o", str(tmp_path / "o"), "--quiet"]
        )
        == 1
    )
    assert "same output name a_seg.nii.gz" in capsys.readouterr().err
    assert (tmp_path / "o/a_seg.nii.gz").is_file()


def test_output_stem_strips_nifti_suffixes():
    assert inference.output_stem("/d/case_01.nii.gz") == "case_01"
    assert inference.output_stem("case.nii") == "case"
    assert inference.output_stem("scan.v2.mha") == "scan.v2"


def test_rep3d_main_dispatches_predict(tmp_path, oracle):
    # no skip on an import error: every sub-command module must import, or this test fails
    cli.build_parser()
    write_scan(tmp_path / "a.nii.gz")
    assert cli.main(["predict", "m", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "a_seg.nii.gz").is_file()


def test_preview_writes_three_mid_slices_with_the_label_overlay_per_case(tmp_path, oracle):
    from PIL import Image

    (tmp_path / "in").mkdir()
    write_scan(tmp_path / "in/a.nii.gz")
    write_scan(tmp_path / "in/b.nii.gz", shape=(30, 31, 20))
    out = tmp_path / "out"
    assert predict(["m", str(tmp_path / "in"), "-o", str(out), "--device", "cpu", "--quiet", "--preview"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".rep3d-outputs.json", "a_preview.png", "a_seg.json",
                                                     "a_seg.nii.gz", "b_preview.png", "b_seg.json", "b_seg.nii.gz"]
    image = np.asarray(Image.open(out / "a_preview.png").convert("RGB"))
    assert image.shape[0] > 60 and image.shape[1] > 3 * 30  # two rows (image, overlay) of three panels
    grey = (image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2])
    assert (~grey).mean() > 0.01  # the overlay's colours are there, not only the grey image
    # an existing preview is never replaced without --overwrite
    (out / "a_preview.png").write_bytes(b"mine")
    for name in ("a_seg.nii.gz", "a_seg.json", "b_seg.nii.gz", "b_seg.json"):
        (out / name).unlink()
    assert predict(["m", str(tmp_path / "in"), "-o", str(out), "--device", "cpu", "--quiet", "--preview"]) == 0
    assert (out / "a_preview.png").read_bytes() == b"mine"
