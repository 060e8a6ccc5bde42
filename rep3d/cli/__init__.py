"""``rep3d`` command line: one module per sub-command (``add_arguments(parser)``, ``run(args) -> int`` and an
``EXAMPLE`` line), each a thin layer over library functions, and one error handler for all of them.

Start-up stays fast: only the module of the command being run is imported, and a command module imports nothing
heavy (torch, timm, monai, ...) at its top, only inside ``run``; so ``rep3d --help``, ``rep3d COMMAND --help`` and
``rep3d --version`` answer at once. Every option has a help text that states its default (:class:`HelpFormatter`
appends ``(default: X)`` where the text does not say it already).

A :class:`rep3d.errors.Rep3DError` (or an ``OSError`` about a path the user gave) ends the command with one line
``rep3d <command>: error: ...`` on stderr and exit status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from rep3d.errors import Rep3DError
from rep3d.version import __version__

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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the example epilog's line breaks and appends ``(default: X)`` (``(default: off)`` for a flag) to an
    option whose help does not mention its default; an option whose default is ``None`` must say in its own words
    what happens without it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            return text
        if action.nargs == 0:  # a flag
            return text + (" (default: off)" if action.default is False else "")
        default = action.default
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default)) if default else "none"
        return text + f" (default: {default})"


def command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (its first word that is not an option), or ``None``."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``rep3d`` parser. Only the sub-commands in ``commands`` (default: all) get their options, and only their
    modules are imported; the others are listed by name and help, which is all ``rep3d --help`` shows."""
    parser = argparse.ArgumentParser(prog="rep3d", description="Rep3D large-kernel 3-D segmentation",
                                     formatter_class=HelpFormatter,
                                     epilog="example: rep3d demo        (then: rep3d COMMAND --help)")
    parser.add_argument("--version", action="version", version=f"rep3d {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        sub_parser.set_defaults(_module=f"rep3d.cli.{module}")
        if commands is None or name in commands:
            command_module = importlib.import_module(f"rep3d.cli.{module}")
            command_module.add_arguments(sub_parser)
            sub_parser.epilog = f"example: {command_module.EXAMPLE}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``rep3d`` command; ``argv`` defaults to ``sys.argv[1:]`` and is what a command records (e.g. in a
    model card). Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command_in(argv)
    parser = build_parser([command] if command in COMMANDS else [])
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


KEEPS_FREED_MEMORY = ("predict", "evaluate", "train", "demo")
"""Commands whose process serves large tensors from a heap it keeps (:func:`rep3d.allocator.keep_freed_memory`):
they allocate hundreds of MiB per forward, and a fresh page-faulted block per activation is a large part of a
deployed forward at 96³ (``benchmarks/model_forward.py``). ``REP3D_KEEP_FREED_MEMORY=0`` turns it off."""


def keeps_freed_memory(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether the ``rep3d`` executable turns on :func:`rep3d.allocator.keep_freed_memory` for ``argv``."""
    return command_in(list(argv)) in KEEPS_FREED_MEMORY and environ.get("REP3D_KEEP_FREED_MEMORY", "1") != "0"


def console_main() -> int:
    """The ``rep3d`` executable (and ``python -m rep3d``): :func:`main` in a process of its own, which the heavy
    commands may tune (:data:`KEEPS_FREED_MEMORY`). Calling :func:`main` from Python leaves the process as it is."""
    argv = sys.argv[1:]
    if keeps_freed_memory(argv, os.environ):
        from rep3d.allocator import keep_freed_memory

        keep_freed_memory()
    return main(argv)


def recorded_command(args: argparse.Namespace) -> str:
    """The command line that ran ``args`` (from the argv given to :func:`main`), as a shell-quoted string."""
    words = [w for w in getattr(args, "argv", []) if w != "--debug"]
    return "rep3d " + shlex.join(words)


if __name__ == "__main__":
    sys.exit(console_main())
