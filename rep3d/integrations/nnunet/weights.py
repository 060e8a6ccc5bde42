"""Weights between nnU-Net and rep3d.

* :func:`export_fold`: an nnU-Net results fold folder (``.../Trainer__Plans__Configuration/fold_N``) -> a
  :func:`rep3d.save_pretrained` folder that ``rep3d predict`` and ``create_model("local-dir:...")`` use. The
  deep-supervision heads are dropped; the card records what rep3d's predictor needs to see the data as nnU-Net did:
  the axis order (nnU-Net arrays are the file's voxel axes reversed, ``z, y, x``), the spacing and patch in that
  order, and the per-channel normalisation (CT clipping + z-score with the dataset's statistics, or per-image
  z-score).
* :func:`write_nnunet_pretrained`: a rep3d model -> a file ``nnUNetv2_train -pretrained_weights FILE`` accepts. That
  loader requires every key of the network except those containing ``.seg_layers.`` with equal shapes; the output
  heads are ``decoder.seg_layers.*`` in the nnU-Net network, so they are re-initialised, as nnU-Net does for its own
  networks.

nnU-Net's network keys equal the rep3d model's except the full-resolution head: ``decoder.seg_layers.0.*`` there,
``decoder.out.*`` in rep3d.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rep3d.configs.pretrained import PretrainedCfg, without_keys
from rep3d.errors import Rep3DDataError, Rep3DValueError, Rep3DWeightsError
from rep3d.integrations.nnunet.network import Rep3DnnUNet, split_arch_kwargs

NNUNET_HEAD = "decoder.seg_layers.0."
REP3D_HEAD = "decoder.out."
DS_HEAD_PREFIX = "decoder.seg_layers."
NIFTI_READERS = (None, "SimpleITKIO", "NibabelIO", "NibabelIOWithReorient")


def nnunet_to_rep3d_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nnU-Net network state -> rep3d model state: full-resolution head renamed, 1/2, 1/4, 1/8 heads dropped."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        if key.startswith(NNUNET_HEAD):
            out[REP3D_HEAD + key[len(NNUNET_HEAD):]] = value
        elif not key.startswith(DS_HEAD_PREFIX):
            out[key] = value
    return out


def rep3d_to_nnunet_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """rep3d model state -> nnU-Net network state (the full-resolution head under ``decoder.seg_layers.0``)."""
    return {(NNUNET_HEAD + k[len(REP3D_HEAD):] if k.startswith(REP3D_HEAD) else k): v for k, v in state.items()}


def to_rep3d_model(network: Rep3DnnUNet) -> nn.Module:
    """The rep3d model (``create_model(network.model_name, ...)``, no deep-supervision heads) holding the
    network's weights; its output equals the network's full-resolution output."""
    from rep3d.builder import create_model

    model = create_model(network.model_name, in_chans=network.in_chans, num_classes=network.num_classes,
                         **network.model_kwargs)
    model.load_state_dict(nnunet_to_rep3d_state(network.state_dict()), strict=True)
    return model


# ----------------------------------------------------------------------------------------------- nnU-Net -> rep3d

def read_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """Load an nnU-Net checkpoint. Without ``trust`` only tensors, containers, numpy scalars and ``torch.device``
    are unpickled (no code runs); nnU-Net's own checkpoints need nothing else."""
    if not path.is_file():
        raise Rep3DWeightsError(str(path), str(path.parent), "the checkpoint file does not exist",
                                "pass the fold folder of a finished nnU-Net training (it holds checkpoint_final.pth)",
                                reason="not_found")
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    import numpy as np

    numpy_core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    safe = [np.dtype, numpy_core.multiarray.scalar]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise Rep3DWeightsError(
            str(path), str(path), f"the checkpoint holds Python objects a weights-only load refuses ({err})",
            "if you trust the file (your own training), pass --trust-checkpoint to unpickle it fully", reason="unsafe",
        ) from err


