"""Publishing rep3d weights: ``save_pretrained`` (config.json + model.safetensors + README.md) and ``push_to_hub``.

The folder follows timm's Hub format (see :mod:`rep3d.hub.config`), so ``timm.create_model("hf-hub:...")`` builds
the model too once rep3d is imported; ``model_args.deploy`` is ``true`` for a deployed (reparameterized) model, so a
rebuild makes the deployed form. Building a model from such a folder is the builder's job
(``rep3d.create_model("local-dir:PATH")`` / ``"hf-hub:org/name"``, in :mod:`rep3d.builder`).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, ModelCardData
from safetensors.torch import save_file
from torch import nn

from rep3d.configs.folder import SavedConfig, has_rep3d_section, saved_config_json, with_weights_entry
from rep3d.configs.keys import SAVED_SOURCE_KEYS, SAVED_TIMM_METADATA, TIMM_CFG_KEYS, UNSAVED_TIMM_KEYS
from rep3d.configs.pretrained import PretrainedCfg, WeightFileMetadata, select_keys, with_values, without_keys
from rep3d.errors import Rep3DValueError, printable
from rep3d.hub.config import CARD_NAME, CONFIG_NAME, DEFAULT_FILENAME
from rep3d.hub.weights import sha256_file
from rep3d.layers import is_deployed
from rep3d.outputs import MARKER_NAME, check_folder_output, install_tree, read_files
from rep3d.version import __version__

__all__ = ["CARD_NAME", "model_card", "model_config", "push_to_hub", "save_pretrained"]


def _jsonable(value: Any, key: str) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_jsonable(v, key) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{key}.{k}") for k, v in value.items()}
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise Rep3DValueError(f"save_pretrained: {key}={value!r} is not JSON-serialisable; pass a plain value") from err
    return value


def model_config(model: nn.Module, metadata: Mapping[str, Any] | None = None, *,
                 dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The ``config.json`` content for ``model`` (without the weights' sha256, added when the file is written);
    ``dtype``: the floating-point precision the weights are stored in, when not the model's own."""
    cfg = getattr(model, "pretrained_cfg", None)
    args = getattr(model, "model_args", None)
    typed = PretrainedCfg.from_dict(cfg if isinstance(cfg, dict) else None)
    if not isinstance(cfg, dict) or not typed.architecture or not isinstance(args, dict):
        raise Rep3DValueError(
            f"save_pretrained needs a model built by rep3d.create_model (with .pretrained_cfg and .model_args); got "
            f"{type(model).__name__}" + (" (a features_only wrapper: save the full model)" if hasattr(model, "model")
                                         else "")
        )
    deployed = is_deployed(model)
    model_args = {**args, "in_chans": model.in_chans, "num_classes": model.num_classes}
    if deployed:
        model_args = with_values(model_args, deploy=True)
    present = {k: v for k, v in cfg.items() if v is not None}
    timm_cfg = without_keys(select_keys(present, TIMM_CFG_KEYS), (*UNSAVED_TIMM_KEYS, "architecture"))
    input_size = tuple(typed.input_size or (model.in_chans, 96, 96))
    timm_cfg = with_values(timm_cfg, num_classes=model.num_classes, input_size=(model.in_chans, *input_size[1:]))
    meta = without_keys(present, (*TIMM_CFG_KEYS, *SAVED_SOURCE_KEYS))
    if typed.tag and typed.weights_source and "origin" not in meta:
        meta = with_values(meta, origin=typed.name)  # a tag names weights: only loaded weights have that origin
    given = {k: v for k, v in (metadata or {}).items() if v is not None}
    timm_cfg = with_values(timm_cfg, **select_keys(given, SAVED_TIMM_METADATA))
    meta = with_values(meta, **without_keys(given, SAVED_TIMM_METADATA))
    class_names = PretrainedCfg.from_dict(select_keys(meta, ["class_names"])).class_names
    if class_names is not None and (not isinstance(class_names, tuple) or len(class_names) != model.num_classes):
        meta = without_keys(meta, ["class_names"])  # names of another head (e.g. a tag's before re-initialisation)
        class_names = None
    weights = {"file": DEFAULT_FILENAME, "format": "safetensors"}
    if dtype is not None:
        weights["dtype"] = str(dtype).removeprefix("torch.")
    config = saved_config_json(
        architecture=typed.architecture, num_classes=model.num_classes, label_names=class_names and list(class_names),
        model_args=model_args, timm_cfg=timm_cfg, version=__version__, form="deploy" if deployed else "train",
        weights=weights, metadata=meta)
    return {key: _jsonable(value, key) for key, value in config.items()}


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    command: str | None = None,
    dataset: str | None = None,
    description: str | None = None,
    license: str | None = None,  # noqa: A002 - the Hub's own metadata key
    repo_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    reads: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card for ``model`` into ``directory``.

    Works for train-form and deployed models (``config.json`` says which). ``metrics`` (e.g. ``{"mean_dice": 0.91}``),
    the ``command`` that produced them, ``dataset``, ``description``, ``license`` and other ``metadata`` go into the
    config and the card. Files are staged in a temporary folder and moved into place complete: a failure leaves
    ``directory`` as it was. Returns ``directory``. Loading it back (``pretrained_cfg_overlay=dict(file=directory)``
    or ``create_model("hf-hub:...")`` once pushed) is bit-exact. ``dtype`` (e.g. ``torch.float16``) stores floating
    tensors in that precision to halve the file; they load into a float32 model exactly up to that rounding.

    ``directory`` must be new, empty, or a folder rep3d wrote (:mod:`rep3d.outputs`); replacing the three files of an
    earlier ``save_pretrained`` needs ``overwrite=True``, and other files in the folder are always kept. The files
    in ``reads`` (e.g. the weights the model was loaded from) are never written over.
    """
    directory = Path(directory)
    check_saved_folder(directory, overwrite=overwrite, reads=read_files(reads), flag="save_pretrained:")
    extra = {**(metadata or {}), "metrics": dict(metrics) if metrics else None, "command": command,
             "dataset": dataset, "description": description, "license": license}
    config = model_config(model, extra, dtype=dtype)
    saved = SavedConfig.from_json(config)
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
               for k, v in model.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    file_meta = WeightFileMetadata(saved.architecture, saved.form, __version__).to_dict()
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=parent))
    try:
        save_file(tensors, str(staging / DEFAULT_FILENAME), metadata=file_meta)
        config = with_weights_entry(config, sha256=sha256_file(staging / DEFAULT_FILENAME))
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (staging / CARD_NAME).write_text(model_card(model, config, repo_id=repo_id))
        # file by file (each with the umask's mode): a folder is never replaced, other files in it are kept
        install_tree(staging, directory, overwrite=overwrite, command="save_pretrained")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def saved_by_rep3d(folder: Path) -> bool:
    """Whether ``folder`` is a model folder an earlier rep3d wrote (its ``config.json`` has a ``rep3d`` section);
    folders written before rep3d kept a marker file are recognised this way."""
    try:
        config = json.loads((Path(folder) / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return has_rep3d_section(config)


def check_saved_folder(directory: str | Path, *, overwrite: bool, reads: set[Path] = frozenset(),
                       flag: str = "-o") -> Path:
    """Refuse, before any work, a ``save_pretrained`` target that would destroy something (:mod:`rep3d.outputs`):
    a file, a non-empty folder rep3d did not write, a file being read, or earlier files without ``overwrite``."""
    return check_folder_output(directory, overwrite=overwrite, names=(DEFAULT_FILENAME, CONFIG_NAME, CARD_NAME),
                               reads=reads, flag=flag, also_ours=saved_by_rep3d)


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    revision: str | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
    api: Any | None = None,
    **save_kwargs: Any,
) -> Any:
    """:func:`save_pretrained` into a temporary folder and upload it to ``repo_id`` (created if missing).

    ``save_kwargs`` go to :func:`save_pretrained` (metrics, command, dataset, ...). ``api`` defaults to
    ``huggingface_hub.HfApi(token=token)``. Returns the ``CommitInfo`` of ``upload_folder``; pin its ``oid`` as the
    ``hf_revision`` of a registered tag.
    """
    if api is None:
        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="rep3d-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", repo_id=repo_id, **save_kwargs)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        form = SavedConfig.from_json(json.loads((folder / CONFIG_NAME).read_text())).form
        (folder / MARKER_NAME).unlink(missing_ok=True)  # a local bookkeeping file, not part of the model
        return api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload {PretrainedCfg.of(model).architecture} ({form} form) with rep3d",
        )


# --------------------------------------------------------------------------------------------------------- model card

def _fmt_triplet(value: Any, unit: str = "") -> str:
    if value is None:
        return "unknown"
    if isinstance(value, (list, tuple)):
        return " × ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + unit
    return f"{value}{unit}"


def _distribution_lines(dist: Any) -> list[str]:
    """The model card's table of the training input distribution that ``rep3d predict`` checks inputs against."""
    if not isinstance(dist, dict) or not dist:
        return ["## Training input distribution", "",
                "Not recorded: `rep3d predict` can only refuse inputs with no voxel in the intensity window.", ""]
    lines = ["## Training input distribution", "",
             "`rep3d predict` compares every input with this record: far outside (no voxel in the window, other "
             "units or modality, a much coarser spacing) is refused unless `--allow-out-of-distribution`; near the "
             "edge is a warning. Both are recorded in the output's `<name>_seg.json`.", "",
             "| statistic | training range |", "|---|---|"]
    done = set()
    for key, value in dist.items():
        base = key.removesuffix("_min").removesuffix("_max")
        if base in done:
            continue
        if key.endswith(("_min", "_max")) and f"{base}_min" in dist and f"{base}_max" in dist:
            done.add(base)
            lo, hi = dist[f"{base}_min"], dist[f"{base}_max"]
            lines.append(f"| {base.replace('_', ' ')} | {_fmt_range(lo)} to {_fmt_range(hi)} |")
        elif key == "window" and isinstance(value, (list, tuple)) and len(value) == 2:
            lines.append(f"| intensity window | {_fmt_range(value[0])} to {_fmt_range(value[1])} |")
        else:
            lines.append(f"| {key.replace('_', ' ')} | {_fmt_range(value)} |")
    return lines + [""]


