"""Add a rep3d configuration to an nnU-Net v2 plans file (``rep3d nnunet-plans``).

The configuration inherits from ``3d_fullres`` (same spacing, normalisation and ``data_identifier``, so the
preprocessed data is reused) and overrides the patch size (rounded up to multiples of 16), the batch size if asked,
and the architecture (:class:`~rep3d.integrations.nnunet.network.Rep3DnnUNet` with rep3d's strides).
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from rep3d.errors import Rep3DDataError, Rep3DValueError
from rep3d.integrations.nnunet.network import NNUNET_STRIDES, PATCH_MULTIPLE

NETWORK_CLASS = "rep3d.integrations.nnunet.network.Rep3DnnUNet"
PARENT = "3d_fullres"
MIN_SLICES = 32
MAX_SPACING_RATIO = 3.0


def round_patch(patch_size: list[int]) -> list[int]:
    """Each size rounded up to a multiple of 16 (rep3d's total stride)."""
    return [max(PATCH_MULTIPLE, -(-int(s) // PATCH_MULTIPLE) * PATCH_MULTIPLE) for s in patch_size]


def rep3d_configuration(plans: dict[str, Any], *, model: str = "rep3d_tiny", kernel_size: int | None = 21,
                        batch_size: int | None = None, parent: str = PARENT,
                        model_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The configuration dict to add to ``plans["configurations"]`` and the warnings it deserves.

    Raises :class:`Rep3DDataError` when ``plans`` has no ``parent`` (3d_fullres) configuration and
    :class:`Rep3DValueError` for an unknown model or a bad batch size.
    """
    from rep3d.models.registry import list_models

    configurations = plans.get("configurations") or {}
    if parent not in configurations:
        raise Rep3DDataError(
            f"the plans have no {parent!r} configuration to inherit from (found {sorted(configurations)}); "
            "run nnUNetv2_plan_and_preprocess with the default 3d_fullres configuration first"
        )
    if model not in list_models():
        raise Rep3DValueError(f"unknown rep3d model {model!r}; rep3d.list_models() lists them "
                              f"({', '.join(list_models('rep3d_*')[:6])}, ...)")
    if batch_size is not None and batch_size < 1:
        raise Rep3DValueError(f"--batch-size must be >= 1, got {batch_size}")
    base = _resolved(plans, parent)
    patch = [int(s) for s in base["patch_size"]]
    if len(patch) != 3:
        raise Rep3DDataError(f"{parent} has a {len(patch)}-D patch {patch}; rep3d networks are 3-D")
    new_patch = round_patch(patch)
    arch_kwargs: dict[str, Any] = {"model": model, **(model_kwargs or {})}
    if kernel_size is not None:
        arch_kwargs["kernel_size"] = int(kernel_size)
    arch_kwargs["strides"] = copy.deepcopy(NNUNET_STRIDES)
    config: dict[str, Any] = {
        "inherits_from": parent,
        "patch_size": new_patch,
        "architecture": {"network_class_name": NETWORK_CLASS, "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": []},
    }
    if batch_size is not None:
        config["batch_size"] = int(batch_size)
    warnings = []
    if new_patch != patch:
        warnings.append(f"patch {patch} of {parent} rounded up to {new_patch} (multiples of {PATCH_MULTIPLE}); "
                        "each step costs more memory and time, lower --batch-size if it does not fit")
    thin = [(axis, s) for axis, s in enumerate(new_patch) if s < MIN_SLICES]
    if thin:
        warnings.append(
            f"the patch {new_patch} has fewer than {MIN_SLICES} voxels along axis "
            f"{', '.join(str(a) for a, _ in thin)}: after rep3d's stride-16 encoder that axis is "
            f"{', '.join(str(s // 16) for _, s in thin)} voxel(s) deep, and a large kernel sees mostly padding there"
        )
    spacing = [float(s) for s in base.get("spacing") or []]
    if spacing and max(spacing) / min(spacing) > MAX_SPACING_RATIO:
        warnings.append(
            f"spacing {spacing} is anisotropic (ratio {max(spacing) / min(spacing):.1f} > {MAX_SPACING_RATIO:g}); "
            "rep3d downsamples every axis by 2 at every stage and uses cubic kernels, which nnU-Net's own network "
            "avoids on such data; consider resampling closer to isotropic"
        )
    return config, warnings


def _resolved(plans: dict[str, Any], name: str) -> dict[str, Any]:
    configs = plans["configurations"]
    config = dict(configs[name])
    seen = {name}
    while "inherits_from" in config:
        parent = config.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise Rep3DDataError(f"configuration {name!r} has a broken inherits_from chain at {parent!r}")
        seen.add(parent)
        config = {**configs[parent], **config}
    return config


def add_rep3d_configuration(plans_file: str | Path, name: str = "3d_fullres_rep3d", *, overwrite: bool = False,
                            **kwargs: Any) -> list[str]:
    """Add (or with ``overwrite`` replace) configuration ``name`` in ``plans_file``; returns the warnings.

    The file is rewritten atomically (temporary file + rename), every other configuration unchanged. An existing
    ``name`` without ``overwrite`` raises :class:`Rep3DValueError` and leaves the file untouched.
    """
    plans_file = Path(plans_file)
    try:
        plans = json.loads(plans_file.read_text())
    except (OSError, ValueError) as err:
        raise Rep3DDataError(f"cannot read the nnU-Net plans file {plans_file}: {err}") from err
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict):
        raise Rep3DDataError(f"{plans_file} has no 'configurations': is it an nnU-Net v2 plans file?")
    if name in configurations and not overwrite:
        raise Rep3DValueError(f"{plans_file} already has a configuration {name!r}; pass --overwrite to replace it, "
                              "or choose another --configuration-name")
    if name == PARENT or name in ("2d", "3d_lowres", "3d_cascade_fullres"):
        raise Rep3DValueError(f"{name!r} is one of nnU-Net's own configurations; choose another name")
    config, warnings = rep3d_configuration(plans, **kwargs)
    configurations[name] = config
    fd, tmp = tempfile.mkstemp(prefix=f".{plans_file.name}.", suffix=".tmp", dir=plans_file.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(plans, f, indent=4, sort_keys=False)
            f.write("\n")
        os.replace(tmp, plans_file)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return warnings


def mirrored_label_names(dataset_json: str | Path) -> list[str]:
    """Label names in an nnU-Net ``dataset.json`` that name a side (left/right): mirroring swaps such classes, so
    their datasets need the no-mirroring trainer."""
    try:
        labels = json.loads(Path(dataset_json).read_text()).get("labels") or {}
    except (OSError, ValueError, AttributeError):
        return []
    names = labels.keys() if isinstance(labels, dict) else []
    return [str(n) for n in names
            if re.search(r"left|right", str(n).lower()) or re.search(r"(^|[^a-z])[lr]([^a-z]|$)", str(n).lower())]


def plans_file_for(dataset: str, plans_name: str = "nnUNetPlans") -> Path:
    """``$nnUNet_preprocessed/DatasetXXX_Name/<plans_name>.json`` for a dataset id or name."""
    from rep3d.integrations.nnunet import require_nnunet

    if not re.fullmatch(r"\d{1,3}|Dataset\d{3}_[A-Za-z0-9_.-]+", str(dataset)) or ".." in str(dataset):
        raise Rep3DValueError(f"-d expects an nnU-Net dataset id (e.g. 4) or name (e.g. Dataset004_Hippocampus), "
                              f"got {dataset!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", plans_name) or plans_name.startswith("."):
        raise Rep3DValueError(f"-p expects a plans identifier such as nnUNetPlans (no path), got {plans_name!r}")
    require_nnunet()
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed:
        raise Rep3DDataError("the environment variable nnUNet_preprocessed is not set; set it as for nnU-Net itself")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError, AssertionError, OSError) as err:
        raise Rep3DDataError(f"nnU-Net knows no dataset {dataset!r}: {err}") from err
    path = Path(str(nnUNet_preprocessed)) / name / f"{plans_name}.json"
    if not path.is_file():
        raise Rep3DDataError(f"{path} does not exist; run `nnUNetv2_plan_and_preprocess -d {dataset}` first")
    return path
