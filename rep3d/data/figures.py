"""Orthogonal-slice PNGs with label overlays (PIL only, no matplotlib).

Volumes are numpy arrays indexed ``[X, Y, Z]`` in RAS+ orientation (nibabel / MONAI ``LoadImage`` order
without the channel axis; what :func:`rep3d.data.make_phantom` returns). Panels are drawn in radiological
convention: axial (X-Y plane, anterior up, patient's right on the viewer's left), coronal (X-Z, superior up,
right on the left) and sagittal (Y-Z, superior up, anterior on the left).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rep3d.errors import Rep3DValueError
from rep3d.presets import PAPER_CT

# 20 distinct colours (tab20-like); class k > 0 uses PALETTE[(k - 1) % 20]
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)


def _as_volume(name: str, x, ndim: int = 3) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != ndim:
        raise Rep3DValueError(
            f"save_overlay_png: {name} must be a 3-D array [X, Y, Z] (or [1, X, Y, Z]), got shape {x.shape}"
        )
    return x


def orthogonal_slices(vol: np.ndarray, centre: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three planes of ``vol[X, Y, Z, ...]`` through voxel ``centre = (i, j, k)``, in array order (views, no
    copy): ``vol[i]`` ``[Y, Z]``, ``vol[:, j]`` ``[X, Z]`` and ``vol[:, :, k]`` ``[X, Y]``."""
    i, j, k = centre
    return vol[i], vol[:, j], vol[:, :, k]


def _panels(vol: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal 2-D slices of ``vol[X, Y, Z]`` (RAS+) as display arrays [rows, cols]."""
    sagittal, coronal, axial = orthogonal_slices(vol, centre)
    return [axial[::-1, ::-1].T,  # rows: anterior->posterior, cols: right->left
            coronal[::-1, ::-1].T,  # rows: superior->inferior, cols: right->left
            sagittal[::-1, ::-1].T]  # rows: superior->inferior, cols: anterior->posterior


def _panel_sizes(shape: Sequence[int], spacing: Sequence[float], scale: float) -> list[tuple[int, int]]:
    """(width, height) in pixels of each panel so that a pixel is square in mm."""
    sx, sy, sz = spacing
    unit = min(spacing)
    X, Y, Z = shape
    dims = [(X * sx, Y * sy), (X * sx, Z * sz), (Y * sy, Z * sz)]
    return [(max(1, round(w / unit * scale)), max(1, round(h / unit * scale))) for w, h in dims]


def overlay_rgb(gray: np.ndarray, labels: np.ndarray | None, alpha: float) -> np.ndarray:
    """Blend a uint8 grey slice [r, c] with label colours -> uint8 RGB [r, c, 3]; background (0) left grey."""
    rgb = np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)
    if labels is not None:
        colours = np.array([(0, 0, 0), *PALETTE], dtype=np.float32)
        idx = np.where(labels > 0, (labels.astype(np.int64) - 1) % len(PALETTE) + 1, 0)
        mask = (labels > 0)[..., None]
        rgb = np.where(mask, (1 - alpha) * rgb + alpha * colours[idx], rgb)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _draw_figure(gray: np.ndarray, maps: dict[str, np.ndarray], centre: Sequence[int],
                 sizes: list[tuple[int, int]], class_names: Sequence[str] | None, alpha: float, title: str | None):
    """The PIL canvas of :func:`save_overlay_png`: one row per map (image first), then the colour legend."""
    from PIL import Image, ImageDraw

    rows = [("image", None)] + list(maps.items())
    pad, title_h = 4, 14
    width = sum(w for w, _ in sizes) + pad * (len(sizes) + 1)
    row_h = max(h for _, h in sizes) + title_h + pad
    present = sorted({int(v) for m in maps.values() for v in np.unique(m) if v > 0})
    legend_h = 16 * ((len(present) + 3) // 4) + pad if present else 0
    canvas = Image.new("RGB", (width, row_h * len(rows) + legend_h + pad), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for r, (row_name, lab) in enumerate(rows):
        y0 = r * row_h + pad
        if r == 0:
            row_name += "   axial | coronal | sagittal, patient's right on the left"
            row_name += f"   [{title}]" if title else ""
        draw.text((pad, y0), row_name, fill=(255, 255, 255))
        x0 = pad
        lab_panels = _panels(lab, centre) if lab is not None else [None] * 3
        for g, lp, (w, h) in zip(_panels(gray, centre), lab_panels, sizes, strict=True):
            rgb = overlay_rgb(
                np.ascontiguousarray(g), None if lp is None else np.ascontiguousarray(lp), alpha
            )
            canvas.paste(Image.fromarray(rgb).resize((w, h), Image.Resampling.NEAREST), (x0, y0 + title_h))
            x0 += w + pad
    if present:
        col_w = (width - pad) // 4
        for n, k in enumerate(present):
            x, y = pad + (n % 4) * col_w, row_h * len(rows) + pad + 16 * (n // 4)
            name = class_names[k] if class_names is not None and k < len(class_names) else f"class {k}"
            draw.rectangle((x, y + 2, x + 10, y + 12), fill=PALETTE[(k - 1) % len(PALETTE)])
            draw.text((x + 14, y), f"{k} {name}", fill=(255, 255, 255))
    return canvas


def save_overlay_png(
    path: str | Path,
    image,
    label=None,
    prediction=None,
    window: tuple[float, float] = PAPER_CT.intensity_window,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    centre: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.45,
    scale: float = 2.0,
    title: str | None = None,
) -> Path:
    """Write a PNG of axial / coronal / sagittal slices: a row for the image, one with ``label`` overlaid and
    one with ``prediction`` overlaid (rows whose array is ``None`` are left out), plus a colour legend.

    Args:
        path: output ``.png``.
        image: ``[X, Y, Z]`` (or ``[1, X, Y, Z]``) intensities, RAS+ axis order (numpy or torch).
        label: integer label map of the same shape, or ``None``.
        prediction: integer label map of the same shape, or ``None``.
        window: intensities mapped to black / white (HU for CT).
        spacing: voxel size (mm) along X, Y, Z, for the panels' aspect ratio.
        centre: voxel ``(i, j, k)`` the three planes pass through; default: the centroid of the foreground of
            ``label`` (else ``prediction``, else the volume centre).
        class_names: names for the legend (index = label value); default ``class 1``, ``class 2``, ...
        alpha: opacity of the label colours.
        scale: pixels per (smallest) voxel edge.
        title: text drawn after the first row's name (e.g. "synthetic phantom").

    Returns:
        the path written.
    """
    image = _as_volume("image", image).astype(np.float32)
    maps = {"label": label, "prediction": prediction}
    maps = {k: _as_volume(k, v).astype(np.int64) for k, v in maps.items() if v is not None}
    for name, m in maps.items():
        if m.shape != image.shape:
            raise Rep3DValueError(
                f"save_overlay_png: {name} shape {m.shape} differs from image shape {image.shape}"
            )
    lo, hi = map(float, window)
    if not hi > lo:
        raise Rep3DValueError(f"save_overlay_png: window must be (lo, hi) with hi > lo, got {window}")
    if centre is None:
        fg = next((m > 0 for m in maps.values() if (m > 0).any()), None)
        centre = (
            (np.argwhere(fg).mean(0) if fg is not None else (np.asarray(image.shape) - 1) / 2)
            .round()
            .astype(int)
        )
    centre = [int(np.clip(c, 0, n - 1)) for c, n in zip(centre, image.shape, strict=True)]
    gray = np.clip((image - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    canvas = _draw_figure(gray, maps, centre, _panel_sizes(image.shape, spacing, scale), class_names, alpha, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path
