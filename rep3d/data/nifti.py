"""NIfTI geometry read as nibabel and ITK read it: which header affine to trust, and in which unit.

A NIfTI header carries up to three voxel -> world mappings: the ``sform`` (a general affine), the ``qform`` (a
rotation, ``pixdim`` zooms and an offset) and, when both codes are 0, ``pixdim`` alone. Readers disagree on stale or
broken headers; rep3d follows nibabel's and ITK's order and refuses what none of them can use:

- the sform when its code is > 0 and it is finite and invertible, else the qform when its code is > 0 and it is
  finite and invertible, else (both codes 0) the ``pixdim`` diagonal; anything else (e.g. an all-zero sform and no
  qform) raises :class:`~rep3d.errors.Rep3DDataError` naming the file.
- MONAI's NIfTI reader "corrects" a header whose ``pixdim`` disagrees with its sform by rescaling the affine to the
  stale ``pixdim``; nibabel and ITK keep the sform. :class:`NiftiReader` reads without that correction.
- spatial units (``xyzt_units``) are converted to millimetres as ITK does: meter x 1000, micron x 0.001, mm and
  "unknown" (code 0, the common default) as they are; any other code is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from monai.data import NibabelReader

from rep3d.errors import Rep3DDataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""File endings of NIfTI volumes."""
MM_PER_UNIT = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3, "unknown": 1.0}
"""Millimetres per NIfTI spatial unit (``unknown`` = code 0 is taken as mm, as ITK and nibabel do)."""


def spatial_unit_scale(header: Any, where: str) -> float:
    """Millimetres per unit of the header's spatial ``xyzt_units``; refuses codes NIfTI does not define."""
    code = int(header["xyzt_units"]) & 0x07
    names = {0: "unknown", 1: "meter", 2: "mm", 3: "micron"}
    if code not in names:
        raise Rep3DDataError(
            f"{where}: the header's spatial unit code is {code}, not one NIfTI defines (0 unknown, 1 meter, 2 mm, "
            "3 micron); fix xyzt_units (nibabel: img.header.set_xyzt_units('mm')) and try again"
        )
    return MM_PER_UNIT[names[code]]


def _usable(affine: np.ndarray) -> bool:
    """Finite and invertible (not merely numerically: relative to the length of its axes)."""
    if affine is None or not np.all(np.isfinite(affine)):
        return False
    rzs = np.asarray(affine, dtype=np.float64)[:3, :3]
    scale = np.prod(np.linalg.norm(rzs, axis=0))
    return bool(scale > 0 and abs(np.linalg.det(rzs)) > 1e-6 * scale)


def header_affine(header: Any, where: str) -> tuple[np.ndarray, str]:
    """``(voxel -> world affine [4, 4] in mm (RAS+), which form it came from: "sform" | "qform" | "pixdim")``.

    Raises:
        Rep3DDataError: no usable form (singular, zero or non-finite sform / qform), or an undefined spatial unit.
    """
    scale = spatial_unit_scale(header, where)
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    tried = []
    if sform_code > 0:
        sform = header.get_sform()
        if _usable(sform):
            return _to_mm(sform, scale), "sform"
        tried.append("the sform is singular or not finite")
    if qform_code > 0:
        try:
            qform = header.get_qform()
        except Exception:  # noqa: BLE001 - a qform nibabel cannot even decode is unusable, like a singular one
            qform = None
        if _usable(qform):
            return _to_mm(qform, scale), "qform"
        tried.append("the qform is singular or not finite")
    if sform_code <= 0 and qform_code <= 0:
        base = header.get_base_affine()
        if _usable(base):
            return _to_mm(base, scale), "pixdim"
        tried.append("there is no sform or qform and pixdim is zero or not finite")
    elif qform_code <= 0:
        tried.append("there is no qform to fall back to")
    raise Rep3DDataError(
        f"{where}: the header has no usable voxel-to-world affine ({'; '.join(tried)}), so the scan's spacing and "
        "orientation are unknown; fix the header (nibabel: img.set_sform(affine, code=1) with the true spacing and "
        "orientation) and try again"
    )


def _to_mm(affine: np.ndarray, scale: float) -> np.ndarray:
    out = np.array(affine, dtype=np.float64)
    out[:3, :] *= scale
    out[3] = (0.0, 0.0, 0.0, 1.0)
    return out


def header_with_affine(header: Any, affine_mm: np.ndarray, where: str) -> Any:
    """A copy of ``header`` whose forms encode ``affine_mm`` (in the header's own spatial unit): the sform and the
    qform that the header uses (both, with code 1, when it used neither) are rewritten, so a file written with it
    reads back with exactly this affine and ``pixdim`` agrees with it."""
    hdr = header.copy()
    scale = spatial_unit_scale(header, where)
    try:
        chosen, form = header_affine(header, where)
    except Rep3DDataError:
        chosen, form = None, ""
    if chosen is not None and np.allclose(chosen, affine_mm, atol=1e-4) and (
        form == "pixdim" or np.allclose(hdr.get_best_affine()[:3] * scale, chosen[:3], atol=1e-4)
    ) and np.allclose(np.abs(hdr.get_zooms()[:3]) * scale, np.linalg.norm(chosen[:3, :3], axis=0), atol=1e-4):
        return hdr  # already says exactly this (the common case): keep every field as it was
    file_affine = np.array(affine_mm, dtype=np.float64)
    file_affine[:3, :] /= scale
    sform_code, qform_code = int(hdr["sform_code"]), int(hdr["qform_code"])
    if sform_code <= 0 and qform_code <= 0:
        sform_code = qform_code = 1
    hdr.set_sform(file_affine, code=max(sform_code, 1))
    if qform_code > 0:
        hdr.set_qform(file_affine, code=qform_code)
    else:
        hdr.set_qform(file_affine, code=0)
    return hdr


class NiftiReader(NibabelReader):
    """MONAI's NIfTI reader with rep3d's geometry: the affine of :func:`header_affine` (sform, else qform, else
    pixdim; in mm), without MONAI's rescaling of the affine to a stale ``pixdim``."""

    def read(self, data, **kwargs):  # noqa: D102 - same contract as NibabelReader.read
        import nibabel as nib
        from monai.utils import ensure_tuple

        options = {**self.kwargs, **kwargs}
        self.filenames = ensure_tuple(data)
        images = [nib.load(name, **options) for name in self.filenames]
        for image, name in zip(images, self.filenames):
            header_affine(image.header, str(name))  # refuse an unusable header before any voxel is read
        return images if len(images) > 1 else images[0]

    def _get_affine(self, img):
        return header_affine(img.header, str(img.get_filename() or "NIfTI image"))[0]


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array [X, Y, Z]`` with ``affine`` as qform and sform (code 1); ``.nii`` or ``.nii.gz``."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def read_nifti_header(path: str | Path) -> Any:
    """The header of the NIfTI (or other nibabel-readable) file at ``path``, without reading its voxels."""
    import nibabel as nib

    return nib.load(str(path)).header


def read_nifti_array(path: str | Path, dtype: Any = None) -> np.ndarray:
    """The voxel array of the file at ``path`` as stored (no scaling to float unless the header asks for it), in
    the file's own voxel order; ``dtype``: read straight into that type (nibabel scales into it)."""
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=dtype)


def read_nifti(path: str | Path, dtype: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of the file at ``path``: :func:`read_nifti_array` and nibabel's affine (the header's best
    one, unchecked: use :func:`header_affine` where the geometry must be trusted)."""
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=dtype), img.affine
