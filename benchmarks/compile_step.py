"""``torch.compile`` on a training step: compile time, recompiles per input size, and the speed against eager.

One training step is forward, DiceCE-style loss (cross-entropy here), backward and an AdamW step of a train-form model
(masks, BatchNorm and small branches live), as ``rep3d train`` runs it on the CPU (channels-last activations).
In one process, with one seed:

1. eager: one warm-up step, then the timed rounds;
2. ``torch.compile(model, fullgraph=True, dynamic=...)``: the first step is timed as the compile; then the rounds,
   interleaved with eager (eager step, compiled step, per round) so that both see the same load; the ratio is the
   median over rounds of compiled / eager;
3. one step at each ``--other-rois`` size, counting the graphs dynamo compiled (``unique_graphs``): a count that
   grows with every new size means a recompile per size.

    python benchmarks/compile_step.py --model rep3d_tiny --roi 48 --other-rois 32 64 --threads 2 --rounds 5

Writes ``benchmarks/results/compile_step.json`` (``--json``); ``benchmarks/report.py`` renders it on the performance
page. CPU, float32, the torch in use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch._dynamo


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, num_classes: int):
    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def batch(roi: int, size: int, in_chans: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(roi)
    x = torch.randn(size, in_chans, roi, roi, roi, generator=g).contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, num_classes, (size, roi, roi, roi), generator=g)
    return x, y


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rep3d_tiny")
    parser.add_argument("--roi", type=int, default=48)
    parser.add_argument("--other-rois", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dynamic", choices=("false", "true", "auto"), default="true",
                        help="torch.compile's dynamic= (auto: None, dynamo decides)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "compile_step.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    import rep3d

    torch.manual_seed(0)
    eager_model = rep3d.create_model(args.model, num_classes=args.classes).to(memory_format=torch.channels_last_3d)
    compiled_model = rep3d.create_model(args.model, num_classes=args.classes).to(memory_format=torch.channels_last_3d)
    compiled_model.load_state_dict(eager_model.state_dict())
    in_chans = eager_model.in_chans
    eager = make_step(eager_model, torch.optim.AdamW(eager_model.parameters(), lr=1e-4), args.classes)
    dynamic = {"false": False, "true": True, "auto": None}[args.dynamic]
    compiled_forward = torch.compile(compiled_model, fullgraph=True, dynamic=dynamic)
    compiled = make_step(compiled_forward, torch.optim.AdamW(compiled_model.parameters(), lr=1e-4), args.classes)

    x, y = batch(args.roi, args.batch, in_chans, args.classes)
    eager_warmup = timed(eager, x, y)
    torch._dynamo.utils.counters.clear()
    first_compiled = timed(compiled, x, y)
    graphs = {args.roi: torch._dynamo.utils.counters["stats"]["unique_graphs"]}
    rounds = []
    for _ in range(args.rounds):
        e = timed(eager, x, y)
        c = timed(compiled, x, y)
        rounds.append({"eager_s": e, "compiled_s": c, "ratio": c / e})
        print(f"round: eager {e:.3f} s, compiled {c:.3f} s, compiled/eager {c / e:.3f}", flush=True)
    other = []
    for roi in args.other_rois:
        xo, yo = batch(roi, args.batch, in_chans, args.classes)
        first = timed(compiled, xo, yo)
        again = timed(compiled, xo, yo)
        eager_time = timed(eager, xo, yo)
        graphs[roi] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        other.append({"roi": roi, "first_step_s": first, "second_step_s": again, "eager_step_s": eager_time,
                      "unique_graphs_after": graphs[roi]})
        print(f"roi {roi}: first compiled step {first:.1f} s, then {again:.3f} s (eager {eager_time:.3f} s), "
              f"unique graphs so far {graphs[roi]}", flush=True)
    result = {
        "what": "one training step (forward, cross-entropy, backward, AdamW) of a train-form model, eager vs "
                "torch.compile(fullgraph=True), interleaved rounds in one process; CPU float32, channels-last",
        "model": args.model, "roi": args.roi, "batch": args.batch, "classes": args.classes, "dynamic": args.dynamic,
        "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
        "eager_warmup_s": eager_warmup, "first_compiled_step_s": first_compiled, "rounds": rounds,
        "median_eager_s": statistics.median(r["eager_s"] for r in rounds),
        "median_compiled_s": statistics.median(r["compiled_s"] for r in rounds),
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "other_sizes": other, "unique_graphs": {str(k): v for k, v in graphs.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"compiled/eager median {result['median_ratio']:.3f} over {args.rounds} rounds; compile "
          f"{first_compiled:.0f} s; wrote {args.json}")


if __name__ == "__main__":
    main()
