"""Medical Segmentation Decathlon (MSD) layout: write synthetic phantom datasets, read any MSD dataset.

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

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rep3d.data.nifti import header_affine
from rep3d.data.phantom import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    DEFAULT_WINDOW,
    PHANTOM_HU,
    PhantomSetting,
    case_seed,
    get_phantom_setting,
    make_phantom,
)
from rep3d.errors import Rep3DDataError, Rep3DValueError
from rep3d.outputs import check_folder_output, make_folder, write_output, write_text_output
from rep3d.presets import PHANTOM_CLASSES

MSD_REQUIRED_KEYS = ("labels", "modality", "training")
TEST_LABELED_KEY = "test_labeled"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class MSDLayoutError(Rep3DDataError):
    """A dataset folder or its ``dataset.json`` breaks the MSD layout; the message says what to fix."""


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array [X, Y, Z]`` with ``affine`` as qform and sform (code 1); ``.nii`` or ``.nii.gz``."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def _phantom_meta(training: list, test: list, test_labeled: list, seed: int, shape: Sequence[int],
                  spacing: Sequence[float], setting: PhantomSetting) -> dict[str, Any]:
    """``dataset.json`` of a phantom dataset: MSD keys plus the labelled test list and the generator settings."""
    return {
        "name": "rep3d-phantom",
        "description": "SYNTHETIC CT-like abdominal phantoms (rep3d.data.make_phantom"
                       + ("" if setting.name == "default" else f", setting {setting.name!r}") + "); no patient data",
        "reference": "rep3d (synthetic)",
        "licence": "CC0-1.0 (synthetic data)",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): name for k, name in enumerate(PHANTOM_CLASSES)},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
        TEST_LABELED_KEY: test_labeled,
        "synthetic": True,
        "phantom": {
            "generator": "rep3d.data.make_phantom",
            "seed": int(seed),
            "shape": [int(s) for s in shape],
            "spacing": [float(s) for s in spacing],
            "orientation": "RAS",
            "setting": dataclasses.asdict(setting),
            "hu_means": PHANTOM_HU,
            "intensity_window": list(DEFAULT_WINDOW),
        },
    }


def write_msd_dataset(
    outdir: str | Path,
    *,
    num_train: int,
    num_test: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    overwrite: bool = False,
    progress: bool = False,
    setting: str | PhantomSetting = "default",
) -> Path:
    """Generate ``num_train`` + ``num_test`` synthetic phantoms (:func:`rep3d.data.make_phantom`) into
    ``outdir`` in MSD layout, with labels for the test cases too. Images are stored as int16 HU (rounded),
    labels as uint8.

    Case ``i`` of a split always gets the same phantom for a given ``seed`` (see
    :func:`rep3d.data.phantom.case_seed`), whatever ``num_train`` / ``num_test`` are. ``setting`` (a
    :data:`rep3d.data.phantom.PHANTOM_SETTINGS` name) sets contrast and noise; it is recorded in ``dataset.json``.

    Raises:
        FileExistsError: ``outdir`` already holds a ``dataset.json`` and ``overwrite`` is false.
        ValueError: negative or zero case counts.
    """
    if num_train < 0 or num_test < 0 or num_train + num_test == 0:
        raise Rep3DValueError(
            f"need num_train >= 0, num_test >= 0 and at least one case, got {num_train} and {num_test}"
        )
    setting = get_phantom_setting(setting)
    check_phantom_request(seed, shape, spacing, num_train + num_test)
    root = Path(outdir)
    names = [f"{d}/phantom_{i:03d}.nii.gz" for i in range(num_train) for d in ("imagesTr", "labelsTr")]
    names += [f"{d}/phantom_{num_train + i:03d}.nii.gz" for i in range(num_test) for d in ("imagesTs", "labelsTs")]
    if (root / "dataset.json").exists() and not overwrite:
        raise FileExistsError(
            f"{root / 'dataset.json'} already exists; pass --overwrite (overwrite=True) to replace it"
        )
    # only rep3d's own earlier phantoms are replaced; a folder of other files is refused before any work
    check_folder_output(root, overwrite=overwrite, names=[*names, "dataset.json"], flag="OUTDIR",
                        also_ours=_written_phantom_dataset)
    dirs = {d: make_folder(root / d) for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    command = "rep3d phantom"

    def save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
        write_output(path, lambda tmp: save_nifti(tmp, array, affine), overwrite=overwrite, command=command, root=root)

    cases = [("train", i, f"phantom_{i:03d}") for i in range(num_train)]
    cases += [("test", i, f"phantom_{num_train + i:03d}") for i in range(num_test)]
    iterator: Any = cases
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(cases, desc="phantoms", unit="case")
    training, test, test_labeled = [], [], []
    for split, index, name in iterator:
        case = make_phantom(case_seed(seed, split, index), shape, spacing, setting=setting)
        image = np.clip(np.rint(case.image), -32768, 32767).astype(np.int16)
        img_dir, lab_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
        save(dirs[img_dir] / f"{name}.nii.gz", image, case.affine)
        save(dirs[lab_dir] / f"{name}.nii.gz", case.label, case.affine)
        pair = {"image": f"./{img_dir}/{name}.nii.gz", "label": f"./{lab_dir}/{name}.nii.gz"}
        if split == "train":
            training.append(pair)
        else:
            test.append(pair["image"])
            test_labeled.append(pair)

    meta = _phantom_meta(training, test, test_labeled, seed, shape, spacing, setting)
    write_text_output(root / "dataset.json", json.dumps(meta, indent=2) + "\n", overwrite=overwrite, command=command,
                      root=root)
    return root


MAX_PHANTOM_BYTES = 8 * 2**30
"""Largest memory one phantom may need (image, label and working arrays); larger shapes are refused up front."""


def check_phantom_request(seed: int, shape: Sequence[int], spacing: Sequence[float], cases: int) -> None:
    """Refuse a negative seed, a non-positive shape / spacing, or a shape whose phantom would not fit in memory."""
    if int(seed) < 0:
        raise Rep3DValueError(f"seed must be >= 0 (numpy seeds are non-negative), got {seed}")
    if len(shape) != 3 or any(int(s) < 16 for s in shape):
        raise Rep3DValueError(f"shape must be three sizes of at least 16 voxels, got {list(shape)}")
    if len(spacing) != 3 or any(not float(s) > 0 for s in spacing):
        raise Rep3DValueError(f"spacing must be three positive sizes in mm, got {list(spacing)}")
    voxels = int(np.prod([int(s) for s in shape], dtype=np.int64))
    need = voxels * PHANTOM_BYTES_PER_VOXEL
    if need > MAX_PHANTOM_BYTES:
        raise Rep3DValueError(f"shape {list(shape)} ({voxels:,} voxels) would need about {need / 2**30:,.0f} GiB of "
                              f"memory per phantom (limit {MAX_PHANTOM_BYTES / 2**30:.0f} GiB); use a smaller shape, "
                              "e.g. the default --shape 96 96 96")


PHANTOM_BYTES_PER_VOXEL = 40
"""Peak bytes per voxel while one phantom is generated (float64 image and coordinate grids, label, noise)."""


def _written_phantom_dataset(folder: Path) -> bool:
    """A dataset folder an older rep3d phantom wrote (its ``dataset.json`` says synthetic phantom)."""
    try:
        meta = json.loads((Path(folder) / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and bool(meta.get("synthetic")) and "phantom" in json.dumps(meta).lower()


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


def _read_meta(root: Path, json_path: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise MSDLayoutError(
            f"dataset folder {root} does not exist (generate one with `rep3d phantom {root}`)"
        )
    if not json_path.is_file():
        raise MSDLayoutError(
            f"{root} has no dataset.json; an MSD dataset needs dataset.json, imagesTr/, labelsTr/"
        )
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise MSDLayoutError(f"{json_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise MSDLayoutError(f"{json_path} must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in MSD_REQUIRED_KEYS if k not in meta]
    if missing:
        raise MSDLayoutError(f"{json_path} lacks required MSD key(s) {missing}")
    return meta


def _file_lists(root: Path, json_path: Path, meta: dict[str, Any]) -> tuple[list, list, list]:
    """``(training pairs, test images, labelled test pairs)`` with absolute paths."""
    training = meta["training"]
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
    if "numTraining" in meta and meta["numTraining"] != len(pairs):
        raise MSDLayoutError(
            f"{json_path}: numTraining is {meta['numTraining']} but 'training' lists {len(pairs)}"
        )
    test = []
    for n, entry in enumerate(meta.get("test", []) or []):
        image = entry.get("image") if isinstance(entry, dict) else entry
        test.append({"image": _resolve(root, image, f"{json_path}: test[{n}]")})
    test_labeled = []
    for n, entry in enumerate(meta.get(TEST_LABELED_KEY, []) or []):
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
    import nibabel as nib

    for pair in pairs:
        image, label = pair["image"], pair["label"]
        if not (image.endswith(NIFTI_SUFFIXES) and label.endswith(NIFTI_SUFFIXES)):
            continue
        try:
            img_hdr, lab_hdr = nib.load(image).header, nib.load(label).header
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
    meta = _read_meta(root, json_path)
    labels = _int_keyed(meta["labels"], "labels", json_path)
    modality = _int_keyed(meta["modality"], "modality", json_path)
    pairs, test, test_labeled = _file_lists(root, json_path, meta)
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
        name=str(meta.get("name", root.name)),
        labels=labels,
        modality=modality,
        train=[p for i, p in enumerate(pairs) if i not in val_idx],
        val=[p for i, p in enumerate(pairs) if i in val_idx],
        test=test,
        test_labeled=test_labeled,
        meta=meta,
    )
