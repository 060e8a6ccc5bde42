"""The GPU suite's CPU dry run: ``benchmarks/gpu_suite.py --device cpu --tiny`` runs every section and writes results.

No GPU is needed: this proves the prepared script works before it spends scarce device time. ~30-60 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("gpu_tests", "predictor", "engine", "model", "train")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    env.pop("REP3D_TEST_DEVICE", None)  # the suite sets it for its own pytest run
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    return proc, out


def test_dry_run_runs_every_section_and_exits_0(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "suite.json").read_text())
    assert [name for name in results["sections"]] == list(SECTIONS)
    log = (out / "pytest_gpu.log").read_text()[-3000:] if (out / "pytest_gpu.log").exists() else ""
    for name, section in results["sections"].items():
        assert section["status"] == "ok", (name, section.get("reason"), section.get("error"), log)
        assert section["wall_s"] <= section["budget_s"] + 5
    assert results["environment"]["device"] == "cpu" and results["synthetic_data"] is True
    assert "total_wall_s" in results


def test_dry_run_ran_the_marked_tests_on_cpu(dry_run):
    _, out = dry_run
    tests = json.loads((out / "suite.json").read_text())["sections"]["gpu_tests"]
    assert "counts" in tests, (tests, (out / "pytest_gpu.log").read_text()[-3000:])
    assert tests["counts"]["passed"] >= 8 and tests["counts"]["failed"] == tests["counts"]["error"] == 0
    assert (out / "pytest_gpu.xml").exists() and "passed" in (out / "pytest_gpu.log").read_text()


def test_dry_run_engine_table_has_every_path_precision_and_a_cuda_rule_fit(dry_run):
    _, out = dry_run
    rows = json.loads((out / "engine_table.json").read_text())["rows"]
    assert {r["precision"] for r in rows} == {"fp32_tf32_off", "fp32_tf32_on", "bf16"}
    assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd"}
    assert len(rows) == 3 * 4 * 2
    for r in rows:
        assert {"native", "direct", "fft", "auto"} <= set(r["ms"]), r["status"]
        assert set(r["status"]) >= {"torch-fftconv", "fft-conv-pytorch"}  # timed, or why not
        assert r["rel_err"]["fft"] < (1e-2 if r["precision"] == "bf16" else 1e-5)
    fit = json.loads((out / "cuda_rule_fit.json").read_text())
    assert fit["rows_used"] == len(rows)
    assert {(g["requires_grad"], g["dtype_class"]) for g in fit["groups"]} == {
        (False, "float32"), (True, "float32"), (False, "half"), (True, "half")}
    assert all(g["worst_ratio"] >= 1.0 and g["weight"] > 0 for g in fit["groups"])
    proposal: dict = {}
    exec(fit["cuda_rule_python"], {}, proposal)  # the snippet to paste is valid and covers every key of the rule
    from rep3d.layers import depthwise

    assert set(proposal["CUDA_RULE"]["fft_flop_weight"]) == set(depthwise.CUDA_RULE["fft_flop_weight"])


def test_dry_run_model_predictor_and_training_results(dry_run):
    _, out = dry_run
    sec = json.loads((out / "suite.json").read_text())["sections"]
    steps = sec["model"]["train_step"]
    assert set(steps) == {"rep3d_base/auto", "uxnet3d_base/auto", "rep3d_base/native"}
    assert all(s["status"] == "ok" and s["median_step_s"] > 0 for s in steps.values())
    assert sec["model"]["inference"]["per_window_s_fp32"] > 0 and sec["model"]["inference"]["whole_phantom_s"] > 0
    assert sec["predictor"]["identical"] is True  # device (= cpu here) and CPU stitching agree
    train = sec["train"]
    assert train["steps"] >= 1 and 0.0 <= train["held_out_mean_dice_last_step"] <= 1.0
    assert (out / "train_metrics.csv").read_text().startswith("step,")


def test_dry_run_summary_has_the_ratio_tables(dry_run):
    _, out = dry_run
    md = (out / "summary.md").read_text()
    for heading in ("auto vs native cuDNN per stage", "The auto rule on CUDA", "native / auto", "uxnet3d_base",
                    "Training run", "Predictor"):
        assert heading in md
    assert "CPU dry run" in md  # never mistaken for a GPU result


def test_without_cuda_the_real_run_refuses_with_a_clear_message(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written that could pass for results
