"""``rep3d predict``: segment NIfTI volumes with a model; one bad file never stops the others."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rep3d.builder import create_model
from rep3d.inference import AUTO, InputError, Predictor, find_volumes, output_stem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="registered model name, e.g. rep3d_tiny.phantom")
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="volumes (.nii / .nii.gz) or folders of them"
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUTDIR", help="folder for <name>_seg.nii.gz"
    )
    parser.add_argument(
        "--checkpoint", metavar="FILE", help="load these weights instead of the pretrained ones"
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)"
    )
    parser.add_argument(
        "--stitch-device",
        default="auto",
        help="where windows are stitched: auto (the device unless the volume is too large for it), cpu, cuda",
    )
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)"
    )
    parser.add_argument("--sw-batch-size", type=int, default=1, help="windows per forward pass (default 1)")
    parser.add_argument(
        "--roi-size", type=int, nargs=3, metavar=("D", "H", "W"), help="override the cfg's ROI"
    )
    parser.add_argument("--tta", action="store_true", help="average over flips (8x slower)")
    parser.add_argument(
        "--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)"
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <name>_prob.nii.gz: float32 softmax, classes last",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _report(name: str, message: str) -> None:
    where = "" if message.startswith(name) else f"{name}: "
    tqdm.write(f"rep3d predict: error: {where}{message}", file=sys.stderr)


def plan_outputs(files: list[Path], outdir: Path, probabilities: bool, overwrite: bool):
    """``(jobs [(input, seg, prob or None)], errors [(input, problem)])``: refuses clashing names and existing
    outputs (unless ``overwrite``)."""
    jobs, errors, claimed = [], [], {}
    for path in files:
        stem = output_stem(path)
        seg = outdir / f"{stem}_seg.nii.gz"
        prob = outdir / f"{stem}_prob.nii.gz" if probabilities else None
        if seg in claimed:
            errors.append((str(path), f"same output name {seg.name} as {claimed[seg]}; rename one of them"))
            continue
        claimed[seg] = path
        existing = [p for p in (seg, prob) if p is not None and p.exists()]
        if existing and not overwrite:
            errors.append((str(path), f"{existing[0]} exists; pass --overwrite to replace it"))
            continue
        jobs.append((path, seg, prob))
    return jobs, errors


def segment_files(predictor: Predictor, jobs, quiet: bool) -> tuple[int, list[tuple[str, str]]]:
    """Run ``predictor`` on every job, writing its outputs; returns ``(done, errors)``."""
    done, errors = 0, []
    for path, seg, prob in tqdm(jobs, desc="volumes", unit="vol", disable=quiet):
        try:
            pred = predictor(path, probabilities=prob is not None)
            pred.save(seg)
            if prob is not None:
                pred.save_probabilities(prob)
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
            if isinstance(err, torch.cuda.OutOfMemoryError):
                message = f"out of GPU memory; try --stitch-device cpu, --sw-batch-size 1 or --amp ({err})"
            else:
                message = str(err) if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
            _report(str(path), message)
            errors.append((str(path), message))
            continue
        done += 1
        if not quiet:
            tqdm.write(f"{path} -> {seg}")
    return done, errors


def run(args: argparse.Namespace) -> int:
    outdir = Path(args.output)
    files, errors = find_volumes(args.inputs)
    jobs, refused = plan_outputs(files, outdir, args.probabilities, args.overwrite)
    errors += refused
    for name, message in errors:
        _report(name, message)
    done = 0
    if jobs:
        try:
            model = create_model(args.model, pretrained=not args.checkpoint, checkpoint_path=args.checkpoint)
        except Exception as err:  # noqa: BLE001 - report and stop: nothing can run without a model
            _report(args.model, f"cannot build the model: {type(err).__name__}: {err}")
            return 1
        predictor = Predictor(
            model, roi_size=tuple(args.roi_size) if args.roi_size else AUTO, overlap=args.overlap,
            sw_batch_size=args.sw_batch_size, device=args.device, stitch_device=args.stitch_device, amp=args.amp,
            tta=args.tta, progress=not args.quiet,
        )
        outdir.mkdir(parents=True, exist_ok=True)
        done, failed = segment_files(predictor, jobs, args.quiet)
        errors += failed
    summary = f"rep3d predict: segmented {done} volume(s) into {outdir}"
    if errors:
        summary += f"; {len(errors)} failed: " + ", ".join(Path(name).name for name, _ in errors)
    print(summary, file=sys.stderr)
    return 1 if errors else 0
