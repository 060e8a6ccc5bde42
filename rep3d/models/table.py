"""``rep3d models``: the registered models with parameters, deployed parameters and MACs at their ROI."""

from __future__ import annotations

import argparse
import json

from rep3d.models.info import model_info
from rep3d.models.registry import list_models


def models_table(pattern: str = "*") -> tuple[list[dict], str]:
    """``(rows, markdown)`` for every registered model matching ``pattern`` (computed on the meta device)."""
    rows = [model_info(name) for name in list_models(pattern)]
    lines = [
        "| model | params (M) | deployed params (M) | GMACs @ ROI | ROI | pretrained tags |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        tags = ", ".join(r["pretrained_tags"]) or "—"
        roi = "×".join(map(str, r["roi_size"]))
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.2f} | {r['deployed_params'] / 1e6:.2f} | "
                     f"{r['macs'] / 1e9:.1f} | {roi} | {tags} |")
    return rows, "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names (default: all)")
    parser.add_argument("--pretrained", action="store_true", help="list only the arch.tag names that have weights")
    parser.add_argument("--table", action="store_true", help="print params / deployed params / MACs as markdown")
    parser.add_argument("--json", metavar="FILE", help="also write the table rows as JSON")


def run(args: argparse.Namespace) -> int:
    if not (args.table or args.json):
        print("\n".join(list_models(args.pattern, pretrained=args.pretrained)))
        return 0
    rows, markdown = models_table(args.pattern)
    print(markdown)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0