def _labels(dataset: dict[str, Any], num_heads: int) -> list[str]:
    labels = dataset.get("labels") or {}
    if any(not isinstance(v, int) for v in labels.values()):
        raise Rep3DDataError("region-based nnU-Net trainings (labels given as lists of values) predict overlapping "
                             "regions with sigmoids; rep3d's predictor takes one softmax label map: not exportable")
    names = [name for name, value in sorted(labels.items(), key=lambda kv: kv[1]) if name != "ignore"]
    if len(names) != num_heads:
        raise Rep3DDataError(f"dataset.json has {len(names)} labels {names} but the network has {num_heads} outputs")
    return names


def normalisation(configuration: dict[str, Any], plans: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-channel normalisation as rep3d's predictor applies it, from an nnU-Net configuration and plans.

    ``{"scheme": "clip_zscore", "clip": [lo, hi], "mean": m, "std": s}`` (nnU-Net's CTNormalization:
    clip to the foreground 0.5 / 99.5 percentiles, subtract the foreground mean, divide by its std);
    ``{"scheme": "zscore"}`` (per-image mean / std); ``{"scheme": "none"}``.
    """
    schemes = configuration["normalization_schemes"]
    use_mask = configuration.get("use_mask_for_norm") or [False] * len(schemes)
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    out = []
    for channel, (scheme, masked) in enumerate(zip(schemes, use_mask)):
        if scheme == "CTNormalization":
            p = props.get(str(channel)) or props.get(channel)
            if p is None:
                raise Rep3DDataError(f"plans lack foreground intensity properties for channel {channel}")
            out.append({"scheme": "clip_zscore", "clip": [float(p["percentile_00_5"]), float(p["percentile_99_5"])],
                        "mean": float(p["mean"]), "std": max(float(p["std"]), 1e-8)})
        elif scheme == "ZScoreNormalization":
            if masked:
                raise Rep3DDataError(
                    f"channel {channel} is z-scored inside nnU-Net's non-zero mask (use_mask_for_norm), which "
                    "rep3d's predictor does not reproduce; predict with nnUNetv2_predict instead"
                )
            out.append({"scheme": "zscore"})
        elif scheme == "NoNormalization":
            out.append({"scheme": "none"})
        else:
            raise Rep3DDataError(f"channel {channel} uses nnU-Net's {scheme}, which rep3d's predictor does not "
                                 "reproduce; predict with nnUNetv2_predict instead")
    return out


def _resolve_configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    from rep3d.integrations.nnunet.plans import _resolved

    if name not in (plans.get("configurations") or {}):
        raise Rep3DDataError(f"plans.json has no configuration {name!r}")
    return _resolved(plans, name)


def export_fold(fold_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "checkpoint_final.pth",
                trust_checkpoint: bool = False, overwrite: bool = False) -> Path:
    """Write the rep3d model trained in nnU-Net fold folder ``fold_dir`` as a ``save_pretrained`` folder."""
    from rep3d.builder import create_model
    from rep3d.hub import save_pretrained
    from rep3d.hub.publish import check_saved_folder
    from rep3d.outputs import read_files

    fold_dir, out_dir = Path(fold_dir), Path(out_dir).expanduser().absolute()
    reads = read_files([fold_dir / checkpoint, fold_dir.parent / "plans.json", fold_dir.parent / "dataset.json"])
    check_saved_folder(out_dir, overwrite=overwrite, reads=reads)
    train_dir = fold_dir.parent
    try:
        plans = json.loads((train_dir / "plans.json").read_text())
        dataset = json.loads((train_dir / "dataset.json").read_text())
    except (OSError, ValueError) as err:
        raise Rep3DDataError(f"{train_dir} is not an nnU-Net training folder (plans.json / dataset.json: {err}); "
                             "pass .../DatasetXXX/TRAINER__PLANS__CONFIGURATION/fold_N") from err
    ckpt = read_checkpoint(fold_dir / checkpoint, trust_checkpoint)
    init = ckpt.get("init_args") or {}
    parts = train_dir.name.split("__")
    config_name = init.get("configuration") or (parts[2] if len(parts) == 3 else None)
    if not config_name:
        raise Rep3DDataError(f"cannot tell the configuration of {train_dir} (folder name TRAINER__PLANS__CONFIG)")
    configuration = _resolve_configuration(plans, config_name)
    arch = configuration["architecture"]
    if not arch["network_class_name"].endswith("Rep3DnnUNet"):
        raise Rep3DDataError(f"configuration {config_name!r} trains {arch['network_class_name']}, not a rep3d "
                             "network; add one with `rep3d nnunet-plans` and train that")
    reader = dataset.get("overwrite_image_reader_writer")
    if reader not in NIFTI_READERS or dataset.get("file_ending") not in (".nii.gz", ".nii"):
        raise Rep3DDataError(f"the dataset reads {dataset.get('file_ending')} files with {reader or 'the default'} "
                             "reader; rep3d's predictor reproduces nnU-Net's NIfTI readers only")
    model_name, model_kwargs = split_arch_kwargs(arch["arch_kwargs"])
    state = nnunet_to_rep3d_state(ckpt["network_weights"])
    num_classes = int(state[REP3D_HEAD + "conv.conv.weight"].shape[0])
    class_names = _labels(dataset, num_classes)
    channels = [str(v) for _, v in sorted((dataset.get("channel_names") or dataset.get("modality")).items(),
                                          key=lambda kv: int(kv[0]))]
    model = create_model(model_name, in_chans=len(channels), num_classes=num_classes, **model_kwargs)
    model.load_state_dict(state, strict=True)
    norm = normalisation(configuration, plans)
    trainer_name = ckpt.get("trainer_name") or parts[0]
    meta = {
        "roi_size": [int(s) for s in configuration["patch_size"]],
        "spacing": [float(s) for s in configuration["spacing"]],
        "axis_order": "zyx",
        "orientation": "RAS" if reader == "NibabelIOWithReorient" else "native",
        "normalization": norm,
        "modality": "+".join(channels),
        "class_names": class_names,
        "synthetic": False,
        "nnunet": {"trainer": trainer_name, "plans": plans.get("plans_name"),
                   "configuration": config_name, "fold": fold_dir.name, "checkpoint": checkpoint,
                   "epochs": ckpt.get("current_epoch")},
    }
    if all(n["scheme"] == "clip_zscore" for n in norm) and len({tuple(n["clip"]) for n in norm}) == 1:
        meta["intensity_window"] = list(norm[0]["clip"])
    model.pretrained_cfg = model.default_cfg = {**without_keys(model.pretrained_cfg, ["intensity_window"]), **meta}
    return save_pretrained(
        model, out_dir, overwrite=overwrite, reads=reads, dataset=dataset.get("name") or plans.get("dataset_name"),
        description=(f"{model_name} trained with nnU-Net v2 ({trainer_name}, plans "
                     f"{plans.get('plans_name')}, configuration {config_name}, {fold_dir.name}). Inputs are read as "
                     "nnU-Net reads them: the file's voxel axes reversed (z, y, x), resampled to the spacing above, "
                     "normalised per channel as recorded in config.json (rep3d.metadata.normalization)."),
    )


# ----------------------------------------------------------------------------------------------- rep3d -> nnU-Net

def write_nnunet_pretrained(model: nn.Module, path: str | Path) -> Path:
    """Save a train-form rep3d model as ``{"network_weights": state}`` keyed like :class:`Rep3DnnUNet`, for
    ``nnUNetv2_train ... -pretrained_weights PATH``. The plan must name the same model and kwargs."""
    from rep3d.models.deploy import is_deployed

    if is_deployed(model):
        raise Rep3DValueError("a deployed (reparameterized) model cannot be trained by nnU-Net; export the train-form "
                              "weights")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = rep3d_to_nnunet_state({k: v.detach().cpu() for k, v in model.state_dict().items()})
    args = dict(getattr(model, "model_args", {}) or {})
    torch.save({"network_weights": state,
                "rep3d": {"architecture": PretrainedCfg.of(model).architecture,
                          "model_args": {k: v for k, v in args.items() if isinstance(v, (int, float, str, bool))}}},
               path)
    return path
