"""A synthetic task that only context solves: which of two identical blobs is which depends on a marker far away.

Every volume holds two blobs of identical intensity and noise texture (labels 1 and 2) and, for each blob, one small
cubic marker (label 0, background) at a distance of ``--marker-distance`` voxels from the blob's centre. A marker is
either bright or dark; a blob's label is the type of *its* marker: 1 next to a bright marker, 2 next to a dark one
(drawn independently per blob, so both blobs may carry the same label). The other blob's marker is always at least
``GAP`` voxels farther away than a blob's own, so "the nearest marker" is unambiguous. Locally the two classes look
the same: a model whose receptive field does not reach the marker can find the blobs but can only guess their
labels. The rule depends on distances only, so the recipe's rotations and
scalings keep every label right.

The study (``run``) trains every variant through ``rep3d.train`` (the code behind ``rep3d train``) on the same data
and budget, in three stages, queued in this order:

1. ``check``: the small-kernel baseline (3³) and the plain 21³ kernel at one learning rate, seed 0 (or every
   ``--check-seeds``) -- does the task discriminate (the 3³ model must fail where the 21³ model learns)?
2. ``sweep``: each variant at every ``--lrs`` value, seed 0; a variant's learning rate is the one with the best
   validation Dice (the validation split of the training cases, never the test cases). When the best is at an end
   of the range, the sweep goes on past that end by half-decade steps (at most :data:`EXTEND` per end).
3. ``seeds``: every variant at its chosen learning rate for ``--seeds`` (seed 0 is the sweep's run).

Stages 2 and 3 go variant by variant (:data:`PRIORITY`: ``vanilla`` and the paper's ``lrbm_additive`` first), so a
study cut short holds complete comparisons rather than seven sweeps without seeds.

One ``result.json`` per (variant, lr, seed) under ``OUT/VARIANT/lrLR/seedS``; a finished run is skipped, and a run
claimed by another live invocation is left to it, so the study can be built up over several sessions by repeating
the same command, and two invocations can share a machine. ``report`` aggregates what exists, marking incomplete
variants as such.

    python benchmarks/context_task.py make --data /work/data/context
    nice -n 15 python benchmarks/context_task.py run --data /work/data/context --out /work/runs/context --threads 1
    python benchmarks/context_task.py report --out /work/runs/context --json benchmarks/results/context_task.json

Synthetic data only; float32; CPU unless a GPU is visible.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_phantom import _claim, _curves, claim_path  # noqa: E402  (same claim protocol and metrics.csv reader)

from rep3d.data.nifti import save_nifti  # noqa: E402
from rep3d.layers.mask import mask_health  # noqa: E402
from rep3d.train import build_config  # noqa: E402
from rep3d.train.trainer import NonFiniteLossError, train  # noqa: E402

CLASSES = ("background", "blob_near_bright_marker", "blob_near_dark_marker")
HU = {"background": 0.0, "blob": 120.0, "bright": 260.0, "dark": -110.0}
NOISE_HU = 25.0
WINDOW = (-125.0, 275.0)
BLOB_RADIUS = 4.5
MARKER_HALF = 2  # markers are (2 * MARKER_HALF + 1)³ cubes
GAP = 8.0
"""The other blob's marker is at least this many voxels farther from a blob than its own marker."""

WIDTHS = dict(widths=(8, 16, 32, 64), depths=(1, 1, 1, 1), hidden_size=32)
"""Every variant at the same small widths (~0.8-1.9M parameters), sized for a 2-core CPU."""
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (registered model, extra constructor arguments)
    "lrbm_additive": ("rep3d_tiny", dict(WIDTHS)),  # the paper's mask, M = P + f(P) (rep3d_tiny's default)
    "lrbm_softmax": ("rep3d_tiny", dict(WIDTHS, mask_form="softmax")),
    "fixed": ("rep3d_tiny_fixed", dict(WIDTHS)),
    "vanilla": ("rep3d_tiny_vanilla", dict(WIDTHS)),
    "csla": ("rep3d_tiny_csla", dict(WIDTHS)),
    "uxnet_k7": ("uxnet3d_base", dict(WIDTHS)),  # 3D UX-Net's k = 7 blocks at the same widths and depths
    "small_k3": ("rep3d_tiny_vanilla", dict(WIDTHS, kernel_size=3)),  # the same network with 3³ kernels
}
CHECK = (("small_k3", 3e-3), ("vanilla", 3e-3))


