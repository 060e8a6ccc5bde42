"""What ``rep3d train`` tells the user about time: durations, and the estimate of the rest of the run printed once a
few steps have been timed."""

from __future__ import annotations

__all__ = ["ESTIMATE_AFTER_STEPS", "format_duration", "format_estimate"]

ESTIMATE_AFTER_STEPS = 5
"""Steps timed (after the first, which pays one-off costs) before the run prints how long it will take."""


def format_duration(seconds: float) -> str:
    """``"40 s"``, ``"12 min"``, ``"2.6 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_estimate(seconds_per_step: float, step: int, iterations: int, val_every: int,
                    val_seconds: float | None = None) -> str:
    """The line ``rep3d train`` prints once it has timed a few steps: speed, the expected time of the rest of the run
    (``val_seconds``: one validation's time, once known) and how to shorten it with ``--iterations``."""
    left = max(iterations - step, 0)
    validations = len(range((step // val_every + 1) * val_every, iterations + 1, val_every)) + \
        (iterations % val_every != 0)
    total = left * seconds_per_step + (validations * val_seconds if val_seconds is not None else 0.0)
    validation = (f" + {validations} validation(s) of {format_duration(val_seconds)}" if val_seconds is not None
                  else f" + {validations} validation(s), timed at the first one")
    short = max(iterations // 5, 1)
    return (f"rep3d train: {seconds_per_step:.2f} s/step ({1 / seconds_per_step:.2f} steps/s); the remaining "
            f"{left} of {iterations} steps take about {format_duration(total)} "
            f"({format_duration(left * seconds_per_step)} of steps{validation}); for a shorter run pass "
            f"--iterations, e.g. --iterations {short} (about {format_duration(short * seconds_per_step)} of steps)")
