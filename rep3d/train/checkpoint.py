"""Atomic training-state checkpoints (model, optimizer, scheduler, scaler, RNG, step)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from rep3d.errors import Rep3DError


class CheckpointError(Rep3DError, RuntimeError):
    """A training checkpoint exists but cannot be read (damaged, or written by an incompatible version)."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training state saved by :func:`atomic_save` (tensors and plain containers only; no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}; start without --resume or point --out at the run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read training checkpoint {path}: {exc}; it may be from another rep3d version "
                           "or damaged — start a new run with another --out") from exc


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