# ------------------------------------------------------------------------------------------------------ data


def _inside(p: np.ndarray, size: int, margin: float) -> bool:
    return bool(np.all(p >= margin) and np.all(p <= size - 1 - margin))


def layout(rng: np.random.Generator, size: int, distance: tuple[float, float], gap: float = GAP
           ) -> tuple[np.ndarray, np.ndarray]:
    """Blob centres ``[2, 3]`` and their markers' centres ``[2, 3]`` (voxels) for one volume, by rejection sampling:
    each marker at ``distance`` from its blob, the other blob's marker at least ``gap`` farther, nothing
    overlapping, everything inside the volume."""
    for _ in range(200_000):  # about 1 % of the draws fit (48³, 20-28 voxels, gap 8)
        blobs = rng.uniform(BLOB_RADIUS + 1, size - 2 - BLOB_RADIUS, size=(2, 3))
        if np.linalg.norm(blobs[0] - blobs[1]) < 2 * BLOB_RADIUS + 6:
            continue
        markers = []
        for b in blobs:
            v = rng.normal(size=3)
            markers.append(b + v / np.linalg.norm(v) * rng.uniform(*distance))
        markers = np.array(markers)
        if not all(_inside(m, size, MARKER_HALF + 1) for m in markers):
            continue
        own = [np.linalg.norm(blobs[i] - markers[i]) for i in range(2)]
        cross = [np.linalg.norm(blobs[i] - markers[1 - i]) for i in range(2)]
        if min(cross[i] - own[i] for i in range(2)) < gap:
            continue
        if min(np.linalg.norm(m - b) for m in markers for b in blobs) < BLOB_RADIUS + MARKER_HALF + 3:
            continue
        return blobs, markers
    raise RuntimeError(f"could not place the blobs and markers in a {size}³ volume")  # pragma: no cover


def make_case(rng: np.random.Generator, size: int, distance: tuple[float, float], gap: float = GAP
              ) -> tuple[np.ndarray, np.ndarray]:
    """One ``[size]*3`` volume (HU, float32) and its label (uint8) of the context task."""
    blobs, markers = layout(rng, size, distance, gap)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1).astype(np.float32)
    image = np.full((size,) * 3, HU["background"], np.float32)
    label = np.zeros((size,) * 3, np.uint8)
    bright = rng.random(2) < 0.5
    for i in range(2):
        inside = np.linalg.norm(grid - blobs[i], axis=-1) <= BLOB_RADIUS
        image[inside] = HU["blob"]
        label[inside] = 1 if bright[i] else 2
        lo = np.rint(markers[i]).astype(int) - MARKER_HALF
        hi = lo + 2 * MARKER_HALF + 1
        image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = HU["bright" if bright[i] else "dark"]
    image += rng.normal(0.0, NOISE_HU, image.shape).astype(np.float32)  # the same texture everywhere
    return image, label


