"""Atomic training-state checkpoints (model, optimizer, scheduler, scaler, RNG, step) in a run folder's
``train_state/``, and the check that a new run may use its ``--out`` folder."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from rep3d.errors import Rep3DError

STATE_DIR = "train_state"
"""The folder inside a run's ``--out`` that holds its checkpoints, curves and summary."""


class CheckpointError(Rep3DError, RuntimeError):
    """A training checkpoint exists but cannot be read (damaged, or written by an incompatible version)."""


def last_checkpoint_path(out: str | os.PathLike) -> Path:
    """Where a run in ``out`` keeps its latest training state (``OUT/train_state/last.pt``)."""
    return Path(out) / STATE_DIR / "last.pt"


def require_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` if it is a file; otherwise a :class:`CheckpointError` that says there is nothing to resume.

    ``rep3d train --resume`` calls it before importing the trainer, so a wrong ``--out`` is reported in a second."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path} (nothing to resume); start without --resume, or "
                              "point --out at the folder of the run to continue")
    return path


class DiskFullError(Rep3DError, OSError):
    """A write failed because the disk is full; what was on disk before the write is kept."""


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (an ``OSError``, or torch's ``RuntimeError`` from its zip writer) means the disk is full."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    cause = err.__cause__ or err.__context__
    text = str(err).lower()
    return ("no space left" in text or "file write failed" in text or "disk quota" in text) or \
        (cause is not None and cause is not err and is_disk_full(cause))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename: a crash never leaves a torn file.

    A full disk raises :class:`DiskFullError`; the previous ``path`` is untouched (and the partial file removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)) and not isinstance(err, DiskFullError) and is_disk_full(err):
            kept = f"the previous {path.name} is kept and loadable" if path.exists() else "no earlier checkpoint exists"
            raise DiskFullError(errno.ENOSPC, f"the disk holding {path.parent} is full: cannot write {path.name} "
                                f"({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free); {kept}; free some "
                                "space, then continue with --resume") from err
        raise


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


STATE_KEYS = ("step", "model", "optimizer", "scheduler", "scaler", "rng", "best", "config")
"""What every training checkpoint written by :class:`rep3d.train.Trainer` holds."""


def temp_files(path: str | os.PathLike) -> list[Path]:
    """The ``.NAME.*.tmp`` files :func:`atomic_save` leaves next to ``path`` when the process is killed mid-write."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.glob(f".{path.name}.*.tmp") if p.is_file())


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the partial checkpoints killed writes of ``path`` left behind (each can be as large as a checkpoint).

    Call it only while no write of ``path`` can be in flight (at the start of a run, before the first checkpoint).
    Returns the files removed."""
    removed = []
    for tmp in temp_files(path):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training state saved by :func:`atomic_save` (tensors and plain containers only; no pickled code).

    Raises :class:`CheckpointError` when the file is missing, unreadable, or lacks one of :data:`STATE_KEYS`."""
    path = require_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read training checkpoint {path} ({type(exc).__name__}: {detail}); it is "
                              "truncated, damaged or not a rep3d checkpoint: start a new run with another --out"
                              ) from exc
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise CheckpointError(f"training checkpoint {path} lacks {', '.join(missing)}: it was not written by "
                              "`rep3d train` (or by an incompatible version); start a new run with another --out")
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_run_folder(out: Path) -> None:
    """Refuse a new run's ``--out`` that is a non-empty folder rep3d did not write (its files are never replaced)."""
    from rep3d.hub.publish import saved_by_rep3d
    from rep3d.outputs import check_folder_output

    check_folder_output(out, overwrite=True, flag="--out",
                        also_ours=lambda folder: saved_by_rep3d(folder) or (folder / STATE_DIR).is_dir())
