"""``rep3d phantom``: write a synthetic CT phantom dataset in MSD layout (:func:`rep3d.data.write_msd_dataset`)."""

from __future__ import annotations

import argparse

from rep3d.presets import PHANTOM

EXAMPLE = "rep3d phantom data/phantom --num-train 24 --num-test 8 --preview phantom.png"
# rep3d.data.phantom's DEFAULT_SHAPE and PHANTOM_SETTINGS names, repeated so that `rep3d phantom --help` loads no
# numpy / torch; tests/test_cli_help.py checks that they agree
DEFAULT_SHAPE = (96, 96, 80)
PHANTOM_SETTINGS = ("default", "hard")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "outdir", help="output folder (MSD layout: imagesTr/ labelsTr/ imagesTs/ labelsTs/ dataset.json)"
    )
    parser.add_argument("--num-train", type=int, default=24, help="training cases (default 24)")
    parser.add_argument("--num-test", type=int, default=8, help="test cases, written with labels (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="master seed; each case derives its own (default 0)")
    parser.add_argument("--shape", type=int, nargs=3, default=DEFAULT_SHAPE, metavar=("X", "Y", "Z"),
                        help=f"volume shape in voxels (default {DEFAULT_SHAPE})")
    parser.add_argument("--spacing", type=float, nargs=3, default=PHANTOM.spacing, metavar=("SX", "SY", "SZ"),
                        help=f"voxel spacing in mm (default {PHANTOM.spacing}); the anatomy fills the field of view "
                             "shape x spacing")
    parser.add_argument("--setting", default="default", choices=PHANTOM_SETTINGS,
                        help="default: the demo's phantoms; hard: low contrast, heavy noise, spleen with the liver's "
                             "intensity (needs context; used by the ablation study)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset in OUTDIR (default: refuse)")
    parser.add_argument("--preview", metavar="PNG",
                        help="also write a PNG of slices through the kidneys of case 0 (default: none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from rep3d.data.figures import save_overlay_png
    from rep3d.data.phantom import DEFAULT_WINDOW, case_seed, make_phantom
    from rep3d.data.phantom_dataset import check_phantom_request, write_msd_dataset
    from rep3d.outputs import check_file_output, write_output
    from rep3d.presets import PHANTOM_CLASSES

    check_phantom_request(args.seed, args.shape, args.spacing, args.num_train + args.num_test)
    if args.preview:
        check_file_output(args.preview, overwrite=args.overwrite, flag="--preview")
    root = write_msd_dataset(args.outdir, num_train=args.num_train, num_test=args.num_test, seed=args.seed,
                             shape=args.shape, spacing=args.spacing, overwrite=args.overwrite,
                             progress=not args.quiet, setting=args.setting)
    if args.preview:
        case = make_phantom(case_seed(args.seed, "train" if args.num_train else "test", 0), args.shape, args.spacing,
                            setting=args.setting)
        kidneys = np.isin(case.label, [PHANTOM_CLASSES.index(k) for k in ("right_kidney", "left_kidney")])
        centre = np.argwhere(kidneys).mean(0).round().astype(int) if kidneys.any() else None
        write_output(args.preview, lambda tmp: save_overlay_png(  # planes through the kidneys: context tells them apart
            tmp, case.image, case.label, window=DEFAULT_WINDOW, spacing=args.spacing, centre=centre,
            class_names=PHANTOM_CLASSES, title="SYNTHETIC phantom",
        ), overwrite=args.overwrite, command="rep3d phantom")
        print(f"preview: {args.preview}")
    kind = "" if args.setting == "default" else f", setting {args.setting!r}"
    print(f"wrote {args.num_train} training and {args.num_test} test phantoms (synthetic{kind}) to {root}")
    return 0
