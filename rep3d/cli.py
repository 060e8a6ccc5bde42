"""``rep3d`` command line: one sub-command per job, each implemented next to the code it drives."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module defining ``add_arguments(parser)`` and ``run(args) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rep3d.demo", "segment a synthetic phantom with the bundled weights (no data, no network)"),
    "predict": ("rep3d.inference", "segment NIfTI volumes with a model"),
    "phantom": ("rep3d.data.phantom", "write a synthetic CT phantom dataset in MSD layout"),
    "train": ("rep3d.train", "train a model on an MSD-layout dataset"),
    "evaluate": ("rep3d.evaluate", "per-class Dice of a model on the labelled cases of an MSD dataset"),
    "models": ("rep3d.models.table", "list registered models with params and MACs"),
    "export": ("rep3d.export_cli", "export a folded model to ONNX, TorchScript, torch.export or a MONAI bundle"),
    "import-official": ("rep3d.official", "convert an official Rep3D / 3D UX-Net checkpoint"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rep3d", description="Rep3D large-kernel 3-D segmentation")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
