"""``rep3d models``: the registered models, optionally as a table with params, deployed params and MACs."""

from __future__ import annotations

import argparse
import json

from rep3d.outputs import check_file_output, write_text_output

EXAMPLE = "rep3d models 'rep3d_tiny*' --table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names (default: all)")
    parser.add_argument("--pretrained", action="store_true",
                        help="list only the arch.tag names that have weights (default: all names)")
    parser.add_argument("--table", action="store_true",
                        help="print params / deployed params / MACs as markdown (default: names only)")
    parser.add_argument("--json", metavar="FILE", help="also write the table rows as JSON (default: print only)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the --json FILE of an earlier run (default: off)")


def run(args: argparse.Namespace) -> int:
    from rep3d.cli.models_table import models_table
    from rep3d.models.registry import list_models

    if not (args.table or args.json):
        print("\n".join(list_models(args.pattern, pretrained=args.pretrained)))
        return 0
    if args.json:  # before the (slow) MAC counts: a file rep3d did not write is never replaced
        check_file_output(args.json, overwrite=args.overwrite, flag="--json")
    rows, markdown = models_table(args.pattern)
    print(markdown)
    if args.json:
        write_text_output(args.json, json.dumps(rows, indent=2), overwrite=args.overwrite, command="rep3d models")
    return 0
