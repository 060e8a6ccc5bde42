"""Deployed-model forward on CPU: where the time goes, and what the inference levers buy at equal output.

    python benchmarks/model_forward.py --models rep3d_tiny rep3d_base --roi 96 --threads 2 --repeats 5

Per model (deployed form, random weights, 16 classes, batch 1, CPU, no gradients), the variants take turns in
each round (the machine may be shared: compare the ratios, measured in one process, not the seconds):

* ``fp32``: the model as built (``channels-first``), PyTorch's defaults: what ``Predictor`` ran before;
* ``fp32 channels_last``: weights and input in ``torch.channels_last_3d`` only;
* ``fp32 optimized``: :func:`rep3d.models.optimize_for_inference` (channels_last_3d + format-keeping instance
  norms): what ``Predictor`` runs on CPU now;
* ``bf16``: the model as built under ``torch.autocast("cpu", torch.bfloat16)`` (``--precision bf16``);
* ``bf16 optimized``: both.

Speed-ups: ratio of the medians, and the median over rounds of the ratio within a round (``paired``, robust to
load that changes between rounds). Each variant's output is compared to ``fp32`` (max abs difference, relative to
the logits' max abs): the fp32 variants must agree to float32 rounding. ``encoder`` times the encoder alone
(fp32), which gives the decoder's share of the forward. ``--profile`` adds one torch.profiler run per model (fp32,
as built): the self time per op type, and the time of the transposed convolutions. Results:
``benchmarks/results/model_forward.json`` (``--out``; ``--append`` keeps the other models' rows).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import rep3d
from rep3d.models import optimize_for_inference, reparameterize_model

VARIANTS = ("fp32", "fp32 channels_last", "fp32 optimized", "bf16", "bf16 optimized")


def cpu_flags() -> list[str]:
    """The CPU's bf16-relevant ISA flags (``/proc/cpuinfo``), empty where unknown."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split(":", 1)[1].split() if f in ("avx512_bf16", "amx_bf16", "amx_tile",
                                                                      "avx512f", "avx512_vnni"))


def variants(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """name -> zero-argument callable running one forward."""
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
    optimized = optimize_for_inference(model)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def run(module, inp, ctx=contextlib.nullcontext):
        def forward():
            with ctx():
                return module(inp)
        return forward

    return {
        "fp32": run(model, x),
        "fp32 channels_last": run(channels_last, x_cl),
        "fp32 optimized": run(optimized, x_cl),
        "bf16": run(model, x, bf16),
        "bf16 optimized": run(optimized, x_cl, bf16),
        "encoder": run(model.encoder, x),
    }


def profile_ops(model: torch.nn.Module, x: torch.Tensor, top: int = 8) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    transposed = sum(e.cpu_time_total for e in events if "conv_transpose" in e.key)
    return {"self_time_share": {e.key: round(e.self_cpu_time_total / total, 4) for e in ops},
            "transposed_conv_share": round(transposed / total, 4)}


def paired_speedups(times: dict[str, list[float]]) -> dict[str, float]:
    """Median over rounds of ``fp32 / variant`` within the round: robust to load that drifts between rounds."""
    return {k: statistics.median(a / b for a, b in zip(times["fp32"], times[k], strict=True)) for k in VARIANTS}


def measure(name: str, roi: int, repeats: int, profile: bool) -> dict:
    torch.manual_seed(0)
    model = reparameterize_model(rep3d.create_model(name, num_classes=16).eval())
    x = torch.randn(1, 1, roi, roi, roi)
    runs = variants(model, x)
    times: dict[str, list[float]] = {k: [] for k in runs}
    errors = {}
    with torch.no_grad():
        reference = runs["fp32"]()
        scale = float(reference.abs().max())
        for key, fn in runs.items():  # warm-up, and the output check
            out = fn()
            if key != "encoder":
                errors[key] = float((out.float() - reference).abs().max()) / scale
        for _ in range(repeats):
            for key, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        ops = profile_ops(model, x) if profile else None
    median = {k: statistics.median(v) for k, v in times.items()}
    row = {"model": name, "roi": roi, "times_s": times, "median_s": median,
           "speedup_vs_fp32": {k: median["fp32"] / median[k] for k in VARIANTS},
           "speedup_paired_median": paired_speedups(times),
           "max_abs_error_rel": errors, "decoder_share_fp32": 1.0 - median["encoder"] / median["fp32"]}
    if ops:
        row["profile_fp32"] = ops
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["rep3d_tiny", "rep3d_base"])
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model_forward.json")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of other models / ROIs already in --out (each row keeps its own meta)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = {"torch": torch.__version__, "threads": args.threads, "dtype": "float32 (bf16 rows: autocast)",
            "batch": 1, "state": "deployed (reparameterize_model), random weights, eval, no_grad",
            "repeats": args.repeats, "cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
            "note": "2-core machine shared with other processes: compare ratios within a row"}
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, {args.roi}^3, median of {args.repeats}; "
          f"cpu flags {', '.join(meta['cpu_flags']) or 'unknown'}")
    rows = []
    if args.append and args.out.exists():
        rows = [r for r in json.loads(args.out.read_text())["rows"]
                if (r["model"], r["roi"]) not in {(m, args.roi) for m in args.models}]
    for name in args.models:
        row = measure(name, args.roi, args.repeats, args.profile)
        row["meta"] = meta
        rows.append(row)
        print(f"\n{name} at {args.roi}^3: decoder {row['decoder_share_fp32']:.0%} of the fp32 forward")
        print(f"{'variant':<20} {'median s':>9} {'speed-up':>9} {'paired':>8} {'max |diff| / max |y|':>22}")
        for key in VARIANTS:
            print(f"{key:<20} {row['median_s'][key]:>9.3f} {row['speedup_vs_fp32'][key]:>8.2f}x "
                  f"{row['speedup_paired_median'][key]:>7.2f}x {row['max_abs_error_rel'][key]:>22.2e}")
        if "profile_fp32" in row:
            print("profile (fp32, self time share): " + ", ".join(
                f"{k} {v:.0%}" for k, v in row["profile_fp32"]["self_time_share"].items()))
            print(f"transposed convolutions: {row['profile_fp32']['transposed_conv_share']:.1%}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
