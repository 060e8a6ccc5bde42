"""Medical Segmentation Decathlon (MSD) layout: read any MSD dataset (rep3d's phantom datasets are written by
:mod:`rep3d.data.phantom_dataset`).

Layout::

    ROOT/dataset.json
    ROOT/imagesTr/<case>.nii.gz   ROOT/labelsTr/<case>.nii.gz
    ROOT/imagesTs/<case>.nii.gz   ROOT/labelsTs/<case>.nii.gz   (labelsTs: phantom datasets only)

``dataset.json`` follows MSD (``name``, ``description``, ``tensorImageSize``, ``modality``, ``labels``,
``numTraining``, ``numTest``, ``training`` as image/label pairs, ``test`` as plain image paths). Test labels,
which MSD does not have, are listed under the extra key ``test_labeled`` (image/label pairs) that MSD tools
ignore and ``monai.data.load_decathlon_datalist(..., data_list_key="test_labeled")`` reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rep3d.data.nifti import NIFTI_SUFFIXES, header_affine, read_nifti_header
from rep3d.errors import Rep3DDataError, Rep3DValueError

MSD_REQUIRED_KEYS = ("labels", "modality", "training")
TEST_LABELED_KEY = "test_labeled"


class MSDLayoutError(Rep3DDataError):
    """A dataset folder or its ``dataset.json`` breaks the MSD layout; the message says what to fix."""


@dataclass
class MSDDataset:
    """File lists of an MSD dataset, with absolute paths. ``train`` / ``val`` / ``test_labeled``: ``[{"image",
    "label"}]``; ``test``: ``[{"image"}]``; ``labels``: ``{int: name}``; ``modality``: ``{int: name}``."""

    root: Path
    name: str
    labels: dict[int, str]
    modality: dict[int, str]
    train: list[dict[str, str]]
    val: list[dict[str, str]]
    test: list[dict[str, str]]
    test_labeled: list[dict[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    """The parsed ``dataset.json`` (MSD's format: ``name``, ``labels``, ``modality``, ``training``, ...)."""
    synthetic: bool = False
    """``dataset.json`` says the cases are synthetic (rep3d's phantom writes ``"synthetic": true``)."""
    description: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        return [self.labels[k] for k in sorted(self.labels)]

    @property
    def in_chans(self) -> int:
        return len(self.modality)


def _resolve(root: Path, entry: Any, where: str) -> str:
    if not isinstance(entry, str) or not entry:
        raise MSDLayoutError(f"{where}: expected a relative file path string, got {entry!r}")
    path = Path(entry)
    return str(path if path.is_absolute() else (root / path).resolve())


def _int_keyed(table: Any, key: str, json_path: Path) -> dict[int, str]:
    if not isinstance(table, dict) or not table:
        raise MSDLayoutError(
            f'{json_path}: \'{key}\' must be a non-empty object like {{"0": "background", ...}}'
        )
    try:
        out = {int(k): str(v) for k, v in table.items()}
    except ValueError as err:
        raise MSDLayoutError(
            f"{json_path}: '{key}' keys must be integers as strings, got {list(table)}"
        ) from err
    if sorted(out) != list(range(len(out))):
        raise MSDLayoutError(
            f"{json_path}: '{key}' keys must be 0..{len(out) - 1} without gaps, got {sorted(out)}"
        )
    return out


def _read_dataset_json(root: Path, json_path: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise MSDLayoutError(
            f"dataset folder {root} does not exist (generate one with `rep3d phantom {root}`)"
        )
    if not json_path.is_file():
        raise MSDLayoutError(
            f"{root} has no dataset.json; an MSD dataset needs dataset.json, imagesTr/, labelsTr/"
        )
    try:
        dataset_json = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise MSDLayoutError(f"{json_path} is not valid JSON: {err}") from err
    if not isinstance(dataset_json, dict):
        raise MSDLayoutError(f"{json_path} must hold a JSON object, got {type(dataset_json).__name__}")
    missing = [k for k in MSD_REQUIRED_KEYS if k not in dataset_json]
    if missing:
        raise MSDLayoutError(f"{json_path} lacks required MSD key(s) {missing}")
    return dataset_json


def _file_lists(root: Path, json_path: Path, dataset_json: dict[str, Any]) -> tuple[list, list, list]:
    """``(training pairs, test images, labelled test pairs)`` with absolute paths."""
    training = dataset_json["training"]
    if not isinstance(training, list) or not training:
        raise MSDLayoutError(
            f"{json_path}: 'training' must be a non-empty list of {{'image', 'label'}} entries"
        )
    pairs = []
    for n, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise MSDLayoutError(
                f"{json_path}: training[{n}] must be {{'image': ..., 'label': ...}}, got {entry!r}"
            )
        where = f"{json_path}: training[{n}]"
        pairs.append(
            {"image": _resolve(root, entry["image"], where), "label": _resolve(root, entry["label"], where)}
        )
    if "numTraining" in dataset_json and dataset_json["numTraining"] != len(pairs):
        raise MSDLayoutError(
            f"{json_path}: numTraining is {dataset_json['numTraining']} but 'training' lists {len(pairs)}"
        )
    test = []
    for n, entry in enumerate(dataset_json.get("test", []) or []):
        image = entry.get("image") if isinstance(entry, dict) else entry
        test.append({"image": _resolve(root, image, f"{json_path}: test[{n}]")})
    test_labeled = []
    for n, entry in enumerate(dataset_json.get(TEST_LABELED_KEY, []) or []):
        where = f"{json_path}: {TEST_LABELED_KEY}[{n}]"
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise MSDLayoutError(f"{where} must be {{'image': ..., 'label': ...}}, got {entry!r}")
        test_labeled.append(
            {"image": _resolve(root, entry["image"], where), "label": _resolve(root, entry["label"], where)}
        )
    return pairs, test, test_labeled


def check_label_values(label: Any, num_classes: int, where: str) -> None:
    """Refuse a label volume whose values are not integer class indices ``0..num_classes-1``.

    Raises:
        Rep3DDataError: non-finite or non-integer values (a scaled or interpolated label), or values outside the
            classes of ``dataset.json``, naming ``where``, the values and the fix.
    """
    if hasattr(label, "detach"):  # torch / MONAI tensor
        import torch

        values = torch.unique(label.detach().cpu().as_subclass(torch.Tensor)).numpy()
    else:
        values = np.unique(np.asarray(label))
    if not np.all(np.isfinite(values)):
        raise Rep3DDataError(f"{where}: the label holds NaN or infinite values; labels must be integer class "
                             f"indices 0..{num_classes - 1}: re-save it as integers")
    fractional = values[values != np.round(values)]
    if fractional.size:
        raise Rep3DDataError(
            f"{where}: the label holds non-integer values ({', '.join(f'{v:g}' for v in fractional[:5])}); labels "
            f"must be integer class indices 0..{num_classes - 1} (a scaled (scl_slope) or interpolated label?): "
            "re-save it as integers"
        )
    outside = values[(values < 0) | (values >= num_classes)]
    if outside.size:
        raise Rep3DDataError(
            f"{where}: the label holds value(s) {', '.join(f'{v:g}' for v in outside[:5])} outside 0..{num_classes - 1}"
            f" (dataset.json 'labels' lists {num_classes} classes); fix the label, or add its classes to dataset.json"
        )


def _check_pair_headers(pairs: list[dict[str, str]]) -> None:
    """Each label must lie on its image's voxel grid: same spatial shape, same affine (headers only, no voxels)."""
    for pair in pairs:
        image, label = pair["image"], pair["label"]
        if not (image.endswith(NIFTI_SUFFIXES) and label.endswith(NIFTI_SUFFIXES)):
            continue
        try:
            img_hdr, lab_hdr = read_nifti_header(image), read_nifti_header(label)
        except Exception as err:  # noqa: BLE001 - whatever nibabel says, the file is not a readable NIfTI
            raise Rep3DDataError(f"{image} / {label}: cannot read the NIfTI headers ({type(err).__name__}: {err})"
                                 ) from err
        img_shape, lab_shape = img_hdr.get_data_shape(), lab_hdr.get_data_shape()
        if len(lab_shape) > 3 and any(n != 1 for n in lab_shape[3:]):
            raise Rep3DDataError(f"{label}: a label must be one 3-D volume of class indices, got shape {lab_shape}")
        if tuple(lab_shape[:3]) != tuple(img_shape[:3]):
            raise Rep3DDataError(
                f"{label}: label shape {tuple(lab_shape[:3])} differs from its image's {tuple(img_shape[:3])} "
                f"({image}); image and label must share one voxel grid: resample the label onto the image (nearest)"
            )
        img_affine, _ = header_affine(img_hdr, image)
        lab_affine, _ = header_affine(lab_hdr, label)
        if not np.allclose(img_affine, lab_affine, rtol=1e-4, atol=1e-3):
            raise Rep3DDataError(
                f"{label}: the label's voxel-to-world affine differs from its image's ({image}): "
                f"{np.round(lab_affine, 4).tolist()} vs {np.round(img_affine, 4).tolist()}; image and label must "
                "share one voxel grid: fix the label's header (or resample it onto the image)"
            )


def _validation_indices(num_pairs: int, val_fraction: float, num_val: int | None, seed: int) -> set[int]:
    """A seeded random subset of the training indices (see :func:`load_msd_dataset`)."""
    if num_val is None:
        if not 0.0 <= val_fraction < 1.0:
            raise Rep3DValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        num_val = (
            max(1, int(math.floor(val_fraction * num_pairs + 0.5)))
            if num_pairs >= 2 and val_fraction
            else 0
        )
    if not 0 <= num_val < num_pairs:
        raise Rep3DValueError(
            f"num_val must be in [0, {num_pairs - 1}] for {num_pairs} training cases, got {num_val}"
        )
    order = np.random.default_rng(seed).permutation(num_pairs)
    return set(order[num_pairs - num_val :].tolist())


def load_msd_dataset(
    root: str | Path,
    *,
    val_fraction: float = 0.2,
    num_val: int | None = None,
    seed: int = 0,
    check_files: bool = True,
) -> MSDDataset:
    """Read ``root/dataset.json`` and return validated train / val / test file lists (absolute paths).

    The validation cases are a seeded random subset of ``training`` (``num_val`` cases, or
    ``round(val_fraction * numTraining)``, at least 1 when there are >= 2 training cases).

    Raises:
        MSDLayoutError: missing folder / ``dataset.json``, malformed JSON, missing keys, labels not
            ``0..K-1``, ``numTraining`` disagreeing with the list, or (``check_files``) files that do not
            exist -- listing them.
        Rep3DDataError: (``check_files``, from the NIfTI headers only) a label whose shape or affine differs from
            its image's, or a header without a usable affine. Label *values* are checked when the volumes are
            loaded (:func:`check_label_values`).
    """
    root = Path(root).expanduser()
    json_path = root / "dataset.json"
    dataset_json = _read_dataset_json(root, json_path)
    labels = _int_keyed(dataset_json["labels"], "labels", json_path)
    modality = _int_keyed(dataset_json["modality"], "modality", json_path)
    pairs, test, test_labeled = _file_lists(root, json_path, dataset_json)
    if check_files:
        listed = [p for d in pairs + test + test_labeled for p in d.values()]
        absent = sorted({p for p in listed if not Path(p).is_file()})
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            raise MSDLayoutError(f"{json_path} lists {len(absent)} file(s) that do not exist: {shown}")
        _check_pair_headers(pairs + test_labeled)
    val_idx = _validation_indices(len(pairs), val_fraction, num_val, seed)
    return MSDDataset(
        root=root.resolve(),
        name=str(dataset_json.get("name", root.name)),
        labels=labels,
        modality=modality,
        train=[p for i, p in enumerate(pairs) if i not in val_idx],
        val=[p for i, p in enumerate(pairs) if i in val_idx],
        test=test,
        test_labeled=test_labeled,
        meta=dataset_json,
        synthetic=bool(dataset_json.get("synthetic", False)),
        description=str(dataset_json.get("description") or "") or None,
    )
