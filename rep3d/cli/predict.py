"""``rep3d predict``: segment NIfTI / MGZ volumes with a model; one bad file never stops the others.

Each input ``x`` gets ``x_seg.nii.gz`` (the label map on the input's grid) and ``x_seg.json`` (its sidecar: source,
class names, notices such as synthetic training data, and where the time went)."""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from rep3d.errors import Rep3DValueError
from rep3d.outputs import OutputRefused, check_file_output

if TYPE_CHECKING:
    from rep3d.inference import InferenceCfg, Predictor

COMMAND = "rep3d predict"
# repeated from rep3d.inference.predictor so that --help loads no torch (tests/test_cli_help.py keeps them equal)
PRECISIONS = ("fp32", "bf16")
EXAMPLE = "rep3d predict rep3d_tiny.phantom scans/ -o segmentations/ --preview"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # positionals in this order: MODEL INPUT...
    model = parser.add_argument_group("model")
    model.add_argument("model", metavar="MODEL",
                       help="registered name (rep3d_tiny.phantom), local-dir:RUN_FOLDER or hf-hub:ORG/NAME")
    model.add_argument("--checkpoint", metavar="FILE",
                       help="load these weights instead of the pretrained ones (default: the pretrained ones)")
    data = parser.add_argument_group("data")
    data.add_argument("inputs", nargs="+", metavar="INPUT", help="volumes (.nii / .nii.gz / .mgz) or folders of them")
    data.add_argument(
        "--nonfinite", type=_nonfinite_arg, default="error", metavar="error|replace:VALUE",
        help="NaN / infinite input voxels: error (default: refuse the volume) or replace:VALUE (e.g. replace:-1024, "
             "with a warning)",
    )
    data.add_argument("--allow-out-of-distribution", action="store_true",
                      help="segment scans far outside the model's training input (all air, another modality or "
                           "unit, a much coarser spacing) with a warning recorded in <name>_seg.json, instead of "
                           "refusing them (default: refuse)")
    inference = parser.add_argument_group("inference")
    inference.add_argument("--device", default="auto",
                           help="cpu, cuda, cuda:N or auto (default: auto, cuda if available)")
    inference.add_argument(
        "--stitch-device", default="auto",
        help="where windows are stitched: auto (default: the device unless the volume is too large for it), cpu, cuda",
    )
    inference.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1)")
    inference.add_argument("--sw-batch-size", type=int, default=1, help="windows per forward pass")
    inference.add_argument("--roi-size", type=int, nargs=3, metavar=("D", "H", "W"),
                           help="sliding-window size (default: the model config's roi_size)")
    inference.add_argument("--tta", action="store_true",
                           help="average over the flips the model was trained with (up to 8x slower); refused for a "
                                "model trained without flips or whose config does not say (default: off)")
    inference.add_argument("--amp", action="store_true",
                           help="mixed precision: float16 on CUDA, bfloat16 on CPU (default: off, float32)")
    inference.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="fp32 (default) or bf16: bfloat16 autocast on any device, faster on CPUs with AVX-512 BF16 / AMX "
             "(FFT transforms and the softmax stay float32); refused on a CPU without bfloat16 kernels (AVX2 only), "
             "where it would run ~100x slower; not with --amp",
    )
    output = parser.add_argument_group("output")
    output.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                        help="folder for <name>_seg.nii.gz and its sidecar <name>_seg.json")
    output.add_argument("--probabilities", action="store_true",
                        help="also write <name>_prob.nii.gz: float32 softmax, classes last (default: off)")
    output.add_argument("--preview", action="store_true",
                        help="also write <name>_preview.png: three orthogonal mid-slices with the label overlay "
                             "(default: off)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace earlier outputs of rep3d predict, never inputs or other files (default: off)")
    output.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")


def create_model(*args, **kwargs):
    """:func:`rep3d.create_model`, imported on first call so that ``rep3d predict --help`` loads no torch."""
    from rep3d.builder import create_model as build

    return build(*args, **kwargs)


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
    """``(jobs [(input, seg, prob or None, sidecar)], errors [(input, problem)])``.

    Refuses clashing names, any output that is also an input (``x_seg.nii.gz`` given as an input, and the output of
    ``x`` in the same folder), and existing outputs unless ``overwrite``; even then only files an earlier
    ``rep3d predict`` wrote are replaced, never anything else (:mod:`rep3d.outputs`).
    """
    from rep3d.inference import output_stem
    from rep3d.inference.io import is_prediction

    jobs, errors, claimed = [], [], {}
    inputs = {p.resolve() for p in files}
    for path in files:
        stem = output_stem(path)
        seg = outdir / f"{stem}_seg.nii.gz"
        prob = outdir / f"{stem}_prob.nii.gz" if probabilities else None
        report = sidecar_path(seg)
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


def sidecar_path(seg: Path) -> Path:
    """``x_seg.nii.gz`` -> ``x_seg.json``: the JSON written next to each label map."""
    from rep3d.inference import output_stem

    return seg.with_name(output_stem(seg) + ".json")


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


