"""Deployed-model forward on CPU: where the time goes, and what the inference levers buy at equal output.

    python benchmarks/model_forward.py --models rep3d_tiny rep3d_base --roi 96 --threads 2 --repeats 5

Per model (deployed form, random weights, 16 classes, batch 1, CPU, no gradients), the variants take turns in
each round (the machine may be shared: compare the ratios, measured in one run, not the seconds):

* ``fp32``: the model as built (``channels-first``), PyTorch's defaults;
* ``fp32 channels_last``: weights and input in ``torch.channels_last_3d`` only;
* ``fp32 optimized (before)``: channels_last_3d with the decoder's instance norms as channels-last group norms,
  what ``Predictor`` ran on CPU before :class:`rep3d.layers.OneDNNConv3d` and the two-pass norm;
* ``fp32 optimized``: :func:`rep3d.models.optimize_for_inference`, what ``Predictor`` runs on CPU now;
* ``bf16``, ``bf16 optimized``: the same under ``torch.autocast("cpu", torch.bfloat16)`` (``--precision bf16``).

Each variant runs under two allocators, in two worker processes that take turns round by round (the setting is
process-wide): ``default`` (glibc's, which maps and unmaps every block over 32 MiB) and ``keep``
(:func:`rep3d.keep_freed_memory`, what the ``rep3d`` executable sets for predict/evaluate/train). Speed-ups are
the median over rounds of ``fp32 (default allocator) / variant`` within the round. Each variant's output is
compared to its worker's ``fp32`` (max abs difference relative to the logits' max abs): the fp32 variants must
agree to float32 rounding. ``encoder`` times the encoder alone (fp32), which gives the decoder's share of the
forward. ``--profile`` adds torch.profiler runs: ``fp32`` under the default allocator, ``fp32 optimized`` under
``keep``. Results: ``benchmarks/results/model_forward.json`` (``--out``; ``--append`` keeps the other rows).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import rep3d
from rep3d.allocator import keep_freed_memory
from rep3d.models import optimize_for_inference, reparameterize_model

VARIANTS = ("fp32", "fp32 channels_last", "fp32 optimized (before)", "fp32 optimized", "bf16", "bf16 optimized")
ALLOCATORS = ("default", "keep")


def cpu_flags() -> list[str]:
    """The CPU's bf16-relevant ISA flags (``/proc/cpuinfo``), empty where unknown."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split(":", 1)[1].split() if f in ("avx2", "avx512_bf16", "amx_bf16", "amx_tile",
                                                                      "avx512f", "avx512_vnni"))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
        return line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


class _GroupNormPerChannel(torch.nn.Module):
    """The previous recipe's decoder norm: instance norm as a one-group-per-channel group norm."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, x.shape[1], eps=self.eps)


def previous_recipe(model: torch.nn.Module) -> torch.nn.Module:
    """``optimize_for_inference`` as it was before oneDNN routing and the two-pass norm."""
    model = copy.deepcopy(model)

    def swap(parent: torch.nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.InstanceNorm3d) and not child.affine and not child.track_running_stats:
                setattr(parent, name, _GroupNormPerChannel(child.eps))
            else:
                swap(child)

    swap(model)
    return model.to(memory_format=torch.channels_last_3d)


def variants(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """name -> zero-argument callable running one forward."""
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
    before = previous_recipe(model)
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
        "fp32 optimized (before)": run(before, x_cl),
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


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(conn, name: str, roi: int, threads: int, allocator: str) -> None:
    """One allocator's process: builds the model and its variants, then runs a round per request."""
    torch.set_num_threads(threads)
    applied = keep_freed_memory() if allocator == "keep" else False
    torch.manual_seed(0)
    model = reparameterize_model(rep3d.create_model(name, num_classes=16).eval())
    x = torch.randn(1, 1, roi, roi, roi)
    runs = variants(model, x)
    with torch.no_grad():
        reference = runs["fp32"]()
        scale = float(reference.abs().max())
        errors = {key: float((fn().float() - reference).abs().max()) / scale
                  for key, fn in runs.items() if key != "encoder"}  # also the warm-up
        conn.send({"errors": errors, "allocator_applied": applied})
        while True:
            request = conn.recv()
            if request == "round":
                times = {}
                for key, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    times[key] = time.perf_counter() - start
                conn.send(times)
            elif request == "profile":
                key = "fp32" if allocator == "default" else "fp32 optimized"
                inputs = x if key == "fp32" else x.contiguous(memory_format=torch.channels_last_3d)
                module = model if key == "fp32" else optimize_for_inference(model)
                module(inputs)
                conn.send({"variant": key, **profile_ops(module, inputs)})
            else:
                conn.send({"peak_rss_mib": _peak_rss_mib()})
                return


