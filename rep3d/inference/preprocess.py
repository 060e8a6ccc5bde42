"""The one preprocessing function: how a volume is brought onto a model's grid, for training, validation and the
:class:`~rep3d.inference.Predictor` alike.

Steps (MONAI dictionary transforms, each switched off by ``None``): ``Orientation`` to the axis codes (``"RAS"``)
-> ``Spacing`` to the voxel size in mm (bilinear for images, nearest for labels, border padding)
-> ``ScaleIntensityRange`` of the image: the window ``(lo, hi)`` mapped linearly to ``[0, 1]``, clipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai import transforms as T

# MONAI's default labels are LPS-flavoured; say explicitly that "R" means +x, "A" +y, "S" +z (RAS+ world).
AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def model_space_transforms(
    *,
    spacing: Sequence[float] | None,
    orientation: str | None,
    intensity_window: tuple[float, float] | None,
    image_key: str = "image",
    label_key: str | None = None,
) -> list:
    """Dictionary transforms taking ``{image_key: [C, X, Y, Z]}`` (and ``label_key``) onto the model grid.

    Args:
        spacing: target voxel size (mm) along the oriented axes, or ``None`` to keep the input's.
        orientation: axis codes such as ``"RAS"``, or ``None`` to keep the input's axis order.
        intensity_window: ``(lo, hi)`` mapped to ``[0, 1]`` with clipping, or ``None``.
        image_key / label_key: the dictionary keys; the label (if any) is oriented and resampled (nearest), never
            rescaled.
    """
    keys = [image_key] if label_key is None else [image_key, label_key]
    steps: list = []
    if orientation is not None:
        steps.append(T.Orientationd(keys, axcodes=orientation, labels=AXIS_LABELS))
    if spacing is not None:
        modes = ["bilinear"] if label_key is None else ["bilinear", "nearest"]
        steps.append(T.Spacingd(keys, pixdim=tuple(spacing), mode=modes, padding_mode="border"))
    if intensity_window is not None:
        lo, hi = intensity_window
        steps.append(T.ScaleIntensityRanged(image_key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    return steps


def to_model_space(image, *, spacing, orientation, intensity_window):
    """Apply :func:`model_space_transforms` to one image (a ``MetaTensor [C, X, Y, Z]``); returns a MetaTensor
    whose ``affine`` is the model grid's."""
    steps = model_space_transforms(spacing=spacing, orientation=orientation, intensity_window=intensity_window)
    return T.Compose(steps)({"image": image})["image"] if steps else image
