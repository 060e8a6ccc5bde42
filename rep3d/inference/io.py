"""Volumes in and out: read an image (NIfTI, FreeSurfer MGZ / MGH, or any format MONAI's ``LoadImage`` reads) or
wrap an array, and write label maps / probabilities as NIfTI that keep the input's header, with a JSON sidecar.

Arrays use MONAI's channel-first NIfTI order ``[C, X, Y, Z]`` (``X, Y, Z`` = the file's voxel axes).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rep3d.data.nifti import NiftiReader, header_affine, header_with_affine, read_nifti_header
from rep3d.errors import Rep3DDataError, Rep3DValueError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MGH_SUFFIXES = (".mgz", ".mgh")
"""FreeSurfer volumes, read through nibabel (its ``MGHImage`` affine is voxel -> RAS+ world in mm, as NIfTI's)."""
VOLUME_SUFFIXES = NIFTI_SUFFIXES + MGH_SUFFIXES
"""What ``rep3d predict`` picks up from a folder."""
SIDECAR_WRITER = "rep3d predict"
"""``written_by`` of every JSON sidecar: how ``rep3d predict --overwrite`` knows its own sidecars."""
PREDICTION_DESCRIPTION = b"rep3d prediction"
"""``descrip`` of every NIfTI a :class:`Prediction` writes: how ``rep3d predict --overwrite`` knows its own outputs."""


class InputWarning(UserWarning):
    """An input was segmented, but something in it was repaired on the way (``rep3d predict`` prints these)."""


class InputError(Rep3DDataError):
    """An input cannot be segmented (unreadable, not 3-D, wrong channel count); says what was expected."""


@dataclass
class Prediction:
    """Result of :class:`Predictor` on one volume, on the input's own voxel grid.

    ``label``: ``[X, Y, Z]`` uint8 (uint16 above 255 classes); ``affine``: ``[4, 4]`` voxel -> world (the
    input's); ``probabilities``: ``[K, X, Y, Z]`` float32 softmax or ``None``; ``header``: the input NIfTI
    header (``None`` for arrays / other formats); ``class_names``: from the model cfg, if any.
    ``notices``: what the reader of this label map must know about it (key -> one line; e.g.
    ``synthetic_training_data`` when the weights were trained on synthetic phantoms), also written to the sidecar.
    ``profile``: where the time went (``timings_s``: read, resample, infer, stitch), the number of windows, the model
    grid's shape and the foreground box.
    """

    label: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None = None
    header: Any = None
    class_names: Sequence[str] | None = None
    source: str | None = None
    notices: dict[str, str] = field(default_factory=dict)
    """One-line notices for whoever reads the result (e.g. ``synthetic_training_data``)."""
    profile: dict[str, Any] = field(default_factory=dict)
    """Where the time went (seconds in read / resample / infer / stitch / write), windows, the foreground box."""
    report: dict[str, Any] = field(default_factory=dict)
    """What the caller should know about this prediction beyond the label map (out-of-distribution findings,
    regions cropped away before the network ran, warnings, ...)."""

    def sidecar(self, **extra: Any) -> dict[str, Any]:
        """The JSON sidecar written next to the label map: its source, class names, notices, report and profile
        (plus ``extra``)."""
        return {"written_by": SIDECAR_WRITER, "source": self.source, "class_names": list(self.class_names or []),
                "notices": dict(self.notices), **self.report, "profile": self.profile, **extra}

    def save(self, path: str | Path, *, overwrite: bool = True, command: str | None = None) -> Path:
        """Write the label map as NIfTI, keeping the input header (qform, sform, units) where there is one.

        ``command`` (e.g. ``"rep3d predict"``) records the file as rep3d's output (:mod:`rep3d.outputs`) and, with
        ``overwrite=False``, refuses to replace a file that appeared meanwhile (a concurrent run)."""
        img = _nifti_like(self.label, self.affine, self.header, intent="label")
        return _atomic_save(img, path, overwrite=overwrite, command=command)

    def save_sidecar(self, path: str | Path, *, overwrite: bool = True, command: str | None = None,
                     **extra: Any) -> Path:
        """Write :meth:`sidecar` as JSON (``<name>_seg.json`` next to ``<name>_seg.nii.gz`` in ``rep3d predict``).

        ``command`` records the file as rep3d's output (:mod:`rep3d.outputs`) and, with ``overwrite=False``, refuses
        to replace a file that appeared meanwhile (a concurrent run)."""
        from rep3d.outputs import install_file, staging_path

        path = Path(path)
        tmp = staging_path(path)
        tmp.write_text(json.dumps(self.sidecar(**extra), indent=2, default=str) + "\n")
        if command is None:
            os.replace(tmp, path)
            return path
        return install_file(tmp, path, overwrite=overwrite, command=command)

    def save_probabilities(self, path: str | Path, *, overwrite: bool = True, command: str | None = None) -> Path:
        """Write the softmax as a 4-D float32 NIfTI ``[X, Y, Z, K]`` (classes last) on the input grid."""
        if self.probabilities is None:
            raise Rep3DValueError("no probabilities: call the Predictor with probabilities=True")
        data = np.moveaxis(self.probabilities.astype(np.float32, copy=False), 0, -1)
        img = _nifti_like(data, self.affine, self.header, intent="none")
        return _atomic_save(img, path, overwrite=overwrite, command=command)


def _nifti_like(data: np.ndarray, affine: np.ndarray, header: Any, intent: str):
    import nibabel as nib

    if isinstance(header, nib.Nifti1Header):
        klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        # the input's header with its forms rewritten to the affine the prediction was made on (the one
        # header_affine chose, in the header's own unit): a stale pixdim or a broken sform is not copied
        hdr = header_with_affine(header, affine, "output header")
        hdr.set_data_dtype(data.dtype)
        hdr["cal_min"], hdr["cal_max"] = 0, 0
        hdr.set_intent(intent)
        hdr["descrip"] = PREDICTION_DESCRIPTION
        hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
        if data.ndim == 4:  # the 4th axis holds classes, not time
            hdr.set_xyzt_units(xyz=hdr.get_xyzt_units()[0], t="unknown")
            hdr["pixdim"][4] = 1.0
        return klass(data, None, header=hdr)  # affine None: keep the header's qform and sform as set above
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_intent(intent)
    img.header["descrip"] = PREDICTION_DESCRIPTION
    return img


def _atomic_save(img, path: str | Path, *, overwrite: bool = True, command: str | None = None) -> Path:
    """Save via a per-run temporary name in the same folder, so a crash never leaves a half-written output and
    concurrent runs never write the same temporary file; ``command``: record it as rep3d's (:mod:`rep3d.outputs`)."""
    import uuid

    import nibabel as nib

    from rep3d.outputs import install_file

    path = Path(path)
    name = path.name
    suffix = next((s for s in NIFTI_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise Rep3DValueError(f"output must end in .nii or .nii.gz, got {path}")
    tmp = path.with_name(f".{name[: -len(suffix)]}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        nib.save(img, str(tmp))
        if command is None:
            os.replace(tmp, path)
        else:
            install_file(tmp, path, overwrite=overwrite, command=command)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path



def output_stem(path: str | Path) -> str:
    """File name without ``.nii.gz`` / ``.nii`` (or its last suffix): ``case_01.nii.gz`` -> ``case_01``,
    ``T1.mgz`` -> ``T1``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem



def load_volume(data: Any, affine: Any, in_chans: int | None, default_affine: Callable[[], np.ndarray]):
    """``(image MetaTensor [C, X, Y, Z] float32 with its affine, NIfTI header or None, source path or None)``.

    ``data`` is a path or an array / tensor ``[C, X, Y, Z]`` (a ``MetaTensor`` brings its own affine); an array
    without ``affine`` gets ``default_affine()``. Raises :class:`InputError` for anything that is not a readable
    3-D volume with ``in_chans`` channels (``None``: any).
    """
    from monai.data import MetaTensor

    header, source = None, None
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        source = str(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        is_nifti = path.name.endswith(NIFTI_SUFFIXES)
        if path.name.lower().endswith(MGH_SUFFIXES):
            image = _load_mgh(path)
            _check_volume(image, str(path), in_chans)
            return image, None, source
        if is_nifti:
            try:
                header = read_nifti_header(path)
            except Exception as err:  # noqa: BLE001 - any reader failure is the user's file
                raise InputError(f"{path}: cannot read it as NIfTI ({type(err).__name__}: {err})") from err
            try:
                _, form = header_affine(header, str(path))  # before any voxel is read or any window is run
            except Rep3DDataError as err:
                raise InputError(str(err)) from err
            if form == "qform" and int(header["sform_code"]) > 0:
                warnings.warn(f"{path}: the sform is singular or not finite; using the qform instead (as ITK does)",
                              InputWarning, stacklevel=3)
        try:
            from monai.transforms import LoadImage

            reader = NiftiReader() if is_nifti else None
            image = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=np.float32)(str(path))
        except Exception as err:  # noqa: BLE001 - any reader failure is the user's file
            raise InputError(f"{path}: cannot read it as an image ({type(err).__name__}: {err})") from err
        what = str(path)
    else:
        tensor = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
        if tensor.ndim != 4:
            raise InputError(
                f"expected an array [C, X, Y, Z] (channel first, 3 spatial axes), got shape "
                f"{tuple(tensor.shape)}; add a channel axis with x[None] for a single-channel volume"
            )
        if affine is None and isinstance(data, MetaTensor):
            affine = data.affine
        if affine is None:
            affine = default_affine()
        affine = torch.as_tensor(np.asarray(affine, dtype=np.float64))
        if affine.shape != (4, 4):
            raise InputError(f"affine must be 4x4, got shape {tuple(affine.shape)}")
        image = MetaTensor(torch.as_tensor(tensor, dtype=torch.float32).detach().cpu(), affine=affine)
        what = "input array"
    _check_volume(image, what, in_chans)
    return image, header, source


def _load_mgh(path: Path):
    """A FreeSurfer ``.mgz`` / ``.mgh`` volume as a ``MetaTensor [C, X, Y, Z]`` float32 with nibabel's voxel -> RAS
    affine (mm). The label map is written as NIfTI on the same grid (MGZ has no NIfTI header to keep)."""
    import nibabel as nib
    from monai.data import MetaTensor

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - any reader failure is the user's file
        raise InputError(f"{path}: cannot read it as FreeSurfer MGZ / MGH ({type(err).__name__}: {err})") from err
    affine = np.asarray(img.affine, dtype=np.float64)
    rzs = affine[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(rzs)) <= 1e-6 * np.prod(np.linalg.norm(rzs, axis=0)):
        raise InputError(f"{path}: its voxel-to-world affine is singular or not finite, so the scan's spacing and "
                         "orientation are unknown; fix it in FreeSurfer (mri_convert) and try again")
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    tensor = torch.from_numpy(np.ascontiguousarray(data))
    tensor = tensor[None] if tensor.ndim == 3 else tensor.permute(3, 0, 1, 2)  # frames -> channels
    return MetaTensor(tensor, affine=torch.as_tensor(affine))


def _check_volume(image, what: str, in_chans: int | None) -> None:
    spatial = tuple(image.shape[1:])
    if image.ndim != 4:
        raise InputError(
            f"{what}: expected a 3-D volume, got a {image.ndim - 1}-D image of shape {spatial}; "
            "rep3d models segment 3-D volumes"
        )
    if min(spatial) < 2:
        raise InputError(f"{what}: expected a 3-D volume, got shape {spatial} (a single slice)")
    if in_chans is not None and image.shape[0] != in_chans:
        raise InputError(
            f"{what}: the model expects {in_chans} channel(s), the input has {image.shape[0]} "
            f"(shape [C, X, Y, Z] = {tuple(image.shape)})"
        )


def is_prediction(path: str | Path) -> bool:
    """Whether ``path`` is a label map / probability file rep3d wrote (listed in its folder's marker, or its NIfTI
    header's ``descrip`` says so): such files are outputs, never inputs."""
    from rep3d.outputs import is_ours

    path = Path(path)
    if is_ours(path):
        return True
    try:
        return bytes(read_nifti_header(path)["descrip"]).rstrip(b"\0") == PREDICTION_DESCRIPTION
    except Exception:  # noqa: BLE001 - unreadable: certainly not ours
        return False


def find_volumes(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders (their ``.nii`` / ``.nii.gz`` / ``.mgz`` / ``.mgh`` files, sorted) into
    ``(files, [(input, problem)])``.

    Files in a folder that rep3d predict wrote (:func:`is_prediction`) are left out: rerunning ``predict DIR -o DIR``
    never segments its own earlier outputs. Such a file given by name is refused."""
    files, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)
                           and not p.name.startswith("."))
            found = [p for p in found if not is_prediction(p)]
            if not found:
                errors.append((item, "folder holds no .nii / .nii.gz / .mgz / .mgh files (other than rep3d's own "
                                     "outputs)"))
            files += found
        elif path.is_file() and is_prediction(path):
            errors.append((item, "is an output of rep3d predict (a label map or probabilities), not a scan; "
                                 "give the scan it was computed from"))
        elif path.is_file():
            files.append(path)
        else:
            errors.append((item, "no such file or folder"))
    return files, errors
