"""`rep3d train` / `rep3d import-official` on bad input: one line `rep3d <command>: error: ...`, a non-zero exit, no
traceback, and every input file byte-identical afterwards. Most cases run in-process through ``rep3d.cli.main``;
a few run as real subprocesses (the console entry point, exit status and stderr as a user sees them)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rep3d.cli import main
from rep3d.data import write_msd_dataset
from rep3d.train import Trainer, build_config
from rep3d.train.checkpoint import STATE_KEYS, temp_files

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--recipe", "phantom", "--roi", "32", "32", "32", "--model-arg", "kernel_size=3", "--workers", "0",
        "--threads", "1"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_msd_dataset(tmp_path_factory.mktemp("phantom"), num_train=3, num_test=0, seed=5, shape=(24, 24, 16))


def digests(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (a root may be a single file)."""
    files = [p for r in roots for p in ([r] if r.is_file() else sorted(r.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_one_line_error(capsys, argv: list[str], command: str, *expected: str, inputs: tuple[Path, ...] = ()) -> str:
    """Run ``rep3d argv`` in-process: non-zero exit, stderr one ``rep3d <command>: error:`` line mentioning every
    ``expected`` fragment, no traceback, ``inputs`` unchanged. Returns the line."""
    before = digests(*inputs)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"rep3d {command}: error: "), err
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert digests(*inputs) == before
    return lines[0]


def _dataset_variant(phantom: Path, folder: Path, text: str | None = None, keep: int | None = None) -> Path:
    """A copy of ``phantom``'s dataset.json (its files referenced by absolute path) replaced by ``text`` or cut to
    ``keep`` training cases."""
    folder.mkdir(parents=True, exist_ok=True)
    if text is None:
        meta = json.loads((phantom / "dataset.json").read_text())
        meta["training"] = [{k: str((phantom / v).resolve()) for k, v in pair.items()}
                            for pair in meta["training"][:keep]]
        meta["numTraining"] = len(meta["training"])
        text = json.dumps(meta)
    (folder / "dataset.json").write_text(text)
    return folder


# ---------------------------------------------------------------------------------------------- train: the data

def test_train_with_a_missing_data_folder_says_it_does_not_exist(capsys, tmp_path):
    assert_one_line_error(capsys, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), *TINY],
                          "train", "does not exist")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("text", "fragment"), [("", "not valid JSON"), ("{}", "lacks required MSD key")])
def test_train_with_an_empty_or_blank_dataset_json_names_the_problem(capsys, tmp_path, phantom, text, fragment):
    data = _dataset_variant(phantom, tmp_path / "data", text=text)
    assert_one_line_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY], "train",
                          fragment, str(data / "dataset.json"), inputs=(data, phantom))


def test_train_with_a_single_case_asks_for_two(capsys, tmp_path, phantom):
    data = _dataset_variant(phantom, tmp_path / "data", keep=1)
    assert_one_line_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY], "train",
                          "at least 2 labelled training cases", inputs=(data, phantom))


def test_train_out_that_is_a_file_is_refused_and_left_alone(capsys, tmp_path, phantom):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    assert_one_line_error(capsys, ["train", "--data", str(phantom), "--out", str(out), *TINY, "--iterations", "1"],
                          "train", f"--out {out} is a file", inputs=(out, phantom))


# ------------------------------------------------------------------------------------------- train: the options

@pytest.mark.parametrize(("option", "value"), [("--iterations", "0"), ("--val-every", "0"),
                                               ("--checkpoint-every", "0"), ("--iterations", "-3")])
def test_train_with_a_zero_step_count_or_interval_names_the_option(capsys, tmp_path, phantom, option, value):
    out = tmp_path / "run"
    assert_one_line_error(capsys, ["train", "--data", str(phantom), "--out", str(out), *TINY, option, value],
                          "train", f"{option} must be a positive integer, got {value}", inputs=(phantom,))
    assert not out.exists()  # refused before anything was written


def test_train_with_an_roi_the_models_cannot_take_names_the_option(capsys, tmp_path, phantom):
    argv = ["train", "--data", str(phantom), "--out", str(tmp_path / "run"), *TINY, "--roi", "16", "16", "16"]
    assert_one_line_error(capsys, argv, "train", "--roi must be 3 multiples of 16", inputs=(phantom,))


# ------------------------------------------------------------------------------------------------ train: resume

def _write_last(out: Path, payload: bytes | dict) -> Path:
    last = out / "train_state" / "last.pt"
    last.parent.mkdir(parents=True)
    if isinstance(payload, bytes):
        last.write_bytes(payload)
    else:
        torch.save(payload, last)
    return last


def _full_state() -> dict:
    return {"step": 1, "model": {"w": torch.zeros(64)}, "optimizer": {}, "scheduler": {}, "scaler": {},
            "rng": {"torch": torch.get_rng_state()}, "best": {}, "config": {}}


