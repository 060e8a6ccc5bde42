"""Regression tests for the second reliability round: silently wrong results and clear one-line errors.

Each test is named after the behaviour that failed before (the data-loss cases are in test_no_data_loss.py, the
out-of-distribution guard in test_out_of_distribution.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import rep3d
from rep3d.cli import main
from rep3d.data import write_msd_dataset
from rep3d.errors import Rep3DValueError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return rep3d.create_model("rep3d_tiny", num_classes=3, kernel_size=5, **kwargs).eval()


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"rep3d {command}: error:")]
    assert lines and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ 11: deployed weights, train model

@pytest.mark.parametrize("how", ["load_state_dict_strict_false", "monai_copy_model_state", "saved_file"])
def test_deployed_weights_into_a_train_form_model_are_refused_naming_deploy_mode(how, tmp_path):
    from monai.networks.utils import copy_model_state

    deployed = rep3d.reparameterize_model(tiny())
    target = tiny()
    with pytest.raises(Rep3DValueError, match="deploy mode"):
        if how == "load_state_dict_strict_false":
            target.load_state_dict(deployed.state_dict(), strict=False)
        elif how == "monai_copy_model_state":
            copy_model_state(target, deployed)
        else:
            torch.save(deployed.state_dict(), tmp_path / "deployed.pt")
            target.load_state_dict(torch.load(tmp_path / "deployed.pt", weights_only=True), strict=False)
    twin = rep3d.create_model("rep3d_tiny", num_classes=3, kernel_size=5, deploy=True).eval()
    twin.load_state_dict(deployed.state_dict())  # the right form still loads
    x = torch.randn(1, 1, 32, 32, 32)
    assert torch.allclose(twin(x), deployed(x))


# ------------------------------------------------------------------------------ 12: resume overrides

@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return write_msd_dataset(tmp_path_factory.mktemp("data"), num_train=3, num_test=0, seed=3, shape=(32, 32, 32))


TRAIN = ["--recipe", "phantom", "--roi", "32", "32", "32", "--model-arg", "kernel_size=3", "--workers", "0",
         "--val-every", "2", "--checkpoint-every", "1", "--warmup-steps", "1", "--threads", "1", "--device", "cpu"]


def test_resume_honours_a_new_iteration_count_and_refuses_other_settings_by_name(small_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(small_dataset), "--out", str(out), "--iterations", "2", *TRAIN]) == 0
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.1"]) == 1
    line = one_line_error(capsys, "train")
    assert "--lr" in line and "--iterations" in line
    assert main(["train", "--out", str(out), "--resume", "--iterations", "2"]) == 1  # nothing left to do
    assert "already reached step 2" in one_line_error(capsys, "train")
    assert main(["train", "--out", str(out), "--resume", "--iterations", "3", "--val-every", "3"]) == 0
    state = torch.load(out / "train_state" / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["config"]["iterations"] == 3 and state["config"]["val_every"] == 3
    config = json.loads((out / "config.json").read_text())
    assert config["rep3d"]["metadata"]["training_distribution"]["n_scans"] >= 1  # recorded for new models


# ------------------------------------------------------------------------------ 13: ROI below the minimum

@pytest.mark.parametrize("command", ["export", "erf", "predict"])
def test_roi_below_the_models_minimum_is_one_line_naming_minimum_and_multiple(command, tmp_path, capsys):
    import nibabel as nib

    folder = rep3d.save_pretrained(tiny(), tmp_path / "m")
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    argv = {
        "export": ["export", f"local-dir:{folder}", "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
                   "--roi", "16", "16", "16"],
        "erf": ["erf", f"local-dir:{folder}", "-o", str(tmp_path / "erf"), "--roi", "16", "16", "16",
                "--n-samples", "1"],
        "predict": ["predict", f"local-dir:{folder}", str(tmp_path / "x.nii.gz"), "-o", str(tmp_path / "p"),
                    "--roi-size", "16", "16", "16", "--quiet"],
    }[command]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "largest at least 32" in err and "stride 16" in err


# ------------------------------------------------------------------------------ 15: float64 input

def test_float64_input_is_cast_by_the_predictor_and_named_by_the_model():
    from rep3d.errors import Rep3DTypeError
    from rep3d.inference import Predictor

    model = tiny()
    with pytest.raises(Rep3DTypeError, match="float32 weights and got a float64 input"):
        model(torch.randn(1, 1, 32, 32, 32, dtype=torch.float64))
    predictor = Predictor(model, roi_size=32, spacing=None, orientation=None, intensity_window=(-125, 275),
                          device="cpu")
    image = np.random.default_rng(0).normal(0, 100, (1, 33, 34, 35))  # float64
    assert predictor(image, np.eye(4)).label.shape == (33, 34, 35)


# ------------------------------------------------------------------------------ 16: bad arguments

@pytest.mark.parametrize("argv, expected", [
    (["predict", "rep3d_tiny", "x.nii.gz", "-o", "o", "--stitch-device", "bogus"], "--stitch-device"),
    (["phantom", "p", "--seed", "-1"], "seed must be >= 0"),
    (["phantom", "p", "--shape", "4000", "4000", "4000"], "GiB of memory"),
    (["nnunet-plans", "-d", "../../etc"], "nnU-Net dataset id"),
    (["nnunet-plans", "-d", "4", "--kernel-size", "4"], "odd size >= 3"),
    (["nnunet-plans", "-d", "4", "--kernel-size", "0"], "odd size >= 3"),
    (["nnunet-plans", "-d", "4", "--kernel-size", "-5"], "odd size >= 3"),
    (["nnunet-pretrained", "rep3d_tiny.phantom", "-o", "w.pth", "--in-chans", "-3"], "--in-chans must be >= 1"),
    (["nnunet-pretrained", "rep3d_tiny.phantom", "-o", "w.pth", "--in-chans", "0"], "--in-chans must be >= 1"),
    (["export", "rep3d_tiny", "--format", "onnx", "--backend", "fft", "--dynamic", "spatial", "-o", "m.onnx"],
     "--backend fft cannot be exported with --dynamic spatial"),
    (["evaluate", "rep3d_tiny", "--data", "d", "--json", "missing/folder/x.json"], None),
])
def test_bad_arguments_are_one_line_errors_before_any_work(argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "evaluate":
        (tmp_path / "missing").write_text("a file where the --json folder should be")
        expected = "is a file"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 1
    assert expected in one_line_error(capsys, argv[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


# ------------------------------------------------------------------------------ 18: left/right labels

def test_nnunet_plans_suggests_the_no_mirroring_trainer_for_left_right_labels(tmp_path):
    from rep3d.integrations.nnunet.plans import mirrored_label_names

    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "left_kidney": 1,
                                                                  "Right Lung": 2, "liver": 3, "hippocampus_L": 4}}))
    assert mirrored_label_names(tmp_path / "dataset.json") == ["left_kidney", "Right Lung", "hippocampus_L"]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "lesion": 2}}))
    assert mirrored_label_names(tmp_path / "dataset.json") == []


# ------------------------------------------------------------------------------ 19: evaluate class counts

def test_evaluate_with_a_class_count_mismatch_reports_both_right_counts(small_dataset, tmp_path, capsys):
    folder = rep3d.save_pretrained(tiny(), tmp_path / "m")  # 3 classes; the phantom dataset has 9
    assert main(["evaluate", f"local-dir:{folder}", "--data", str(small_dataset), "--split", "train"]) == 1
    line = one_line_error(capsys, "evaluate")
    assert "predicts 3 classes" in line and "lists 9" in line


# ------------------------------------------------------------------------------ rule: format from the bytes

def test_checkpoint_format_is_detected_from_the_bytes_not_the_suffix(tmp_path):
    from safetensors.torch import save_file

    from rep3d.hub import Rep3DWeightsError
    from rep3d.hub.weights import read_weights

    state = {"w": torch.arange(3.0)}
    torch.save(state, tmp_path / "zip.safetensors")
    save_file(state, tmp_path / "tensors.pt")
    for name in ("zip.safetensors", "tensors.pt"):
        assert torch.equal(read_weights(tmp_path / name, "x")[0]["w"], state["w"])
    (tmp_path / "junk.pth").write_bytes(b"hello, not a checkpoint")
    with pytest.raises(Rep3DWeightsError, match="truncated or corrupt|not a readable"):
        read_weights(tmp_path / "junk.pth", "x")
