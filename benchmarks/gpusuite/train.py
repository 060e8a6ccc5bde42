"""Section 5, ``train``: ``rep3d.train.train`` of rep3d_tiny on phantoms for a fixed time, GPU utilisation, Dice."""


import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import rep3d  # noqa: E402
from gpusuite.common import Suite, sizes  # noqa: E402

# ---------------------------------------------------------------------------------------------------- 5. train


class GpuUtilisation:
    """Samples GPU utilisation (%) and memory once a second with nvidia-smi (or pynvml) in a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples, self.source = device, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self):
        index = self.device.index or 0
        try:
            import pynvml

            if self.source is None:
                pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.source = "pynvml"
            return float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu), pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            line = subprocess.run(
                [
                    "nvidia-smi",
                    f"--id={index}",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            util, mem = (float(v) for v in line.split(","))
            self.source = "nvidia-smi"
            return util, mem
        return None

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                s = self._read()
            except Exception:
                s = None
            if s is None:
                return
            self.samples.append(s)

    def __enter__(self):
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {
                "available": False,
                "reason": "no CUDA device" if self.device.type != "cuda" else "neither pynvml nor nvidia-smi answered",
            }
        utils = [u for u, _ in self.samples]
        return {
            "available": True,
            "source": self.source,
            "samples": len(utils),
            "mean_pct": statistics.mean(utils),
            "median_pct": statistics.median(utils),
            "max_memory_used_mib": max(m for _, m in self.samples),
        }


@contextlib.contextmanager
def _stop_after(seconds: float):
    """SIGINT this process after ``seconds``, then every 5 s until the block ends: the training loop turns SIGINT
    into a checkpoint and ``TrainingInterrupted`` between steps; one landing before the loop installed its handler
    (data loading) is absorbed here and repeated."""
    done = threading.Event()

    def fire() -> None:
        if not done.wait(seconds):
            while not done.is_set():
                os.kill(os.getpid(), signal.SIGINT)
                done.wait(5.0)

    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        signal.signal(signal.SIGINT, previous)


def section_train(suite: Suite, deadline: float) -> dict:
    import csv

    from rep3d.data import load_msd_dataset, write_msd_dataset
    from rep3d.metrics import mean_dice
    from rep3d.train import TrainingInterrupted, build_config, evaluate, train
    from rep3d.train.data import preprocessing
    from rep3d.train.runtime import amp_dtype

    sz = sizes(suite.args.tiny)
    work = Path(tempfile.mkdtemp(prefix="rep3d_gpu_train_"))
    try:
        n_train, n_test = sz["train_cases"]
        t = time.perf_counter()
        data = write_msd_dataset(work / "data", num_train=n_train, num_test=n_test, seed=0, shape=sz["train_shape"])
        data_s = time.perf_counter() - t
        cfg = build_config(
            "phantom",
            data=str(data),
            out=str(work / "run"),
            roi_size=(sz["train_roi"],) * 3,
            iterations=sz["train_iterations"],
            val_every=sz["train_val_every"],
            checkpoint_every=max(50, sz["train_val_every"]) if not suite.args.tiny else 1,
            device=str(suite.device),
            workers=sz["train_workers"],
            model_args=sz["train_kwargs"] or None,
            amp="auto",
        )
        train_s = max(5.0, min(suite.args.train_seconds, deadline - time.perf_counter() - 25.0))
        stopped_by = "iterations"
        t = time.perf_counter()
        with GpuUtilisation(suite.device) as util, _stop_after(train_s):
            try:
                summary = train(cfg)
            except TrainingInterrupted:
                stopped_by, summary = "time budget (SIGINT -> checkpoint)", None
        wall = time.perf_counter() - t
        metrics_path = work / "run" / "train_state" / "metrics.csv"
        with open(metrics_path, newline="") as f:
            rows = list(csv.DictReader(f))
        shutil.copy(metrics_path, suite.out / "train_metrics.csv")
        step_seconds = [float(r["seconds"]) for r in rows if r["seconds"]]
        steps = len(rows)
        vals = [(int(r["step"]), float(r["val_mean_dice"])) for r in rows if r.get("val_mean_dice")]
        # held-out Dice of the model as it stands at the last step, on the labelled test phantoms (never seen)
        state = torch.load(work / "run" / "train_state" / "last.pt", map_location="cpu", weights_only=False)
        dataset = load_msd_dataset(cfg.data, num_val=cfg.num_val or None, seed=cfg.seed)
        model = rep3d.create_model(
            cfg.model, num_classes=len(dataset.class_names), in_chans=dataset.in_chans, **cfg.model_args
        )
        model.load_state_dict(state["model"])
        model.to(suite.device)
        volumes = [preprocessing(cfg)(dict(item)) for item in dataset.test_labeled]
        per_class = evaluate(model, volumes, cfg, dataset.class_names, suite.device, amp_dtype(cfg.amp, suite.device))
        out = {
            "model": cfg.model,
            "model_args": cfg.model_args,
            "roi": list(cfg.roi_size),
            "recipe": cfg.recipe,
            "amp": str(amp_dtype(cfg.amp, suite.device)),
            "workers": cfg.workers,
            "crops_per_step": cfg.crops_per_subject,
            "data": f"{n_train} train + {n_test} labelled test phantoms {list(sz['train_shape'])} (SYNTHETIC)",
            "data_generation_s": data_s,
            "time_budget_s": train_s,
            "stopped_by": stopped_by,
            "wall_s": wall,
            "steps": steps,
            "checkpoint_step": state["step"],
            "steps_per_s_overall": steps / wall if wall else None,
            "median_step_s": statistics.median(step_seconds) if step_seconds else None,
            "steps_per_s_median_step": 1 / statistics.median(step_seconds) if step_seconds else None,
            "validation_dice": vals,
            "gpu_utilisation": util.summary(),
            "held_out_mean_dice_last_step": mean_dice(per_class),
            "held_out_dice_per_class": dict(zip(dataset.class_names[1:], per_class, strict=True)),
            "num_held_out": len(volumes),
        }
        if summary is not None and "test_mean_dice" in summary:
            out["held_out_mean_dice_best_val_checkpoint"] = summary["test_mean_dice"]
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


