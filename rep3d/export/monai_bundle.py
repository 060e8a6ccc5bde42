"""A MONAI bundle for a folded rep3d model: the same pipeline as ``rep3d predict``, in MONAI's config language.

Layout (MONAI Bundle specification: ``LICENSE``, ``configs/metadata.json`` and ``models/model.pt`` required)::

    LICENSE                  the license of the configs and weights (the model cfg's ``license``)
    configs/metadata.json    MONAI bundle metadata (schema, network_data_format, classes, versions, and the rep3d
                             architecture + arguments that rebuild the network for models/model.pt)
    configs/inference.json   LoadImaged -> Orientationd -> Spacingd -> CopyItemsd (the raw intensities) ->
                             ScaleIntensityRanged (from the model cfg); with a window, the sliding window runs on the
                             body's box (raw intensities above body_floor, opened, plus body_margin voxels) and the
                             rest is background, as rep3d's Predictor segments;
                             SlidingWindowInferer at the model's ROI blending per-window softmax (as rep3d does);
                             Invertd back to the input grid (bilinear on probabilities), argmax, SaveImaged
    models/model.pt          the folded network's state dict (safe to load with ``torch.load(weights_only=True)``)
    models/model.ts          the TorchScript network (no rep3d needed to run it)
    docs/README.md           the model card plus how to run the bundle

Run it with ``python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir IN
--output_dir OUT``: every ``*.nii`` / ``*.nii.gz`` in ``IN`` becomes ``OUT/<name>_seg.nii.gz``. The config has the
properties MONAI's ``ConfigWorkflow(workflow_type="infer")`` requires (``evaluator`` included; its ``run()`` is the
loop above, without MONAI's optional ignite dependency).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rep3d.export.torchscript import export_torchscript, load_torchscript
from rep3d.inference.model_cfg import ModelConfig, model_config

BUNDLE_VERSION = "0.1.0"
METADATA_SCHEMA = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                   "meta_schema_20240725.json")
"""The metadata JSON schema MONAI's own test bundles name (``schema`` key; MONAI's ``verify_metadata`` fetches it)."""
LICENSE_TEXTS = {
    "apache-2.0": "Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0)",
    "mit": "MIT License (https://opensource.org/licenses/MIT)",
    "cc-by-4.0": "Creative Commons Attribution 4.0 (https://creativecommons.org/licenses/by/4.0/)",
}


def inference_config(model: nn.Module, roi: Sequence[int], *, overlap: float = 0.5) -> dict[str, Any]:
    """``configs/inference.json`` for ``model`` (its config gives orientation, spacing and window)."""
    cfg = model_config(model).input
    preprocessing: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "ensure_channel_first": True, "dtype": "$numpy.float32",
         "image_only": True},
    ]
    orientation = checked_axcodes(cfg.orientation or "RAS")
    preprocessing.append({"_target_": "Orientationd", "keys": "image", "axcodes": orientation,
                          "labels": [["L", "R"], ["P", "A"], ["I", "S"]]})
    if cfg.spacing:
        preprocessing.append({"_target_": "Spacingd", "keys": "image", "pixdim": [float(s) for s in cfg.spacing],
                              "mode": "bilinear", "padding_mode": "border"})
    window = cfg.intensity_window
    if window is None:
        from rep3d.presets import MODALITY_WINDOWS

        window = MODALITY_WINDOWS.get(str(cfg.modality or "").upper())
    if window is not None:
        # the body mask needs the intensities below the window (a lung at -850 HU is anatomy, not air)
        preprocessing.append({"_target_": "CopyItemsd", "keys": "image", "names": "body_intensities"})
        preprocessing.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": float(window[0]),
                              "a_max": float(window[1]), "b_min": 0.0, "b_max": 1.0, "clip": True})
    # The body's box as rep3d's Predictor segments (rep3d.inference.preprocess.body_box): raw intensities above
    # body_floor (a number below), opened by one voxel, plus body_margin voxels; without a window there is no body
    # rule and the whole grid is segmented. The expressions are fixed code: the model's cfg only gives the numbers.
    whole_grid = "tuple(slice(0, n) for n in keep.shape)"
    body_mask = ("$lambda raw: (lambda m: torch.nn.functional.max_pool3d(-torch.nn.functional.max_pool3d(-m, 3, 1, 1), "
                 "3, 1, 1) if min(m.shape[2:]) >= 3 else m)((torch.as_tensor(raw) > @body_floor).any(0).float()"
                 "[None, None])[0, 0] > 0")
    foreground_box = ("$lambda raw: (lambda keep: tuple(slice(max(0, int(i.min()) - @body_margin), min(n, int(i.max()) "
                      "+ 1 + @body_margin)) for i, n in zip(torch.nonzero(keep, as_tuple=True), keep.shape)) "
                      f"if bool(keep.any()) else {whole_grid})(@body_mask(raw))" if window is not None
                      else "$lambda image: tuple(slice(0, n) for n in image.shape[1:])")
    body_rule: dict[str, Any] = {}
    if window is not None:
        from rep3d.inference.preprocess import BODY_MARGIN, body_floor

        body_rule = {"body_floor": float(body_floor(window, cfg.modality or None)),
                     "body_margin": int(BODY_MARGIN), "body_mask": body_mask}
    return {
        "imports": ["$import glob", "$import os", "$import types", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*')))",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location=@device)",
        # rep3d blends per-window probabilities, not logits: the softmax belongs to the network the inferer calls
        "network": "$torch.nn.Sequential(@network_def, torch.nn.Softmax(dim=1)).to(@device).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': path} for path in @datalist]",
                    "transform": "@preprocessing"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(r) for r in roi], "sw_batch_size": 1,
                    "overlap": overlap, "mode": "gaussian", "padding_mode": "constant", "cval": 0.0},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False, "print_log": False},
        ]},
        **body_rule,
        "foreground_box": foreground_box,
        # outside the box the probabilities are background with certainty, so that resampling back to the input grid
        # blends exactly as the Predictor does
        "background_outside": "$lambda p, box, shape: torch.cat([torch.nn.functional.pad(p[k], [v for b, n in "
                              "reversed(list(zip(box, shape))) for v in (b.start, n - b.stop)], value=fill) "
                              "for k, fill in ((slice(0, 1), 1.0), (slice(1, None), 0.0))])",
        "segment": "$lambda image, box: @background_outside(@inferer(image[None][(slice(None), slice(None), *box)]"
                   ".to(@device), @network)[0].cpu(), box, image.shape[1:])",
        # one volume at a time, without MONAI's ignite-based engines (ignite is an optional MONAI dependency)
        "predict": "$torch.no_grad()(lambda item: @postprocessing(dict(item, pred=@segment(item['image'], "
                   "@foreground_box(item.get('body_intensities', item['image']))))))",
        # MONAI's inference workflow property: an object with run(), here the plain loop over the dataset
        "evaluator": "$types.SimpleNamespace(run=lambda: [@predict(item) for item in @dataset])",
        "initialize": ["$os.makedirs(@output_dir, exist_ok=True)"],
        "run": ["$@evaluator.run()"],
    }


def bundle_metadata(model: nn.Module, roi: Sequence[int], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's bundle metadata fields, filled from the model and its cfg."""
    import monai
    import numpy

    from rep3d.version import __version__

    cfg = model_config(model)
    prov, inputs = cfg.provenance, cfg.input
    num_classes = int(cfg.num_classes or 0)
    names = list(cfg.class_names or [f"class_{i}" for i in range(num_classes)])
    synthetic = prov.synthetic
    name = _bundle_name(model, cfg)
    description = prov.description or f"{name} segmentation network exported by rep3d {__version__}"
    modality = str(inputs.modality or "CT")
    meta = {
        "schema": METADATA_SCHEMA,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by rep3d {__version__} (rep3d export --format monai-bundle)"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nibabel": _version("nibabel")},
        "name": name,
        "task": "3-D segmentation" + (" (SYNTHETIC training data)" if synthetic else ""),
        "description": description,
        "authors": "rep3d",
        "copyright": f"license: {prov.license or 'unknown'}",
        "data_source": prov.dataset or "unknown",
        "data_type": "nibabel",
        "image_classes": f"{int(getattr(model, 'in_chans', 1))} channel(s), {modality} intensities",
        "label_classes": ", ".join(f"{i}: {n}" for i, n in enumerate(names)),
        "pred_classes": ", ".join(f"{i}: {n}" for i, n in enumerate(names)),
        "eval_metrics": dict(cfg.metrics),
        "intended_use": "research only, not for clinical use" + ("; trained on synthetic phantoms" * synthetic),
        "references": [f"{cfg.paper_name} ({cfg.paper_ids})".strip()],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield" if modality.upper() == "CT" else "magnitude",
                "modality": modality, "num_channels": int(getattr(model, "in_chans", 1)),
                "spatial_shape": [int(r) for r in roi], "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": True, "channel_def": {"0": "image"},
            }},
            # the network's output: one logit channel per class (the spec's "labels": argmax is the label)
            "outputs": {"pred": {
                "type": "image", "format": "labels", "modality": "n/a", "num_channels": num_classes,
                "spatial_shape": [int(r) for r in roi], "dtype": "float32", "value_range": [],
                "is_patch_data": True, "channel_def": {str(i): n for i, n in enumerate(names)},
            }},
            "post_processed_outputs": {"pred": {
                "type": "image", "format": "segmentation", "modality": "n/a", "num_channels": 1,
                "spatial_shape": ["*", "*", "*"], "dtype": "uint8", "value_range": [0, max(num_classes - 1, 0)],
                "is_patch_data": False, "channel_def": {"0": "label map: " + ", ".join(
                    f"{i} = {n}" for i, n in enumerate(names))},
            }},
        },
        "rep3d": {
            "roi_size": [int(r) for r in roi], "spacing": _list(inputs.spacing),
            "orientation": inputs.orientation or "RAS", "intensity_window": _list(inputs.intensity_window),
            "synthetic": synthetic,
            # models/model.pt is this network's state dict: rep3d.create_model(architecture, **model_args) rebuilds it
            "architecture": cfg.architecture or type(model).__name__,
            "model_args": _json_safe(getattr(model, "model_args", None) or {}),
        },
    }
    meta.update(extra or {})
    return as_bundle_data(meta)