def measure(name: str, roi: int, repeats: int, threads: int, profile: bool) -> dict:
    context = multiprocessing.get_context("spawn")
    workers = {}
    for allocator in ALLOCATORS:  # built one after the other: each worker's set-up runs alone
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, name, roi, threads, allocator))
        process.start()
        workers[allocator] = (parent, process, parent.recv())
    times = {a: {k: [] for k in (*VARIANTS, "encoder")} for a in ALLOCATORS}
    for round_index in range(repeats):
        order = ALLOCATORS if round_index % 2 == 0 else ALLOCATORS[::-1]
        for allocator in order:
            conn = workers[allocator][0]
            conn.send("round")
            for key, seconds in conn.recv().items():
                times[allocator][key].append(seconds)
    profiles = {}
    if profile:
        for allocator, (conn, _, _) in workers.items():
            conn.send("profile")
            profiles[allocator] = conn.recv()
    cells = {}
    baseline = times["default"]["fp32"]
    for allocator, (conn, process, ready) in workers.items():
        conn.send("stop")
        peak = conn.recv()["peak_rss_mib"]
        process.join()
        cells[allocator] = {
            "allocator_applied": ready["allocator_applied"], "peak_rss_mib": peak,
            "median_s": {k: statistics.median(v) for k, v in times[allocator].items()},
            "speedup_paired_median": {k: statistics.median(b / t for b, t in zip(baseline, times[allocator][k],
                                                                                 strict=True)) for k in VARIANTS},
            "max_abs_error_rel": ready["errors"],
        }
    default = cells["default"]["median_s"]
    row = {"model": name, "roi": roi, "times_s": times, "allocators": cells,
           "decoder_share_fp32": 1.0 - default["encoder"] / default["fp32"]}
    if profiles:
        row["profiles"] = profiles
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
            "allocators": {"default": "glibc defaults", "keep": "rep3d.keep_freed_memory()"},
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
        row = measure(name, args.roi, args.repeats, args.threads, args.profile)
        row["meta"] = meta
        rows.append(row)
        print(f"\n{name} at {args.roi}^3: decoder {row['decoder_share_fp32']:.0%} of the fp32 forward")
        print(f"{'variant':<24} {'allocator':<9} {'median s':>9} {'paired':>8} {'max |diff| / max |y|':>22}")
        for key in VARIANTS:
            for allocator, cell in row["allocators"].items():
                print(f"{key:<24} {allocator:<9} {cell['median_s'][key]:>9.3f} "
                      f"{cell['speedup_paired_median'][key]:>7.2f}x {cell['max_abs_error_rel'][key]:>22.2e}")
        print("peak RSS MiB: " + ", ".join(f"{a} {c['peak_rss_mib']:.0f}" for a, c in row["allocators"].items()))
        for allocator, prof in row.get("profiles", {}).items():
            print(f"profile ({prof['variant']}, {allocator} allocator, self time share): " + ", ".join(
                f"{k} {v:.0%}" for k, v in prof["self_time_share"].items()))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
