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
from rep3d.train.recipes import DATASET_PRESETS, RECIPES, TrainConfig, build_config

EXAMPLE = "rep3d train --data phantoms/ --out runs/tiny --recipe phantom --iterations 300"


def recipe_default(key: str, unit: str = "") -> str:
    """``default: <each recipe's value>`` for a :class:`TrainConfig` field, from :data:`RECIPES` (read, not copied,
    so the help cannot drift from what runs)."""
    fallback = getattr(TrainConfig(), key)
    values = {}
    for name, recipe in sorted(RECIPES.items()):
        value = recipe.get(key, fallback)
        values[name] = " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    if len(set(values.values())) == 1:
        return f"default: {next(iter(values.values()))}{unit}"
    return "default: the recipe's: " + ", ".join(f"{name} {value}{unit}" for name, value in values.items())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="DIR",
                      help="MSD-layout dataset folder (dataset.json, imagesTr/, labelsTr/); required unless --resume "
                           "(default: none)")
    data.add_argument("--preset", choices=sorted(DATASET_PRESETS),
                      help="dataset spacing / orientation / intensity window (default: the recipe's: phantom for "
                           "--recipe phantom, else the paper's CT values)")
    data.add_argument("--roi", type=int, nargs=3, metavar=("D", "H", "W"),
                      help=f"training crop size ({recipe_default('roi_size')})")
    data.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                      help="voxel spacing in mm that images are resampled to (default: the preset's)")
    data.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                      help="intensity window mapped to [0, 1] (default: the preset's)")
    data.add_argument("--crops-per-subject", type=int,
                      help=f"random crops per image ({recipe_default('crops_per_subject')})")
    data.add_argument("--num-val", type=int,
                      help="validation subjects held out of imagesTr (default: 20%% of them, at least 1)")
    data.add_argument("--workers", type=int, help=f"data-loading processes ({recipe_default('workers')})")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help=f"registered model name ({recipe_default('model')})")
    model.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="extra model constructor argument, VALUE parsed as JSON, e.g. kernel_size=7; repeatable "
                            "(default: none)")
    model.add_argument("--grad-checkpointing", action="store_true", default=None,
                       help="recompute activations in the backward pass: less memory, slower (default: off)")
    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--recipe", default="paper", choices=sorted(RECIPES),
                          help="hyper-parameter set: paper (the paper's AMOS recipe) or phantom (2-core CPU sized) "
                               "(default: paper)")
    schedule.add_argument("--iterations", type=int,
                          help=f"optimizer steps; the time estimate after the first steps says how long "
                               f"({recipe_default('iterations')})")
    schedule.add_argument("--lr", type=float, help=f"peak AdamW learning rate ({recipe_default('lr')})")
    schedule.add_argument("--weight-decay", type=float, help=f"AdamW weight decay ({recipe_default('weight_decay')})")
    schedule.add_argument("--warmup-steps", type=int,
                          help=f"linear warm-up before the cosine decay ({recipe_default('warmup_steps')})")
    schedule.add_argument("--val-every", type=int, help=f"validate every N steps ({recipe_default('val_every')})")
    schedule.add_argument("--checkpoint-every", type=int,
                          help=f"write train_state/ every N steps ({recipe_default('checkpoint_every')})")
    schedule.add_argument("--seed", type=int, help=f"random seed ({recipe_default('seed')})")
    schedule.add_argument("--resume", action="store_true",
                          help="continue the run in --out from its last checkpoint (default: start a new run)")
    compute = parser.add_argument_group("compute")
    compute.add_argument("--device", help=f"auto (cuda if available) | cpu | cuda | cuda:N "
                                          f"({recipe_default('device')})")
    compute.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"],
                         help="mixed precision (default: auto: bf16 on CUDA where supported, else fp16; off on CPU)")
    compute.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's choice)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, metavar="RUN",
                        help="run folder: the publishable model, curves.png, metrics and train_state/")


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


def format_summary(summary: dict[str, Any], cfg: TrainConfig) -> str:
    """What ``rep3d train`` prints at the end: best validation Dice and its step, test Dice per class (when the
    dataset has a labelled test split), wall time, the model folder and the commands to run next."""
    from rep3d.train.progress import format_duration

    out, best = summary.get("model_dir", cfg.out), summary["best"]
    model = f"local-dir:{out}"
    lines = [f"rep3d train: done: {summary['steps']} steps in {format_duration(summary['wall_time_s'])} "
             f"({summary['wall_time_s']:.0f} s wall time, set-up and validation included)",
             f"  best validation mean Dice {best['dice']:.4f} at step {best['step']} (the published weights)"]
    if "test_dice" in summary:
        per_class = ", ".join(f"{name} {dice:.3f}" for name, dice in summary["test_dice"].items())
        lines.append(f"  test Dice on {summary['num_test']} case(s): mean {summary['test_mean_dice']:.4f}; {per_class}")
    else:
        lines.append("  no labelled test split (imagesTs/ + labelsTs/): no test Dice")
    lines += [f"  model folder: {out} (config.json, model.safetensors, README.md model card, curves.png)",
              "  next:",
              f"    rep3d predict {model} SCANS/ -o segmentations/ --preview",
              f"    rep3d evaluate {model} --data {cfg.data or 'DATA'} --split test",
              f"    rep3d export {model} --format onnx -o model.onnx"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    overrides = resume_overrides(args) if args.resume else None
    cfg = config_from_args(args)
    for name in ("iterations", "val_every", "checkpoint_every", "workers", "crops_per_subject", "num_val"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("workers", "num_val") else 1):
            raise Rep3DValueError(f"--{name.replace('_', '-')} must be >= {0 if name in ('workers', 'num_val') else 1}"
                                  f", got {value}")
    # The trainer pulls in MONAI (~10 s on a small CPU): a wrong argument, or --resume of a folder without a run, is
    # reported before that.
    if args.resume:
        from rep3d.train.checkpoint import last_checkpoint_path, require_checkpoint

        require_checkpoint(last_checkpoint_path(cfg.out))
    from rep3d.train.trainer import NonFiniteLossError, TrainingInterrupted, train

    try:
        summary = train(cfg, resume=args.resume, command=recorded_command(args), overrides=overrides)
    except TrainingInterrupted as exc:  # a checkpoint was written: the conventional SIGTERM status
        print(str(exc), file=sys.stderr)
        return 143
    except NonFiniteLossError as exc:
        print(f"rep3d train: error: {exc}", file=sys.stderr)
        return 3
    if "model_dir" in summary:  # rank 0 of a torchrun job (or the only process) reports
        print(format_summary(summary, cfg))
    return 0
