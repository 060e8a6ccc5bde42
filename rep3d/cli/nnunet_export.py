"""``rep3d nnunet-export``: an nnU-Net results fold (rep3d configuration) -> a ``save_pretrained`` folder."""

from __future__ import annotations

import argparse

EXAMPLE = ("rep3d nnunet-export $nnUNet_results/Dataset001_X/nnUNetTrainerRep3D__nnUNetPlans__3d_fullres_rep3d/fold_0 "
           "-o my_model/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fold_dir", metavar="RESULTS_FOLD_DIR",
                        help="$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIGURATION/fold_N")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write the model into")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file in the fold folder (default checkpoint_final.pth)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle the checkpoint fully, only for files you trust (default: weights only)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model files in a non-empty DIR (default: refuse)")


def run(args: argparse.Namespace) -> int:
    from rep3d.integrations.nnunet.weights import export_fold

    out = export_fold(args.fold_dir, args.output, checkpoint=args.checkpoint,
                      trust_checkpoint=args.trust_checkpoint, overwrite=args.overwrite)
    print(f"rep3d nnunet-export: wrote {out}\n  predict with: rep3d predict local-dir:{out} IMAGES -o OUTDIR")
    return 0
