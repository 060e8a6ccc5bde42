"""``rep3d`` command line: one module per sub-command (``add_arguments(parser)`` and ``run(args) -> int``), each a
thin layer over library functions, and one error handler for all of them.

A :class:`rep3d.errors.Rep3DError` (or an ``OSError`` about a path the user gave) ends the command with one line
``rep3d <command>: error: ...`` on stderr and exit status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence

from rep3d.errors import Rep3DError

# name -> (module under rep3d.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "segment a synthetic phantom with the bundled weights (no data, no network)"),
    "predict": ("predict", "segment NIfTI volumes with a model"),
    "phantom": ("phantom", "write a synthetic CT phantom dataset in MSD layout"),
    "train": ("train", "train a model on an MSD-layout dataset"),
    "evaluate": ("evaluate", "per-class Dice of a model on the labelled cases of an MSD dataset"),
    "erf": ("erf", "effective receptive field of a model: PNG (slices, radial profile) and JSON of its numbers"),
    "masks": ("masks", "learned receptive-field masks against the distance prior, per block: PNG and JSON"),
    "models": ("models", "list registered models with params and MACs"),
    "export": ("export", "export a folded model to ONNX, TorchScript, torch.export or a MONAI bundle"),
    "import-official": ("import_official", "convert an official Rep3D / 3D UX-Net checkpoint"),
    "nnunet-plans": ("nnunet_plans", "add a rep3d configuration to an nnU-Net v2 dataset's plans"),
    "nnunet-trainer-path": ("nnunet_trainer_path", "print the folder for nnUNet_extTrainer (rep3d's nnU-Net trainers)"),
    "nnunet-export": ("nnunet_export", "turn an nnU-Net fold trained with a rep3d network into a rep3d model folder"),
    "nnunet-pretrained": ("nnunet_pretrained", "write a rep3d model's weights for nnUNetv2_train -pretrained_weights"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rep3d", description="Rep3D large-kernel 3-D segmentation")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=f"rep3d.cli.{module}")
        importlib.import_module(f"rep3d.cli.{module}").add_arguments(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``rep3d`` command; ``argv`` defaults to ``sys.argv[1:]`` and is what a command records (e.g. in a
    model card). Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args.argv = argv
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (Rep3DError, OSError) as err:
        if args.debug:
            raise
        # one line, whatever the exception's own layout (a Rep3DWeightsError puts its fix on a second line)
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        print(f"rep3d {args.command}: error: {message}", file=sys.stderr)
        return 1


def recorded_command(args: argparse.Namespace) -> str:
    """The command line that ran ``args`` (from the argv given to :func:`main`), as a shell-quoted string."""
    words = [w for w in getattr(args, "argv", []) if w != "--debug"]
    return "rep3d " + shlex.join(words)


if __name__ == "__main__":
    sys.exit(main())
