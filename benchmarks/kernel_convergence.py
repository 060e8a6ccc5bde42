"""Do large-kernel elements converge from local to global, and which variant trains stably?

A single large-kernel depthwise layer (``--channels`` C, ``--size`` S³ inputs, ``--kernel`` K, default 4 @ 24³,
K = 21) learns to reproduce a depthwise conv with a known random teacher kernel (i.i.d. normal, the same scale at
every offset; ``--teacher prior``: decaying like the distance prior) from fresh standard-normal inputs, once per
variant: the learnable mask in each form (``lrbm-additive`` ... ``lrbm-tanh``), the fixed prior, a plain large
kernel and CSLA (large + parallel 3³ branch). No BatchNorm, so the folded kernel (``W * M``, plus the padded small
branch for CSLA) is directly the teacher's counterpart. Printed: the relative error of that effective kernel per
distance ring at a few steps; the claim under test is that masked kernels fit the centre first and the periphery
later.

``--sweep`` runs the stability experiment instead: the same training at each ``--lrs`` for each ``--seeds``, and
prints per variant and learning rate the divergence rate (loss not finite or above 1000x the loss of a zero kernel)
and the mean and variance of the final loss over the seeds that did not diverge.

Adam, MSE, float32, FFT engine (native 21³ backward takes minutes). Synthetic teacher kernels; CPU unless
``--device``. Example (about 40 ms a step at the defaults on one thread of this CPU):

    python benchmarks/kernel_convergence.py --steps 300 --every 20 --threads 1 \\
        --json benchmarks/results/kernel_convergence.json --png benchmarks/results/kernel_convergence.png
    python benchmarks/kernel_convergence.py --sweep --steps 200 --lrs 1e-4 3e-4 1e-3 --seeds 0 1 2 --threads 1 \\
        --json benchmarks/results/kernel_stability.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rep3d.analysis import TEACHER_ENVELOPES, VARIANTS, kernel_convergence, save_convergence_png, stability_sweep

SHOW_RINGS = (0, 1, 2, 4, 6, 8, 10)


def _header(args: argparse.Namespace) -> str:
    lr = f"lrs {' '.join(f'{x:g}' for x in args.lrs)}, seeds {args.seeds}" if args.sweep else f"lr {args.lr:g}"
    return (f"C={args.channels}, S={args.size}^3, K={args.kernel}, batch {args.batch_size}, {lr}, "
            f"{args.steps} steps, {args.teacher} teacher, Adam, float32, FFT engine, threads "
            f"{torch.get_num_threads()}, torch {torch.__version__}, {platform.processor() or platform.machine()}")


def convergence(args: argparse.Namespace) -> dict:
    records = []
    for variant in args.variants:
        rec = kernel_convergence(variant, channels=args.channels, size=args.size, kernel_size=args.kernel,
                                 steps=args.steps, lr=args.lr, batch_size=args.batch_size, record_every=args.every,
                                 seed=args.seeds[0], teacher_envelope=args.teacher)
        records.append(rec)
        print(f"{variant}: {rec['wall_s']:.1f} s{' DIVERGED' if rec['diverged'] else ''}", flush=True)
    rings = [r for r in SHOW_RINGS if r < len(records[0]["ring_error"][0])]
    picks = sorted({0, args.steps // 4, args.steps // 2, args.steps})
    print(f"\nrelative error of the effective kernel by distance ring ({_header(args)})")
    print(f"| variant | step | loss | {' | '.join(f'r{r}' for r in rings)} |")
    print(f"|---|---|---|{'---|' * len(rings)}")
    for rec in records:
        for step in picks:
            if step not in rec["steps"]:
                continue
            i = rec["steps"].index(step)
            errs = " | ".join(f"{rec['ring_error'][i][r]:.3f}" for r in rings)
            print(f"| {rec['variant']} | {step} | {rec['loss'][i]:.3g} | {errs} |")
    print("\nsteps until the ring's relative error first falls below 0.5 (- : never)")
    print(f"| variant | {' | '.join(f'r{r}' for r in rings)} |")
    print(f"|---|{'---|' * len(rings)}")
    for rec in records:
        errors = np.asarray(rec["ring_error"])
        cells = []
        for r in rings:
            below = np.nonzero(errors[:, r] < 0.5)[0]
            cells.append(str(rec["steps"][below[0]]) if below.size else "-")
        print(f"| {rec['variant']} | {' | '.join(cells)} |")
    if args.png:
        save_convergence_png(args.png, records, title=f"({_header(args)})")
        print(f"wrote {args.png}")
    return {"kind": "convergence", "setup": _header(args), "records": records}


def sweep(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    result = stability_sweep(args.variants, args.lrs, args.seeds, channels=args.channels, size=args.size,
                             kernel_size=args.kernel, steps=args.steps, batch_size=args.batch_size,
                             record_every=max(args.steps, 1), teacher_envelope=args.teacher)
    print(f"stability sweep ({_header(args)}; {time.perf_counter() - start:.0f} s)")
    print("| variant | lr | diverged | final loss mean | final loss var |")
    print("|---|---|---|---|---|")
    for variant, by_lr in result["summary"].items():
        for lr, s in by_lr.items():
            mean = "-" if math.isnan(s["final_loss_mean"]) else f"{s['final_loss_mean']:.4g}"
            var = "-" if math.isnan(s["final_loss_var"]) else f"{s['final_loss_var']:.3g}"
            print(f"| {variant} | {lr} | {s['divergence_rate'] * s['n']:.0f}/{s['n']} | {mean} | {var} |")
    return {"kind": "stability", "setup": _header(args), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--kernel", type=int, default=21)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=20, help="record the ring errors every N steps")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--teacher", default="uniform", choices=TEACHER_ENVELOPES,
                        help="teacher kernel: the same scale at every offset (uniform) or decaying like the prior")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of the convergence runs")
    parser.add_argument("--sweep", action="store_true", help="run the stability sweep over --lrs x --seeds")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write all records here")
    parser.add_argument("--png", type=Path, help="(convergence) figure of ring error vs step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = sweep(args) if args.sweep else convergence(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
