"""Package a trained run folder as weights shipped inside rep3d (``rep3d/weights/``).

    python -m rep3d.hub.bundle RUN NAME [--dtype float16]

writes ``NAME.safetensors`` (weights, by default in float16 to stay small), ``NAME.json`` (the config) and
``NAME.md`` (the model card, with the run's metrics, command and training details) into ``rep3d/weights/``, and prints
the sha256 and the cfg entry to register in ``rep3d/models/zoo.py``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def bundle(run_dir: str | Path, name: str, *, dtype: torch.dtype | None = torch.float16,
           weights_dir: str | Path = WEIGHTS_DIR) -> dict[str, str | int]:
    """Re-save the best model of ``run_dir`` into ``weights_dir`` as ``name.{safetensors,json,md}``."""
    from rep3d.hub.publish import CARD_NAME, CONFIG_NAME, DEFAULT_FILENAME, save_pretrained
    from rep3d.hub.weights import sha256_file
    from rep3d.models.registry import create_model

    model = create_model(f"local-dir:{run_dir}", pretrained=True)
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", dtype=dtype)
        for src, suffix in ((DEFAULT_FILENAME, ".safetensors"), (CONFIG_NAME, ".json"), (CARD_NAME, ".md")):
            shutil.copyfile(folder / src, weights_dir / f"{name}{suffix}")
    path = weights_dir / f"{name}.safetensors"
    return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder written by rep3d train (a save_pretrained folder)")
    parser.add_argument("name", help="file stem, e.g. rep3d_tiny_phantom")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args(argv)
    info = bundle(args.run, args.name, dtype=getattr(torch, args.dtype))
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.2f} MB)\nsha256 {info['sha256']}")
    print(f'register in rep3d/models/zoo.py: bundled="{args.name}.safetensors", sha256="{info["sha256"]}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
