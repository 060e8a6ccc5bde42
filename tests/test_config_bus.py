"""The config bus: outside :mod:`rep3d.configs`, no module reads a model's config (``pretrained_cfg``,
``model_args``, a ``config.json``) by string key; they read the typed classes (:class:`PretrainedCfg`,
:class:`ModelCfg`, :class:`InputCfg`, ...) and filter with the key groups of :mod:`rep3d.configs.keys`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from rep3d.configs.keys import CFG_KEYS
from rep3d.configs.model_args import BLOCK_ARGS, COMMON_ARGS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rep3d"

CONFIG_VOCABULARY = CFG_KEYS | set(COMMON_ARGS) | {k for args in BLOCK_ARGS.values() for k in args} | {
    "model_args", "pretrained_cfg", "rep3d", "metadata", "weights", "form", "rep3d_form", "rep3d_architecture"}
"""Keys of a model config: ``pretrained_cfg`` keys, constructor arguments and ``config.json`` sections."""
CONFIG_RECEIVER = re.compile(r"cfg|config|meta|args|overlay", re.IGNORECASE)
"""What a config is called in rep3d's code (``cfg``, ``pretrained_cfg``, ``config``, ``metadata``, ``model_args``,
``kwargs``, ``overlay``)."""

ALLOWED: dict[str, str] = {
    # "path: expression" -> why it stays. Only foreign formats that share a key name with rep3d's config.
    "rep3d/integrations/nnunet/weights.py: configuration['architecture']":
        "nnU-Net's plans.json configuration (nnU-Net's own format, parsed where the plans are read)",
    "rep3d/integrations/nnunet/weights.py: configuration['spacing']":
        "nnU-Net's plans.json configuration (nnU-Net's own format, parsed where the plans are read)",
}
PENDING_FILES: dict[str, str] = {
    # files whose migration is still pending (none: issue 27's three parts are merged)
}


def config_reads(path: Path) -> list[tuple[int, str]]:
    """``(line, expression)`` of every string-key read of a config key in ``path``: ``x["key"]`` (not assignment
    targets) and ``x.get("key")`` / ``x.pop("key")`` / ``x.setdefault("key")`` where ``x`` is named as a config."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            receiver, key = node.value, node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "get", "pop", "setdefault") and node.args:
            receiver, key = node.func.value, node.args[0]
        else:
            continue
        if isinstance(key, ast.Constant) and key.value in CONFIG_VOCABULARY and CONFIG_RECEIVER.search(
                ast.unparse(receiver)):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(set(found))


def _reads_outside_configs() -> dict[str, list[tuple[int, str]]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("rep3d/configs/"):
            continue
        reads = config_reads(path)
        if reads:
            out[rel] = reads
    return out


def _entry(rel: str, expression: str) -> str:
    return f"{rel}: {expression}"


def test_no_module_outside_configs_reads_a_config_by_string_key():
    offending = [f"{rel}:{line}: {expr}" for rel, reads in _reads_outside_configs().items() for line, expr in reads
                 if _entry(rel, expr) not in ALLOWED and rel not in PENDING_FILES]
    assert not offending, ("string-key config reads outside rep3d/configs (read the typed classes of rep3d.configs "
                           "instead):\n" + "\n".join(offending))


def test_every_allow_list_entry_is_still_needed_and_has_a_reason():
    reads = _reads_outside_configs()
    present = {_entry(rel, expr) for rel, found in reads.items() for _, expr in found}
    stale = sorted(set(ALLOWED) - present) + sorted(set(PENDING_FILES) - set(reads))
    assert not stale, f"allow-list entries that no longer match a read (remove them): {stale}"
    assert len(ALLOWED) <= 4 and all(reason.strip() for reason in {**ALLOWED, **PENDING_FILES}.values())


def test_the_scan_sees_each_kind_of_string_key_read(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("def f(model, cfg, config):\n"
                      "    a = model.pretrained_cfg['spacing']\n"
                      "    b = cfg.get('roi_size')\n"
                      "    c = config['model_args']\n"
                      "    d = model.model_args.get('kernel_size', 21)\n"
                      "    cfg['tag'] = 'x'\n"  # a write is not a read
                      "    e = rows['spacing']\n"  # not named as a config
                      "    return a, b, c, d, e\n")
    assert [line for line, _ in config_reads(module)] == [2, 3, 4, 5]


def test_typed_view_reads_what_the_dict_readers_read():
    from rep3d.configs.pretrained import PretrainedCfg

    cfg = PretrainedCfg.from_dict({
        "architecture": "rep3d_tiny", "tag": "phantom", "label_names": ["bg", "liver"], "spacing": [2.0, 2.0, 2.5],
        "tta_flip_axes": [], "synthetic": True, "source": "hf-hub", "hf_hub_id": "org/name", "modality": "",
    })
    assert cfg.name == "rep3d_tiny.phantom" and cfg.class_names == ("bg", "liver") and cfg.spacing == (2.0, 2.0, 2.5)
    assert cfg.tta_flip_axes == () and cfg.synthetic is True and cfg.modality is None  # [] is "trained without flips"
    assert cfg.weights.names_weights and cfg.weights.source == "hf-hub" and cfg.weights.hf_hub_id == "org/name"
    empty = PretrainedCfg.from_dict(None)
    assert empty.name == "this model" and empty.tta_flip_axes is None and not empty.weights.names_weights


def test_cfg_changes_make_new_dicts():
    from rep3d.configs.pretrained import drop_mismatched_class_names, with_values, without_keys

    cfg = {"num_classes": 2, "class_names": ["a", "b", "c"], "label_names": ["a", "b"]}
    before = {k: list(v) if isinstance(v, list) else v for k, v in cfg.items()}
    assert with_values(cfg, num_classes=3)["num_classes"] == 3 and without_keys(cfg, ["class_names"]) != cfg
    assert drop_mismatched_class_names(cfg, 2) == {"num_classes": 2, "label_names": ["a", "b"]}
    assert cfg == before


def test_building_a_model_leaves_the_registered_cfgs_as_they_were():
    import copy

    import torch

    from rep3d.builder import create_model
    from rep3d.models.registry import ARCH_CFGS, VOLUME_METADATA, resolve_cfg

    registered = copy.deepcopy((ARCH_CFGS, VOLUME_METADATA))
    resolve_cfg("rep3d_tiny.phantom", overlay={"file": "x.safetensors", "spacing": (1.0, 1.0, 1.0)})
    with torch.device("meta"):
        model = create_model("rep3d_tiny.phantom", num_classes=3)
    assert "class_names" not in model.pretrained_cfg  # 9 phantom names do not describe a 3-class head
    assert registered == (ARCH_CFGS, VOLUME_METADATA)
