"""``rep3d evaluate``: per-class Dice of a model on the labelled cases of an MSD dataset, on each scan's own grid
(:func:`rep3d.inference.evaluate_dataset`, the evaluation path training validation uses too)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

# repeated from rep3d.inference.predictor so that --help loads no torch (tests/test_cli_help.py keeps them equal)
PRECISIONS = ("fp32", "bf16")
EXAMPLE = "rep3d evaluate rep3d_tiny.phantom --data phantoms/ --split test --json dice.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, metavar="DIR", help="MSD-layout dataset folder")
    data.add_argument("--split", default="test", choices=["test", "val", "train"],
                      help="test: imagesTs/labelsTs; val / train: the split rep3d train makes of imagesTr "
                           "(default: test)")
    model = parser.add_argument_group("model")
    model.add_argument("model", metavar="MODEL",
                       help="registered name (rep3d_tiny.phantom), local-dir:RUN_FOLDER or hf-hub:ORG/NAME; its "
                            "pretrained weights are loaded")
    model.add_argument("--checkpoint", metavar="FILE",
                       help="weights to load instead of the pretrained ones (default: the pretrained ones)")
    inference = parser.add_argument_group("inference")
    inference.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    inference.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1)")
    inference.add_argument("--precision", choices=PRECISIONS, default="fp32",
                           help="fp32 (default) or bf16 autocast (faster on CPUs with AVX-512 BF16 / AMX; refused on "
                                "a CPU without bfloat16 kernels)")
    output = parser.add_argument_group("output")
    output.add_argument("--json", metavar="FILE", help="also write per-case results as JSON (default: print only)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace the --json FILE of an earlier run (default: off)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from rep3d.builder import create_model
    from rep3d.inference import SyntheticWeightsWarning, evaluate_dataset
    from rep3d.inference.predictor import synthetic_notice
    from rep3d.outputs import check_file_output, model_source_files, read_files, write_text_output

    if args.json:  # a bad --json path fails now, not after the whole evaluation
        reads = model_source_files(args.model, args.checkpoint) | read_files([args.data])
        check_file_output(args.json, overwrite=args.overwrite, reads=reads, flag="--json")
    model = create_model(args.model, pretrained=not args.checkpoint, checkpoint_path=args.checkpoint)
    notice = synthetic_notice(getattr(model, "pretrained_cfg", None) or {})
    start = time.perf_counter()
    with warnings.catch_warnings():  # said once below, as rep3d predict does (the Predictor warns on every case)
        warnings.filterwarnings("ignore", category=SyntheticWeightsWarning)
        result = evaluate_dataset(model, args.data, args.split, device=args.device, overlap=args.overlap,
                                  precision=args.precision)
    if notice:  # after the run: an unreadable dataset stays a one-line error
        print(f"rep3d evaluate: notice: {notice}", file=sys.stderr)
        result["notices"] = {"synthetic_training_data": notice}
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
