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
    python benchmarks/ablation_phantom.py --out runs/ablation --report \\
        --json benchmarks/results/ablation_phantom.json --figures benchmarks/results/ablation_phantom
    python benchmarks/report.py    # RESULTS.md and the figures from the JSON

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

import numpy as np
import torch

import rep3d
from rep3d.analysis import effective_receptive_field, msd_crops, save_curves_png
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
MISSED = 0.1
"""A class whose test Dice stays below this has not been found by the end of the budget (counted per run)."""


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


# ---------------------------------------------------------------------------------------------------- report


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f}"


def _smooth(series: list[list[float]], window: int) -> list[float]:
    y = np.asarray([v for _, v in series], dtype=np.float64)
    if y.size == 0:
        return []
    kernel = np.ones(min(window, y.size)) / min(window, y.size)
    return list(np.convolve(y, kernel, mode="valid"))


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown tables (and PNG curves when ``--figures`` is given) from every ``result.json``."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_variant.setdefault(r["variant"], []).append(r)
    order = [v for v in VARIANTS if v in by_variant]
    done = [r for r in results if not r.get("diverged")]
    classes = list(done[0]["test_dice"]) if done else []
    lines = [f"Runs: {len(results)} ({', '.join(f'{v} x{len(by_variant[v])}' for v in order)}); "
             f"diverged: {sum(1 for r in results if r.get('diverged'))}. Test Dice mean ± sd over seeds; `missed`: "
             f"classes with test Dice < {MISSED} summed over the seeds (a class not yet found by the end of the "
             "budget).", ""]

    head = (["variant", "seeds", "mean Dice", "missed"] + [c.replace("_", " ") for c in classes]
            + ["params", "wall (min)"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in order:
        ok = [r for r in by_variant[v] if not r.get("diverged")]
        missed = sum(d < MISSED for r in ok for d in r["test_dice"].values())
        cells = [f"`{v}`", f"{len(ok)}/{len(by_variant[v])}", _mean_sd([r["test_mean_dice"] for r in ok]), str(missed)]
        cells += [_mean_sd([r["test_dice"][c] for r in ok]) for c in classes]
        cells += [f"{ok[0]['params'] / 1e6:.2f}M" if ok else "–",
                  f"{np.median([r['wall_time_s'] for r in by_variant[v]]) / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "Effective receptive field of the logits (centre voxel, 4 seeded crops of the data, mean over "
              "seeds): `area t` is the fraction of the crop holding the fraction t of the gradient mass (larger = "
              "wider), `mass r≤R` the fraction of the mass within R voxels of the centre.", ""]
    erf_cols = [(f"area {t}", "area_ratio", t) for t in (done[0]["erf"]["area_ratio"] if done else {})]
    erf_cols += [(f"mass r≤{r}", "mass_within", r) for r in (done[0]["erf"]["mass_within"] if done else {})]
    lines += ["| variant | " + " | ".join(c for c, _, _ in erf_cols) + " |", "|---|" + "---|" * len(erf_cols)]
    for v in order:
        ok = [r for r in by_variant[v] if not r.get("diverged")]
        lines.append(f"| `{v}` | " + " | ".join(
            f"{np.mean([r['erf'][group][key] for r in ok]):.3f}" if ok else "–" for _, group, key in erf_cols) + " |")

    lines += ["", "Mask health at the end of training (lrbm variants; max over seeds): fraction of kernel elements at "
              "a bound of the form, and with M < 0, per block.", ""]
    lines += ["| variant | block | at bound | negative | M/P centre | M/P ring 8 | M/P edge |",
              "|---|---|---|---|---|---|---|"]
    for v in order:
        ok = [r for r in by_variant[v] if not r.get("diverged") and r.get("mask_health")]
        for block in (ok[0]["mask_health"] if ok else {}):
            stats = [r["mask_health"][block] for r in ok]

            def worst(key: str, stats: list[dict[str, Any]] = stats) -> str:
                vals = [s[key] for s in stats if s.get(key) is not None]
                return f"{max(vals):.3f}" if vals else "–"

            def mean(key: str, stats: list[dict[str, Any]] = stats) -> str:
                vals = [s[key] for s in stats if s.get(key) is not None]
                return f"{np.mean(vals):.3f}" if vals else "–"

            short = block.removeprefix("encoder.").removesuffix(".dwconv")
            lines.append(f"| `{v}` | {short} | {worst('at_bound')} | {worst('negative')} | {mean('ratio_centre')} | "
                         f"{mean('ratio_ring8')} | {mean('ratio_edge')} |")

    if args.figures and done:
        prefix = Path(args.figures)
        steps = max(r["config"]["iterations"] for r in done)
        val = [(v, np.mean([[d for _, d in r["val_mean_dice"]] for r in by_variant[v] if not r.get("diverged")],
                           axis=0)) for v in order if any(not r.get("diverged") for r in by_variant[v])]
        loss = [(v, np.mean([_smooth(r["loss"], 25) for r in by_variant[v] if not r.get("diverged")], axis=0))
                for v in order if any(not r.get("diverged") for r in by_variant[v])]
        every = done[0]["config"]["val_every"]
        save_curves_png(f"{prefix}_dice.png", [("validation mean Dice vs step (mean over seeds; one point every "
                                                f"{every} steps)", val)], x_first=f"step {every}",
                        x_last=f"step {steps}",
                        title="ablation on the hard phantom")
        save_curves_png(f"{prefix}_loss.png", [("training loss (DiceCE, 25-step moving mean, mean over seeds)", loss)],
                        x_first="step 25", x_last=f"step {steps}", log=[True], title="ablation on the hard phantom")
        lines += ["", f"Figures: `{prefix}_dice.png`, `{prefix}_loss.png`."]
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--markdown", help="write the report's tables to this file")
    parser.add_argument("--figures", help="path prefix of the report's PNG curves (PREFIX_dice.png, PREFIX_loss.png)")
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
    text = report(results, args)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        # every series stays in (loss included): benchmarks/report.py redraws the figures from this file alone
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
