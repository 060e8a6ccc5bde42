"""rep3d's first contact with a GPU, as one prepared script (< ~8 min on one H200): correctness, speed, memory.

Sections, each with a wall-time budget (``--budget-scale`` scales them; ``--max-seconds`` caps the whole run). A
section that would start with less than its minimum left, or that runs out of budget, is skipped or cut short and
the reason is recorded; ``suite.json`` is rewritten after every section (and every engine row), so a run killed
from outside still leaves its results.

1. ``gpu_tests`` -- ``pytest -m gpu tests/test_gpu.py`` (engine gradients vs native in float64 / float32,
   train->deploy equality of every registered model, AMP bf16 and fp16 + GradScaler steps, ``torch.compile`` of
   rep3d_tiny vs eager): junit XML, log, and counts.
2. ``predictor`` -- the Predictor (bundled rep3d_tiny.phantom weights) on a 256x256x160 phantom on the device,
   stitching on the device and on the CPU: both label maps compared, both timed.
3. ``engine`` -- the depthwise 21^3 conv on the four Rep3D stage shapes of 96^3 and 128^3 patches, B = 2,
   forward and forward+backward, fp32 with TF32 off, fp32 with TF32 on (PyTorch's cuDNN default) and bfloat16
   tensors; paths native cuDNN ``F.conv3d`` (groups = C), rep3d direct / fft / auto, torch-fftconv,
   fft-conv-pytorch (a missing peer is reported as "not installed"). Medians of CUDA-synchronised calls, peak
   memory per path (``torch.cuda.max_memory_allocated``), error vs a float64 reference. Native calls that a probe
   predicts to take longer than ``--native-limit-s`` are skipped (recorded). Then the CUDA auto rule is refitted
   from the table (``calibrate_auto.fit_cuda_rule``).
4. ``model`` -- one training step of rep3d_base at 96^3, B = 2, AMP bf16, AdamW + DiceCE: large-kernel convs on
   native cuDNN (PyTorch's own autograd) vs rep3d's auto, and uxnet3d_base on the same step: samples/s, peak
   memory. Inference of the deployed rep3d_base: per 96^3 window and a whole 256x256x160 phantom (Predictor).
5. ``train`` -- ``rep3d.train.train`` (the ``phantom`` recipe) of rep3d_tiny on phantoms at 96^3 crops for
   ``--train-seconds`` (stopped by SIGINT, which the loop turns into a checkpoint): steps/s, GPU utilisation
   (nvidia-smi), held-out Dice of the last step on the labelled test phantoms (synthetic data).

Each section lives in its own module of ``benchmarks/gpusuite/`` (``tests_section``, ``predictor``, ``engine``,
``model``, ``train``; the bookkeeping in ``common``, the markdown in ``summary``); this file is the command.

Writes to ``--out`` (default ``$OUT``): ``suite.json``, ``summary.md``, ``engine_table.{json,md}``,
``cuda_rule_fit.json``, ``pytest_gpu.{xml,log}``, ``train_metrics.csv``.

    python benchmarks/gpu_suite.py --out $OUT                  # on the GPU machine
    python benchmarks/gpu_suite.py --device cpu --tiny --out /tmp/dry   # dry run: same code, tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpusuite.common import SECTIONS, Suite  # noqa: E402
from gpusuite.engine import section_engine  # noqa: E402
from gpusuite.model import section_model  # noqa: E402
from gpusuite.predictor import section_predictor  # noqa: E402
from gpusuite.tests_section import section_gpu_tests  # noqa: E402
from gpusuite.train import section_train  # noqa: E402

# ---------------------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="results folder (default: $OUT)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="dry-run sizes: every section in seconds (CI)")
    p.add_argument("--max-seconds", type=float, default=480.0, help="wall-time cap of the whole run")
    p.add_argument(
        "--budget-scale",
        type=float,
        help="multiply every section budget (default 1; 3 with --tiny, whose sections take seconds unless the "
        "machine is overloaded, so that a busy CI runner does not cut them)",
    )
    p.add_argument("--skip", nargs="+", default=[], choices=[s[0] for s in SECTIONS])
    p.add_argument(
        "--native-limit-s",
        type=float,
        default=3.0,
        help="skip a native conv call a probe estimates slower than this (fwd+bwd of 21³ is slow)",
    )
    p.add_argument("--train-seconds", type=float, default=100.0, help="wall time of the training run's steps")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.out is None:
        print("gpu_suite: give --out DIR (or set $OUT)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_suite: CUDA is not available on this machine; nothing was measured. Run it on a GPU host, or "
            "--device cpu --tiny for a dry run of the script.",
            file=sys.stderr,
        )
        return 2
    if args.budget_scale is None:
        args.budget_scale = 3.0 if args.tiny else 1.0
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    suite = Suite(args.out, args)
    fns = {
        "gpu_tests": section_gpu_tests,
        "predictor": section_predictor,
        "engine": section_engine,
        "model": section_model,
        "train": section_train,
    }
    for name, budget, minimum in SECTIONS:
        suite.run(name, budget, minimum, lambda deadline, fn=fns[name]: fn(suite, deadline))
    suite.results["total_wall_s"] = round(suite.elapsed(), 1)
    suite.results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    suite.save()
    suite.write_summary()
    print((args.out / "summary.md").read_text())
    bad = [n for n, s in suite.results["sections"].items() if s.get("status") in ("error", "failed", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
