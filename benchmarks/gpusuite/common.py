"""Bookkeeping shared by the sections: sizes, budgets, the Suite (results JSON), environment, sync, TF32."""


import argparse
import contextlib
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import conv_backends  # noqa: E402

import rep3d  # noqa: E402

# (name, budget in seconds, minimum seconds left to start it) for the full run; the sum stays under ~8 minutes
SECTIONS = (
    ("gpu_tests", 120.0, 20.0),  # torch.compile (inductor) of rep3d_tiny, train and eval, is most of it
    ("predictor", 35.0, 10.0),
    ("engine", 130.0, 30.0),
    ("model", 65.0, 20.0),
    ("train", 130.0, 40.0),
)
# PyTorch's default first (cuDNN may use TF32): the CUDA rule is fitted on it, so it must not be cut by the budget
PRECISIONS = ("fp32_tf32_on", "bf16", "fp32_tf32_off")


# ---------------------------------------------------------------------------------------------------- sizes


def sizes(tiny: bool) -> dict:
    """Every size the sections use: the real run, or the dry run's tiny stand-ins (same code paths)."""
    if not tiny:
        return dict(
            phantom_shape=(256, 256, 160),
            predictor_roi=None,
            patches=(96, 128),
            widths=conv_backends.WIDTHS,
            kernel=21,
            batch=2,
            repeats=5,
            model_roi=96,
            model_repeats=3,
            model_kwargs={},
            model_classes=16,
            train_shape=(112, 112, 96),
            train_roi=96,
            train_cases=(12, 4),
            train_kwargs={},
            train_workers=6,
            train_iterations=100_000,
            train_val_every=250,
            window_repeats=5,
        )
    return dict(
        phantom_shape=(32, 32, 32),
        predictor_roi=(32, 32, 32),
        patches=(32,),
        widths=(6, 12, 24, 48),
        kernel=7,
        batch=2,
        repeats=1,
        model_roi=32,
        model_repeats=1,
        model_kwargs=dict(widths=(4, 8, 16, 32), hidden_size=32, kernel_size=5),
        model_classes=3,
        train_shape=(32, 32, 32),
        train_roi=32,
        train_cases=(3, 1),
        train_kwargs=dict(kernel_size=5),
        train_workers=0,
        train_iterations=2,
        train_val_every=2,
        window_repeats=1,
    )


# ---------------------------------------------------------------------------------------------------- bookkeeping


class Suite:
    """Results, budgets and the partial JSON written after every step."""

    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out, self.args = out, args
        self.t0 = time.perf_counter()
        self.device = torch.device(args.device)
        self.results: dict = {
            "environment": environment(self.device),
            "args": {k: str(v) for k, v in vars(args).items()},
            "synthetic_data": True,
            "sections": {},
        }
        self.save()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.args.max_seconds - self.elapsed()

    def save(self) -> None:
        tmp = self.out / "suite.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=_json_default))
        tmp.replace(self.out / "suite.json")

    def run(self, name: str, budget: float, minimum: float, fn: Callable[[float], dict]) -> None:
        budget = min(budget * self.args.budget_scale, self.left())
        entry: dict = {"budget_s": round(budget, 1)}
        self.results["sections"][name] = entry
        if name in self.args.skip:
            entry.update(status="skipped", reason="--skip")
        elif budget < minimum * self.args.budget_scale:
            entry.update(status="skipped", reason=f"only {budget:.0f} s of --max-seconds left (needs {minimum:.0f})")
        else:
            print(f"== {name} (budget {budget:.0f} s, {self.elapsed():.0f} s elapsed)", flush=True)
            start = time.perf_counter()
            entry["status"] = "running"
            self.save()
            try:
                result = fn(start + budget)
                entry.update(result)
                entry["status"] = result.get("status", "ok")
            except Exception as exc:  # one broken section must not cost the others their results
                entry.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                print(entry["traceback"], file=sys.stderr, flush=True)
            finally:
                entry["wall_s"] = round(time.perf_counter() - start, 1)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        print(f"   {name}: {entry['status']} {entry.get('reason', '')}", flush=True)
        self.save()
        self.write_summary()

    def write_summary(self) -> None:
        """``summary.md`` from the results so far (also after each section: a killed run keeps its tables)."""
        from gpusuite.summary import summary_markdown

        try:
            (self.out / "summary.md").write_text(summary_markdown(self.results))
        except Exception as exc:  # a summary bug must not cost the measurements
            self.results["summary_error"] = f"{type(exc).__name__}: {exc}"
            self.save()


def _json_default(obj):
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def environment(device: torch.device) -> dict:
    env = conv_backends.environment(device)
    env["rep3d"] = rep3d.__version__
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        env["git_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def tf32(enabled: bool):
    """cuDNN and cuBLAS TF32 on or off inside the block (PyTorch's defaults: cuDNN on, matmul off)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


