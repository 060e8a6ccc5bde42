"""The demo: segment a freshly generated SYNTHETIC phantom with the bundled ``rep3d_tiny.phantom`` weights.

No data and no network: the phantom is generated, the weights ship with the package. :func:`run_demo` scores
per-class Dice against the phantom's ground truth and writes the image, truth, prediction (NIfTI) and an overlay
PNG; ``rep3d demo`` prints its result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rep3d.builder import create_model
from rep3d.configs.pretrained import PretrainedCfg
from rep3d.data import make_phantom, save_nifti, save_overlay_png
from rep3d.data.phantom import case_seed
from rep3d.errors import Rep3DValueError
from rep3d.inference import Predictor
from rep3d.metrics import dice_per_class, mean_dice
from rep3d.outputs import check_folder_output, write_output
from rep3d.presets import PAPER_CT, PHANTOM_CLASSES

DEMO_MODEL = "rep3d_tiny.phantom"
DEMO_FILES = ("phantom_image.nii.gz", "phantom_label.nii.gz", "prediction.nii.gz", "demo.png")


@dataclass
class DemoResult:
    """What :func:`run_demo` measured: ``dice`` per class (classes ``class_names[1:]``) and their mean."""

    model: str
    params: int
    shape: tuple[int, ...]
    class_names: list[str]
    dice: list[float]
    mean: float
    seconds: float
    out: Path


def run_demo(out: str | Path, *, seed: int = 2026, model_name: str = DEMO_MODEL, device: str | None = None,
             on_model=None) -> DemoResult:
    """Generate the phantom of ``seed`` (never seen in training), segment it with ``model_name``'s pretrained
    weights, write :data:`DEMO_FILES` into ``out`` and return the Dice. ``on_model(model, phantom)`` is called
    once the model is built (the command prints a header there)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise Rep3DValueError(f"-o {out} is an existing file; the demo writes {len(DEMO_FILES)} files into a folder: "
                              "give a folder path")
    # a rerun replaces the demo's own earlier files; a folder of other files is refused before any work
    check_folder_output(out, overwrite=True, names=DEMO_FILES)
    t0 = time.perf_counter()
    model = create_model(model_name, pretrained=True)
    if model.num_classes != len(PHANTOM_CLASSES):
        raise Rep3DValueError(f"{model_name} predicts {model.num_classes} classes; the demo scores the phantom's "
                              f"{len(PHANTOM_CLASSES)} ({', '.join(PHANTOM_CLASSES[1:])}): use --model {DEMO_MODEL}")
    out.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(case_seed(seed, "demo", 0))
    cfg = PretrainedCfg.of(model)
    names = list(cfg.class_names or [f"class_{i}" for i in range(model.num_classes)])
    if on_model is not None:
        on_model(model, phantom)
    prediction = Predictor(model, device=device)(phantom.image[None], affine=phantom.affine)
    seconds = time.perf_counter() - t0
    dice = dice_per_class(torch.from_numpy(prediction.label.astype(np.int64)),
                          torch.from_numpy(phantom.label.astype(np.int64)), len(names))
    command = "rep3d demo"
    write_output(out / DEMO_FILES[0], lambda tmp: save_nifti(tmp, phantom.image, phantom.affine), overwrite=True,
                 command=command)
    write_output(out / DEMO_FILES[1], lambda tmp: save_nifti(tmp, phantom.label, phantom.affine), overwrite=True,
                 command=command)
    prediction.save(out / DEMO_FILES[2], overwrite=True, command=command)
    window = tuple(cfg.intensity_window or PAPER_CT.intensity_window)
    write_output(out / DEMO_FILES[3], lambda tmp: save_overlay_png(
        tmp, phantom.image, phantom.label, prediction.label, window, spacing=np.abs(np.diag(phantom.affine)[:3]),
        class_names=names, title=f"SYNTHETIC phantom - {model_name} - mean Dice {mean_dice(dice):.3f}"),
        overwrite=True, command=command)
    return DemoResult(model_name, sum(p.numel() for p in model.parameters()), tuple(phantom.image.shape), names, dice,
                      mean_dice(dice), seconds, out)
