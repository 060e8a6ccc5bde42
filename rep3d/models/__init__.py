"""Model zoo: architectures, their registered names (also visible to ``timm.create_model``) and the deploy fold.

Building a model by name with weights is :func:`rep3d.create_model` (:mod:`rep3d.builder`), which sits above this
package; ``rep3d.models`` itself never imports the builder.
"""

from rep3d.layers.mask import mask_health, mask_health_scalars
from rep3d.models import zoo  # noqa: F401  (registers the names)
from rep3d.models.blocks import BlockCfg, RepLKBlock3d, UnetrDecoder3d, UXBlock3d
from rep3d.models.checkpoint_filter import checkpoint_filter_fn
from rep3d.models.deploy import count_macs, is_deployed, optimize_for_inference, reparameterize_model
from rep3d.models.info import model_info
from rep3d.models.registry import is_model
from rep3d.models.rep3d_net import Rep3D, Rep3DEncoder, UXNet3D

__all__ = [
    "BlockCfg",
    "Rep3D",
    "Rep3DEncoder",
    "RepLKBlock3d",
    "UXBlock3d",
    "UXNet3D",
    "UnetrDecoder3d",
    "checkpoint_filter_fn",
    "count_macs",
    "is_deployed",
    "is_model",
    "mask_health",
    "mask_health_scalars",
    "model_info",
    "optimize_for_inference",
    "reparameterize_model",
]
