"""One training step of a model: wall time and peak memory, with and without gradient checkpointing.

Each configuration runs in a fresh subprocess so its peak resident memory (CPU: ``ru_maxrss``) or peak CUDA allocation
is its own. Prints a markdown table (medians over ``--repeats`` steps after one warm-up step); ``--json FILE`` saves it.

    python benchmarks/train_step.py --model rep3d_tiny --roi 64 --batch 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def time_train_steps(
    model,
    x,
    y,
    *,
    repeats: int,
    amp_dtype=None,
    slow_s: float = float("inf"),
) -> dict:
    """Median wall time of one training step (DiceCE + AdamW, as ``rep3d train``) and the peak CUDA memory.

    ``model`` is on the device already, ``x`` ``[B, C, *S]`` and ``y`` ``[B, 1, *S]`` are the batch;
    ``amp_dtype`` (``torch.bfloat16`` / ``torch.float16``) runs the step under autocast (float16 with a
    GradScaler). One untimed warm-up step first (allocator, FFT plans, optimizer state); a warm-up slower than
    ``slow_s`` is the only step (``steps_timed`` 1, its time includes the one-time setup). CUDA timings are
    synchronised; ``peak_cuda_bytes`` is ``torch.cuda.max_memory_allocated`` over the timed steps (None on CPU).
    """
    import torch
    from monai.losses import DiceCELoss

    device = x.device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> float:
        sync()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync()
        return time.perf_counter() - t

    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = step()
    times = [warm] if warm > slow_s else [step() for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"median_step_s": statistics.median(times), "steps_timed": len(times), "warmup_s": warm,
            "step_s_all": times, "peak_cuda_bytes": peak, "samples_per_s": x.shape[0] / statistics.median(times)}


def one_config(args: argparse.Namespace, checkpointing: bool) -> dict:
    import resource

    import torch

    import rep3d

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    fmt = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    model = rep3d.create_model(args.model, num_classes=args.classes).to(device, memory_format=fmt).train()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(args.batch, 1, args.roi, args.roi, args.roi, device=device).to(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch, 1, args.roi, args.roi, args.roi), device=device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timed = time_train_steps(model, x, y, repeats=args.repeats)
    peak = timed["peak_cuda_bytes"]
    if device.type != "cuda":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": args.model, "grad_checkpointing": checkpointing, "roi": args.roi, "batch": args.batch,
            "threads": args.threads, "device": args.device, "channels_last": args.channels_last,
            "median_step_s": timed["median_step_s"],
            "peak_bytes": peak, "peak_measure": "cuda max_memory_allocated" if device.type == "cuda" else "ru_maxrss",
            "rss_before_steps_bytes": rss_before * 1024, "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rep3d_tiny")
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2, help="crops per step (the recipe uses 2)")
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--contiguous", dest="channels_last", action="store_false",
                        help="NCDHW activations instead of channels_last_3d (what rep3d train uses)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--_child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(one_config(args, args._child == "on")))
        return
    rows = []
    for mode in ("off", "on"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--_child", mode]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]
    layout = "channels_last_3d" if args.channels_last else "contiguous"
    print(f"{args.model}, one training step (DiceCE + AdamW), batch {args.batch} × {args.roi}³, {args.device}, "
          f"{args.threads} threads, fp32 {layout}, torch {base['torch']}; median of {args.repeats} steps")
    print("| grad checkpointing | step (s) | peak memory (MiB) | vs off |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {'on' if r['grad_checkpointing'] else 'off'} | {r['median_step_s']:.2f} | "
              f"{r['peak_bytes'] / 2**20:.0f} | {r['peak_bytes'] / base['peak_bytes']:.2f}× memory, "
              f"{r['median_step_s'] / base['median_step_s']:.2f}× time |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