def make_dataset(root: Path, *, num_train: int, num_test: int, size: int, distance: tuple[float, float],
                 seed: int, gap: float = GAP) -> Path:
    """Write the task in MSD layout (labelled test cases under ``labelsTs``); an existing dataset is kept."""
    if (root / "dataset.json").exists():
        return root
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    affine = np.eye(4)
    training, test = [], []
    for i in range(num_train + num_test):
        rng = np.random.default_rng([seed, i])
        image, label = make_case(rng, size, distance, gap)
        split = ("Tr", training) if i < num_train else ("Ts", test)
        name = f"context_{i:03d}.nii.gz"
        save_nifti(root / f"images{split[0]}" / name, np.rint(image).astype(np.int16), affine)
        save_nifti(root / f"labels{split[0]}" / name, label, affine)
        split[1].append({"image": f"./images{split[0]}/{name}", "label": f"./labels{split[0]}/{name}"})
    meta = {
        "name": "rep3d-context-task", "description": "SYNTHETIC context task (benchmarks/context_task.py): two "
        "identical blobs labelled by the type of a marker far away; no patient data", "licence": "CC0-1.0",
        "tensorImageSize": "3D", "modality": {"0": "CT"}, "labels": {str(i): c for i, c in enumerate(CLASSES)},
        "numTraining": num_train, "numTest": num_test, "training": training,
        "test": [t["image"] for t in test], "test_labeled": test, "synthetic": True,
        "context_task": {"size": size, "marker_distance": list(distance), "gap": gap, "seed": seed, "hu": HU,
                         "noise_hu": NOISE_HU, "blob_radius": BLOB_RADIUS, "marker_size": 2 * MARKER_HALF + 1},
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    return root


# ------------------------------------------------------------------------------------------------------ runs


def run_dir(out: Path, variant: str, lr: float, seed: int) -> Path:
    return out / variant / f"lr{lr:g}" / f"seed{seed}"


def run_one(variant: str, lr: float, seed: int, stage: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one (variant, lr, seed) and measure it; returns what goes into its ``result.json``."""
    model_name, model_args = VARIANTS[variant]
    out = run_dir(Path(args.out), variant, lr, seed)
    size = json.loads((Path(args.data) / "dataset.json").read_text())["context_task"]["size"]
    cfg = build_config(
        "phantom", data=args.data, model=model_name, out=str(out), model_args=model_args, lr=lr,
        iterations=args.iterations, val_every=args.val_every, checkpoint_every=args.iterations, seed=seed,
        roi_size=(size,) * 3, spacing=(1.0, 1.0, 1.0), intensity_window=WINDOW, num_val=args.num_val,
        threads=args.threads, device=args.device, warmup_steps=args.warmup,
    )
    start = time.perf_counter()
    diverged = None
    # a run stopped part-way (SIGTERM at the end of a session checkpoints it) continues from its last checkpoint;
    # rep3d.train resumes bit for bit on CPU
    resume = (out / "train_state" / "last.pt").exists()
    try:
        summary = train(cfg, resume=resume, command=f"benchmarks/context_task.py {variant} lr {lr:g} seed {seed}")
    except NonFiniteLossError as err:
        summary, diverged = {}, str(err)
    wall = time.perf_counter() - start
    result: dict[str, Any] = {"variant": variant, "lr": lr, "seed": seed, "stage": stage, "model": model_name,
                              "model_args": model_args, "wall_time_s": wall, "diverged": diverged,
                              "config": cfg.to_dict()}
    curves = _curves(out / "train_state" / "metrics.csv")
    for key in ("loss", "val_mean_dice", "mask_trace"):  # a resumed run may have logged some steps twice: keep the last
        if key in curves:
            curves[key] = [[step, *rest] for step, *rest in {row[0]: row for row in curves[key]}.values()]
    result.update(curves)
    result["seconds_per_step"] = _median_step_seconds(out / "train_state" / "metrics.csv")
    (out / "train_state" / "last.pt").unlink(missing_ok=True)  # 20+ MB of optimizer state per run; not needed
    if diverged:
        return result
    result.update(test_dice=summary["test_dice"], test_mean_dice=summary["test_mean_dice"],
                  best_val=summary["best"], train_wall_time_s=summary["wall_time_s"], resumed=resume)
    result.update(measure(out, args.data))
    return result


ERF_SAMPLES = 4


def measure(run: Path, data: str) -> dict[str, Any]:
    """Parameters, mask health and the ERF of the logits under both definitions (rep3d's and RepLKNet's) of the
    trained model in ``run``, on seeded crops of the task's images."""
    import rep3d
    from rep3d.analysis import effective_receptive_field, msd_crops

    model = rep3d.create_model(f"local-dir:{run}", pretrained=True).eval()
    cfg = model.pretrained_cfg
    crops = msd_crops(data, tuple(cfg["roi_size"]), ERF_SAMPLES, seed=0, spacing=cfg["spacing"],
                      orientation=cfg["orientation"], intensity_window=cfg["intensity_window"])
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "mask_health": mask_health(model),
        "erf": {d: effective_receptive_field(model, crops, target="logits", definition=d).to_json()
                for d in ("rep3d", "replknet")},
    }


def _median_step_seconds(metrics_csv: Path) -> float | None:
    import csv

    if not metrics_csv.exists():
        return None
    seconds = [float(r["seconds"]) for r in csv.DictReader(metrics_csv.open()) if r.get("seconds")]
    return float(np.median(seconds)) if seconds else None


def load_results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/lr*/seed*/result.json"))]


EXTEND = 2
"""A sweep whose best learning rate is at an end of ``--lrs`` grows by a half-decade step past that end, at most this
many times per end: the optimum of a variant is then inside the swept range (or the table says it is not)."""


def _half_decade(lr: float, up: bool) -> float:
    k = round(2 * math.log10(lr)) + (1 if up else -1)
    return float(f"{10 ** (k / 2):.0e}")  # 1e-2 -> 3e-2 -> 1e-1, 3e-4 -> 1e-4


def swept_lrs(results: list[dict[str, Any]], variant: str, lrs: list[float]) -> list[float]:
    """The learning rates of ``variant``'s sweep: ``lrs``, extended past an end while the best run sits at that end."""
    swept = sorted(lrs)
    ran = {r["lr"]: r for r in results if r["variant"] == variant and r["seed"] == 0}
    added = {True: 0, False: 0}
    while all(lr in ran for lr in swept):
        score = {lr: (-math.inf if ran[lr].get("diverged") else ran[lr]["best_val"]["dice"]) for lr in swept}
        best = max(swept, key=lambda lr: (score[lr], -lr))
        up = best == swept[-1]
        if best not in (swept[0], swept[-1]) or added[up] == EXTEND or score[best] == -math.inf:
            break
        added[up] += 1
        swept.insert(len(swept) if up else 0, _half_decade(best, up))
    return swept


def chosen_lr(results: list[dict[str, Any]], variant: str, lrs: list[float]) -> float | None:
    """The swept learning rate (:func:`swept_lrs`) with the best validation Dice for ``variant`` (seed 0), once every
    one of them ran."""
    swept = swept_lrs(results, variant, lrs)
    sweep = {r["lr"]: r for r in results if r["variant"] == variant and r["seed"] == 0 and r["lr"] in swept}
    if len(sweep) < len(swept):
        return None
    score = {lr: (-math.inf if r.get("diverged") else r["best_val"]["dice"]) for lr, r in sweep.items()}
    return max(swept, key=lambda lr: (score[lr], -lr))


PRIORITY = ("vanilla", "lrbm_additive", "fixed", "lrbm_softmax", "csla", "uxnet_k7", "small_k3")
"""The order variants are completed in: the paper's mask against the plain kernel first, so that a study cut short
still holds the comparison the issue is about with all its seeds."""


def queue(args: argparse.Namespace, results: list[dict[str, Any]]) -> list[tuple[str, float, int, str]]:
    """What is left to run, most informative first: the check, then variant by variant (:data:`PRIORITY`) its
    learning-rate sweep followed by its seeds at the chosen learning rate (known once its sweep is complete)."""
    items: list[tuple[str, float, int, str]] = [(v, lr, seed, "check") for seed in args.check_seeds
                                                for v, lr in CHECK if v in args.variants]
    for v in sorted(args.variants, key=lambda v: PRIORITY.index(v) if v in PRIORITY else len(PRIORITY)):
        items += [(v, lr, 0, "sweep") for lr in swept_lrs(results, v, args.lrs)]
        lr = chosen_lr(results, v, args.lrs)
        if lr is not None:
            items += [(v, lr, seed, "seeds") for seed in args.seeds]
    seen, out = set(), []
    for item in items:
        if item[3] in args.stages and item[:3] not in seen:
            seen.add(item[:3])
            out.append(item)
    return out


def run_study(args: argparse.Namespace) -> None:
    out = Path(args.out)
    for path in sorted(out.glob("*/lr*/seed*/result.json")):  # runs finished before the ERF was part of a result
        result = json.loads(path.read_text())
        if not result.get("diverged") and "erf" not in result and (path.parent / "model.safetensors").exists():
            result.update(measure(path.parent, args.data))
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1, default=float))
            tmp.replace(path)
    while True:
        results = load_results(out)
        done = {(r["variant"], r["lr"], r["seed"]) for r in results}
        todo = [q for q in queue(args, results) if q[:3] not in done]
        started = False
        for variant, lr, seed, stage in todo:
            path = run_dir(out, variant, lr, seed) / "result.json"
            if path.exists() or not _claim(path.parent):
                continue
            result = run_one(variant, lr, seed, stage, args)
            result["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                     "cpu": platform.processor() or platform.machine(),
                                     "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1, default=float))
            tmp.replace(path)
            claim_path(path.parent).unlink(missing_ok=True)
            print(f"{stage}: {variant} lr {lr:g} seed {seed}: test mean Dice "
                  f"{result.get('test_mean_dice', math.nan):.4f}, best val "
                  f"{result.get('best_val', {}).get('dice', math.nan):.4f}, {result['wall_time_s'] / 60:.1f} min"
                  + (f", DIVERGED: {result['diverged']}" if result["diverged"] else ""), flush=True)
            started = True
            break  # re-plan: a finished sweep may have unlocked a variant's seeds
        if not started:
            return


def aggregate(out: Path, lrs: list[float], seeds: list[int], variants: list[str]) -> dict[str, Any]:
    """Everything the report needs, in one JSON: every run (loss and validation curves kept) and the plan."""
    results = load_results(out)
    plan = {v: {"chosen_lr": chosen_lr(results, v, lrs), "swept_lrs": swept_lrs(results, v, lrs)} for v in variants}
    for v in variants:
        lr = plan[v]["chosen_lr"]
        n = sum(1 for r in results if r["variant"] == v and r["lr"] == lr and r["seed"] in seeds) if lr else 0
        plan[v].update(n_seeds=n, complete=bool(lr) and n == len(seeds))
    data = json.loads((Path(results[0]["config"]["data"]) / "dataset.json").read_text()) if results else {}
    return {
        "study": "context_task", "synthetic": True, "complete": all(p["complete"] for p in plan.values()),
        "plan": {"variants": variants, "lrs": sorted({lr for p in plan.values() for lr in p["swept_lrs"]}),
                 "seeds": seeds, "selection": "best validation mean Dice, seed 0 (sweep extended past an end that won)",
                 "per_variant": plan},
        "dataset": data.get("context_task", {}), "num_train_cases": data.get("numTraining"),
        "num_test_cases": data.get("numTest"), "runs": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="write the task's MSD dataset (kept if it exists)")
    make.add_argument("--data", required=True)
    make.add_argument("--num-train", type=int, default=400)
    make.add_argument("--num-test", type=int, default=32)
    make.add_argument("--size", type=int, default=48, help="volume edge in voxels (a multiple of 16)")
    make.add_argument("--marker-distance", type=float, nargs=2, default=(20.0, 28.0))
    make.add_argument("--gap", type=float, default=GAP, help="the other marker is at least this much farther")
    make.add_argument("--seed", type=int, default=0)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, help="one folder per run: OUT/VARIANT/lrLR/seedS")
        p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
        p.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
        if name == "run":
            p.add_argument("--data", required=True)
            p.add_argument("--iterations", type=int, default=600)
            p.add_argument("--val-every", type=int, default=100)
            p.add_argument("--warmup", type=int, default=30)
            p.add_argument("--num-val", type=int, default=16)
            p.add_argument("--threads", type=int, default=1)
            p.add_argument("--device", default="auto")
            p.add_argument("--stages", nargs="+", default=["check", "sweep", "seeds"],
                           choices=["check", "sweep", "seeds"])
            p.add_argument("--check-seeds", type=int, nargs="+", default=[0],
                           help="seeds of the check's pair (each seed runs both; more than one gives an interval)")
        else:
            p.add_argument("--json", required=True)
    args = parser.parse_args()
    if args.command == "make":
        make_dataset(Path(args.data), num_train=args.num_train, num_test=args.num_test, size=args.size,
                     distance=tuple(args.marker_distance), seed=args.seed, gap=args.gap)
        print(f"wrote {args.data}")
    elif args.command == "run":
        run_study(args)
    else:
        data = aggregate(Path(args.out), args.lrs, args.seeds, args.variants)
        Path(args.json).write_text(json.dumps(data, indent=1, default=float) + "\n")
        print(f"wrote {args.json}: {len(data['runs'])} runs, complete={data['complete']}")


if __name__ == "__main__":
    main()
