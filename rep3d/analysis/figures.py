"""PNG figures of the analysis instruments, drawn with PIL (as :mod:`rep3d.data.figures`; no matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rep3d.analysis.erf import ERFResult
from rep3d.data.figures import orthogonal_slices

PAD, TITLE_H = 6, 14
LINE_COLOURS = ((230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                (240, 50, 230), (210, 245, 60))


def heat_rgb(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map a 2-D array to uint8 RGB with a black-red-yellow-white ramp over ``[lo, hi]``."""
    t = np.clip((np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-30), 0.0, 1.0)
    rgb = np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=-1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def _slices(vol: np.ndarray, centre: Sequence[float]) -> list[tuple[str, np.ndarray]]:
    """The orthogonal planes through the voxel nearest ``centre``, titled by axis and index."""
    index = [int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, vol.shape)]
    return [(f"axis{a}={i}", plane) for a, (i, plane) in enumerate(zip(index, orthogonal_slices(vol, index)))]


def _paste_panel(canvas, draw, rgb: np.ndarray, x: int, y: int, side: int, title: str) -> None:
    from PIL import Image

    draw.text((x, y), title, fill=(255, 255, 255))
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    img = Image.fromarray(np.ascontiguousarray(rgb)).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                            Image.Resampling.NEAREST)
    canvas.paste(img, (x, y + TITLE_H))


def _line_plot(draw, box: tuple[int, int, int, int], series: Sequence[tuple[str, Sequence[float]]], title: str,
               *, log: bool = False, x_last: str | None = None, x_first: str = "0") -> None:
    """A minimal line plot of ``series`` (``(label, y values at x = 0, 1, ...)``) inside ``box`` (x0, y0, x1, y1);
    ``x_first`` / ``x_last`` label the ends of the x axis (default: ``0`` and the last index)."""
    x0, y0, x1, y1 = box
    draw.text((x0, y0), title, fill=(255, 255, 255))
    top, bottom, left, right = y0 + TITLE_H + 4, y1 - 14, x0 + 40, x1 - 4
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    ys = [np.asarray(v, dtype=np.float64) for _, v in series]
    finite = np.concatenate([y[np.isfinite(y) & ((y > 0) if log else True)] for y in ys]) if ys else np.array([])
    if finite.size == 0:
        return
    lo, hi = float(finite.min()), float(finite.max())
    if log:
        lo, hi = np.log10(lo), np.log10(hi)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(len(y) for y in ys)
    label = (lambda v: f"{10 ** v:.2g}") if log else (lambda v: f"{v:.3g}")
    draw.text((x0, top), label(hi), fill=(200, 200, 200))
    draw.text((x0, bottom - 10), label(lo), fill=(200, 200, 200))
    draw.text((left, bottom + 2), x_first, fill=(200, 200, 200))
    draw.text((right - 30, bottom + 2), x_last or f"{n - 1}", fill=(200, 200, 200))
    # legend: labels side by side (about 6 px per character), wrapping to a new row when the plot is too narrow
    legend, lx, ly = [], left + 4, top + 2
    for name, _ in series:
        width = max(6 * len(name) + 14, 40)
        if lx + width > right and lx > left + 4:
            lx, ly = left + 4, ly + 12
        legend.append((lx, ly))
        lx += width
    for idx, (name, _) in enumerate(series):
        y = ys[idx]
        colour = LINE_COLOURS[idx % len(LINE_COLOURS)]
        points = []
        for xi, v in enumerate(y):
            if not np.isfinite(v) or (log and v <= 0):
                continue
            v = np.log10(v) if log else v
            px = left + (right - left) * xi / max(n - 1, 1)
            py = bottom - (bottom - top) * (v - lo) / (hi - lo)
            points.append((px, py))
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        elif points:
            draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill=colour)
        draw.text(legend[idx], name, fill=colour)


def save_erf_png(path: str | Path, result: ERFResult, *, title: str = "", side: int = 192) -> Path:
    """ERF figure: three orthogonal slices through the centre (log colour scale, three decades below the maximum)
    and the radial profile (mean |gradient| per distance ring, log scale)."""
    from PIL import Image, ImageDraw

    plot_w = 2 * side
    width = 3 * (side + PAD) + plot_w + 2 * PAD
    height = side + TITLE_H * 2 + 3 * PAD + 40
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    numbers = ", ".join(f"{int(float(t) * 100)}%: {r:.3f}" for t, r in result.summary["area_ratio"].items())
    draw.text((PAD, PAD), f"ERF of {result.target} ({result.n_samples} inputs) {title}  |  volume fraction holding "
                          f"{numbers}", fill=(255, 255, 255))
    # log colour scale over three decades below the maximum: the tails of an ERF are what differ between models
    hi = float(np.log10(max(float(result.erf.max()), 1e-300)))
    shown = np.log10(np.maximum(result.erf, 10 ** (hi - 3)))
    y = PAD + TITLE_H
    for n, (name, plane) in enumerate(_slices(shown, result.centre)):
        _paste_panel(canvas, draw, heat_rgb(plane, hi - 3, hi), PAD + n * (side + PAD), y, side,
                     f"{name}, log10 |grad|, 3 decades")
    x = 3 * (side + PAD) + PAD
    _line_plot(draw, (x, y, x + plot_w, y + side + TITLE_H), [("mean |grad| per ring", result.summary[
        "radial_profile"])], "radial profile (ring = distance, voxels)", log=True,
               x_last=f"r {len(result.summary['radial_profile']) - 1}")
    return _save(canvas, path)


