"""Training: publishable output, bit-identical resume after SIGTERM / SIGKILL, DDP on gloo, non-finite loss."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rep3d.data import write_msd_dataset
from rep3d.train import NonFiniteLossError, build_config, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--recipe", "phantom", "--roi", "32", "32", "32", "--model-arg", "kernel_size=5", "--workers", "0",
        "--val-every", "6", "--checkpoint-every", "2", "--warmup-steps", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    return write_msd_dataset(root, num_train=4, num_test=1, seed=3, shape=(40, 40, 32))


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _train_cmd(data: Path, out: Path, iterations: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rep3d", "train", "--data", str(data), "--out", str(out),
            "--iterations", str(iterations), *TINY, *extra]


def _steps_logged(out: Path) -> int:
    path = out / "train_state" / "metrics.csv"
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        return max((int(r["step"]) for r in csv.DictReader(f)), default=0)


def _final_weights(out: Path) -> dict:
    return torch.load(out / "train_state" / "last.pt", weights_only=True)["model"]


def test_training_writes_a_publishable_run_folder(phantom_data, tmp_path):
    cfg = build_config("phantom", data=str(phantom_data), out=str(tmp_path / "run"), iterations=6,
                       roi_size=(32, 32, 32), model_args={"kernel_size": 5}, workers=0, val_every=3,
                       checkpoint_every=3, warmup_steps=2)
    summary = train(cfg)
    run = tmp_path / "run"
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in run.iterdir()}
    assert summary["steps"] == 6 and len(summary["test_dice"]) == 8
    with open(run / "train_state" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["val_mean_dice"] and rows[2]["val_dice_left_kidney"] != ""
    # mask health at every validation: a saturated mask or a frozen generator would show here
    assert rows[0]["mask/at_bound_max"] == "" and 0.0 <= float(rows[2]["mask/at_bound_max"]) <= 1.0
    assert float(rows[2]["mask/generator_grad_norm"]) > 0.0
    assert float(rows[5]["mask/stages.0.0/ratio_centre"]) > 0.0 and rows[5]["mask/stages.3.0/ratio_edge"] != ""
    assert any((run / "train_state" / "tensorboard").iterdir())
    card = (run / "README.md").read_text()
    assert "SYNTHETIC" in card.upper() and "left_kidney" in card and "phantom" in card
    config = json.loads((run / "config.json").read_text())
    assert config["rep3d"]["metadata"]["class_names"][4] == "left_kidney"
    assert config["rep3d"]["metadata"]["training"]["iterations"] == 6


def _run_and_kill(cmd: list[str], out: Path, sig: int, after_step: int) -> int:
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _steps_logged(out) < after_step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc.returncode


RESUME_ITERATIONS = 12


@pytest.fixture(scope="module")
def uninterrupted_run(phantom_data, tmp_path_factory) -> Path:
    """One uninterrupted run, the reference for both signals (training is deterministic: the test relies on it)."""
    reference = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(_train_cmd(phantom_data, reference, RESUME_ITERATIONS), env=_env(), check=True,
                   capture_output=True)
    return reference


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_resume_after_kill_is_bit_identical_to_an_uninterrupted_run(phantom_data, uninterrupted_run, tmp_path, sig):
    iterations, reference = RESUME_ITERATIONS, uninterrupted_run
    killed = tmp_path / "killed"
    code = _run_and_kill(_train_cmd(phantom_data, killed, iterations), killed, sig, after_step=3)
    interrupted_at = torch.load(killed / "train_state" / "last.pt", weights_only=True)["step"]
    assert code == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    assert 0 < interrupted_at < iterations, "the run must really have been interrupted mid-way"
    subprocess.run([sys.executable, "-m", "rep3d", "train", "--out", str(killed), "--resume"], env=_env(),
                   check=True, capture_output=True)

    want, got = _final_weights(reference), _final_weights(killed)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    with open(killed / "train_state" / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, iterations + 1))


def test_two_gloo_processes_train_the_same_weights_on_both_ranks(phantom_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "rep3d", "train", "--data", str(phantom_data), "--out", str(out), "--iterations", "4",
           "--device", "cpu", *TINY]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_state" / "summary.json").read_text())
    assert summary["world_size"] == 2
    digests = summary["rank_parameter_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(phantom_data, tmp_path):
    # lr 1e30 with Adam moves every weight by ~1e30 in step 1: step 2's forward overflows
    cfg = build_config("phantom", data=str(phantom_data), out=str(tmp_path / "run"), iterations=6,
                       roi_size=(32, 32, 32), model_args={"kernel_size": 5}, workers=0, val_every=100,
                       checkpoint_every=1, warmup_steps=1, lr=1e30, grad_clip=0.0)
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at step \d.*last good checkpoint"):
        train(cfg)
    state = torch.load(tmp_path / "run" / "train_state" / "last.pt", weights_only=True)
    assert state["step"] >= 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_training_refuses_to_overwrite_an_existing_run(phantom_data, tmp_path):
    (tmp_path / "run" / "train_state").mkdir(parents=True)
    (tmp_path / "run" / "train_state" / "last.pt").write_bytes(b"")
    cfg = build_config("phantom", data=str(phantom_data), out=str(tmp_path / "run"))
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)
