"""Scan geometry read as nibabel and ITK read it: sform before qform, broken headers refused before inference,
spatial units converted to millimetres."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from rep3d.errors import Rep3DDataError
from rep3d.inference import InputError, InputWarning, Predictor
from tests.standins import ThresholdOracle

AFFINE = np.array([[0.0, 2.0, 0.0, -10.0], [2.0, 0.0, 0.0, 5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])


def volume(shape=(12, 10, 8)) -> np.ndarray:
    data = np.zeros(shape, np.int16)
    data[3:9, 2:7, 2:6] = 100
    return data


def write(path, *, sform=AFFINE, sform_code=1, qform=AFFINE, qform_code=1, pixdim=None, units="mm"):
    """Save with exactly these header fields (an image's own affine would overwrite the sform on save)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(volume().shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(qform, code=qform_code if qform is not None else 0)
    hdr.set_sform(sform, code=sform_code)
    hdr.set_xyzt_units(units, "sec")
    if pixdim is not None:
        hdr["pixdim"][1:4] = pixdim
    nib.save(nib.Nifti1Image(volume(), None, header=hdr), path)
    saved = nib.load(path).header
    assert int(saved["sform_code"]) == sform_code and np.array_equal(saved["srow_x"], hdr["srow_x"])
    return path


def predictor(model=None) -> Predictor:
    return Predictor(model or ThresholdOracle(), roi_size=16, spacing=(2.0, 2.0, 2.0), intensity_window=(0, 100),
                     device="cpu")


def test_a_valid_sform_wins_over_a_stale_pixdim_as_in_nibabel_and_itk(tmp_path):
    path = write(tmp_path / "stale.nii.gz", pixdim=(9.0, 9.0, 9.0))
    pred = predictor()(path)
    assert np.allclose(pred.affine, AFFINE)
    assert pred.label.sum() == (volume() > 50).sum()
    pred.save(tmp_path / "seg.nii.gz")
    seg = nib.load(tmp_path / "seg.nii.gz")
    assert np.allclose(seg.affine, AFFINE) and np.allclose(seg.header.get_zooms(), (2.0, 2.0, 2.5))


def test_a_singular_sform_falls_back_to_the_qform(tmp_path):
    path = write(tmp_path / "singular.nii.gz", sform=np.diag([2.0, 0.0, 2.5, 1.0]))
    with pytest.warns(InputWarning, match="singular.nii.gz: the sform is singular or not finite; using the qform"):
        pred = predictor()(path)
    assert np.allclose(pred.affine, AFFINE)
    pred.save(tmp_path / "seg.nii.gz")
    assert np.allclose(nib.load(tmp_path / "seg.nii.gz").affine, AFFINE)  # the broken sform is not copied


@pytest.mark.parametrize("sform", [np.zeros((4, 4)), np.diag([2.0, np.nan, 2.5, 1.0])], ids=["zero", "nan"])
def test_a_header_without_usable_affine_is_refused_before_inference(tmp_path, sform):
    path = write(tmp_path / "broken.nii.gz", sform=sform, qform=None)
    model = ThresholdOracle()
    with pytest.raises(InputError, match="broken.nii.gz: the header has no usable voxel-to-world affine"):
        predictor(model)(path)
    assert model.calls == 0


@pytest.mark.parametrize("units, factor", [("meter", 1e-3), ("micron", 1e3), ("mm", 1.0)])
def test_spatial_units_are_converted_to_millimetres_as_itk_does(tmp_path, units, factor):
    in_file_units = AFFINE.copy()
    in_file_units[:3] *= factor
    path = write(tmp_path / f"{units}.nii.gz", sform=in_file_units, qform=in_file_units, units=units)
    pred = predictor()(path)
    assert np.allclose(pred.affine, AFFINE, atol=1e-6)
    assert pred.label.sum() == (volume() > 50).sum()
    pred.save(tmp_path / "seg.nii.gz")
    seg = nib.load(tmp_path / "seg.nii.gz")
    assert seg.header.get_xyzt_units()[0] == units and np.allclose(seg.affine, in_file_units, atol=1e-9)


def test_an_undefined_spatial_unit_code_is_refused(tmp_path):
    path = write(tmp_path / "odd.nii.gz")
    img = nib.load(path)
    img.header["xyzt_units"] = 5 | 8
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, header=img.header), tmp_path / "odd5.nii.gz")
    with pytest.raises(Rep3DDataError, match="spatial unit code is 5"):
        predictor()(tmp_path / "odd5.nii.gz")
