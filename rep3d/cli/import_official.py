"""``rep3d import-official``: convert an official Rep3D / 3D UX-Net checkpoint into a rep3d model folder
(:func:`rep3d.official.load_official_checkpoint`, then :func:`rep3d.hub.save_pretrained`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rep3d.errors import Rep3DValueError

EXAMPLE = "rep3d import-official best_metric_model.pth -o rep3d_official/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="official checkpoint (.pth via torch.load(weights_only=True), "
                        "or .safetensors)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="folder to write (config.json, model.safetensors, README.md; see rep3d.save_pretrained)")
    parser.add_argument("--model", default=None, help="rep3d model name (default: inferred from tensor shapes)")
    parser.add_argument("--form", choices=("train", "deploy"), default="train",
                        help="train: unmodulated kernel + BatchNorm (fine-tunable); deploy: folded (default: train)")
    parser.add_argument("--no-strict", dest="strict", action="store_false",
                        help="import even if some tensors are not understood, reporting them (default: refuse)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier rep3d model folder at -o; other files are kept "
                             "(default: off)")


def run(args: argparse.Namespace) -> int:
    from rep3d.hub import save_pretrained
    from rep3d.hub.publish import check_saved_folder
    from rep3d.official import load_official_checkpoint
    from rep3d.outputs import read_files

    # a Rep3DWeightsError (unreadable / unknown checkpoint) reaches rep3d.cli.main's handler: one line, exit 1
    if args.output.exists() and not args.output.is_dir():
        raise Rep3DValueError(f"-o {args.output} is a file; give a folder to write config.json, model.safetensors "
                              "and README.md into")
    reads = read_files([args.checkpoint])
    check_saved_folder(args.output, overwrite=args.overwrite, reads=reads)  # before the (long) conversion
    model, result = load_official_checkpoint(args.checkpoint, args.model, form=args.form, strict=args.strict,
                                             report=False)
    description = (f"Converted by `rep3d import-official` from the official {result.family} checkpoint "
                   f"`{args.checkpoint.name}`. The input table below is the paper's AMOS-CT recipe (rep3d's default "
                   "for this architecture): confirm it matches the data the checkpoint was trained on.")
    save_pretrained(model, args.output, description=description, license="other",
                    command=f"rep3d import-official {args.checkpoint.name} -o {args.output.name} --form {args.form}",
                    overwrite=args.overwrite, reads=[args.checkpoint])
    print(result)
    print(f"wrote {args.output}")
    return 0
