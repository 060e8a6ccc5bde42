"""A whole CT scan, as a hospital would run it: ``rep3d predict`` end to end vs MONAI's usual pipeline.

    python benchmarks/full_scan.py --models rep3d_tiny.phantom rep3d_base --threads 2

A tagged name (``rep3d_tiny.phantom``) runs its published weights; a bare architecture (``rep3d_base``) runs a
seeded random initialisation, the same file in both pipelines (``--checkpoint``): those rows measure time and memory,
not accuracy.

Writes once (``--workdir``, cached) a SYNTHETIC CT of ``--shape`` (default 512 x 512 x 300) voxels at ``--spacing``
(default 0.8 x 0.8 x 2.5 mm), int16 HU, with rep3d's phantom anatomy scaled to fill the field of view. Then, each in
a fresh process (so that peak RSS is that pipeline's alone), for every model:

* ``rep3d``: the real ``rep3d predict`` command (``rep3d.cli.main``), in-process, with timers wrapped around its
  phases: ``setup`` (build the model, and the channels-last copy), ``read`` (load the NIfTI), ``resample``
  (orientation, spacing and window onto the model grid, and the probabilities back onto the scan's grid),
  ``infer`` (the model's forward passes, softmax included), ``stitch`` (the rest of the sliding window: window
  extraction, Gaussian blending, accumulation), ``write`` (the label NIfTI);
* ``monai``: what a MONAI user writes: ``LoadImage``, ``Orientation``/``Spacing``/``ScaleIntensityRange`` (the same
  grid and window), ``sliding_window_inference`` with the same model, ROI, overlap and Gaussian blending on the
  whole grid (no foreground crop), argmax on the model grid, the label resampled back (nearest), ``SaveImage``-like
  NIfTI write. The model runs as built (fp32, channels-first), which is MONAI's default.

Differences that are part of the comparison (what each pipeline does by default): rep3d crops to the body's
foreground box, runs the channels-last copy of the model and resamples probabilities (bilinear) back, MONAI
segments the whole grid and resamples the label (nearest). Peak RSS is the worker process's ``VmHWM``
(Python, torch and the model included; the ``baseline`` column is the RSS before the scan is read).
Results: ``benchmarks/results/full_scan.json`` (``--out``). The machine may be shared: compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

PHASES = ("setup", "read", "resample", "infer", "stitch", "write")


def rss_mib() -> float:
    """This process's peak resident memory so far, in MiB. Linux's ``VmHWM`` belongs to the process's own address
    space; ``ru_maxrss`` survives ``fork`` + ``exec`` on Linux, so a worker started by a parent that once held the
    whole scan in memory would report the parent's peak (it did: 4583 MiB before the worker had read anything)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; macOS: bytes (rough)


def write_scan(path: Path, shape: tuple[int, ...], spacing: tuple[float, ...], seed: int) -> None:
    import nibabel as nib

    from rep3d.data.phantom import case_seed, make_phantom

    phantom = make_phantom(case_seed(seed, "test", 0), shape, spacing)
    hu = np.clip(np.rint(phantom.image), -1024, 3071).astype(np.int16)  # as scanners store CT
    image = nib.Nifti1Image(hu, phantom.affine)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    nib.save(nib.Nifti1Image(phantom.label, phantom.affine), path.with_name("label.nii.gz"))


