"""Every ``rep3d`` command refuses bad input with one line ``rep3d <command>: error: ...``, a non-zero exit, no
traceback, and leaves the user's files byte-identical.

A few cases start a real ``python -m rep3d`` process (the console entry point, its exit status, nothing swallowed by
pytest); the others call :func:`rep3d.cli.main` in-process, which is the same code after argument parsing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rep3d import cli

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ shared helpers
def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m rep3d ARGS`` in ``cwd`` with this checkout first on the path; output captured as text."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rep3d", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(proc_or_result, command: str, *, stderr: str | None = None) -> str:
    """Non-zero exit, no traceback, exactly one ``rep3d <command>: error: ...`` line; returns its message.

    Takes a ``CompletedProcess``, or an exit status plus ``stderr=`` (in-process runs through ``cli.main``)."""
    if isinstance(proc_or_result, subprocess.CompletedProcess):
        code, err, out = proc_or_result.returncode, proc_or_result.stderr, proc_or_result.stdout
    else:
        code, err, out = proc_or_result, stderr or "", ""
    assert code != 0, f"exit 0 for a refused command; stderr:\n{err}"
    assert "Traceback" not in err + out, err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    prefix = f"rep3d {command}: error: "
    assert len(lines) == 1 and lines[0].startswith(prefix), f"expected one '{prefix}...' line, got:\n{err}"
    return lines[0][len(prefix):]


def digests(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders): compare before / after a command."""
    files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*"))) if p.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def write_scan(path: Path, shape=(16, 16, 12), affine=None) -> Path:
    """A tiny CT-like volume (HU) with a bright block; ``affine`` defaults to 2 mm voxels."""
    data = np.full(shape, -1000, np.int16)
    data[4:12, 4:12, 3:9] = 60
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def main_error(argv: list[str], capsys, command: str) -> str:
    """Run ``rep3d ARGV`` in-process and assert one error line; returns the message."""
    code = cli.main(argv)
    return assert_one_line_error(code, command, stderr=capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------ predict, demo,
# evaluate, phantom, geometry (the inference side of issue 17)
@pytest.fixture
def scans(tmp_path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_scan(folder / "x.nii.gz")
    return folder


def test_unknown_device_and_an_output_file_are_one_line_errors_from_the_real_entry_point(tmp_path, scans):
    afile = tmp_path / "afile"
    afile.write_bytes(b"user data")
    before = digests(scans, afile)
    proc = run_cli(["predict", "rep3d_tiny.phantom", str(scans), "-o", str(tmp_path / "out"), "--device", "tpu9"],
                   tmp_path)
    assert "'tpu9' is not a device torch knows" in assert_one_line_error(proc, "predict")
    assert not (tmp_path / "out").exists()
    proc = run_cli(["demo", "-o", str(afile)], tmp_path)
    assert "is an existing file" in assert_one_line_error(proc, "demo")
    assert digests(scans, afile) == before


def test_phantom_into_a_file_and_evaluate_on_a_missing_dataset_are_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_bytes(b"user data")
    argv = ["phantom", str(afile), "--num-train", "1", "--num-test", "0", "--shape", "16", "16", "16", "--quiet"]
    assert "is an existing file" in main_error(argv, capsys, "phantom")
    assert afile.read_bytes() == b"user data"
    message = main_error(["evaluate", "rep3d_tiny.phantom", "--data", str(tmp_path / "missing")], capsys, "evaluate")
    assert "missing does not exist" in message


def test_predict_refuses_a_file_or_unwritable_output_before_building_the_model(tmp_path, scans, capsys,
                                                                               monkeypatch):
    afile = tmp_path / "afile"
    afile.write_bytes(b"user data")
    before = digests(scans, afile)
    built = []
    monkeypatch.setattr("rep3d.cli.predict.create_model", lambda *a, **k: built.append(a))
    assert "is an existing file" in main_error(["predict", "m", str(scans), "-o", str(afile)], capsys, "predict")
    assert "cannot be created" in main_error(["predict", "m", str(scans), "-o", str(afile / "sub")], capsys,
                                             "predict")
    monkeypatch.setattr(os, "access", lambda *a: False)  # the tests may run as root, who can write anywhere
    assert "is not writable" in main_error(["predict", "m", str(scans), "-o", str(tmp_path / "ro")], capsys,
                                           "predict")
    assert built == [] and digests(scans, afile) == before


def test_demo_with_a_model_without_weights_is_one_line(tmp_path, capsys):
    message = main_error(["demo", "--model", "rep3d_base", "-o", str(tmp_path / "d")], capsys, "demo")
    assert "rep3d_base" in message and "fix:" in message
    assert not (tmp_path / "d").exists()


def test_tta_with_weights_trained_without_flips_is_one_line_before_any_output(tmp_path, scans, capsys):
    before = digests(scans)
    message = main_error(["predict", "rep3d_tiny.phantom", str(scans), "-o", str(tmp_path / "out"), "--tta",
                          "--quiet", "--device", "cpu"], capsys, "predict")
    assert "rep3d_tiny.phantom was trained without flips" in message
    assert digests(scans) == before and not (tmp_path / "out").exists()


def test_a_zero_affine_is_one_line_and_nothing_is_segmented(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    img = nib.Nifti1Image(np.zeros((16, 16, 12), np.int16), None)
    img.header.set_sform(np.zeros((4, 4)), code=1)
    img.header.set_qform(None, code=0)
    nib.save(img, folder / "zero.nii.gz")
    before = digests(folder)
    message = main_error(["predict", "rep3d_tiny.phantom", str(folder), "-o", str(tmp_path / "out"), "--quiet",
                          "--device", "cpu"], capsys, "predict")
    assert "zero.nii.gz: the header has no usable voxel-to-world affine" in message
    assert digests(folder) == before and not list((tmp_path / "out").glob("*"))


def test_predict_into_its_own_input_folder_never_overwrites_an_input(tmp_path, capsys):
    """``-o`` = the input folder with ``--overwrite``: ``x_seg.nii.gz`` (a ground truth, say) is an input and the
    output of ``x``; it must survive byte-identical, and only earlier outputs are ever replaced."""
    folder = tmp_path / "data"
    folder.mkdir()
    write_scan(folder / "x.nii.gz")
    write_scan(folder / "x_seg.nii.gz")
    before = digests(folder)
    argv = ["predict", "rep3d_tiny.phantom", str(folder), "-o", str(folder), "--overwrite", "--quiet", "--device",
            "cpu", "--roi-size", "32", "32", "32"]
    message = main_error(argv, capsys, "predict")
    assert "x.nii.gz: its output" in message and "x_seg.nii.gz is also an input" in message
    after = digests(folder)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {str(folder / n) for n in ("x_seg_seg.nii.gz", "x_seg_seg.json",
                                                                   ".rep3d-outputs.json")}
    # a second run: x_seg_seg.nii.gz is the first run's output, never an input; x_seg.nii.gz is still refused
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("is also an input") == 1
    again = digests(folder)
    assert {k: again[k] for k in before} == before
    assert not (folder / "x_seg_seg_seg.nii.gz").exists()


def test_overwrite_replaces_earlier_outputs_but_never_a_foreign_file(tmp_path, capsys):
    scan = write_scan(tmp_path / "a.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "a_seg.nii.gz"
    write_scan(foreign)  # the user's own file under the output's name
    before = digests(scan, foreign)
    argv = ["predict", "rep3d_tiny.phantom", str(scan), "-o", str(out), "--overwrite", "--quiet", "--device", "cpu",
            "--roi-size", "32", "32", "32"]
    assert "was not written by rep3d" in main_error(argv, capsys, "predict")
    assert digests(scan, foreign) == before
    foreign.unlink()
    assert cli.main(argv) == 0
    first = digests(out)
    assert cli.main(argv) == 0  # an earlier output is replaced
    assert digests(out).keys() == first.keys() and digests(scan) == {str(scan): before[str(scan)]}


# train and import-official cases: tests/test_cli_errors_train.py


@pytest.mark.parametrize("missing", ["onnx", "onnxscript", "onnxruntime"])
def test_export_without_the_export_extra_is_one_line_naming_the_install(tmp_path, capsys, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # what an environment without the module looks like to import
    built = []
    monkeypatch.setattr("rep3d.builder.create_model", lambda *a, **k: built.append(a))
    message = main_error(["export", "rep3d_tiny", "--format", "onnx", "-o", str(tmp_path / "m.onnx")], capsys,
                         "export")
    assert 'pip install "rep3d[export]"' in message and missing in message
    assert built == [] and not (tmp_path / "m.onnx").exists()


def test_nnunet_commands_without_the_nnunet_extra_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    message = main_error(["nnunet-plans", "-d", "1"], capsys, "nnunet-plans")
    assert 'pip install "rep3d[nnunet]"' in message


def test_every_extra_named_in_a_hint_exists_in_setup_cfg():
    import configparser

    from rep3d.extras import EXTRAS

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    extras = set(cfg["options.extras_require"])
    assert set(EXTRAS.values()) <= extras
