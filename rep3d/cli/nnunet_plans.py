"""``rep3d nnunet-plans``: add a rep3d configuration (inheriting from 3d_fullres) to a dataset's nnU-Net plans."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = "rep3d nnunet-plans -d 1 --model rep3d_tiny --kernel-size 21"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, metavar="ID", help="nnU-Net dataset id or name")
    parser.add_argument("--model", default="rep3d_tiny", help="rep3d model name (default rep3d_tiny)")
    parser.add_argument("--kernel-size", type=int, default=21, help="large-kernel size (default 21)")
    parser.add_argument("--configuration-name", default="3d_fullres_rep3d",
                        help="name of the new configuration (default 3d_fullres_rep3d)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: 3d_fullres's)")
    parser.add_argument("-p", "--plans-name", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing configuration of that name (default: refuse)")


def run(args: argparse.Namespace) -> int:
    from rep3d.errors import Rep3DValueError
    from rep3d.integrations.nnunet.plans import add_rep3d_configuration, mirrored_label_names, plans_file_for

    if args.kernel_size < 3 or args.kernel_size % 2 == 0:
        raise Rep3DValueError(f"--kernel-size must be an odd size >= 3 (the paper uses 21), got {args.kernel_size}")
    if args.batch_size is not None and args.batch_size < 1:
        raise Rep3DValueError(f"--batch-size must be >= 1, got {args.batch_size}")

    path = plans_file_for(args.dataset, args.plans_name)
    warnings = add_rep3d_configuration(path, args.configuration_name, overwrite=args.overwrite, model=args.model,
                                       kernel_size=args.kernel_size, batch_size=args.batch_size)
    sided = mirrored_label_names(path.parent / "dataset.json")
    trainer = "nnUNetTrainerRep3DNoMirroring" if sided else "nnUNetTrainerRep3D"
    if sided:
        warnings = [*warnings, f"labels {', '.join(sided)} name a side: mirroring would swap them, so train with "
                               "nnUNetTrainerRep3DNoMirroring (no mirroring augmentation or test-time mirroring)"]
    for warning in warnings:
        print(f"rep3d nnunet-plans: warning: {warning}", file=sys.stderr)
    print(f"rep3d nnunet-plans: added configuration {args.configuration_name!r} ({args.model}, k={args.kernel_size}) "
          f"to {path}\n  train it with: nnUNet_extTrainer=$(rep3d nnunet-trainer-path) nnUNetv2_train "
          f"{args.dataset} {args.configuration_name} FOLD -tr {trainer} -p {args.plans_name}")
    return 0
