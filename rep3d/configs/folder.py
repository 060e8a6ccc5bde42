"""Reading a model folder's ``config.json`` (local or from the Hub) as untrusted data.

The file is read under caps (:data:`MAX_CONFIG_BYTES`, :data:`MAX_CONFIG_DEPTH`), then split into the typed classes
of :mod:`rep3d.configs.cfg`. What the folder may say, and what is ignored:

* ``model_args``: only the model constructor's own arguments, type- and range-checked; timm's factory options
  (``checkpoint_path``, ``pretrained_cfg_overlay``, ``pretrained_strict``, ...) are refused by name;
* ``num_classes`` / ``label_names`` / ``model_args.num_classes`` must agree;
* ``pretrained_cfg``: only descriptive timm keys are kept (:data:`KEPT_TIMM_KEYS`); a weight source it names
  (``file``, ``url``, ``hf_hub_id``, ``bundled``, ...) is ignored: weights come from the folder's own safetensors
  file or from a path the caller gives;
* ``rep3d.weights.file``: a ``.safetensors`` file inside the folder (a relative path without ``..``);
* ``rep3d.metadata``: the input description (ROI, spacing, window, orientation, ...) is checked by :class:`InputCfg`;
  other entries are kept as data for the model card, every string cleaned of control characters.

Old files (the bundled ``rep3d_tiny_phantom.json``, folders written by earlier ``save_pretrained``) read unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from rep3d.configs.cfg import MAX_TEXT, InputCfg, LabelCfg, ModelCfg, Provenance, finite, text
from rep3d.configs.keys import INPUT_KEYS, KEPT_TIMM_KEYS, PROVENANCE_KEYS, SOURCE_KEYS
from rep3d.configs.pretrained import PretrainedCfg
from rep3d.errors import Rep3DError, Rep3DWeightsError, printable

MAX_CONFIG_BYTES = 4 * 2**20
"""A config.json larger than 4 MiB is refused before it is parsed (rep3d writes about 5 KiB)."""
MAX_CONFIG_DEPTH = 32
"""Nesting depth of a config.json (rep3d writes 6 levels)."""
FIX = "re-publish the folder with rep3d.save_pretrained / push_to_hub (or fix its config.json)"


@dataclass(frozen=True)
class FolderConfig:
    """A model folder's ``config.json``, checked: the typed parts plus the remaining metadata (plain data)."""

    model: ModelCfg
    input: InputCfg
    labels: LabelCfg
    provenance: Provenance
    weights_file: str
    sha256: str | None
    form: str
    timm_cfg: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def pretrained_cfg(self) -> dict[str, Any]:
        """The cfg dict a model built from this folder carries (timm's descriptive keys + rep3d's 3-D keys), with no
        weight source in it: the caller adds the one it resolved."""
        cfg: dict[str, Any] = {**self.timm_cfg, **self.metadata, "num_classes": self.labels.count}
        for key in INPUT_KEYS:
            value = getattr(self.input, key)
            if value is not None:
                cfg[key] = dict(value) if key == "training_distribution" else value
        if self.labels.names is not None:
            cfg["class_names"] = list(self.labels.names)
            cfg["label_names"] = list(self.labels.names)
        prov = self.provenance
        cfg["synthetic"] = prov.synthetic
        for key in PROVENANCE_KEYS:
            if key != "synthetic" and getattr(prov, key) is not None:
                cfg[key] = getattr(prov, key)
        return cfg


@dataclass(frozen=True)
class SavedConfig:
    """A ``config.json`` as :func:`rep3d.save_pretrained` writes it, read without checks (rep3d's own output, read
    back to write the model card or upload it): the top-level entries, and ``cfg``, the typed view of the saved
    ``pretrained_cfg`` (timm's keys) overlaid by ``rep3d.metadata`` (the 3-D keys)."""

    architecture: str
    num_classes: int | None
    model_args: Mapping[str, Any]
    form: str
    version: str | None
    cfg: PretrainedCfg

    @classmethod
    def from_json(cls, config: Mapping[str, Any]) -> SavedConfig:
        section = config.get("rep3d") or {}
        return cls(architecture=config.get("architecture"), num_classes=config.get("num_classes"),
                   model_args=config.get("model_args") or {}, form=section.get("form", "train"),
                   version=section.get("version"),
                   cfg=PretrainedCfg.from_dict({**(config.get("pretrained_cfg") or {}),
                                                **(section.get("metadata") or {}),
                                                "architecture": config.get("architecture")}))


