"""Fine-tune rep3d's bundled weights on a new dataset with a different set of classes.

What it shows:

* a new MSD-layout dataset (``dataset.json``, ``imagesTr/``, ``labelsTr/``, labelled test cases) written from
  rep3d's SYNTHETIC phantoms (``rep3d.data.make_phantom``, ``rep3d.data.save_nifti``) with a label set the bundled
  weights never saw: ``background, liver, spleen, kidney`` -- the two kidneys merged into one class, the other
  organs dropped (background);
* ``rep3d.create_model("rep3d_tiny.phantom", pretrained=True, num_classes=4)``: every pretrained tensor is loaded
  except the output conv, which keeps a fresh initialisation (a ``UserWarning`` says so, printed below);
* warm-starting that head: each new class takes the old head's row of the same class (``kidney``
  the mean of the two kidneys' rows; ``--fresh-head`` skips this);
* a short fine-tuning loop written out (AdamW; the new head at a 10x higher learning rate than the pretrained body;
  BatchNorm statistics kept frozen, so that a few crops of a few cases cannot overwrite what the full training
  measured), fed by rep3d's own training data pipeline (``rep3d.train.build_config`` + the cached, seeded crops of
  ``rep3d.train.data.CachedVolumes``: the recipe's preprocessing, pos/neg crops and augmentation);
* the fine-tuned model written with ``rep3d.save_pretrained`` and loaded back with
  ``rep3d.create_model("local-dir:RUN", pretrained=True)``;
* per-class Dice on the held-out test cases for the fresh head, the warm-started head and the fine-tuned model, all
  computed the same way (``rep3d.inference.evaluate_dataset``: each case segmented by the Predictor and scored on
  its own grid).

For long runs use ``rep3d train`` instead (validation, checkpoints, exact resume, model card): the ``model_args`` of
a training config go to ``rep3d.create_model``, so ``rep3d train --model rep3d_tiny.phantom --model-arg
pretrained=true`` starts from the bundled weights (with a fresh head; ``--model local-dir:FOLDER`` starts from a
``save_pretrained`` folder, e.g. a warm-started model). It updates the BatchNorm statistics as it trains, as the
paper's recipe does.

Everything here is SYNTHETIC: the numbers show the mechanics of fine-tuning, nothing about real anatomy.

Run (about a minute on one CPU core at the defaults: 12 steps on 64³ crops, three evaluations)::

    python examples/finetune_bundled_weights.py --out finetune_demo
    python examples/finetune_bundled_weights.py --out finetune_demo2 --steps 50 --crops 2 --num-train 8 --threads 4
    python examples/finetune_bundled_weights.py --out /tmp/ft --smoke      # the tiny run the tests use

The output folder must not exist yet (nothing is ever overwritten); it receives ``data/`` (the dataset) and
``run/`` (the fine-tuned model as a ``rep3d.save_pretrained`` folder).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

import rep3d
from rep3d.data import PHANTOM_CLASSES, load_msd_dataset, make_phantom, save_nifti
from rep3d.inference import evaluate_dataset
from rep3d.train import build_config
from rep3d.train.data import CachedVolumes

NEW_CLASSES = ("background", "liver", "spleen", "kidney")
# phantom label -> new label: kidneys merged, other organs back to background
OLD_TO_NEW = {PHANTOM_CLASSES.index("liver"): 1, PHANTOM_CLASSES.index("spleen"): 2,
              PHANTOM_CLASSES.index("right_kidney"): 3, PHANTOM_CLASSES.index("left_kidney"): 3}


def relabel(label: np.ndarray) -> np.ndarray:
    """The new label map (uint8, values index ``NEW_CLASSES``) of one phantom's label map."""
    table = np.zeros(len(PHANTOM_CLASSES), dtype=np.uint8)
    for old, new in OLD_TO_NEW.items():
        table[old] = new
    return table[label]


def write_dataset(root: Path, num_train: int, num_test: int, shape: tuple[int, int, int], seed: int) -> None:
    """Phantoms with the new labels in MSD layout (test cases labelled too, under ``test_labeled``)."""
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    training, test_labeled = [], []
    for i in range(num_train + num_test):
        case = make_phantom([seed, i], shape)  # SYNTHETIC CT-like abdomen at the phantom spacing (2, 2, 2.5) mm
        image = np.clip(np.rint(case.image), -32768, 32767).astype(np.int16)
        images, labels = ("imagesTr", "labelsTr") if i < num_train else ("imagesTs", "labelsTs")
        name = f"case_{i:03d}.nii.gz"
        save_nifti(root / images / name, image, case.affine)
        save_nifti(root / labels / name, relabel(case.label), case.affine)
        pair = {"image": f"./{images}/{name}", "label": f"./{labels}/{name}"}
        (training if i < num_train else test_labeled).append(pair)
    meta = {
        "name": "phantom-kidneys-merged",
        "description": "SYNTHETIC phantoms (rep3d.data.make_phantom) relabelled: liver, spleen, kidneys merged",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(i): name for i, name in enumerate(NEW_CLASSES)},
        "numTraining": num_train,
        "numTest": num_test,
        "training": training,
        "test": [p["image"] for p in test_labeled],
        "test_labeled": test_labeled,
        "synthetic": True,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