class Timers:
    """Seconds per phase, accumulated by wrapping functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start
        return timed

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - start


def run_rep3d(scan: Path, model: str, out: Path, args) -> dict:
    """``rep3d predict`` itself, with timers around its phases."""
    import rep3d.inference.predictor as predictor_module
    from rep3d.cli import main
    from rep3d.inference.io import Prediction
    from rep3d.inference.predictor import Predictor

    timers = Timers()
    predictor_module.load_volume = timers.wrap("read", predictor_module.load_volume)
    predictor_module.to_model_space = timers.wrap("resample", predictor_module.to_model_space)
    predictor_module.to_input_grid = timers.wrap("resample", predictor_module.to_input_grid)
    import rep3d.cli.predict as predict_command

    predict_command.create_model = timers.wrap("setup", predict_command.create_model)
    Predictor._current_runner = timers.wrap("prepare", Predictor._current_runner)  # the channels-last copy
    Predictor.infer_cropped = timers.wrap("sliding_window", Predictor.infer_cropped)
    Predictor._forward = timers.wrap("infer", Predictor._forward)
    windows = []
    forward = Predictor._forward
    Predictor._forward = lambda self, window: windows.append(window.shape[0]) or forward(self, window)
    Prediction.save = timers.wrap("write", Prediction.save)
    argv = ["predict", model, str(scan), "-o", str(out), "--overwrite", "--quiet", "--device", "cpu",
            "--overlap", str(args.overlap), "--precision", args.precision]
    if args.checkpoint:
        argv += ["--checkpoint", str(args.checkpoint)]
    baseline = rss_mib()
    start = time.perf_counter()
    code = main(argv)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"rep3d predict failed with exit code {code}")
    seconds = dict(timers.seconds)
    prepare = seconds.pop("prepare", 0.0)
    seconds["stitch"] = seconds.pop("sliding_window") - seconds["infer"] - prepare
    seconds["setup"] += prepare
    return {"wall_s": wall, "phases_s": seconds, "windows": sum(windows), "baseline_rss_mib": baseline,
            "peak_rss_mib": rss_mib(), "label": str(out / (scan.name.split(".")[0] + "_seg.nii.gz")),
            "command": "rep3d " + " ".join(argv)}


def run_monai(scan: Path, model_name: str, out: Path, args) -> dict:
    """MONAI's standard pipeline around the same model, ROI, overlap and blending."""
    import monai.transforms as T
    import nibabel as nib
    import torch
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference

    import rep3d

    timers = Timers()
    baseline = rss_mib()
    start = time.perf_counter()
    with timers.phase("setup"):
        model = rep3d.create_model(model_name, pretrained=args.checkpoint is None,
                                   checkpoint_path=args.checkpoint).eval()
    cfg = model.pretrained_cfg
    roi = tuple(cfg.get("roi_size") or (96, 96, 96))
    lo, hi = cfg.get("intensity_window") or (-125.0, 275.0)
    windows = []
    with timers.phase("read"):
        image = T.LoadImage(image_only=True, ensure_channel_first=True)(str(scan))
    with timers.phase("resample"):
        prep = T.Compose([T.Orientation(axcodes="RAS"), T.Spacing(pixdim=cfg.get("spacing") or (1.5, 1.5, 2.0),
                                                                    mode="bilinear"),
                          T.ScaleIntensityRange(lo, hi, 0.0, 1.0, clip=True)])
        x = prep(image.float())

    def forward(window):
        windows.append(window.shape[0])
        with timers.phase("infer"):
            return torch.softmax(model(window), dim=1)

    with timers.phase("sliding_window"), torch.no_grad():
        probs = sliding_window_inference(x[None].as_tensor(), roi, 1, forward, overlap=args.overlap,
                                         mode="gaussian", padding_mode="constant", cval=0.0)
    with timers.phase("resample"):
        label = probs[0].argmax(0, keepdim=True).to(torch.uint8)
        label = MetaTensor(label, affine=x.affine)
        back = T.Compose([T.Spacing(pixdim=image.pixdim[:3].tolist(), mode="nearest"),
                          T.Orientation(axcodes=nib.aff2axcodes(image.affine.numpy()))])(label)
        back = T.ResizeWithPadOrCrop(tuple(image.shape[1:]))(back)
    with timers.phase("write"):
        path = out / (scan.name.split(".")[0] + "_seg.nii.gz")
        out.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(back[0].numpy().astype(np.uint8), image.affine.numpy()), path)
    wall = time.perf_counter() - start
    seconds = dict(timers.seconds)
    seconds["stitch"] = seconds.pop("sliding_window") - seconds["infer"]
    return {"wall_s": wall, "phases_s": seconds, "windows": sum(windows), "baseline_rss_mib": baseline,
            "peak_rss_mib": rss_mib(), "label": str(path), "command": "MONAI pipeline in benchmarks/full_scan.py"}


def dice_vs_truth(label_path: str, truth_path: Path) -> float:
    import nibabel as nib
    import torch

    from rep3d.metrics import dice_per_class, mean_dice
    from rep3d.presets import PHANTOM_CLASSES

    pred = torch.from_numpy(np.asarray(nib.load(label_path).dataobj).astype(np.int64))
    truth = torch.from_numpy(np.asarray(nib.load(str(truth_path)).dataobj).astype(np.int64))
    return mean_dice(dice_per_class(pred, truth, len(PHANTOM_CLASSES)))


def _rep3d_allocator() -> str:
    """The allocator the ``rep3d`` executable sets for ``predict`` (:func:`rep3d.cli.keeps_freed_memory`)."""
    from rep3d.cli import keeps_freed_memory

    return "keep" if keeps_freed_memory(["predict"], os.environ) else "default"