def saved_config_json(*, architecture: str, num_classes: int, label_names: list[str] | None,
                      model_args: Mapping[str, Any], timm_cfg: Mapping[str, Any], version: str, form: str,
                      weights: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config.json`` layout :func:`rep3d.save_pretrained` writes (timm's Hub format plus the ``rep3d``
    section; see :mod:`rep3d.hub.config`), the inverse of :func:`read_folder_config`."""
    config: dict[str, Any] = {"architecture": architecture, "num_classes": num_classes}
    if label_names:
        config["label_names"] = list(label_names)
    config["model_args"] = dict(model_args)
    config["pretrained_cfg"] = dict(timm_cfg)
    config["rep3d"] = {"version": version, "form": form, "weights": dict(weights), "metadata": dict(metadata)}
    return config


def with_weights_entry(config: Mapping[str, Any], **entry: Any) -> dict[str, Any]:
    """A new ``config.json`` dict whose ``rep3d.weights`` section has ``entry`` added (e.g. the file's sha256)."""
    section = dict(config.get("rep3d") or {})
    section["weights"] = {**(section.get("weights") or {}), **entry}
    return {**config, "rep3d": section}


def rep3d_section(config: Any) -> dict[str, Any]:
    """The ``rep3d`` section of a parsed ``config.json`` (``{}`` when there is none or it is not an object)."""
    section = config.get("rep3d") if isinstance(config, Mapping) else None
    return section if isinstance(section, dict) else {}


def has_rep3d_section(config: Any) -> bool:
    """Whether a parsed ``config.json`` has a ``rep3d`` section (rep3d wrote it)."""
    return isinstance(config, dict) and isinstance(config.get("rep3d"), dict)


class CheckedCfg(dict):
    """A ``pretrained_cfg`` dict that rep3d's builder assembled from a checked folder config (a Python type, so no
    JSON file can claim to be one). The registry treats any other cfg naming a ``hf-hub`` / ``local-dir`` source as
    read by timm's own loader from an unchecked file (see :func:`timm_loaded_cfg`)."""


def timm_loaded_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A cfg that ``timm.create_model("hf-hub:..." / "local-dir:...")`` read from a folder's config.json without
    rep3d's checks: keep the one weight source timm set itself (the folder for ``local-dir``, the repository for
    ``hf-hub``) and drop every other source key the file may carry (``file``, ``bundled``, ``url``,
    ``hf_hub_filename``, ...), so the weights are the folder's own ``model.safetensors``."""
    own = ("source", "file") if cfg.get("source") == "local-dir" else ("source", "hf_hub_id")
    return {k: v for k, v in cfg.items() if k not in SOURCE_KEYS or k in own or k == "architecture"}


def check_timm_loaded_config(cfg: Mapping[str, Any], cache_dir: str | Path | None = None) -> None:
    """Refuse timm factory options in the ``model_args`` of the config.json that
    ``timm.create_model("local-dir:..." / "hf-hub:...")`` read: timm merges them into the caller's keyword arguments,
    where they can no longer be told apart from the caller's own (``pretrained_strict``, ``features_only``, ...). The
    file is read again from where timm read it (the folder, or the Hub cache timm just filled)."""
    from rep3d.configs.model_args import FACTORY_KEYS

    source = cfg.get("source")
    if source == "local-dir" and cfg.get("file"):
        path: Path | None = Path(str(cfg["file"])) / "config.json"
        name = f"local-dir:{cfg['file']}"
    elif source == "hf-hub" and cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = str(cfg["hf_hub_id"]).partition("@")
        cached = try_to_load_from_cache(repo, "config.json", cache_dir=cache_dir, revision=revision or None)
        path, name = (Path(cached) if isinstance(cached, str) else None), f"hf-hub:{cfg['hf_hub_id']}"
    else:
        return
    if path is None or not path.is_file():
        raise Rep3DWeightsError(name, str(path or name), "the config.json timm read cannot be found again to check it",
                                "load the model with rep3d.create_model instead", reason="config")
    config = load_config_json(path, name, str(path))
    args = config.get("model_args")
    refused = sorted(k for k in (args if isinstance(args, dict) else {}) if k in FACTORY_KEYS)
    if refused:
        raise Rep3DWeightsError(name, str(path), f"model_args holds {', '.join(map(repr, refused))}: timm factory "
                                "option(s) that a model folder may not set (they change how weights are loaded or what "
                                "is built)", FIX, reason="config")


def config_architecture(config: Mapping[str, Any]) -> Any:
    """The ``architecture`` a parsed ``config.json`` names, unchecked (``None`` when absent)."""
    return config.get("architecture")


def load_config_json(path: str | Path, name: str, where: str) -> dict[str, Any]:
    """Parse a ``config.json`` under the size and depth caps; raise :class:`Rep3DWeightsError` (reason ``config``)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise Rep3DWeightsError(name, where, f"config.json is {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} "
                                    "a model config may have (rep3d writes a few KiB)", FIX, reason="config")
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        config = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except Rep3DWeightsError:
        raise
    except RecursionError as err:
        raise _depth_error(name, where) from err
    except (OSError, ValueError) as err:
        raise Rep3DWeightsError(name, where, f"config.json is not valid JSON ({printable(err)[:200]})", FIX,
                                reason="config") from err
    if not isinstance(config, dict):
        raise Rep3DWeightsError(name, where, "config.json is not a JSON object", FIX, reason="config")
    if _depth(config) > MAX_CONFIG_DEPTH:
        raise _depth_error(name, where)
    return config


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a number JSON allows")


def _depth_error(name: str, where: str) -> Rep3DWeightsError:
    return Rep3DWeightsError(name, where, f"config.json is nested deeper than {MAX_CONFIG_DEPTH} levels (rep3d "
                             "writes 6)", FIX, reason="config")


def _depth(value: Any) -> int:
    """Nesting depth, without recursion (a hostile file must not raise RecursionError here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > MAX_CONFIG_DEPTH:
            return deepest
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def clean_data(value: Any) -> Any:
    """JSON data with every string (and key) cleaned of control characters and long strings refused."""
    if isinstance(value, str):
        return text(value, "config.json", "a string", limit=MAX_TEXT * 4, newlines=True)
    if isinstance(value, dict):
        return {text(k, "config.json", "a key", limit=256): clean_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_data(v) for v in value]
    return value


def read_folder_config(config: Mapping[str, Any], name: str, where: str, source: str) -> FolderConfig:
    """Check a parsed ``config.json`` and return its typed form; raise :class:`Rep3DWeightsError` (``config``)
    naming the problem. ``source`` (``"local-dir"``, ``"hf-hub"``) goes into the :class:`Provenance`."""
    try:
        return _read(config, source)
    except Rep3DWeightsError:
        raise
    except Rep3DError as err:
        raise Rep3DWeightsError(name, where, f"config.json: {err}", FIX, reason="config") from err


def _section(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Rep3DWeightsError("config.json", key, f"{key} must be a JSON object, got {type(value).__name__}", FIX,
                                reason="config")
    return value


def _read(config: Mapping[str, Any], source: str) -> FolderConfig:
    config = clean_data(dict(config))  # every string and key, before anything compares or keeps one
    rep3d = _section(config, "rep3d")
    meta = _section(rep3d, "metadata")
    timm_cfg = _section(config, "pretrained_cfg")
    args = config.get("model_args") or {}
    if not isinstance(args, dict):
        raise Rep3DError(f"model_args must be a JSON object of constructor arguments, got {type(args).__name__}")
    try:
        model = ModelCfg(config.get("architecture"), args)  # type: ignore[arg-type]
    except Rep3DError as err:
        raise Rep3DError(f"model_args: {err}") from err

    counts = {"num_classes": config.get("num_classes"), "model_args.num_classes": args.get("num_classes"),
              "pretrained_cfg.num_classes": timm_cfg.get("num_classes")}
    given = {k: v for k, v in counts.items() if v is not None}
    if len({json.dumps(v) for v in given.values()}) > 1:
        raise Rep3DError(f"the class counts disagree ({', '.join(f'{k}={v!r}' for k, v in given.items())}); a "
                         "folder's config must describe the weights it holds")
    count = next(iter(given.values()), model.args.get("num_classes", 16))
    names = config.get("label_names") or meta.get("class_names")
    if config.get("label_names") and meta.get("class_names") and list(config["label_names"]) != list(
            meta["class_names"]):
        raise Rep3DError("label_names and rep3d.metadata.class_names disagree")
    labels = LabelCfg(count, names)
    if "num_classes" not in model.args:
        model = ModelCfg(model.architecture, {**model.args, "num_classes": labels.count})

    in_chans = model.args.get("in_chans", 1)
    inputs = InputCfg(in_chans, **{k: meta.get(k) for k in INPUT_KEYS})
    license_id = timm_cfg.get("license", meta.get("license"))
    provenance = Provenance(source, None, license_id, meta.get("synthetic", False),
                            meta.get("dataset"), timm_cfg.get("description", meta.get("description")),
                            meta.get("origin"))
    weights = _section(rep3d, "weights")
    form = rep3d.get("form", "train")
    if form not in ("train", "deploy"):
        raise Rep3DError(f"rep3d.form must be 'train' or 'deploy', got {printable(repr(form))[:40]}")
    return FolderConfig(
        model=model, input=inputs, labels=labels, provenance=provenance,
        weights_file=_weights_file(weights.get("file", "model.safetensors")), sha256=_sha256(weights.get("sha256")),
        form=form, timm_cfg=_timm_cfg(timm_cfg), metadata=_metadata(meta),
    )


def _weights_file(filename: Any) -> str:
    """The folder's weight file: a relative ``.safetensors`` path inside the folder (no absolute path, no ``..``)."""
    parts = PurePosixPath(filename).parts if isinstance(filename, str) else ()
    if not parts or PurePosixPath(filename).is_absolute() or PureWindowsPath(filename).is_absolute() or any(
            part in ("..", "") for part in parts) or "\\" in filename:
        raise Rep3DError(f"rep3d.weights.file is {printable(repr(filename))[:200]}; it must be a file inside the "
                         "model's folder (a relative path without '..')")
    if not filename.endswith(".safetensors"):
        raise Rep3DError(f"rep3d.weights.file is {printable(repr(filename))[:200]}; a model folder's weights must be "
                         "a .safetensors file (a pickle can run code; pass it yourself with --checkpoint if you "
                         "trust it)")
    return filename


def _sha256(value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value)):
        raise Rep3DError(f"rep3d.weights.sha256 is {printable(repr(value))[:80]}; it must be 64 hexadecimal digits")
    return value


def _timm_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in KEPT_TIMM_KEYS:
        value = cfg.get(key)
        if value is None:
            continue
        if key in ("input_size", "mean", "std"):
            if not isinstance(value, list) or not 1 <= len(value) <= 4:
                raise Rep3DError(f"pretrained_cfg.{key} must be a short list of numbers, got {printable(value)[:80]}")
            value = tuple(finite(v, "pretrained_cfg", key) for v in value)
            if key == "input_size":
                value = tuple(int(v) for v in value)
        elif key in ("crop_pct",):
            value = finite(value, "pretrained_cfg", key, 0.0, 1.0, low_open=True)
        elif key == "fixed_input_size":
            value = bool(value) if isinstance(value, bool) else False
        else:
            value = text(value, "pretrained_cfg", key, newlines=key in ("description", "notes"))
        out[key] = value
    return out


def _metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata beyond the typed parts, checked where rep3d acts on it; weight-source keys are dropped."""
    out = {k: v for k, v in meta.items()
           if k not in SOURCE_KEYS and k not in INPUT_KEYS and k not in ("class_names", *PROVENANCE_KEYS)}
    if "metrics" in out:
        metrics = out["metrics"]
        if not isinstance(metrics, dict) or len(metrics) > 256:
            raise Rep3DError("rep3d.metadata.metrics must be a flat JSON object of at most 256 numbers")
        out["metrics"] = {k: v for k, v in metrics.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if "tta_flip_axes" in out:
        axes = out["tta_flip_axes"]
        if not isinstance(axes, list) or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= 4
                                                 for a in axes) or len(axes) > 3:
            raise Rep3DError(f"rep3d.metadata.tta_flip_axes must be a list of up to 3 axis indices, got {axes!r}")
        out["tta_flip_axes"] = tuple(axes)
    if "axis_order" in out and out["axis_order"] not in ("xyz", "zyx"):
        raise Rep3DError(f"rep3d.metadata.axis_order must be 'xyz' or 'zyx', got {out['axis_order']!r}")
    return out