def bundle_readme(model: nn.Module, roi: Sequence[int]) -> str:
    """``docs/README.md``: how to run the bundle, then rep3d's model card."""
    from rep3d.hub.publish import model_card, model_config

    card = model_card(model, model_config(model))
    if card.startswith("---"):  # drop the Hub's YAML header: a bundle's metadata lives in configs/metadata.json
        end = card.find("\n---", 3)
        card = card[end + 4:].lstrip() if end > 0 else card
    usage = (
        "# MONAI bundle\n\n"
        "Exported by `rep3d export --format monai-bundle`: the folded network as TorchScript (`models/model.ts`, "
        "runs without rep3d) and as a state dict (`models/model.pt`; `configs/metadata.json` names the rep3d "
        "architecture and arguments that rebuild it), the license in `LICENSE`, and the inference pipeline of "
        "`rep3d predict` in `configs/inference.json` "
        f"(orientation, spacing, intensity window, sliding window at {list(roi)} with overlap 0.5, inversion to "
        "the input grid, label map saved as `<name>_seg.nii.gz`).\n\n"
        "```bash\npython -m monai.bundle run --config_file configs/inference.json --bundle_root . \\\n"
        "    --dataset_dir /path/to/niftis --output_dir /path/to/output\n```\n\n"
    )
    return usage + card


