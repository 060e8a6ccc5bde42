"""Model zoo: architectures and their registered names (also visible to ``timm.create_model``)."""

from rep3d.layers.mask import mask_health, mask_health_scalars
from rep3d.models import zoo  # noqa: F401  (registers the names)
from rep3d.models.blocks import RepLKBlock3d, UnetrDecoder3d, UXBlock3d
from rep3d.models.deploy import count_macs, is_deployed, reparameterize_model
from rep3d.models.registry import create_model, is_model, list_models, model_info
from rep3d.models.rep3d_net import Rep3D, Rep3DEncoder, UXNet3D

__all__ = [
    "Rep3D",
    "Rep3DEncoder",
    "RepLKBlock3d",
    "UXBlock3d",
    "UXNet3D",
    "UnetrDecoder3d",
    "count_macs",
    "create_model",
    "is_deployed",
    "is_model",
    "list_models",
    "mask_health",
    "mask_health_scalars",
    "model_info",
    "reparameterize_model",
]