def _fmt_range(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " × ".join(_fmt_range(v) for v in value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _tta_row(axes: Any) -> str:
    if axes is None:
        return "not recorded: `--tta` is refused"
    if not axes:
        return "none: trained without flips, so `--tta` is refused"
    return f"flips along axes {', '.join(map(str, axes))} (trained with these flips)"


def _md(value: Any, newlines: bool = False) -> str:
    """A value from a config as Markdown text: HTML escaped (a card shows a stranger's text, never runs their script),
    table pipes escaped, control characters (and, unless ``newlines``, line breaks) replaced."""
    if value is None:
        return ""
    return html.escape(printable(value, newlines=newlines), quote=False).replace("|", "\\|")


def _fenced(value: Any) -> str:
    """Text for a fenced code block, which it cannot close."""
    return printable(value, newlines=True).replace("```", "` ` `")


def model_card(model: nn.Module, config: Mapping[str, Any], repo_id: str | None = None) -> str:
    """A Hub model card (YAML metadata + Markdown) for the folder :func:`save_pretrained` writes."""
    saved = SavedConfig.from_json(config)
    meta, arch, form = saved.cfg, saved.architecture, saved.form
    synthetic = meta.synthetic
    # the YAML header takes identifiers only: a license or dataset with other characters stays in the text, escaped
    license_id = meta.license or "other"
    license_id = license_id if re.fullmatch(r"[\w.+-]{1,64}", str(license_id)) else "other"
    tags = ["rep3d", "image-segmentation", "medical-imaging", "3d", "volumetric", "large-kernel-convolution"]
    if synthetic:
        tags.append("synthetic-data")
    card_data = ModelCardData(
        license=license_id, library_name="rep3d", pipeline_tag="image-segmentation", tags=tags,
        datasets=[meta.dataset] if re.fullmatch(r"[\w./-]{1,128}", str(meta.dataset or "")) else None,
        metrics=["dice"] if meta.metrics else None,
    )
    title = _md(repo_id or meta.origin or arch)
    params = sum(p.numel() for p in model.parameters())
    lines = [f"---\n{card_data.to_yaml()}\n---", "", f"# {title}", ""]
    if synthetic:
        lines += ["> **Synthetic.** These weights were trained on synthetic phantom data, not on patient scans: "
                  "they demonstrate the pipeline and are not a clinical model.", ""]
    lines += [_md(meta.description, newlines=True) or (
        f"`{arch}` from [rep3d](https://arxiv.org/abs/2505.19603): a 3-D segmentation network with large "
        "re-parameterized depthwise kernels and a UNETR-style decoder."), ""]
    lines += ["## Model", "", "| | |", "|---|---|", f"| architecture | `{arch}` |",
              f"| form | {'deploy (mask, BatchNorm and branches folded into one conv per block)' if form == 'deploy' else 'train (re-parameterizable; fold with `rep3d.reparameterize_model`)'} |",  # noqa: E501
              f"| parameters | {params:,} |", f"| input channels | {model.in_chans} |",
              f"| classes | {model.num_classes} |", f"| model args | `{json.dumps(dict(saved.model_args))}` |", ""]
    names = meta.class_names
    if names:
        lines += ["## Classes", "", "| index | name |", "|---|---|"]
        lines += [f"| {i} | {_md(n)} |" for i, n in enumerate(names)] + [""]
    window = meta.intensity_window
    lines += ["## Input the weights expect", "", "| | |", "|---|---|",
              f"| ROI (sliding-window patch) | {_fmt_triplet(meta.roi_size)} |",
              f"| spacing | {_fmt_triplet(meta.spacing, ' mm')} |",
              f"| orientation | {_md(meta.orientation or 'unknown')} |",
              f"| modality | {_md(meta.modality or 'unknown')} |",
              f"| intensity window | {f'[{window[0]:g}, {window[1]:g}] → [0, 1]' if window else 'unknown'} |",
              f"| test-time flips (TTA) | {_tta_row(meta.tta_flip_axes)} |"]
    if meta.normalization:  # replaces the window (models trained by nnU-Net)
        lines[-2] = f"| normalisation per channel | `{json.dumps(meta.normalization)}` |"
    if meta.axis_order:
        lines += [f"| axis order of the network's input | {meta.axis_order} (roi and spacing in this order"
                  + ("; the file's voxel axes reversed, as nnU-Net reads NIfTI)" if meta.axis_order == "zyx"
                     else ")") + " |"]
    lines += [""]
    lines += _distribution_lines(meta.training_distribution)
    lines += ["## Evaluation", ""]
    metrics = meta.metrics
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {_md(k)} | {v:.4f} |" if isinstance(v, float) else f"| {_md(k)} | {_md(v)} |"
                  for k, v in metrics.items()]
        lines += [""] + ([f"Data: {_md(meta.dataset)}" + (" (synthetic)" if synthetic else ""), ""]
                         if meta.dataset else [])
        if meta.command:
            lines += ["Produced by:", "", "```bash", _fenced(meta.command), "```", ""]
        else:
            lines += ["The command that produced these numbers was not recorded.", ""]
    else:
        lines += ["No evaluation results are recorded for these weights.", ""]
    training = meta.training
    if isinstance(training, Mapping):
        run_config = training.get("config")  # rep3d.train's TrainConfig.to_dict(), not a model config
        lines += ["## Training", "", "| | |", "|---|---|"]
        lines += [f"| {_md(str(k).replace('_', ' '))} | {_md(v)} |" for k, v in training.items() if k != "config"]
        if run_config:
            lines += ["", "<details><summary>full training configuration</summary>", "", "```json",
                      _fenced(json.dumps(run_config, indent=2)), "```", "", "</details>"]
        lines += [""]
    ref = f"hf-hub:{repo_id}" if repo_id else "hf-hub:ORG/NAME"
    lines += ["## Usage", "", "```python", "import rep3d", "",
              f'model = rep3d.create_model("{ref}", pretrained=True).eval()',
              "# input: [B, in_chans, D, H, W], each spatial size a multiple of 16; output: logits per class", "```",
              ""]
    lines += ["## Paper and license", ""]
    model_cfg = PretrainedCfg.of(model)
    paper = meta.paper_name or model_cfg.paper_name
    paper_ids = model_cfg.paper_ids
    if paper:
        lines += [f"- {_md(paper)}" + (f" ({_md(paper_ids)})" if paper_ids else "")]
    lines += [f"- license of these weights: {_md(license_id)}", f"- saved with rep3d {saved.version}", ""]
    return "\n".join(lines)
