"""The run's surroundings: ranks (single process or ``torchrun`` DDP), device and autocast choice, the metrics log,
the learning-rate schedule, stop signals."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import platform
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rep3d.errors import Rep3DValueError
from rep3d.train.recipes import TrainConfig


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{ctx.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and ctx.enabled and device.index is None:
        device = torch.device(f"cuda:{ctx.local_rank}")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``None`` for full precision; on CUDA ``auto`` prefers bf16 and falls back to fp16 (with a grad scaler)."""
    if mode == "off" or device.type != "cuda":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            raise Rep3DValueError(f"--amp {mode} needs a CUDA device; this run is on {device}")
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate factor at ``step`` (0-based) of a ``total``-step run: linear warm-up ``(step + 1) / warmup``
    over the first ``warmup`` steps, then cosine from 1 down to ``min_ratio``, reached at step ``total``.

    rep3d's trainer and its nnU-Net trainer both use this one schedule. The warm-up is never shortened to fit a run:
    a run shorter than its warm-up stays in warm-up (its rate ends at ``total / warmup`` of the peak) rather than
    ending on the peak rate with no decay, and the rate at a step does not depend on how long the run is."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """:func:`warmup_cosine` for ``cfg``: linear warm-up to ``cfg.lr`` over ``cfg.warmup_steps``, then cosine decay
    to ``cfg.min_lr_ratio * cfg.lr`` at ``cfg.iterations`` (a ``LambdaLR`` factor)."""

    def factor(step: int) -> float:  # a function, not a partial: LambdaLR's state_dict then stores nothing of it
        return warmup_cosine(step, cfg.iterations, cfg.warmup_steps, cfg.min_lr_ratio)

    return factor


class RunLog:
    """Rank-0 CSV + TensorBoard scalars; on resume, rows after the resumed step are dropped."""

    def __init__(self, state_dir: Path, class_names: list[str], start_step: int, enabled: bool,
                 extra_fields: Sequence[str] = ()) -> None:
        self.enabled = enabled
        self.path = state_dir / "metrics.csv"
        self.fields = ["step", "loss", "lr", "seconds", "samples_per_s", "val_mean_dice"] + [
            f"val_dice_{name}" for name in class_names[1:]
        ] + list(extra_fields)
        self.writer = None
        if not enabled:
            return
        rows = []
        if self.path.exists() and start_step > 0:
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(state_dir / "tensorboard"), purge_step=start_step + 1)
        except ImportError:  # tensorboard is an optional extra: the CSV has everything
            self.writer = None

    def write(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({"step": step, **values})
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, float) and not math.isnan(value):
                    self.writer.add_scalar(key.replace("val_dice_", "val_dice/"), value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def parameter_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class StopFlag:
    """Turns SIGTERM / SIGINT into a flag checked between steps (the step in flight finishes first)."""

    def __init__(self) -> None:
        self.raised: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
