"""rep3d's synthetic phantom written as a dataset in the Medical Segmentation Decathlon layout (read back by
:func:`rep3d.data.msd.load_msd_dataset`, like any MSD dataset).

``dataset.json`` carries MSD's keys, the labelled test list under ``test_labeled`` (which MSD tools ignore), the flag
``"synthetic": true`` and the generator's settings, so a dataset says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rep3d.data.msd import TEST_LABELED_KEY
from rep3d.data.nifti import save_nifti
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
from rep3d.errors import Rep3DValueError
from rep3d.outputs import check_folder_output, make_folder, write_output, write_text_output
from rep3d.presets import PHANTOM_CLASSES

__all__ = ["MAX_PHANTOM_BYTES", "PHANTOM_BYTES_PER_VOXEL", "check_phantom_request", "write_msd_dataset"]


def _phantom_dataset_json(training: list, test: list, test_labeled: list, seed: int, shape: Sequence[int],
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

    dataset_json = _phantom_dataset_json(training, test, test_labeled, seed, shape, spacing, setting)
    write_text_output(root / "dataset.json", json.dumps(dataset_json, indent=2) + "\n", overwrite=overwrite,
                      command=command, root=root)
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
        dataset_json = json.loads((Path(folder) / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(dataset_json, dict) and bool(dataset_json.get("synthetic")) and "phantom" in json.dumps(
        dataset_json).lower()
