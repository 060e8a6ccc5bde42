"""``rep3d masks``: every block's learned receptive-field mask ``M`` against its distance prior ``P``
(:func:`rep3d.analysis.mask_report`) as a PNG (central slices, ``M/P`` by distance ring) and a JSON of the same
numbers plus each block's ``mask_stats()``."""

from __future__ import annotations

import argparse
import json

from rep3d.cli.erf import check_prefix_outputs, load_model, output_paths, write_png_output
from rep3d.errors import Rep3DValueError
from rep3d.outputs import write_text_output

EXAMPLE = "rep3d masks rep3d_tiny.phantom -o masks/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model name (rep3d_tiny.phantom, local-dir:RUN, "
                        "hf-hub:ORG/NAME); its pretrained weights are loaded")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help="load these weights instead (default: the pretrained ones)")
    parser.add_argument("--random-init", action="store_true",
                        help="do not load any weights: the initial masks (default: off)")
    parser.add_argument("--roi", type=int, nargs=3, metavar=("D", "H", "W"),
                        help="input size at which live and dead kernel taps are counted (default: the model cfg's "
                        "roi_size); a tap is dead when it only ever meets the zero padding of its block's feature map")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output prefix: writes OUT.png and OUT.json (a folder: OUT/masks.*)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT.png / OUT.json of an earlier run (default: off)")


def run(args: argparse.Namespace) -> int:
    from rep3d.analysis import mask_report, save_masks_png
    from rep3d.configs.pretrained import PretrainedCfg

    png, js = output_paths(args.output, "masks")
    check_prefix_outputs(args, png, js)
    model, weights = load_model(args)
    roi = tuple(args.roi) if args.roi else tuple(PretrainedCfg.of(model).roi_size or (64, 64, 64))
    if len(roi) != 3 or any(s < 1 for s in roi):
        raise Rep3DValueError(f"--roi needs 3 positive sizes, got {roi}")
    report = mask_report(model, input_size=roi)
    write_png_output(png, lambda tmp: save_masks_png(tmp, report, title=f"[{args.model}, {weights}]"),
                     overwrite=args.overwrite, command="rep3d masks")
    blocks = {name: {k: v for k, v in block.items() if k not in ("mask", "prior")} for name, block in report.items()}
    write_text_output(js, json.dumps({"model": args.model, "weights": weights, "roi": list(roi), "blocks": blocks},
                                     indent=2) + "\n", overwrite=args.overwrite, command="rep3d masks")
    width = max(len(n) for n in blocks)
    print(f"{'block'.ljust(width)}  mode   form      M/P centre  M/P edge  at_bound  negative  map       live taps  "
          "|M| live  M/P outer live ring")
    for name, block in blocks.items():
        s, live = block["mask_stats"], block["live"]
        rings = live["ratio_by_ring_live"]
        print(f"{name.ljust(width)}  {block['mode']:<6} {str(block['mask_form']):<9} {s['ratio_centre']:10.4f}  "
              f"{s['ratio_edge']:8.4f}  {s['at_bound']:8.4f}  {s['negative']:8.4f}  "
              f"{'x'.join(map(str, live['feature_size'])):<8}  "
              f"{live['live_taps']:>5}/{live['live_taps'] + live['dead_taps']:<5}"
              f"  {live['abs_mask_on_live']:8.3f}  {rings['mean'][-1]:.3f} (r={rings['ring'][-1]})")
    print(f"live taps at input {'x'.join(map(str, roi))}: the local/global reading of a block uses those only")
    print(f"{args.model}: {weights} weights\nwrote {png} and {js}")
    return 0