def bundle_license(model: nn.Module) -> str:
    """``LICENSE``: the license of the bundle's configs and weights, from the model's provenance."""
    cfg = model_config(model)
    key = str(cfg.provenance.license or "").strip()
    name = _bundle_name(model, cfg)
    if not key:
        return (f"{name}: no license was recorded with these weights (the model cfg has no 'license' key).\n"
                "Ask whoever trained them before redistributing this bundle.\n")
    text = LICENSE_TEXTS.get(key.lower(), key)
    return (f"The configuration files and model weights of this bundle ({name}) are licensed under the {text}.\n"
            f"SPDX-License-Identifier: {key}\n")


def write_monai_bundle(model: nn.Module, folder: str | Path, *, roi: Sequence[int],
                       metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the bundle for a folded, eval-mode CPU ``model`` into ``folder`` (created)."""
    folder = Path(folder)
    for sub in ("configs", "models", "docs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    export_torchscript(model, folder / "models" / "model.ts")
    torch.save(model.state_dict(), folder / "models" / "model.pt")
    (folder / "LICENSE").write_text(bundle_license(model))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference_config(model, roi), indent=2) + "\n")
    (folder / "configs" / "metadata.json").write_text(json.dumps(bundle_metadata(model, roi, metadata), indent=2)
                                                      + "\n")
    (folder / "docs" / "README.md").write_text(bundle_readme(model, roi))
    return folder


def load_monai_bundle(folder: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The bundle's TorchScript network (``models/model.ts``) on CPU, for verification."""
    return load_torchscript(Path(folder) / "models" / "model.ts")


MONAI_SYNTAX = ("$", "@", "%")
"""A string MONAI's config parser reads as code or a link: ``$`` an expression it evaluates, ``@`` a reference, ``%``
a macro that reads another file."""
MONAI_SPECIAL_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")


def as_bundle_data(value: Any) -> Any:
    """``value`` with every string (and key) that MONAI's parser would act on escaped with a leading backslash:
    ``"$expr"`` -> ``"\\$expr"``, ``{"_target_": ...}`` -> ``{"\\_target_": ...}``. Model metadata is written
    into a bundle as data, never as an expression (MONAI has no escape syntax of its own)."""
    if isinstance(value, str):
        return "\\" + value if value.startswith(MONAI_SYNTAX) or value.startswith("\\") else value
    if isinstance(value, Mapping):
        return {("\\" + k if k in MONAI_SPECIAL_KEYS else as_bundle_data(str(k))): as_bundle_data(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_bundle_data(v) for v in value]
    return value


def checked_axcodes(code: Any) -> str:
    """An orientation as MONAI's ``Orientationd`` takes it: 3 letters, one from each of L/R, P/A, I/S."""
    from rep3d.errors import Rep3DValueError

    pairs = ("LR", "PA", "IS")
    if not (isinstance(code, str) and len(code) == 3
            and sorted(next((i for i, p in enumerate(pairs) if c in p), -1) for c in code) == [0, 1, 2]):
        raise Rep3DValueError(f"MONAI bundle: the model's orientation must be 3 axis codes, one of L/R, P/A and I/S "
                              f"(e.g. 'RAS'), got {code!r}; set model.pretrained_cfg['orientation']")
    return code


def _bundle_name(model: nn.Module, cfg: ModelConfig) -> str:
    """``architecture.tag`` (the class name when no architecture is recorded)."""
    tag = cfg.provenance.tag
    return (cfg.architecture or type(model).__name__) + (f".{tag}" if tag else "")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _json_safe(value: Any) -> Any:
    """``value`` with tuples as lists and anything JSON cannot hold as its ``repr`` (model_args are plain data)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _list(value: Any) -> list | None:
    return None if value is None else [float(v) for v in value]
