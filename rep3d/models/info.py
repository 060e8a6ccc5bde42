"""``model_info``: parameters (train and deployed form), MACs at the cfg ROI and 3-D metadata of a registered name."""

from typing import Any

import timm
import torch
from timm.models import split_model_name_tag

from rep3d.configs.keys import INFO_TIMM_KEYS
from rep3d.configs.pretrained import PretrainedCfg, select_keys
from rep3d.models.deploy import count_macs, reparameterize_model
from rep3d.models.registry import check_name, list_models, volume_metadata


def model_info(model_name: str, **kwargs: Any) -> dict[str, Any]:
    """Parameters (train and deployed form), MACs at the cfg ROI and 3-D metadata, computed on the meta device."""
    check_name(model_name)
    with torch.device("meta"):
        model = timm.create_model(model_name, **kwargs)
    cfg = dict(model.pretrained_cfg)
    typed = PretrainedCfg.from_dict(cfg)
    roi = tuple(typed.roi_size or (96, 96, 96))
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, (1, model.in_chans, *roi))
    deployed = reparameterize_model(model, inplace=True)
    return {
        "name": model_name,
        "params": params,
        "deployed_params": sum(p.numel() for p in deployed.parameters()),
        "macs": macs,
        "roi_size": roi,
        "in_chans": model.in_chans,
        "num_classes": model.num_classes,
        "pretrained_tags": [n for n in list_models(split_model_name_tag(model_name)[0], pretrained=True) if "." in n],
        "metadata": select_keys(cfg, [*volume_metadata(typed.architecture or "", None), *INFO_TIMM_KEYS]),
    }
