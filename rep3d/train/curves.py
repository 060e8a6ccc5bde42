"""Training curves as a PNG (PIL only): the loss of every step and the validation mean Dice, from the run's
``train_state/metrics.csv``; written into the run folder as ``curves.png``."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

CURVES_NAME = "curves.png"
_PANEL = (560, 260)  # pixels of one plot area
_MARGIN = (64, 28, 20, 40)  # left, top, right, bottom
_LOSS, _SMOOTH, _DICE = (170, 190, 230), (0, 90, 200), (220, 60, 40)


def read_curves(metrics_csv: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """``(loss, val_dice)``: ``(step, value)`` pairs of the loss of each step and of each validation's mean Dice."""
    loss, dice = [], []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for key, points in (("loss", loss), ("val_mean_dice", dice)):
                try:
                    value = float(row.get(key) or "nan")
                except ValueError:
                    value = math.nan
                if math.isfinite(value):
                    points.append((step, value))
    return loss, dice


def _moving_average(values: Sequence[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - width] if i >= width else 0.0)
        out.append(total / min(i + 1, width))
    return out


def _panel(draw: ImageDraw.ImageDraw, top: int, title: str, series, steps: tuple[int, int],
           y_range: tuple[float, float]) -> None:
    left, top_margin, _, bottom = _MARGIN
    x0, y0 = left, top + top_margin
    x1, y1 = x0 + _PANEL[0], y0 + _PANEL[1]
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
    draw.text((x0, top + 8), title, fill=(0, 0, 0))
    lo, hi = y_range
    s_lo, s_hi = steps

    def xy(step: float, value: float) -> tuple[float, float]:
        return (x0 + (step - s_lo) / max(s_hi - s_lo, 1) * _PANEL[0],
                y1 - (value - lo) / (hi - lo or 1.0) * _PANEL[1])

    for frac in (0.0, 0.5, 1.0):  # y ticks
        value = lo + frac * (hi - lo)
        y = xy(s_lo, value)[1]
        draw.line((x0 - 4, y, x0, y), fill=(0, 0, 0))
        draw.text((4, y - 6), f"{value:.3g}", fill=(0, 0, 0))
    for step in (s_lo, (s_lo + s_hi) // 2, s_hi):  # x ticks
        x = xy(step, lo)[0]
        draw.line((x, y1, x, y1 + 4), fill=(0, 0, 0))
        draw.text((x - 10, y1 + 6), str(step), fill=(0, 0, 0))
    for points, colour, width, marker in series:
        if not points:
            continue
        coords = [xy(s, v) for s, v in points]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=width)
        if marker:
            for x, y in coords:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)


def save_curves_png(path: str | Path, loss: Sequence[tuple[int, float]],
                    val_dice: Sequence[tuple[int, float]], title: str = "") -> Path:
    """Write two panels: the training loss per step (light) with its moving average (dark), and the validation
    mean Dice per validation (dots). ``loss`` / ``val_dice`` are ``(step, value)`` pairs (:func:`read_curves`)."""
    path = Path(path)
    all_steps = [s for s, _ in loss] + [s for s, _ in val_dice] or [0, 1]
    steps = (0, max(all_steps))
    height = 2 * (_PANEL[1] + _MARGIN[1] + _MARGIN[3]) + 24
    image = Image.new("RGB", (_MARGIN[0] + _PANEL[0] + _MARGIN[2], height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((_MARGIN[0], 4), title, fill=(0, 0, 0))
    values = [v for _, v in loss]
    smooth = list(zip([s for s, _ in loss], _moving_average(values, max(1, len(values) // 20))))
    loss_range = (min(values, default=0.0), max(values, default=1.0))
    last = f", last {smooth[-1][1]:.4f} (moving average)" if smooth else ""
    _panel(draw, 24, f"training loss per step{last}", [(loss, _LOSS, 1, False), (smooth, _SMOOTH, 2, False)],
           steps, loss_range)
    best = max(val_dice, key=lambda p: p[1], default=None)
    best_text = f", best {best[1]:.4f} at step {best[0]}" if best else " (none yet)"
    _panel(draw, 24 + _PANEL[1] + _MARGIN[1] + _MARGIN[3], f"validation mean Dice{best_text}",
           [(list(val_dice), _DICE, 2, True)], steps, (0.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def write_run_curves(run_dir: str | Path, metrics_csv: str | Path, title: str = "") -> Path:
    """``<run_dir>/curves.png`` from the run's metrics CSV."""
    loss, dice = read_curves(metrics_csv)
    return save_curves_png(Path(run_dir) / CURVES_NAME, loss, dice, title=title)
