"""The wheel a user installs: it carries the bundled weights and model card, and `rep3d demo` runs from it alone
(installed into a fresh target folder, run from outside the source tree)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT / "rep3d", source / "rep3d", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    # with setuptools installed, build with it (no index needed); otherwise pip fetches the build backend
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(out),
                             str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("rep3d-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_the_bundled_weights_and_model_card(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for suffix in (".safetensors", ".json", ".md"):
        assert f"rep3d/weights/rep3d_tiny_phantom{suffix}" in names, sorted(names)
    assert "rep3d/builder.py" in names and "rep3d/hub/config.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_demo_runs_from_the_installed_wheel_not_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("REP3D_WEIGHTS_DIR", None)
    where = subprocess.run([sys.executable, "-c", "import rep3d; print(rep3d.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    assert Path(where).resolve().is_relative_to(target.resolve()), where
    result = subprocess.run([sys.executable, "-m", "rep3d", "demo", "-o", str(work / "out"), "--device", "cpu",
                             "--threads", "1"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("phantom_image.nii.gz", "phantom_label.nii.gz", "prediction.nii.gz", "demo.png"):
        assert (work / "out" / name).is_file(), name
    assert "mean" in result.stdout


def test_wheel_ships_the_py_typed_marker(wheel):
    # PEP 561: without it, users' type checkers ignore rep3d's inline hints
    assert "rep3d/py.typed" in zipfile.ZipFile(wheel).namelist()
