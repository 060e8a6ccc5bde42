"""Package a trained run folder as weights to ship inside rep3d (maintainers' tool, not a ``rep3d`` sub-command).

    python -m rep3d.cli.bundle RUN NAME -o rep3d/weights [--dtype float16]

writes ``NAME.safetensors`` (weights, by default in float16 to stay small), ``NAME.json`` (the config) and
``NAME.md`` (the model card, with the run's metrics, command and training details) into the output folder given with
``-o`` (there is no default: nothing is ever written into an installed package unasked), and prints the sha256 and
the cfg entry to register in ``rep3d/models/zoo.py``. To ship them, point ``-o`` at ``rep3d/weights`` of a source
checkout. The work is :func:`rep3d.bundle.bundle`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rep3d.cli.bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder written by rep3d train (a save_pretrained folder)")
    parser.add_argument("name", help="file stem, e.g. rep3d_tiny_phantom")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="folder to write NAME.{safetensors,json,md} into (e.g. rep3d/weights of a checkout)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args(argv)

    import torch

    from rep3d.bundle import bundle

    info = bundle(args.run, args.name, args.output, dtype=getattr(torch, args.dtype))
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.2f} MB)\nsha256 {info['sha256']}")
    print(f'register in rep3d/models/zoo.py: bundled="{args.name}.safetensors", sha256="{info["sha256"]}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
