"""``rep3d evaluate``: per-class Dice of a model on the labelled cases of an MSD dataset, on each scan's own grid
(:func:`rep3d.inference.evaluate_dataset`, the evaluation path training validation uses too)."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from rep3d.builder import create_model
from rep3d.inference import evaluate_dataset
from rep3d.outputs import check_file_output, model_source_files, read_files, write_text_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name, e.g. rep3d_tiny.phantom (its pretrained weights are loaded)")
    parser.add_argument("--data", required=True, help="MSD-layout dataset folder")
    parser.add_argument("--split", default="test", choices=["test", "val", "train"])
    parser.add_argument("--checkpoint", help="weights to load instead of the pretrained ones")
    parser.add_argument("--device", default=None)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--json", metavar="FILE", help="also write per-case results as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace the --json FILE of an earlier run")


def run(args: argparse.Namespace) -> int:
    if args.json:  # a bad --json path fails now, not after the whole evaluation
        reads = model_source_files(args.model, args.checkpoint) | read_files([args.data])
        check_file_output(args.json, overwrite=args.overwrite, reads=reads, flag="--json")
    model = create_model(args.model, pretrained=not args.checkpoint, checkpoint_path=args.checkpoint)
    start = time.perf_counter()
    result = evaluate_dataset(model, args.data, args.split, device=args.device, overlap=args.overlap)
    width = max(len(n) for n in result["mean_dice"])
    print(f"{args.model} on {result['num_cases']} {args.split} cases of {args.data} "
          f"({time.perf_counter() - start:.0f} s); Dice on each scan's own grid")
    for name, value in result["mean_dice"].items():
        print(f"{name.ljust(width)}  {value:.4f}")
    print(f"{'mean'.ljust(width)}  {result['mean']:.4f}")
    if args.json:
        write_text_output(args.json, json.dumps(result, indent=2), overwrite=args.overwrite,
                          command="rep3d evaluate")
    return 0 if np.isfinite(result["mean"]) else 1