def test_resume_without_a_checkpoint_says_there_is_nothing_to_resume(capsys, tmp_path):
    assert_one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), "--resume"], "train",
                          "no training checkpoint at", "nothing to resume")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_resume_from_a_corrupt_or_truncated_checkpoint_says_it_cannot_be_read(capsys, tmp_path, damage):
    out = tmp_path / "run"
    last = _write_last(out, _full_state())
    data = last.read_bytes()
    last.write_bytes({"garbage": os.urandom(512), "truncated": data[: len(data) // 2], "empty": b""}[damage])
    assert_one_line_error(capsys, ["train", "--out", str(out), "--resume"], "train",
                          f"cannot read training checkpoint {last}", "truncated, damaged", inputs=(last,))


def test_resume_from_a_checkpoint_without_its_config_names_the_missing_keys(capsys, tmp_path):
    out = tmp_path / "run"
    last = _write_last(out, {"step": 3, "model": {"w": torch.zeros(2)}})
    line = assert_one_line_error(capsys, ["train", "--out", str(out), "--resume"], "train", "lacks",
                                 inputs=(last,))
    assert "config" in line and "KeyError" not in line
    assert all(key in line for key in STATE_KEYS if key not in ("step", "model"))


def test_resume_from_a_checkpoint_whose_config_is_unusable_says_so(capsys, tmp_path):
    out = tmp_path / "run"
    last = _write_last(out, {**_full_state(), "config": {"iterations": 0, "bogus_key": 1}})
    assert_one_line_error(capsys, ["train", "--out", str(out), "--resume"], "train", "unusable config",
                          inputs=(last,))


def test_resume_from_a_checkpoint_whose_weights_do_not_fit_its_model_says_so(capsys, tmp_path, phantom):
    out = tmp_path / "run"
    cfg = build_config("phantom", data=str(phantom), out=str(out), iterations=2, roi_size=(32, 32, 32),
                       model_args={"kernel_size": 3}, workers=0, threads=1)
    last = _write_last(out, {**_full_state(), "config": cfg.to_dict()})  # "model" holds one foreign tensor
    assert_one_line_error(capsys, ["train", "--out", str(out), "--resume"], "train", "does not fit the run",
                          inputs=(last, phantom))


# --------------------------------------------------------------------------------------------- import-official

def _official(tmp_path: Path, **sizes) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_official import SMALL, official_state

    path = tmp_path / "official.pth"
    torch.save(official_state("rep3d", **{**SMALL, **sizes}), path)
    return path


def test_import_official_with_even_kernels_says_no_rep3d_model_fits(capsys, tmp_path):
    ckpt = _official(tmp_path, kernel_size=4)
    assert_one_line_error(capsys, ["import-official", str(ckpt), "-o", str(tmp_path / "out")], "import-official",
                          "4x4x4 (an even size)", "fix:", inputs=(ckpt,))
    assert not (tmp_path / "out").exists()


def test_import_official_into_a_file_is_refused_before_reading(capsys, tmp_path):
    ckpt = _official(tmp_path)
    out = tmp_path / "out.txt"
    out.write_text("keep me\n")
    assert_one_line_error(capsys, ["import-official", str(ckpt), "-o", str(out)], "import-official",
                          f"-o {out} is a file", inputs=(ckpt, out))


# ------------------------------------------------------------------------------------- real processes (a few)

@pytest.mark.parametrize("case", ["resume-lacks-config", "iterations-0", "import-official-out-file"])
def test_the_console_command_prints_one_line_and_fails(tmp_path, case):
    out = tmp_path / "run"
    if case == "resume-lacks-config":
        inputs = (_write_last(out, {"step": 3, "model": {}}),)
        argv, command, fragment = ["train", "--out", str(out), "--resume"], "train", "lacks"
    elif case == "iterations-0":
        data = tmp_path / "data"  # validation comes first: the dataset is never read
        inputs = (_dataset_variant(tmp_path, data, text="{}"),)
        argv = ["train", "--data", str(data), "--out", str(out), *TINY, "--iterations", "0"]
        command, fragment = "train", "--iterations must be a positive integer"
    else:
        ckpt, target = _official(tmp_path), tmp_path / "out.txt"
        target.write_text("keep me\n")
        inputs = (ckpt, target)
        argv, command, fragment = ["import-official", str(ckpt), "-o", str(target)], "import-official", "is a file"
    before = digests(*inputs)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "rep3d", *argv], capture_output=True, text=True, env=env,
                            timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"rep3d {command}: error: ") and fragment in lines[0], lines
    assert digests(*inputs) == before


# ------------------------------------------------------------------------------ item 8: partial checkpoint files

def _tiny_cfg(phantom: Path, out: Path):
    return build_config("phantom", data=str(phantom), out=str(out), iterations=2, roi_size=(32, 32, 32),
                        model_args={"kernel_size": 3}, workers=0, threads=1)


def test_partial_checkpoints_of_killed_writes_are_removed_on_the_next_start(tmp_path, phantom):
    out = tmp_path / "run"
    state_dir = out / "train_state"
    state_dir.mkdir(parents=True)
    stale = [state_dir / ".last.pt.k1llx.tmp", state_dir / ".last.pt.a8b9c.tmp"]
    for path in stale:
        path.write_bytes(b"\x80\x02partial")
    other = state_dir / ".other.pt.keep.tmp"
    other.write_bytes(b"not ours")
    Trainer(_tiny_cfg(phantom, out))
    assert temp_files(state_dir / "last.pt") == [] and not any(p.exists() for p in stale)
    assert other.exists()  # only the checkpoint's own partial files are touched


def test_partial_checkpoints_of_killed_writes_are_removed_on_resume(tmp_path, phantom):
    out = tmp_path / "run"
    first = Trainer(_tiny_cfg(phantom, out))
    first.checkpoint(0, 0.0)
    stale = first.state_dir / ".last.pt.x7y8z.tmp"
    stale.write_bytes(first.last_path.read_bytes()[:100])
    resumed = Trainer(_tiny_cfg(phantom, out), resume=True)
    assert not stale.exists() and resumed.last_path.is_file() and resumed.start_step == 0
