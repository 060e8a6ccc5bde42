"""Training recipes as data: the paper's (arXiv 2505.19603), a CPU-sized phantom recipe; the dataset presets (spacing,
window, orientation) come from :mod:`rep3d.presets`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from rep3d.errors import Rep3DValueError
from rep3d.presets import PAPER_CT, PHANTOM, PRESETS, get_preset

ROI_MULTIPLE = 16
"""Every registered model downsamples by 16: training crops are multiples of it."""


@dataclass
class TrainConfig:
    """Everything a run depends on; saved with every checkpoint and in the model card."""

    data: str = ""
    model: str = "rep3d_base"
    out: str = "runs/rep3d"
    recipe: str = "paper"
    dataset_preset: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    # preprocessing (model space)
    roi_size: tuple[int, int, int] = PAPER_CT.roi_size
    spacing: tuple[float, float, float] = PAPER_CT.spacing
    intensity_window: tuple[float, float] = PAPER_CT.intensity_window
    orientation: str = PAPER_CT.orientation
    # sampling and augmentation
    crops_per_subject: int = 2
    subjects_per_step: int = 1
    pos_neg_ratio: tuple[float, float] = (1.0, 1.0)
    shift_intensity: float = 0.1
    rotate_range: float = math.pi / 30
    scale_range: float = 0.1
    affine_prob: float = 0.5
    # optimisation
    iterations: int = 60_000
    lr: float = 1e-4
    weight_decay: float = 0.08
    warmup_steps: int = 500
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    amp: str = "auto"  # auto: bf16 on CUDA where supported, else fp16 with a scaler; off on CPU
    grad_checkpointing: bool = False
    channels_last: bool = True  # channels_last_3d activations: 1.3x faster CPU steps (benchmarks/README.md)
    # validation and checkpoints
    val_every: int = 500
    num_val: int = 0  # 0: 20 % of the labelled subjects, at least 1
    sw_overlap: float = 0.5
    sw_batch_size: int = 2
    checkpoint_every: int = 100
    # runtime
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    threads: int = 0  # 0: leave torch's default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise Rep3DValueError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        out = cls(**values)
        for name in ("roi_size", "spacing", "intensity_window", "pos_neg_ratio"):
            setattr(out, name, tuple(getattr(out, name)))
        out.validate()
        return out

    def validate(self) -> None:
        """Raise :class:`Rep3DValueError` naming the option when a value cannot run (a zero step count, a zero
        validation interval, an ROI the models cannot take, ...), before any data is loaded."""
        def bad(option: str, value: Any, want: str) -> Rep3DValueError:
            return Rep3DValueError(f"{option} must be {want}, got {value!r}")

        for name, option in (("iterations", "--iterations"), ("val_every", "--val-every"),
                             ("checkpoint_every", "--checkpoint-every"), ("crops_per_subject", "--crops-per-subject"),
                             ("subjects_per_step", "subjects_per_step"), ("sw_batch_size", "sw_batch_size")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(option, value, "a positive integer")
        for name, option in (("warmup_steps", "--warmup-steps"), ("num_val", "--num-val"), ("workers", "--workers"),
                             ("threads", "--threads"), ("seed", "--seed")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(option, value, "an integer >= 0")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise bad("--lr", self.lr, "a positive finite number")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise bad("--weight-decay", self.weight_decay, "a finite number >= 0")
        if len(self.roi_size) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < ROI_MULTIPLE * 2
                                          or s % ROI_MULTIPLE for s in self.roi_size):
            raise bad("--roi", self.roi_size, f"3 multiples of {ROI_MULTIPLE} (the models' total stride), each at "
                      f"least {2 * ROI_MULTIPLE} (the decoder's instance norm needs more than one voxel at 1/16 "
                      "resolution)")
        if len(self.spacing) != 3 or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0
                                             for s in self.spacing):
            raise bad("--spacing", self.spacing, "3 positive numbers (mm)")
        lo_hi = self.intensity_window
        if len(lo_hi) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in lo_hi) or \
                lo_hi[0] >= lo_hi[1]:
            raise bad("--window", lo_hi, "two finite numbers LO < HI")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise bad("sw_overlap", self.sw_overlap, "in [0, 1)")
        if not isinstance(self.model_args, dict):
            raise bad("model_args", self.model_args, "a dict of model constructor arguments")


RECIPES: dict[str, dict[str, Any]] = {
    # the paper's: 96³ pos/neg crops, 2 per subject, DiceCE, AdamW 1e-4 / wd 0.08, 60k iterations, val every 500
    "paper": dict(model="rep3d_base", roi_size=PAPER_CT.roi_size, iterations=60_000, lr=1e-4, weight_decay=0.08,
                  warmup_steps=500, val_every=500, checkpoint_every=500),
    # Sized for a 2-core CPU in well under an hour: rep3d_tiny on 64³ crops of the synthetic phantom.
    "phantom": dict(model="rep3d_tiny", dataset_preset="phantom", roi_size=PHANTOM.roi_size, iterations=1500,
                    lr=2e-3, weight_decay=0.01, warmup_steps=50, val_every=250, checkpoint_every=50,
                    sw_batch_size=1, workers=1),
}

DATASET_PRESETS: dict[str, dict[str, Any]] = {name: preset.recipe_values() for name, preset in PRESETS.items()}
"""What each preset of :data:`rep3d.presets.PRESETS` sets in a :class:`TrainConfig` (spacing, window, orientation)."""


def build_config(recipe: str = "paper", dataset_preset: str | None = None, **overrides: Any) -> TrainConfig:
    """Recipe defaults, then the dataset preset, then explicit overrides (``None`` values are ignored)."""
    if recipe not in RECIPES:
        raise Rep3DValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    values: dict[str, Any] = {"recipe": recipe, **RECIPES[recipe]}
    preset = dataset_preset or values.get("dataset_preset")
    if preset is not None:
        values.update(get_preset(preset).recipe_values())
        values["dataset_preset"] = preset
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
