"""Every script in examples/ runs, at its --smoke size, and prints numbers that say it did what it claims."""

import ast
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# every examples/*.py with the arguments of its tiny run; test_every_example_is_run_by_a_test keeps this complete
SMOKE_RUNS = {
    "monai_unet_with_replk.py": ["--smoke"],
    "finetune_bundled_weights.py": ["--smoke", "--out", "ft"],
    "sliding_window_nifti.py": ["--smoke", "--out-dir", "sw"],
    "export_and_serve.py": ["--smoke", "--out-dir", "serve"],
}


def run_example(name: str, cwd: Path) -> str:
    """Run ``examples/name`` with its smoke arguments in ``cwd`` (offline, one thread); its stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *SMOKE_RUNS[name]], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def number(pattern: str, text: str) -> float:
    """The float captured by ``pattern`` in ``text`` (the test fails, showing the text, if it is not printed)."""
    found = re.search(pattern, text, re.M)
    assert found is not None, f"{pattern!r} not in the output:\n{text}"
    return float(found.group(1))


def test_every_example_is_run_by_a_test_and_listed_in_the_readme():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(SMOKE_RUNS), "add the new example to SMOKE_RUNS and give it a test"
    readme = (EXAMPLES / "README.md").read_text()
    for name in scripts:
        source = (EXAMPLES / name).read_text()
        doc = ast.get_docstring(ast.parse(source))
        assert doc and f"python examples/{name}" in doc, f"{name}: the module docstring must say how to run it"
        assert '"--smoke"' in source, f"{name} has no --smoke flag"
        assert f"({name})" in readme, f"examples/README.md does not list {name}"
    tests = (Path(__file__)).read_text()
    for name in scripts:
        assert tests.count(f'run_example("{name}"') == 1, f"no test runs {name}"


def test_monai_unet_example_trains_and_folds_to_the_same_outputs(tmp_path):
    out = run_example("monai_unet_with_replk.py", tmp_path)
    assert number(r"MONAI UNet \+ (\d+) RepLKConv3d", out) == 3
    first, last = (float(v) for v in re.search(r"loss ([0-9.]+) -> ([0-9.]+)", out).groups())
    assert math.isfinite(first) and math.isfinite(last)
    # every mask received gradient: the generator is trained, not a constant
    grads = re.findall(r"generator grad norm (\S+)$", out, re.M)
    assert len(grads) == 3 and all(float(g) > 0 for g in grads), out
    assert number(r"(\d+) RepLKConv3d folded", out) == 3
    assert 0.0 <= number(r"mean Dice ([0-9.]+)", out) <= 1.0
    assert number(r"deploy vs train max abs diff: (\S+)", out) < 1e-4


def test_finetune_example_reports_dice_before_and_after_and_saves_a_loadable_model(tmp_path):
    out = run_example("finetune_bundled_weights.py", tmp_path)
    assert "output conv decoder.out.conv.conv was re-initialised" in out  # the library's warning, shown
    header = re.search(r"^test Dice\s+(.+)$", out, re.M).group(1).split("  ")
    assert [h.strip() for h in header if h.strip()] == ["fresh head", "warm head", "fine-tuned"]
    for name in ("liver", "spleen", "kidney", "mean"):
        row = re.search(rf"^{name}\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)
        assert row is not None, out
        assert all(0.0 <= float(v) <= 1.0 for v in row.groups())
    # the warm start carries the pretrained organs over: far above a fresh head, before any step
    fresh, warm = (float(v) for v in re.search(r"^mean\s+([0-9.]+)\s+([0-9.]+)", out, re.M).groups())
    assert warm > fresh + 0.3, out
    run = tmp_path / "ft" / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["num_classes"] == 4 and config["label_names"] == ["background", "liver", "spleen", "kidney"]
    assert (run / "model.safetensors").is_file()
    meta = json.loads((tmp_path / "ft" / "data" / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}
    label = np.asarray(nib.load(tmp_path / "ft" / "data" / meta["training"][0]["label"]).dataobj)
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}  # kidneys merged, the other organs dropped


def test_sliding_window_example_writes_labels_on_the_input_grid(tmp_path):
    out = run_example("sliding_window_nifti.py", tmp_path)
    image = nib.load(tmp_path / "sw" / "phantom.nii.gz")
    seg = nib.load(tmp_path / "sw" / "phantom_seg.nii.gz")
    assert "".join(nib.aff2axcodes(image.affine)) == "LPS"  # the reorientation had work to do
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
    assert seg.get_data_dtype() == np.uint8
    assert "input affine kept: True" in out
    assert number(r"filter removed (\d+) voxels", out) >= 0
    # left and right are told apart: a flipped axis would swap the kidneys and sink both Dice
    for kidney in ("right_kidney", "left_kidney"):
        assert number(rf"{kidney} ([0-9.]+)", out) > 0.8, out
    assert 0.5 < number(r"mean Dice \(this pipeline\): ([0-9.]+)", out) <= 1.0
    assert 0.5 < number(r"mean Dice \(rep3d.Predictor\): ([0-9.]+)", out) <= 1.0
    assert number(r"voxel agreement with this pipeline ([0-9.]+)", out) > 0.95


def test_export_and_serve_example_answers_like_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    out = run_example("export_and_serve.py", tmp_path)
    assert number(r"deploy vs train max abs diff (\S+)", out) < 1e-4
    errors = [float(e) for e in re.findall(r"verified max abs error (\S+)", out)]
    assert len(errors) == 2 and all(e < 1e-3 for e in errors), out
    assert re.search(r"^POST http://127\.0\.0\.1:\d+/segment: 200 ", out, re.M), out
    assert re.search(r"^POST a 1 mm volume: 422 voxel spacing", out, re.M), out
    assert number(r"program vs PyTorch on one .* window: max abs diff (\S+)", out) < 1e-4
    assert number(r"\((\S+) of the logit range", out) < 1e-4
    assert number(r"label agreement ([0-9.]+)", out) > 0.999
    assert 0.0 <= number(r"mean Dice ([0-9.]+)", out) <= 1.0
    request, answer = nib.load(tmp_path / "serve" / "request.nii.gz"), nib.load(tmp_path / "serve" /
                                                                                  "request_seg.nii.gz")
    assert answer.shape == request.shape and np.allclose(answer.affine, request.affine)
    for name in ("model.onnx", "model.pt2", "model.json"):
        assert (tmp_path / "serve" / name).stat().st_size > 0