def save_masks_png(path: str | Path, report: dict[str, dict[str, Any]], *, title: str = "", side: int = 126
                   ) -> Path:
    """Mask figure: one row per block with the central axial slice of ``M``, of ``P`` and of ``M/P``, and ``M/P``
    by distance ring (mean, min, max)."""
    from PIL import Image, ImageDraw

    plot_w = 2 * side
    row_h = side + 2 * TITLE_H + 2 * PAD
    width = 3 * (side + PAD) + plot_w + 2 * PAD
    canvas = Image.new("RGB", (width, row_h * len(report) + TITLE_H + PAD), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), f"learned mask M vs prior P, central slices and M/P by ring {title}", fill=(255, 255, 255))
    for r, (name, block) in enumerate(report.items()):
        y = TITLE_H + PAD + r * row_h
        draw.text((PAD, y), f"{name} ({block['mode']}{', ' + block['mask_form'] if block['mask_form'] else ''})",
                  fill=(255, 255, 0))
        y += TITLE_H
        mask, prior = block["mask"], block["prior"]
        centre = [(k - 1) / 2 for k in mask.shape]
        ratio = mask / prior
        planes = [(mask, float(min(mask.min(), 0)), float(mask.max()), "M"), (prior, 0.0, float(prior.max()), "P"),
                  (ratio, float(ratio.min()), float(ratio.max()), "M/P")]
        for n, (vol, lo, hi, label) in enumerate(planes):
            _paste_panel(canvas, draw, heat_rgb(_slices(vol, centre)[0][1], lo, hi), PAD + n * (side + PAD), y, side,
                         f"{label} [{lo:.3g}, {hi:.3g}]")
        rings = block["ratio_by_ring"]
        x = 3 * (side + PAD) + PAD
        _line_plot(draw, (x, y, x + plot_w, y + side + TITLE_H),
                   [("mean", rings["mean"]), ("min", rings["min"]), ("max", rings["max"])], "M/P by distance ring")
    return _save(canvas, path)


def _save(canvas, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path


def save_convergence_png(path: str | Path, records: Sequence[dict[str, Any]], *, rings: Sequence[int] = (0, 2, 5, 10),
                         title: str = "", panel: int = 260) -> Path:
    """Teacher-kernel convergence: one panel per run (:func:`rep3d.analysis.kernel_convergence` record), the
    relative error of the effective kernel on a few distance ``rings`` against the record index (log scale)."""
    from PIL import Image, ImageDraw

    cols = min(4, max(1, len(records)))
    rows = -(-len(records) // cols)
    height = panel * 2 // 3
    canvas = Image.new("RGB", (cols * (panel + PAD) + PAD, rows * (height + PAD) + TITLE_H + PAD), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), f"relative error of the effective kernel per distance ring vs step {title}",
              fill=(255, 255, 255))
    for n, rec in enumerate(records):
        errors = np.asarray(rec["ring_error"], dtype=np.float64)
        x, y = PAD + (n % cols) * (panel + PAD), TITLE_H + PAD + (n // cols) * (height + PAD)
        series = [(f"r{r}", errors[:, r]) for r in rings if r < errors.shape[1]]
        steps = rec["steps"]
        flag = " DIVERGED" if rec.get("diverged") else ""
        _line_plot(draw, (x, y, x + panel, y + height), series,
                   f"{rec['variant']} lr {rec['lr']:g}{flag}", log=True, x_last=f"step {steps[-1]}")
    return _save(canvas, path)


def save_curves_png(path: str | Path, panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[float]]]]], *,
                    x_first: str = "0", x_last: str | None = None, log: Sequence[bool] | None = None,
                    width: int = 760, height: int = 300, title: str = "") -> Path:
    """Stacked line plots: one panel per ``(panel title, [(series label, y values at x = 0, 1, ...)])``; ``log[i]``
    puts panel ``i`` on a log scale; ``x_first`` / ``x_last`` label the ends of every x axis."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (width + 2 * PAD, len(panels) * (height + PAD) + TITLE_H + PAD), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), title, fill=(255, 255, 255))
    for n, (panel_title, series) in enumerate(panels):
        y = TITLE_H + PAD + n * (height + PAD)
        _line_plot(draw, (PAD, y, PAD + width, y + height), series, panel_title,
                   log=bool(log[n]) if log else False, x_last=x_last, x_first=x_first)
    return _save(canvas, path)
