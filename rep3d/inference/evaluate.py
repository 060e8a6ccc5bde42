"""The one evaluation path: segment labelled cases with a :class:`Predictor` and score per-class Dice.

``rep3d evaluate`` runs it on the original scans (each scored on its own grid); training validation runs it on
volumes already on the model grid (the predictor then resamples nothing). Both average Dice per class over the
cases where the class is present, then over classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rep3d.data.msd import check_label_values, load_msd_dataset
from rep3d.data.nifti import read_nifti_array
from rep3d.errors import Rep3DDataError
from rep3d.inference.predictor import Predictor
from rep3d.metrics import dice_per_class, mean_dice


@dataclass
class LabelledCase:
    """One case to score: ``image`` as the :class:`Predictor` takes it (path, or array ``[C, X, Y, Z]``), ``label``
    a label file or an integer array ``[X, Y, Z]`` on the same grid as the image; ``name`` names it in results."""

    name: str
    image: Any
    label: Any


def _label_array(label: Any, num_classes: int, where: str) -> np.ndarray:
    if isinstance(label, torch.Tensor):
        array = label.detach().cpu().numpy()
    elif isinstance(label, np.ndarray):
        array = label
    else:
        array = read_nifti_array(label)
        where = str(label)
    check_label_values(array, num_classes, where)  # never truncate 0.5 to 0, never index past the classes
    return array.astype(np.int64)


def evaluate_cases(predictor: Predictor, cases: Iterable[LabelledCase], class_names: Sequence[str]) -> dict:
    """``{"num_cases", "cases": [{"image", "dice": {class: value}}], "mean_dice": {class: mean}, "mean"}`` over
    the classes ``class_names[1:]`` (index 0 is background). A class absent from both maps of a case is left out
    of that case's mean (``nan``), absent from one of them scores 0."""
    names = list(class_names)
    rows = []
    for case in cases:
        prediction = predictor(case.image)
        truth = _label_array(case.label, len(names), case.name)
        if truth.shape != prediction.label.shape:
            raise Rep3DDataError(f"{case.name}: label shape {truth.shape} differs from the image's "
                                 f"{prediction.label.shape}; image and label must share one voxel grid")
        dice = dice_per_class(torch.from_numpy(prediction.label.astype(np.int64)), torch.from_numpy(truth),
                              len(names))
        rows.append({"image": case.name, "dice": dict(zip(names[1:], dice))})
    per_class = {n: mean_dice([r["dice"][n] for r in rows]) for n in names[1:]}
    return {"num_cases": len(rows), "cases": rows, "mean_dice": per_class,
            "mean": mean_dice(list(per_class.values()))}


def evaluate_dataset(model: torch.nn.Module, data: str, split: str = "test", **predictor_kwargs: Any) -> dict:
    """Per-class Dice of ``model`` on the labelled cases of ``split`` ("test", "val" or "train") of the MSD-layout
    dataset in ``data``, each case predicted by ``Predictor(model, **predictor_kwargs)`` and scored on its own grid.
    Returns :func:`evaluate_cases`' dict plus ``"split"``."""
    dataset = load_msd_dataset(data)
    cases = {"test": dataset.test_labeled, "val": dataset.val, "train": dataset.train}[split]
    if not cases:
        raise Rep3DDataError(f"{data}: the {split!r} split has no labelled cases (test labels live under "
                             "'test_labeled' in dataset.json)")
    model_classes = int(getattr(model, "num_classes", 0) or 0)
    if model_classes and model_classes != dataset.num_classes:
        raise Rep3DDataError(
            f"the model predicts {model_classes} classes (background included) and {data}/dataset.json lists "
            f"{dataset.num_classes} ({', '.join(dataset.class_names)}); Dice needs the same classes: evaluate a "
            "model trained on this dataset's labels")
    predictor = Predictor(model, **predictor_kwargs)
    names = predictor.class_names or [f"class_{i}" for i in range(model.num_classes)]
    result = evaluate_cases(predictor, (LabelledCase(c["image"], c["image"], c["label"]) for c in cases), names)
    return {"split": split, **result}
