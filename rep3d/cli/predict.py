"""``rep3d predict``: segment NIfTI volumes with a model; one bad file never stops the others."""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rep3d.builder import create_model
from rep3d.errors import Rep3DValueError
from rep3d.inference import AUTO, InputError, InputWarning, Predictor, find_volumes, output_stem
from rep3d.inference.io import is_prediction
from rep3d.inference.predictor import resolve_device
from rep3d.outputs import OutputRefused, check_file_output

COMMAND = "rep3d predict"


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
    parser.add_argument("--tta", action="store_true",
                        help="average over the flips the model was trained with (up to 8x slower); refused for a "
                             "model trained without flips or whose config does not say")
    parser.add_argument(
        "--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)"
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <name>_prob.nii.gz: float32 softmax, classes last",
    )
    parser.add_argument(
        "--nonfinite", type=_nonfinite_arg, default="error", metavar="error|replace:VALUE",
        help="NaN / infinite input voxels: error (default: refuse the volume) or replace:VALUE (e.g. replace:-1024, "
             "with a warning)",
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="replace earlier outputs of rep3d predict (never inputs or other files)")
    parser.add_argument("--allow-out-of-distribution", action="store_true",
                        help="segment scans far outside the model's training input (all air, another modality or "
                             "unit, a much coarser spacing) with a warning recorded in <name>_seg.json, instead of "
                             "refusing them")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _nonfinite_arg(text: str) -> str | float:
    if text == "error":
        return text
    kind, _, value = text.partition(":")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if kind != "replace" or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected 'error' or 'replace:VALUE' with a finite VALUE, got {text!r}")
    return number


def _report(name: str, message: str) -> None:
    where = "" if message.startswith(name) else f"{name}: "
    message = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    tqdm.write(f"rep3d predict: error: {where}{message}", file=sys.stderr)


def plan_outputs(files: list[Path], outdir: Path, probabilities: bool, overwrite: bool):
    """``(jobs [(input, seg, prob or None, report)], errors [(input, problem)])``.

    Refuses clashing names, any output that is also an input (``x_seg.nii.gz`` given as an input, and the output of
    ``x`` in the same folder), and existing outputs unless ``overwrite``; even then only files an earlier
    ``rep3d predict`` wrote are replaced, never anything else (:mod:`rep3d.outputs`).
    """
    jobs, errors, claimed = [], [], {}
    inputs = {p.resolve() for p in files}
    for path in files:
        stem = output_stem(path)
        seg = outdir / f"{stem}_seg.nii.gz"
        prob = outdir / f"{stem}_prob.nii.gz" if probabilities else None
        report = outdir / f"{stem}_seg.json"
        if seg in claimed:
            errors.append((str(path), f"same output name {seg.name} as {claimed[seg]}; rename one of them"))
            continue
        claimed[seg] = path
        outputs = [p for p in (seg, prob, report) if p is not None]
        clash = next((p for p in outputs if p.resolve() in inputs), None)
        if clash is not None:
            errors.append((str(path), f"its output {clash} is also an input, and inputs are never overwritten; "
                                      "write the outputs to another folder with -o"))
            continue
        try:
            for out in outputs:
                check_file_output(out, overwrite=overwrite, reads=inputs, flag="",
                                  also_ours=is_prediction if out.name.endswith(".nii.gz") else None)
        except OutputRefused as err:
            errors.append((str(path), str(err)))
            continue
        jobs.append((path, seg, prob, report))
    return jobs, errors


def check_output_folder(outdir: Path) -> None:
    """Refuse, before any model is built, an ``-o`` that is a file or that cannot be created / written."""
    if outdir.exists() and not outdir.is_dir():
        raise Rep3DValueError(f"-o {outdir} is an existing file; give a folder for the <name>_seg.nii.gz outputs")
    parent = outdir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise Rep3DValueError(f"-o {outdir}: {parent} is a file, so the folder cannot be created; give a folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise Rep3DValueError(f"-o {outdir}: {parent} is not writable; give a folder you can write to")


def segment_files(predictor: Predictor, jobs, quiet: bool,
                  overwrite: bool = False) -> tuple[int, list[tuple[str, str]]]:
    """Run ``predictor`` on every job, writing its outputs; returns ``(done, errors)``."""
    done, errors = 0, []
    for path, seg, prob, report in tqdm(jobs, desc="volumes", unit="vol", disable=quiet):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", InputWarning)
                pred = predictor(path, probabilities=prob is not None)
            for warning in caught:
                if issubclass(warning.category, InputWarning):
                    tqdm.write(f"rep3d predict: warning: {warning.message}", file=sys.stderr)
                    pred.report.setdefault("warnings", []).append(str(warning.message))
                else:
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            pred.save(seg, overwrite=overwrite, command=COMMAND)
            if prob is not None:
                pred.save_probabilities(prob, overwrite=overwrite, command=COMMAND)
            pred.save_report(report, overwrite=overwrite, command=COMMAND)
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
    check_output_folder(outdir)
    resolve_device(args.device)  # an unknown device fails before the model is built
    if args.stitch_device != "auto":
        try:
            resolve_device(args.stitch_device)
        except Rep3DValueError as err:
            raise Rep3DValueError(f"--stitch-device: {err} (or auto)") from None
    if args.roi_size is not None and any(r < 1 for r in args.roi_size):
        raise Rep3DValueError(f"--roi-size must be three positive sizes, got {args.roi_size}")
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
            tta=args.tta, progress=not args.quiet, nonfinite=args.nonfinite,
            allow_out_of_distribution=args.allow_out_of_distribution,
        )
        outdir.mkdir(parents=True, exist_ok=True)
        done, failed = segment_files(predictor, jobs, args.quiet, args.overwrite)
        errors += failed
    summary = f"rep3d predict: segmented {done} volume(s) into {outdir}"
    if errors:
        summary += f"; {len(errors)} failed: " + ", ".join(Path(name).name for name, _ in errors)
    print(summary, file=sys.stderr)
    return 1 if errors else 0
