"""``rep3d train``: the paper's recipe (or a preset) on any MSD-layout dataset, single process or torchrun DDP.

    rep3d train --data DIR --model rep3d_base --out RUN --recipe paper --preset amos_ct
    torchrun --nproc_per_node 4 -m rep3d train --data DIR --out RUN
    rep3d train --out RUN --resume
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rep3d.cli import recorded_command
from rep3d.errors import Rep3DValueError
from rep3d.train import (
    DATASET_PRESETS,
    RECIPES,
    NonFiniteLossError,
    TrainConfig,
    TrainingInterrupted,
    build_config,
    train,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="MSD-layout dataset folder (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--out", required=True, help="run folder: publishable model + train_state/")
    parser.add_argument("--model", help="registered model name (default: the recipe's)")
    parser.add_argument("--recipe", default="paper", choices=sorted(RECIPES), help="hyper-parameter set")
    parser.add_argument("--preset", choices=sorted(DATASET_PRESETS), help="dataset spacing / intensity window")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--roi", type=int, nargs=3, metavar=("D", "H", "W"), help="training crop size")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"))
    parser.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"), help="intensity window -> [0, 1]")
    parser.add_argument("--crops-per-subject", type=int)
    parser.add_argument("--val-every", type=int)
    parser.add_argument("--num-val", type=int, help="validation subjects (default 20 %%)")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"])
    parser.add_argument("--threads", type=int, help="torch CPU threads per process")
    parser.add_argument("--grad-checkpointing", action="store_true", default=None)
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra model constructor argument, VALUE parsed as JSON (e.g. kernel_size=7)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    model_args: dict[str, Any] = {}
    for item in args.model_arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise Rep3DValueError(f"--model-arg expects KEY=VALUE, got {item!r}")
        try:
            model_args[key] = json.loads(value)
        except json.JSONDecodeError:
            model_args[key] = value
    if not args.resume and not args.data:
        raise Rep3DValueError("--data is required (or --resume to continue a run)")
    return build_config(
        args.recipe, args.preset, data=args.data, out=args.out, model=args.model, iterations=args.iterations,
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        roi_size=tuple(args.roi) if args.roi else None, spacing=tuple(args.spacing) if args.spacing else None,
        intensity_window=tuple(args.window) if args.window else None, crops_per_subject=args.crops_per_subject,
        val_every=args.val_every, num_val=args.num_val, checkpoint_every=args.checkpoint_every,
        workers=args.workers, seed=args.seed, device=args.device, amp=args.amp, threads=args.threads,
        grad_checkpointing=args.grad_checkpointing, model_args=model_args or None,
    )


RESUME_FLAGS = {"iterations": "iterations", "val_every": "val-every", "checkpoint_every": "checkpoint-every",
                "workers": "workers", "threads": "threads"}


def resume_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given with ``--resume``: the safe ones (:data:`rep3d.train.trainer.RESUME_OVERRIDES`) as
    overrides; any other flag given on the command line is refused by name."""
    given = {word.split("=")[0] for word in getattr(args, "argv", []) if word.startswith("--")}
    refused = sorted(flag for flag in given - {"--resume", "--out", "--debug"}
                     if flag.removeprefix("--") not in RESUME_FLAGS.values())
    if refused:
        raise Rep3DValueError(f"--resume continues the recorded run; it can change only "
                              f"{', '.join('--' + f for f in RESUME_FLAGS.values())}, not {', '.join(refused)}: "
                              "start a new run with another --out to change those")
    return {key: getattr(args, key) for key in RESUME_FLAGS if getattr(args, key) is not None}


def run(args: argparse.Namespace) -> int:
    overrides = resume_overrides(args) if args.resume else None
    cfg = config_from_args(args)
    for name in ("iterations", "val_every", "checkpoint_every", "workers", "crops_per_subject", "num_val"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("workers", "num_val") else 1):
            raise Rep3DValueError(f"--{name.replace('_', '-')} must be >= {0 if name in ('workers', 'num_val') else 1}"
                                  f", got {value}")
    try:
        train(cfg, resume=args.resume, command=recorded_command(args), overrides=overrides)
    except TrainingInterrupted as exc:  # a checkpoint was written: the conventional SIGTERM status
        print(str(exc), file=sys.stderr)
        return 143
    except NonFiniteLossError as exc:
        print(f"rep3d train: error: {exc}", file=sys.stderr)
        return 3
    return 0
