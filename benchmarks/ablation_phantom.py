"""Ablation on the hard phantom: which large-kernel variant segments best when only context separates classes?

Every variant is a ~5M-parameter model (rep3d_tiny widths 12/24/48/96, one block per stage, decoder 192) trained
with the same recipe, data, budget and seeds through ``rep3d.train`` (the code behind ``rep3d train``): the phantom
recipe (AdamW lr 2e-3, 50 warm-up steps, cosine to ``--iterations``, DiceCE, 2 crops per step, clip 1.0), on the
``hard`` phantom setting (organ contrast x0.35, noise 35-50 HU, per-volume organ jitter 10 HU, spleen with the liver's
intensity): the kidneys, and largely liver vs spleen, differ only by position. After training each run reports the
test Dice per class, its validation and loss curves, the ERF of the logits on seeded crops of the data, the learned
masks' health (lrbm variants) and wall time. A run whose ``result.json`` exists is skipped, so the study can be
completed over several invocations, and a run being trained by another invocation (its ``claim`` file names a live
process) is left to it, so two invocations with ``--threads 1`` can share a 2-core machine;
``--report`` only aggregates.

    rep3d phantom data/phantom_hard --setting hard --num-train 24 --num-test 8 --shape 64 64 50 \\
        --spacing 3 3 4 --seed 1
    python benchmarks/ablation_phantom.py --data data/phantom_hard --out runs/ablation --threads 2
    python benchmarks/ablation_phantom.py --out runs/ablation --report --json benchmarks/results/ablation_phantom.json
    python benchmarks/report.py    # RESULTS.md's tables and figures from the JSON

Synthetic data only (rep3d's phantoms); float32; CPU unless a GPU is visible.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

import rep3d
from rep3d.analysis import effective_receptive_field, msd_crops
from rep3d.layers.mask import mask_health
from rep3d.train import build_config
from rep3d.train.trainer import NonFiniteLossError, train

TINY = dict(widths=(12, 24, 48, 96), depths=(1, 1, 1, 1), hidden_size=192)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (registered model, extra constructor arguments)
    "lrbm_additive": ("rep3d_tiny", {}),  # the paper's block and mask, M = P + f(P) (rep3d_tiny's default)
    "lrbm_softmax": ("rep3d_tiny", {"mask_form": "softmax"}),
    "lrbm_additive_residual": ("rep3d_tiny", {"block_residual": True}),
    "fixed": ("rep3d_tiny_fixed", {}),
    "vanilla": ("rep3d_tiny_vanilla", {}),
    "csla": ("rep3d_tiny_csla", {}),
    "uxnet_k7": ("uxnet3d_base", dict(TINY)),  # 3D UX-Net's k = 7 blocks at the same widths and depths
}
LRBM = ("lrbm_additive", "lrbm_softmax", "lrbm_additive_residual")
ERF_SAMPLES = 4


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one (variant, seed) and measure it; returns what goes into its ``result.json``."""
    model_name, model_args = VARIANTS[variant]
    out = Path(args.out) / variant / f"seed{seed}"
    cfg = build_config(
        "phantom", data=args.data, model=model_name, out=str(out), model_args=model_args,
        iterations=args.iterations, val_every=args.val_every, checkpoint_every=args.iterations, seed=seed,
        roi_size=tuple(args.roi), spacing=tuple(args.spacing), threads=args.threads, device=args.device,
    )
    start = time.perf_counter()
    diverged = None
    try:
        summary = train(cfg, command=f"benchmarks/ablation_phantom.py {variant} seed {seed}")
    except NonFiniteLossError as err:
        summary, diverged = {}, str(err)
    wall = time.perf_counter() - start
    result: dict[str, Any] = {"variant": variant, "seed": seed, "model": model_name, "model_args": model_args,
                              "wall_time_s": wall, "diverged": diverged, "config": cfg.to_dict()}
    result.update(_curves(out / "train_state" / "metrics.csv"))
    if diverged:
        return result
    result.update(test_dice=summary["test_dice"], test_mean_dice=summary["test_mean_dice"],
                  train_wall_time_s=summary["wall_time_s"])
    model = rep3d.create_model(f"local-dir:{out}", pretrained=True).eval()
    result["params"] = sum(p.numel() for p in model.parameters())
    crops = msd_crops(args.data, tuple(args.roi), ERF_SAMPLES, seed=0, spacing=cfg.spacing,
                      orientation=cfg.orientation, intensity_window=cfg.intensity_window)
    result["erf"] = effective_receptive_field(model, crops, target="logits").to_json()
    result["mask_health"] = mask_health(model)
    return result