@torch.no_grad()
def warm_start_head(model: torch.nn.Module, pretrained: torch.nn.Module) -> None:
    """Copy the pretrained output conv's rows into ``model``'s for the classes both label sets have."""
    head = model.pretrained_cfg["classifier"]  # "decoder.out.conv.conv": a 1x1x1 conv, one output row per class
    new, old = model.get_submodule(head), pretrained.get_submodule(head)
    sources = {"background": ["background"], "liver": ["liver"], "spleen": ["spleen"],
               "kidney": ["right_kidney", "left_kidney"]}
    for name, olds in sources.items():
        rows = [PHANTOM_CLASSES.index(o) for o in olds]
        new.weight[NEW_CLASSES.index(name)] = old.weight[rows].mean(0)
        new.bias[NEW_CLASSES.index(name)] = old.bias[rows].mean(0)


def test_dice(model, data: Path, roi: int) -> dict[str, float]:
    """Mean Dice per class over the labelled test cases (each on its own grid), plus ``"mean"``."""
    result = evaluate_dataset(model, str(data), split="test", class_names=list(NEW_CLASSES),
                              roi_size=(roi, roi, roi), overlap=0.25, device="cpu")
    return {**result["mean_dice"], "mean": result["mean"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="new folder for the dataset and the run (must not exist)")
    parser.add_argument("--num-train", type=int, default=4, help="training phantoms")
    parser.add_argument("--num-test", type=int, default=1, help="labelled test phantoms")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 80), metavar=("X", "Y", "Z"))
    parser.add_argument("--roi", type=int, default=64, help="training crop edge (multiple of 16; the weights "
                        "were trained on 64³ crops, and this small model needs that context)")
    parser.add_argument("--crops", type=int, default=1, help="crops per step")
    parser.add_argument("--steps", type=int, default=12, help="fine-tuning steps")
    parser.add_argument("--lr", type=float, default=2e-4, help="learning rate of the body (the head: 10x)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh-head", action="store_true", help="fine-tune from the fresh head, no warm start")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check (as in the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_train, args.num_test, args.shape, args.roi, args.steps = 1, 1, (64, 64, 48), 32, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the fresh head's initialisation
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new --out (this example never overwrites anything)")

    data = out / "data"
    write_dataset(data, args.num_train, args.num_test, tuple(args.shape), args.seed)
    print(f"wrote {args.num_train} training + {args.num_test} test SYNTHETIC phantoms {tuple(args.shape)} to {data}, "
          f"classes {', '.join(NEW_CLASSES)}")

    # the bundled weights with a 4-class head: rep3d loads every tensor but the output conv and warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = rep3d.create_model("rep3d_tiny.phantom", pretrained=True, num_classes=len(NEW_CLASSES))
    for w in caught:
        print(f"create_model warned: {w.message}")
    eval_roi = max(64, args.roi)  # the bundled model's ROI
    dice = {"fresh head": test_dice(model, data, eval_roi)}
    if not args.fresh_head:
        warm_start_head(model, rep3d.create_model("rep3d_tiny.phantom", pretrained=True))
        dice["warm head"] = test_dice(model, data, eval_roi)

    # rep3d's training data pipeline: the phantom recipe's preprocessing, pos/neg crops and augmentation, seeded
    cfg = build_config("phantom", data=str(data), roi_size=(args.roi,) * 3, crops_per_subject=args.crops,
                       seed=args.seed)
    dataset = load_msd_dataset(data, val_fraction=0.0)  # every training case trains (Dice is on the test cases)
    volumes = CachedVolumes(dataset.train, cfg, num_classes=len(NEW_CLASSES))
    head = model.get_submodule(model.pretrained_cfg["classifier"])
    head_params = {id(p) for p in head.parameters()}
    body = [p for p in model.parameters() if id(p) not in head_params]
    optimizer = torch.optim.AdamW([{"params": body, "lr": args.lr}, {"params": head.parameters(), "lr": 10 * args.lr}],
                                  weight_decay=0.01)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    model.train()
    for m in model.modules():  # freeze BatchNorm statistics (the affine parameters still train)
        if isinstance(m, torch.nn.BatchNorm3d):
            m.eval()
    t0, losses = time.perf_counter(), []
    for step in range(args.steps):
        batch = volumes[(step, 0, step % len(volumes))]  # crops of one case: [crops, 1, roi, roi, roi]
        loss = loss_fn(model(batch["image"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    print(f"fine-tuned {args.steps} steps ({args.crops} x {args.roi}³ crops each) in {time.perf_counter() - t0:.1f} s: "
          f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    model.pretrained_cfg["class_names"] = list(NEW_CLASSES)  # the Predictor and the model card read them
    rep3d.save_pretrained(model, out / "run", dataset="phantom-kidneys-merged (SYNTHETIC)")

    tuned = rep3d.create_model(f"local-dir:{out / 'run'}", pretrained=True)  # the published run folder
    dice["fine-tuned"] = test_dice(tuned, data, eval_roi)
    print("test Dice".ljust(12) + "".join(f"{column:>12}" for column in dice))
    for name in (*NEW_CLASSES[1:], "mean"):
        print(name.ljust(12) + "".join(f"{d[name]:>12.4f}" for d in dice.values()))
    print("mean Dice: " + ", ".join(f"{column} {d['mean']:.4f}" for column, d in dice.items())
          + f" (SYNTHETIC data; fine-tuned model saved in {out / 'run'})")


if __name__ == "__main__":
    main()
