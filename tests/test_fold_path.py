"""One fold path: a deployed RepLKConv3d folds arriving train-form tensors from its own settings (no constructor
arguments captured behind the scenes), the model family's checkpoint filter adapts checkpoints, and the hub holds no
knowledge of model layouts."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import pytest
import torch

import rep3d
from rep3d.errors import Rep3DError, Rep3DTypeError, Rep3DValueError, Rep3DWeightsError
from rep3d.layers import BatchNormCfg, MaskCfg, RepLKConv3d, mask_health_scalars
from rep3d.models import BlockCfg, Rep3DEncoder, checkpoint_filter_fn

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ROOT = Path(rep3d.__file__).parent
SMALL = dict(widths=(4, 8, 16, 32), depths=(1, 1, 1, 1), kernel_size=5, hidden_size=16, num_classes=3)


def _trained(conv: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in conv.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=gen) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
        for p in conv.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return conv.eval()


SETTINGS = dict(small_kernel=3, mask=MaskCfg(form="tanh", generator_hidden_channels=2, generator_kernel_size=3),
                batchnorm=BatchNormCfg(eps=1e-3))


@pytest.mark.parametrize("how", ["as_built", "deepcopy", "copy", "pickle", "reparameterized"])
def test_a_deployed_conv_folds_train_form_tensors_after_copy_deepcopy_and_pickle(how):
    torch.manual_seed(0)
    trained = _trained(RepLKConv3d(4, 7, **SETTINGS))
    if how == "reparameterized":
        deployed = copy.deepcopy(trained)
        deployed.reparameterize()
    else:
        deployed = RepLKConv3d(4, 7, deploy=True, **SETTINGS)
        deployed = {"as_built": lambda m: m, "deepcopy": copy.deepcopy, "copy": copy.copy,
                    "pickle": lambda m: pickle.loads(pickle.dumps(m))}[how](deployed)
    deployed.load_state_dict(trained.state_dict())
    x = torch.randn(2, 4, 6, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(deployed.eval()(x), trained(x), rtol=1e-5, atol=1e-5)


def test_a_deployed_conv_refuses_train_form_tensors_of_another_mask_shape():
    trained = _trained(RepLKConv3d(4, 7, mask=MaskCfg(generator_depth=3)))
    deployed = RepLKConv3d(4, 7, deploy=True)  # built for the default two-conv generator
    with pytest.raises(Rep3DError, match="do not fit this conv's train form"):
        deployed.load_state_dict(trained.state_dict())


def test_mask_cfg_and_the_flat_mask_keywords_build_the_same_conv():
    torch.manual_seed(0)
    grouped = RepLKConv3d(4, 7, mask=MaskCfg(form="exp", beta=2.0, generator_depth=3), batchnorm=BatchNormCfg(1e-3))
    torch.manual_seed(0)
    flat = RepLKConv3d(4, 7, mask_form="exp", beta=2.0, generator_depth=3, bn_eps=1e-3)
    assert grouped.mask_cfg == flat.mask_cfg and grouped.batchnorm_cfg == flat.batchnorm_cfg
    assert flat.bn.eps == 1e-3 and flat.modulation.mask_form == "exp" and flat.modulation.beta == 2.0
    assert all(torch.equal(a, b) for a, b in zip(grouped.state_dict().values(), flat.state_dict().values()))
    with pytest.raises(Rep3DTypeError, match="either mask=... or mask_form, not both"):
        RepLKConv3d(4, 7, mask=MaskCfg(), mask_form="exp")
    with pytest.raises(Rep3DTypeError, match="unexpected keyword argument.*'generator_width'"):
        RepLKConv3d(4, 7, generator_width=2)


def test_block_cfg_carries_the_model_arguments_to_every_conv():
    model = rep3d.create_model("rep3d_tiny", **SMALL, mask_form="softmax", generator_depth=3, bn_momentum=0.2,
                               block_residual=True)
    convs = [m for m in model.modules() if isinstance(m, RepLKConv3d)]
    assert len(convs) == 4
    for conv in convs:
        assert conv.mask_cfg == MaskCfg(form="softmax", generator_depth=3)
        assert conv.bn.momentum == 0.2 and conv.modulation.generator.depth == 3
    assert all(block.residual for stage in model.encoder.stages for block in stage)
    with pytest.raises(Rep3DValueError, match="small_kernel"):
        BlockCfg(kind="ux", small_kernel=3)
    with pytest.raises(Rep3DValueError, match="block_cfg or the block options"):
        Rep3DEncoder(block_cfg=BlockCfg(kernel_size=5), modulation=None)


def test_checkpoint_filter_folds_for_a_deployed_model_as_reparameterize_does():
    torch.manual_seed(0)
    trained = _trained(rep3d.create_model("rep3d_tiny_csla", **SMALL))
    deployed = rep3d.create_model("rep3d_tiny_csla", **SMALL, deploy=True)
    state = checkpoint_filter_fn(trained.state_dict(), deployed, adapt=False)
    folded = rep3d.reparameterize_model(trained).state_dict()
    assert list(state) == list(folded)  # the deployed layout, nothing else
    assert all(torch.equal(state[k], folded[k]) for k in folded)


def test_checkpoint_filter_refuses_deployed_weights_for_a_train_form_model():
    deployed = rep3d.reparameterize_model(rep3d.create_model("rep3d_tiny", **SMALL))
    with pytest.raises(Rep3DWeightsError, match="cannot be unfolded") as info:
        checkpoint_filter_fn(deployed.state_dict(), rep3d.create_model("rep3d_tiny", **SMALL))
    assert info.value.reason == "form"


def test_the_hub_loaders_call_the_filter_they_are_given(tmp_path):
    from safetensors.torch import save_file

    from rep3d.hub import load_checkpoint

    source = rep3d.create_model("rep3d_tiny", **SMALL)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    seen = []

    def spy(state, model, **context):
        seen.append(context)
        return checkpoint_filter_fn(state, model, **context)

    load_checkpoint(rep3d.create_model("rep3d_tiny", **SMALL), tmp_path / "w.safetensors", filter_fn=spy)
    assert len(seen) == 1 and seen[0]["adapt"] is False  # a checkpoint must match: the form only


def test_mask_health_scalars_take_short_names_from_the_model_family():
    model = rep3d.create_model("rep3d_tiny", **SMALL)
    names = {key.split("/")[1] for key in mask_health_scalars(model) if key.count("/") == 2}
    assert names == {"stages.0.0", "stages.1.0", "stages.2.0", "stages.3.0"}
    plain = torch.nn.Sequential(RepLKConv3d(2, 5))  # no log_name: the module's own name
    assert "mask/0/at_bound" in mask_health_scalars(plain)


@pytest.mark.parametrize("package", ["hub", "layers"])
def test_the_hub_and_the_layers_hold_no_model_layout(package):
    """Module paths of the Rep3D family (``encoder.``, ``decoder.``, ``.dwconv``) belong to its checkpoint filter."""
    layout = re.compile(r"""["'](encoder|decoder)\.|["']\.dwconv""")
    hits = [f"{path.name}:{n}" for path in sorted((ROOT / package).glob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if layout.search(line)]
    assert not hits, hits
