"""``rep3d models --table``: the registered models as a markdown table with parameters, deployed parameters and MACs
at their ROI (the numbers come from :func:`rep3d.model_info`)."""

from __future__ import annotations


def models_table(pattern: str = "*") -> tuple[list[dict], str]:
    """``(rows, markdown)`` for every registered model matching ``pattern`` (computed on the meta device)."""
    from rep3d.models.info import model_info
    from rep3d.models.registry import list_models

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
