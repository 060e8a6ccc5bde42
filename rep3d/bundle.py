"""Package a trained run folder as weights to ship inside rep3d (maintainers' tool; its command line is
:mod:`rep3d.cli.bundle`: ``python -m rep3d.cli.bundle RUN NAME -o rep3d/weights [--dtype float16]``).

:func:`bundle` writes ``NAME.safetensors`` (weights, by default in float16 to stay small), ``NAME.json`` (the
config) and ``NAME.md`` (the model card, with the run's metrics, command and training details) into the folder given
(there is no default: nothing is ever written into an installed package unasked) and returns the path, sha256 and
size to register in ``rep3d/models/zoo.py``. To ship them, write into ``rep3d/weights`` of a source checkout.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from rep3d.builder import create_model
from rep3d.hub import save_pretrained
from rep3d.hub.config import CARD_NAME, CONFIG_NAME, DEFAULT_FILENAME
from rep3d.hub.weights import sha256_file


def bundle(run_dir: str | Path, name: str, weights_dir: str | Path, *,
           dtype: torch.dtype | None = torch.float16) -> dict[str, str | int]:
    """Re-save the best model of ``run_dir`` into ``weights_dir`` as ``name.{safetensors,json,md}``."""
    model = create_model(f"local-dir:{run_dir}", pretrained=True)
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", dtype=dtype)
        for src, suffix in ((DEFAULT_FILENAME, ".safetensors"), (CONFIG_NAME, ".json"), (CARD_NAME, ".md")):
            shutil.copyfile(folder / src, weights_dir / f"{name}{suffix}")
    path = weights_dir / f"{name}.safetensors"
    return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}
