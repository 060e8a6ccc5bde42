"""The ``rep3d`` entry point: one error handler, commands recorded from the argv given to ``main``, and no command
line code in library modules."""

from __future__ import annotations

import ast
import shlex
import sys
from pathlib import Path

import pytest

from rep3d.cli import main
from rep3d.data import MSDLayoutError, write_msd_dataset

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted(p for p in (ROOT / "rep3d").rglob("*.py") if "cli" not in p.relative_to(ROOT / "rep3d").parts)


def test_evaluate_on_a_bad_dataset_prints_one_line_and_fails(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text("{not json")
    assert main(["evaluate", "rep3d_tiny.phantom", "--data", str(tmp_path / "ds"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rep3d evaluate: error: ") and "not valid JSON" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_flag_lets_the_traceback_through(tmp_path):
    with pytest.raises(MSDLayoutError, match="dataset.json"):
        main(["--debug", "evaluate", "rep3d_tiny.phantom", "--data", str(tmp_path), "--device", "cpu"])


def test_a_missing_user_path_is_one_line_too(tmp_path, capsys):
    assert main(["import-official", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rep3d import-official: error: ") and "Traceback" not in err


def test_model_card_records_the_argv_given_to_main_not_sys_argv(tmp_path, monkeypatch):
    data = write_msd_dataset(tmp_path / "data", num_train=3, num_test=0, seed=1, shape=(32, 32, 32))
    monkeypatch.setattr(sys, "argv", ["some-launcher", "train", "--not-this-run"])
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--iterations", "1", "--recipe", "phantom",
            "--roi", "32", "32", "32", "--model-arg", "kernel_size=3", "--workers", "0", "--threads", "1"]
    assert main(argv) == 0
    card = (tmp_path / "run" / "README.md").read_text()
    assert "rep3d " + shlex.join(argv) in card
    assert "--not-this-run" not in card


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_library_modules_hold_no_command_line_code(path):
    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "argparse" not in imported, "argument parsing belongs in rep3d/cli/"
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {f"{n.value.id}.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Name)}
    assert "SystemExit" not in names, "library code raises rep3d.errors.Rep3DError subclasses, never SystemExit"
    assert "sys.argv" not in attrs, "library code gets its arguments from the caller, never from sys.argv"
