"""``rep3d demo``: segment a new SYNTHETIC phantom with the bundled weights and print per-class Dice
(:func:`rep3d.demo.run_demo`)."""

from __future__ import annotations

import argparse

EXAMPLE = "rep3d demo -o rep3d-demo"
DEMO_MODEL = "rep3d_tiny.phantom"  # rep3d.demo.DEMO_MODEL, repeated so that `rep3d demo --help` loads no torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", default="rep3d-demo", help="output folder (default: ./rep3d-demo)")
    parser.add_argument("--seed", type=int, default=2026, help="phantom seed (the bundled weights never saw it)")
    parser.add_argument("--model", default=DEMO_MODEL, help="pretrained tag to run (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    import torch

    from rep3d.demo import DEMO_FILES, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)

    def header(model, phantom) -> None:
        print(f"rep3d demo: {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
              f"weights trained on SYNTHETIC phantoms) on a new SYNTHETIC phantom "
              f"{'x'.join(map(str, phantom.image.shape))} (seed {args.seed})")

    result = run_demo(args.out, seed=args.seed, model_name=args.model, device=args.device, on_model=header)
    width = max(len(n) for n in result.class_names)
    print(f"{'class'.ljust(width)}  Dice")
    for name, d in zip(result.class_names[1:], result.dice):
        print(f"{name.ljust(width)}  {d:.3f}")
    print(f"{'mean'.ljust(width)}  {result.mean:.3f}")
    print(f"wrote {len(DEMO_FILES)} files into {result.out.resolve()}/: {', '.join(DEMO_FILES)} "
          f"({result.seconds:.1f} s for generation + segmentation); look at {result.out / DEMO_FILES[-1]}")
    return 0