def random_weights(model_name: str, workdir: Path, seed: int) -> Path:
    """A seeded random initialisation of ``model_name`` (a bare architecture: no weights are published for it),
    written once as safetensors, so that both pipelines run the same weights through ``--checkpoint``. Its
    segmentation means nothing; the rows measure time and memory only."""
    import torch
    from safetensors.torch import save_file

    import rep3d

    path = workdir / f"{model_name}_random_seed{seed}.safetensors"
    if not path.exists():
        torch.manual_seed(seed)
        model = rep3d.create_model(model_name)
        workdir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def worker(args) -> int:
    from rep3d.allocator import keep_freed_memory

    allocator = _rep3d_allocator() if args.worker == "rep3d" else args.monai_allocator
    if allocator == "keep" and not keep_freed_memory():
        allocator = "default"  # not glibc: nothing to set
    import torch

    torch.set_num_threads(args.threads)
    scan = args.workdir / "scan.nii.gz"
    out = args.workdir / f"out_{args.worker}_{args.model}"
    result = (run_rep3d if args.worker == "rep3d" else run_monai)(scan, args.model, out, args)
    result["allocator"] = allocator
    if args.model.endswith(".phantom"):
        result["dice_vs_phantom_truth"] = dice_vs_truth(result["label"], scan.with_name("label.nii.gz"))
    print("RESULT " + json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["rep3d_tiny.phantom"])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 2.5))
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipelines", nargs="+", default=["rep3d", "monai"], choices=("rep3d", "monai"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rep3d_full_scan"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "full_scan.json")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --out for other (model, pipeline, precision) combinations")
    parser.add_argument("--monai-allocator", default="default", choices=("default", "keep"),
                        help="the MONAI pipeline's allocator: glibc's default (what a MONAI user gets) or "
                             "rep3d.keep_freed_memory(); the rep3d pipeline does what the rep3d executable does")
    parser.add_argument("--worker", choices=("rep3d", "monai"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    import torch

    scan = args.workdir / "scan.nii.gz"
    meta_file = args.workdir / "scan.json"
    wanted = {"shape": list(args.shape), "spacing": list(args.spacing), "seed": args.seed}
    if not scan.exists() or not meta_file.exists() or json.loads(meta_file.read_text()) != wanted:
        print(f"writing the SYNTHETIC scan {tuple(args.shape)} at {tuple(args.spacing)} mm to {scan} ...")
        write_scan(scan, tuple(args.shape), tuple(args.spacing), args.seed)
        meta_file.write_text(json.dumps(wanted))
    from performance_doc import machine_of

    rows = []
    if args.append and args.out.exists():
        previous = json.loads(args.out.read_text())
        if previous["meta"]["scan"]["shape"] != list(args.shape):
            raise SystemExit(f"--append: {args.out} holds a {previous['meta']['scan']['shape']} scan, not "
                             f"{list(args.shape)}")
        allocator = {"rep3d": _rep3d_allocator(), "monai": args.monai_allocator}
        redo = {(m, p, args.precision, allocator[p]) for m in args.models for p in args.pipelines}
        # rows kept from an earlier run keep the machine that ran them (meta describes only this run)
        rows = [{**r, "machine": r.get("machine") or machine_of(previous["meta"])} for r in previous["rows"]
                if (r["model"], r["pipeline"], r.get("precision", "fp32"), r.get("allocator", "default")) not in redo]
    from model_forward import cpu_flags, cpu_model

    meta = {"torch": torch.__version__, "threads": args.threads, "cpu": cpu_model(), "cpu_flags": cpu_flags(),
            "scan": {"shape": list(args.shape), "spacing_mm": list(args.spacing), "dtype": "int16 HU",
                     "synthetic": True}, "overlap": args.overlap, "blend": "gaussian", "sw_batch_size": 1,
            "device": "cpu", "note": "SYNTHETIC phantom scan; 2-core machine shared with other processes"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        tagged = "." in model  # a tag (rep3d_tiny.phantom) names published weights; a bare architecture has none
        checkpoint = None if tagged else random_weights(model, args.workdir, args.seed)
        for pipeline in args.pipelines:
            cmd = [sys.executable, __file__, "--worker", pipeline, "--model", model, "--workdir", str(args.workdir),
                   "--threads", str(args.threads), "--overlap", str(args.overlap), "--precision", args.precision,
                   "--monai-allocator", args.monai_allocator]
            cmd += ["--checkpoint", str(checkpoint)] if checkpoint else []
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{pipeline} worker for {model} failed")
            row = {"model": model, "pipeline": pipeline, "precision": args.precision,
                   "weights": "pretrained" if tagged else f"random (seed {args.seed})",
                   **json.loads(line[len("RESULT "):]), "machine": machine_of(meta)}
            rows.append(row)
            # after every row: a run stopped part-way (a whole scan takes an hour for rep3d_base) keeps its rows,
            # and --append can then add the missing ones
            args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
            phases = "  ".join(f"{p} {row['phases_s'].get(p, 0.0):7.1f}" for p in PHASES)
            dice = f"  Dice {row['dice_vs_phantom_truth']:.3f}" if "dice_vs_phantom_truth" in row else ""
            print(f"{model:<22} {pipeline:<6} {row['windows']:4d} windows  wall {row['wall_s']:7.1f} s  {phases}  "
                  "peak RSS "
                  f"{row['peak_rss_mib']:6.0f} MiB (baseline {row['baseline_rss_mib']:.0f}){dice}", flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
