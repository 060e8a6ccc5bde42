"""``rep3d nnunet-pretrained``: a rep3d model's weights as a file for ``nnUNetv2_train -pretrained_weights``."""

from __future__ import annotations

import argparse

EXAMPLE = "rep3d nnunet-pretrained rep3d_tiny.phantom -o rep3d_tiny.pth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="a rep3d model with weights: rep3d_tiny.phantom, local-dir:PATH, hf-hub:ORG/NAME")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.pth", help="file to write")
    parser.add_argument("--in-chans", type=int,
                        help="input channels of the nnU-Net dataset, adapting the stem (default: the model's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing FILE (default: refuse)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rep3d.builder import create_model
    from rep3d.configs.pretrained import PretrainedCfg, model_arg
    from rep3d.errors import Rep3DValueError
    from rep3d.integrations.nnunet.weights import write_nnunet_pretrained
    from rep3d.outputs import check_file_output, install_file, model_source_files, staging_path

    if args.in_chans is not None and args.in_chans < 1:
        raise Rep3DValueError(f"--in-chans must be >= 1 (the nnU-Net dataset's input channels), got {args.in_chans}")
    check_file_output(args.output, overwrite=args.overwrite, reads=model_source_files(args.model))
    kwargs = {"in_chans": args.in_chans} if args.in_chans else {}
    model = create_model(args.model, pretrained=True, **kwargs)
    tmp = staging_path(args.output)
    write_nnunet_pretrained(model, tmp)
    path = install_file(tmp, Path(args.output), overwrite=args.overwrite, command="rep3d nnunet-pretrained")
    arch = PretrainedCfg.of(model).architecture
    kernel = model_arg(model, "kernel_size", 21)
    print(f"rep3d nnunet-pretrained: wrote {path}\n  the plan must build the same network: rep3d nnunet-plans -d ID "
          f"--model {arch} --kernel-size {kernel}\n  then: nnUNetv2_train ID 3d_fullres_rep3d FOLD -tr "
          f"nnUNetTrainerRep3D -pretrained_weights {path}")
    return 0
