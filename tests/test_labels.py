"""Bad labels never train silently and never crash without a name: shape and affine are checked from the headers
when the dataset is read, values (integers in 0..K-1) when the volumes are loaded."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rep3d.data import load_msd_dataset, write_msd_dataset
from rep3d.errors import Rep3DDataError
from rep3d.inference import LabelledCase, Predictor, evaluate_cases
from rep3d.train import build_config, train
from tests.standins import ThresholdOracle


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_msd_dataset(tmp_path / "data", num_train=2, num_test=0, seed=5, shape=(32, 32, 24))


def label_path(root: Path, index: int = 0) -> Path:
    return root / "labelsTr" / f"phantom_{index:03d}.nii.gz"


def rewrite_label(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    old = nib.load(path)
    data = np.asanyarray(old.dataobj) if data is None else data
    affine = old.affine if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def test_a_label_whose_shape_differs_from_its_image_is_refused_when_the_dataset_is_read(dataset):
    label = label_path(dataset, 1)
    rewrite_label(label, np.asanyarray(nib.load(label).dataobj)[:, :, :20])
    with pytest.raises(Rep3DDataError, match=r"phantom_001.nii.gz: label shape \(32, 32, 20\) differs from its "
                                             r"image's \(32, 32, 24\).*resample the label"):
        load_msd_dataset(dataset)


def test_a_label_whose_affine_differs_from_its_image_is_refused_when_the_dataset_is_read(dataset):
    label = label_path(dataset)
    shifted = nib.load(label).affine.copy()
    shifted[0, 3] += 10.0
    rewrite_label(label, affine=shifted)
    with pytest.raises(Rep3DDataError, match="phantom_000.nii.gz: the label's voxel-to-world affine differs"):
        load_msd_dataset(dataset)


@pytest.mark.parametrize("corrupt, message", [
    (lambda y: y.astype(np.float32) * 0.5, r"non-integer values \(0.5"),
    (lambda y: np.where(y == 2, 12, y.astype(np.int16)), r"value\(s\) 12 outside 0..8 \(dataset.json 'labels' lists 9"),
    (lambda y: np.where(y == 2, -1, y.astype(np.int16)), r"value\(s\) -1 outside 0..8"),
], ids=["scaled-by-half", "value-above-K", "negative"])
def test_label_values_that_are_not_class_indices_stop_training_naming_the_file(dataset, tmp_path, corrupt, message):
    label = label_path(dataset)
    rewrite_label(label, corrupt(np.asanyarray(nib.load(label).dataobj)))
    cfg = build_config("phantom", data=str(dataset), out=str(tmp_path / "run"), iterations=1, roi_size=(32, 32, 32),
                       model_args={"kernel_size": 3}, workers=0, num_val=1)
    with pytest.raises(Rep3DDataError, match=f"phantom_000.nii.gz: the label holds {message}"):
        train(cfg)


def test_evaluation_refuses_label_values_outside_the_classes():
    image = np.zeros((1, 16, 16, 16), np.float32)
    predictor = Predictor(ThresholdOracle(), roi_size=16, spacing=None, intensity_window=None, device="cpu")
    truth = np.zeros((16, 16, 16), np.int64)
    truth[0, 0, 0] = 7
    with pytest.raises(Rep3DDataError, match=r"case 1: the label holds value\(s\) 7 outside 0..1"):
        evaluate_cases(predictor, [LabelledCase("case 1", image, truth)], ["background", "bright"])