def write_preview(path: Path, image_path: Path, seg_path: Path, window, class_names, title: str) -> Path:
    """A PNG of the three orthogonal mid-slices of ``image_path`` (RAS+), plain and with the label map ``seg_path``
    overlaid (:func:`rep3d.data.save_overlay_png`)."""
    import nibabel as nib
    import numpy as np

    from rep3d.data.figures import save_overlay_png

    image = nib.as_closest_canonical(nib.load(str(image_path)))
    label = nib.as_closest_canonical(nib.load(str(seg_path)))
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 4:  # channels last in NIfTI: show the first
        data = data[..., 0]
    labels = np.asarray(label.dataobj).astype(np.int64)
    if window is None:  # no intensity window in the model config: the 1st..99th percentile
        window = tuple(float(v) for v in np.percentile(data, (1, 99)))
    return save_overlay_png(path, data, prediction=labels, window=window, spacing=image.header.get_zooms()[:3],
                            centre=tuple(n // 2 for n in data.shape), class_names=class_names, title=title)


def segment_files(predictor: Predictor, jobs, quiet: bool, preview: bool = False, overwrite: bool = False,
                  model_name: str | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Run ``predictor`` on every job, writing its outputs and sidecar (and, with ``preview``,
    ``<name>_preview.png`` next to the label map); returns ``(done, errors)``."""
    import torch

    from rep3d.inference import InputError, InputWarning, SyntheticWeightsWarning
    from rep3d.outputs import write_output

    done, errors = 0, []
    for path, seg, prob, report in tqdm(jobs, desc="volumes", unit="vol", disable=quiet):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", InputWarning)
                warnings.simplefilter("ignore", SyntheticWeightsWarning)  # printed once by run(); in each sidecar
                pred = predictor(path, probabilities=prob is not None)
            for warning in caught:
                if issubclass(warning.category, InputWarning):
                    tqdm.write(f"rep3d predict: warning: {warning.message}", file=sys.stderr)
                    pred.report.setdefault("warnings", []).append(str(warning.message))
                else:
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            start = time.perf_counter()
            pred.save(seg, overwrite=overwrite, command=COMMAND)
            if prob is not None:
                pred.save_probabilities(prob, overwrite=overwrite, command=COMMAND)
            pred.profile.setdefault("timings_s", {})["write"] = time.perf_counter() - start
            pred.save_sidecar(report, overwrite=overwrite, command=COMMAND, model=model_name)
            if preview:
                png = seg.with_name(seg.name.replace("_seg.nii.gz", "_preview.png"))
                try:
                    if png.exists() and not overwrite:
                        raise OutputRefused(f"{png} exists, not replaced; pass --overwrite to replace it")
                    draw = functools.partial(write_preview, image_path=path, seg_path=seg,
                                             window=predictor.intensity_window, class_names=pred.class_names,
                                             title=f"{path.name}, prediction")
                    write_output(png, draw, overwrite=overwrite, command=COMMAND)
                    if not quiet:
                        tqdm.write(f"preview: {png}")
                except OutputRefused as err:  # the segmentation stands; only its picture is not (re)drawn
                    tqdm.write(f"rep3d predict: warning: {err}", file=sys.stderr)
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


def inference_config(args: argparse.Namespace) -> InferenceCfg:
    """The sliding-window options of ``rep3d predict`` (ROI, overlap, devices, precision, TTA) as an
    :class:`~rep3d.inference.InferenceCfg`; what is not given comes from the model's config."""
    from rep3d.inference import AUTO, InferenceCfg

    return InferenceCfg(roi_size=tuple(args.roi_size) if args.roi_size else AUTO, overlap=args.overlap,
                        sw_batch_size=args.sw_batch_size, device=args.device, stitch_device=args.stitch_device,
                        amp=args.amp, precision=args.precision, tta=args.tta, progress=not args.quiet)


def run(args: argparse.Namespace) -> int:
    from rep3d.inference import InputPolicy, Predictor, find_volumes
    from rep3d.inference.predictor import resolve_device

    outdir = Path(args.output)
    check_output_folder(outdir)
    resolve_device(args.device)  # an unknown device fails before the model is built
    if args.amp and args.precision != "fp32":
        raise Rep3DValueError(f"--amp and --precision {args.precision} both choose the autocast dtype; pass one")
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
        predictor = Predictor(model, inference_config(args), InputPolicy(
            nonfinite=args.nonfinite, allow_out_of_distribution=args.allow_out_of_distribution))
        if predictor.notice:
            print(f"rep3d predict: notice: {predictor.notice}", file=sys.stderr)
        outdir.mkdir(parents=True, exist_ok=True)
        done, failed = segment_files(predictor, jobs, args.quiet, preview=args.preview, overwrite=args.overwrite,
                                     model_name=args.model)
        errors += failed
    summary = f"rep3d predict: segmented {done} volume(s) into {outdir}"
    if errors:
        summary += f"; {len(errors)} failed: " + ", ".join(Path(name).name for name, _ in errors)
    print(summary, file=sys.stderr)
    return 1 if errors else 0
