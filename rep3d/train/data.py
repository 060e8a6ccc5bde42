"""Training data: cached deterministic preprocessing, per-step seeded augmentation, a resumable step sampler.

Every random decision of step ``s`` is seeded from ``(seed, s, slot)``, never from a worker's or the process's RNG,
so a run resumed at step ``s`` sees exactly the batches an uninterrupted run would, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as T
from torch.utils.data import DataLoader, Dataset, Sampler

from rep3d.data.msd import check_label_values
from rep3d.data.nifti import NiftiReader
from rep3d.errors import Rep3DError
from rep3d.inference.preprocess import CropToBodyd, model_space_transforms
from rep3d.train.recipes import TrainConfig


def _label_checker(num_classes: int):
    def check(label):
        where = str(getattr(label, "meta", {}).get("filename_or_obj", "label"))
        check_label_values(label, num_classes, where)
        return label

    return check


class _Preprocessing(T.Compose):
    """``Compose`` that lets a rep3d error (a bad label, an unusable header) through as itself: MONAI wraps every
    exception of a transform in ``RuntimeError("applying transform ...")``, which would hide the file and the fix."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except RuntimeError as err:
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, Rep3DError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from None


def preprocessing(cfg: TrainConfig, with_label: bool = True, num_classes: int | None = None) -> T.Compose:
    """Deterministic part: load, then the Predictor's own preprocessing (orient, resample to ``cfg.spacing``, window
    to [0, 1]: :func:`rep3d.inference.model_space_transforms`), then crop to the body and pad to the ROI.
    With ``num_classes`` the label's values are checked as it is loaded (:func:`rep3d.data.msd.check_label_values`:
    integer class indices ``0..num_classes-1``, else a :class:`~rep3d.errors.Rep3DDataError` naming the file)."""
    keys = ["image", "label"] if with_label else ["image"]
    checks = [T.Lambdad("label", _label_checker(num_classes))] if with_label and num_classes else []
    return _Preprocessing([
        T.LoadImaged(keys, image_only=True, reader=NiftiReader()),  # geometry as inference reads it
        *checks,
        T.EnsureChannelFirstd(keys),
        *model_space_transforms(spacing=cfg.spacing, orientation=cfg.orientation, intensity_window=None,
                                label_key="label" if with_label else None),
        # crop to the body on raw intensities, as the Predictor does (rep3d.inference.preprocess.body_box), widened
        # to hold every labelled voxel: the crop never drops anatomy (a lung at -850 HU is below a soft-tissue window)
        *([CropToBodyd(cfg.intensity_window, keys=keys)] if cfg.intensity_window is not None else []),
        *([T.ScaleIntensityRanged("image", a_min=cfg.intensity_window[0], a_max=cfg.intensity_window[1], b_min=0.0,
                                  b_max=1.0, clip=True)] if cfg.intensity_window is not None else []),
        T.SpatialPadd(keys, spatial_size=cfg.roi_size),
        T.EnsureTyped(keys, track_meta=False),
    ])


FLIP_AXES: tuple[int, ...] = ()
"""Axes :func:`augmentation` flips: none. Training records them as ``tta_flip_axes`` in the model's config, and the
Predictor's test-time augmentation uses only these flips."""


def augmentation(cfg: TrainConfig) -> T.Compose:
    """Random part (the paper's recipe): pos/neg crops, intensity shift, small rotation and scaling. No flips: left and
    right organs are told apart by position."""
    keys = ["image", "label"]
    pos, neg = cfg.pos_neg_ratio
    rot = cfg.rotate_range
    return T.Compose([
        T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=cfg.roi_size, pos=pos, neg=neg,
                                 num_samples=cfg.crops_per_subject, image_key="image", image_threshold=0.0),
        T.RandShiftIntensityd("image", offsets=cfg.shift_intensity, prob=0.5),
        T.RandAffined(keys, prob=cfg.affine_prob, rotate_range=(rot, rot, rot),
                      scale_range=(cfg.scale_range,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros",
                      spatial_size=cfg.roi_size),
        T.EnsureTyped(keys, track_meta=False),
    ])


def step_seed(seed: int, step: int, slot: int) -> int:
    """A 32-bit seed for the ``slot``-th subject of ``step`` (independent of workers and ranks' scheduling)."""
    return int(np.random.SeedSequence([seed, step, slot]).generate_state(1)[0])


class CachedVolumes(Dataset):
    """Preprocessed volumes held in memory; ``dataset[(step, slot, index)]`` returns that step's random crops."""

    def __init__(self, items: Sequence[dict[str, Any]], cfg: TrainConfig, num_classes: int | None = None) -> None:
        pre = preprocessing(cfg, num_classes=num_classes)
        self.volumes = [pre(dict(item)) for item in items]
        self.cfg = cfg
        self.augment = augmentation(cfg)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        step, slot, index = key
        self.augment.set_random_state(seed=step_seed(self.cfg.seed, step, slot))
        crops = self.augment(dict(self.volumes[index]))
        return {
            "image": torch.stack([c["image"] for c in crops]).float(),
            "label": torch.stack([c["label"] for c in crops]).long(),
        }


class StepSampler(Sampler):
    """Yields ``(step, slot, subject)`` for steps ``[start, total)``: each epoch a fresh permutation seeded by
    ``(seed, epoch)``, split across ranks; ``subjects_per_step`` subjects per rank and step."""

    def __init__(self, num_subjects: int, total_steps: int, start_step: int, seed: int, subjects_per_step: int = 1,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n = num_subjects
        self.total, self.start = total_steps, start_step
        self.seed, self.per_step = seed, subjects_per_step
        self.rank, self.world = rank, world_size

    def __len__(self) -> int:
        return max(self.total - self.start, 0) * self.per_step

    def subjects(self, step: int) -> list[int]:
        draws = self.per_step * self.world
        first = step * draws
        out = []
        for k in range(first + self.rank * self.per_step, first + (self.rank + 1) * self.per_step):
            epoch, pos = divmod(k, self.n)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            out.append(int(perm[pos]))
        return out

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for step in range(self.start, self.total):
            for slot, subject in enumerate(self.subjects(step)):
                yield step, self.rank * self.per_step + slot, subject


def collate_crops(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate every subject's crops along the batch axis: ``[subjects * crops, C, *roi]``."""
    return {key: torch.cat([b[key] for b in batch]) for key in batch[0]}


def train_loader(dataset: CachedVolumes, sampler: StepSampler, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=sampler.per_step, sampler=sampler, collate_fn=collate_crops,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