def claim_path(run_dir: Path) -> Path:
    """The claim file of ``run_dir``: beside it, never inside, since ``rep3d train`` refuses a folder it did not
    create and the run folder is the trainer's output."""
    return run_dir.with_name(run_dir.name + ".claim")


def _claim(run_dir: Path) -> bool:
    """Atomically claim ``run_dir`` for this process; a claim whose process is gone is taken over."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    claim = claim_path(run_dir)
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(claim.read_text() or 0), 0)
                return False  # a live invocation owns it
            except (ProcessLookupError, ValueError):
                claim.unlink(missing_ok=True)  # stale: its process died
                continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _curves(metrics_csv: Path) -> dict[str, Any]:
    """Validation Dice and training loss per step, and the mask-health trace, from the run's ``metrics.csv``."""
    if not metrics_csv.exists():
        return {}
    rows = list(csv.DictReader(metrics_csv.open()))

    def num(row: dict[str, str], key: str) -> float | None:
        value = row.get(key) or ""
        return float(value) if value not in ("", "nan") else None

    out: dict[str, Any] = {
        "loss": [[int(r["step"]), num(r, "loss")] for r in rows if num(r, "loss") is not None],
        "val_mean_dice": [[int(r["step"]), num(r, "val_mean_dice")] for r in rows
                          if num(r, "val_mean_dice") is not None],
    }
    trace = [[int(r["step"]), num(r, "mask/at_bound_max"),
              max((num(r, k) or 0.0) for k in r if k.endswith("/negative"))]
             for r in rows if num(r, "mask/at_bound_max") is not None]
    if trace:
        out["mask_trace"] = trace  # [step, at_bound (max over blocks), negative fraction (max over blocks)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="MSD-layout phantom dataset (see the module docstring for the command)")
    parser.add_argument("--out", required=True, help="one folder per run: OUT/VARIANT/seedN")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=250)
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--roi", type=int, nargs=3, default=(48, 48, 48))
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 4.0),
                        help="model spacing in mm; the data's own spacing avoids resampling")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report", action="store_true", help="only aggregate the existing result.json files")
    parser.add_argument("--json", help="write every run's result (a list) to this file")
    args = parser.parse_args()

    if not args.report:
        if not args.data:
            parser.error("--data is required to train (or pass --report)")
        # seed-major order: an interrupted invocation still leaves every variant with the same seeds done
        for seed in args.seeds:
            for variant in args.variants:
                path = Path(args.out) / variant / f"seed{seed}" / "result.json"
                if path.exists():
                    print(f"skip {variant} seed {seed}: {path} exists")
                    continue
                if not _claim(path.parent):
                    print(f"skip {variant} seed {seed}: another invocation is training it")
                    continue
                result = run_one(variant, seed, args)
                claim_path(path.parent).unlink(missing_ok=True)
                result["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "cpu": platform.processor() or platform.machine(),
                                         "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
                path.write_text(json.dumps(result, indent=1, default=float))
                mean = result.get("test_mean_dice", math.nan)
                print(f"{variant} seed {seed}: test mean Dice {mean:.4f}, {result['wall_time_s'] / 60:.1f} min"
                      + (f", DIVERGED: {result['diverged']}" if result["diverged"] else ""), flush=True)

    results = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*/seed*/result.json"))]
    # tables and figures are benchmarks/report.py's job (one renderer per results file, checked by a test)
    print(f"{len(results)} runs in {args.out}" + (f"; written to {args.json}, now run python benchmarks/report.py"
                                                  if args.json else ""))
    if args.json:
        # every series stays in (loss included): benchmarks/report.py redraws the figures from this file alone
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
