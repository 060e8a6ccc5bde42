"""``rep3d evaluate``: per-class Dice of a model on the labelled cases of an MSD dataset, on each scan's own grid.

Every case goes through :class:`rep3d.Predictor` (the same pipeline as ``rep3d predict``) and is compared with its
label file, so the numbers are what a user of the model gets.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def evaluate_dataset(model, data: str, split: str = "test", **predictor_kwargs) -> dict:
    """``{"cases": [{"image", "dice": {class: value}}], "mean_dice": {class: mean}, "mean": float}``."""
    from rep3d.data.msd import load_msd_dataset
    from rep3d.inference import Predictor
    from rep3d.metrics import dice_per_class, mean_dice

    dataset = load_msd_dataset(data)
    cases = {"test": dataset.test_labeled, "val": dataset.val, "train": dataset.train}[split]
    if not cases:
        raise ValueError(f"{data}: the {split!r} split has no labelled cases (test labels live under 'test_labeled')")
    predictor = Predictor(model, **predictor_kwargs)
    names = predictor.class_names or [f"class_{i}" for i in range(model.num_classes)]
    import nibabel as nib

    rows = []
    for case in cases:
        prediction = predictor(case["image"])
        truth = np.asarray(nib.load(case["label"]).dataobj).astype(np.int64)
        dice = dice_per_class(torch.from_numpy(prediction.label.astype(np.int64)), torch.from_numpy(truth),
                              len(names))
        rows.append({"image": case["image"], "dice": dict(zip(names[1:], dice))})
    per_class = {n: mean_dice([r["dice"][n] for r in rows]) for n in names[1:]}
    return {"split": split, "num_cases": len(rows), "cases": rows, "mean_dice": per_class,
            "mean": mean_dice(list(per_class.values()))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name, e.g. rep3d_tiny.phantom (its pretrained weights are loaded)")
    parser.add_argument("--data", required=True, help="MSD-layout dataset folder")
    parser.add_argument("--split", default="test", choices=["test", "val", "train"])
    parser.add_argument("--checkpoint", help="weights to load instead of the pretrained ones")
    parser.add_argument("--device", default=None)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--json", metavar="FILE", help="also write per-case results as JSON")


def run(args: argparse.Namespace) -> int:
    import rep3d

    model = rep3d.create_model(args.model, pretrained=not args.checkpoint, checkpoint_path=args.checkpoint)
    start = time.perf_counter()
    result = evaluate_dataset(model, args.data, args.split, device=args.device, overlap=args.overlap)
    width = max(len(n) for n in result["mean_dice"])
    print(f"{args.model} on {result['num_cases']} {args.split} cases of {args.data} "
          f"({time.perf_counter() - start:.0f} s); Dice on each scan's own grid")
    for name, value in result["mean_dice"].items():
        print(f"{name.ljust(width)}  {value:.4f}")
    print(f"{'mean'.ljust(width)}  {result['mean']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if np.isfinite(result["mean"]) else 1

