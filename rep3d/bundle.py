"""Package a trained run folder as weights to ship inside rep3d (maintainers' tool).

    python -m rep3d.bundle RUN NAME -o rep3d/weights [--dtype float16]

writes ``NAME.safetensors`` (weights, by default in float16 to stay small), ``NAME.json`` (the config) and
``NAME.md`` (the model card, with the run's metrics, command and training details) into the output folder given with
``-o`` (there is no default: nothing is ever written into an installed package unasked), and prints the sha256 and
the cfg entry to register in ``rep3d/models/zoo.py``. To ship them, point ``-o`` at ``rep3d/weights`` of a source
checkout.
"""

from __future__ import annotations

import argparse
import shutil
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rep3d.bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder written by rep3d train (a save_pretrained folder)")
    parser.add_argument("name", help="file stem, e.g. rep3d_tiny_phantom")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="folder to write NAME.{safetensors,json,md} into (e.g. rep3d/weights of a checkout)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args(argv)
    info = bundle(args.run, args.name, args.output, dtype=getattr(torch, args.dtype))
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.2f} MB)\nsha256 {info['sha256']}")
    print(f'register in rep3d/models/zoo.py: bundled="{args.name}.safetensors", sha256="{info["sha256"]}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
