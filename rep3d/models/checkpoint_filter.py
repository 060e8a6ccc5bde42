"""Adapting a checkpoint to a Rep3D / 3D UX-Net model: the family's one checkpoint filter (timm's
``checkpoint_filter_fn``) and the state-dict conversions between the train and deploy forms.

The hub reads and verifies bytes (:mod:`rep3d.hub.weights`); everything that knows this family's layout is here:

* ``in_chans`` differs: every conv that reads the raw input (the stem ``encoder.downsample_layers.0.0`` and the
  decoder's input block ``decoder.encoder1.layer.conv1`` / ``conv3``) is adapted along its input-channel axis with
  timm's rule generalised to any source count ``C``: to 1 channel, sum over the ``C`` channels; to ``N`` channels,
  tile the ``C`` channels to ``N`` and scale by ``C / N``. When ``N`` is 1, ``C`` is 1 or ``N`` a multiple of ``C``,
  an input whose channels all hold the same volume gives exactly the pretrained model's output;
* ``num_classes`` differs: the output conv (cfg ``classifier``, ``decoder.out.conv.conv``) keeps its fresh
  initialisation and a ``UserWarning`` says so;
* form: train-form weights load into a deployed model (:func:`train_to_deploy`, each conv folded by
  :meth:`RepLKConv3d.fold_state <rep3d.layers.RepLKConv3d.fold_state>`, the state-dict side of
  ``reparameterize()``); deployed weights cannot be unfolded into a train-form model (:func:`deploy_to_train`
  refuses).
"""

import math
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from rep3d.configs.keys import LABEL_NAME_KEYS
from rep3d.configs.pretrained import WeightFileMetadata, with_values, without_keys
from rep3d.errors import Rep3DError, Rep3DWeightsError
from rep3d.layers import RepLKConv3d, is_deployed

INPUT_CONV_KEYS = (
    "encoder.downsample_layers.0.0.weight",
    "decoder.encoder1.layer.conv1.conv.weight",
    "decoder.encoder1.layer.conv3.conv.weight",
)
"""Weights that read the raw input volume: the ones adapted when ``in_chans`` differs from the pretrained one."""
STEM_KEY = INPUT_CONV_KEYS[0]
INPUT_PROJECTION_KEY = INPUT_CONV_KEYS[2]
"""The decoder input block's 1x1x1 residual projection: present only when ``in_chans != widths[0]``."""
DEFAULT_CLASSIFIER = "decoder.out.conv.conv"


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module, *, adapt: bool = True,
                         classifier: str | None = None, metadata: Mapping[str, str] | None = None,
                         name: str = "model", where: str = "weights") -> dict[str, torch.Tensor]:
    """Adapt a checkpoint of this family to ``model``: input channels and head (with ``adapt``), then the form.

    Args:
        state_dict: the checkpoint's tensors (already read and verified; not modified).
        model: the model they are for (a :class:`~rep3d.models.Rep3D` or subclass).
        adapt: adapt ``in_chans`` and ``num_classes`` differences (pretrained weights); ``False`` for a checkpoint
            that must match the model (``checkpoint_path``): only the form is converted.
        classifier: the head's module path (the cfg's ``classifier``); default ``decoder.out.conv.conv``.
        metadata: the weight file's metadata (``rep3d_form`` says the form when present).
        name: the model / tag, for messages.
        where: the source, for messages.

    Returns the tensors to load. Raises :class:`~rep3d.errors.Rep3DWeightsError` (``reason="form"``) for deployed
    weights and a train-form model.
    """
    state = dict(state_dict)
    if adapt:
        state = _adapt_input_channels(state, model.state_dict(), name)
        state = _adapt_head(state, model, classifier or DEFAULT_CLASSIFIER, name)
    form = weights_form(state, model, metadata or {})
    if form == "train" and is_deployed(model):
        return train_to_deploy(state, model, name, where)
    if form == "deploy" and not is_deployed(model):
        return deploy_to_train(state, model, name, where)
    return state


def weights_form(state: Mapping[str, torch.Tensor], model: nn.Module, metadata: Mapping[str, str]) -> str | None:
    """``"train"``/``"deploy"`` when the weights' large-kernel convs are recognisably in one form, else ``None``.

    The safetensors metadata written by :func:`rep3d.save_pretrained` says it; otherwise the keys tell: train-only
    tensors (mask generator, BatchNorm, small branch) mean train form; ``bias`` where the model's train form has a
    BatchNorm means deploy form.
    """
    recorded = WeightFileMetadata.from_dict(metadata).form
    if recorded is not None:
        return recorded
    prefixes = _conv_prefixes(model)
    if _has_train_extras(state, prefixes):
        return "train"
    expected = model.state_dict()
    with_bn = [p for p in prefixes if f"{p}.bn.weight" in expected]
    if with_bn and all(f"{p}.bias" in state and f"{p}.bn.weight" not in state for p in with_bn):
        return "deploy"
    return None


def train_to_deploy(state: Mapping[str, torch.Tensor], model: nn.Module, name: str = "model",
                    where: str = "weights") -> dict[str, torch.Tensor]:
    """Train-form ``state`` -> the deployed ``model``'s tensors: each large-kernel conv's train-form tensors are folded
    by that conv (:meth:`~rep3d.layers.RepLKConv3d.fold_state`); every other tensor is kept as it is."""
    folded: dict[str, dict[str, torch.Tensor]] = {}
    for prefix, conv in _convs(model):
        own = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if set(own) <= {"weight", "bias"}:
            continue
        try:
            folded[prefix] = conv.fold_state(own, prefix)
        except Rep3DError as err:
            raise Rep3DWeightsError(name, where, str(err), "load the weights into the model variant they were "
                                    "trained as (same modulation, small branch and norm)", reason="form") from err
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():  # the checkpoint's order, each folded conv where its tensors were
        prefix = next((p for p in folded if key.startswith(p + ".")), None)
        if prefix is None:
            out[key] = value
        elif f"{prefix}.weight" not in out:
            out.update({f"{prefix}.{k}": v for k, v in folded[prefix].items()})
    return out


def deploy_to_train(state: Mapping[str, torch.Tensor], model: nn.Module, name: str = "model",
                    where: str = "weights") -> dict[str, torch.Tensor]:
    """Deployed ``state`` into a train-form ``model``: returned unchanged when the train form has nothing a folded
    kernel could have absorbed (no mask, BatchNorm or small branch), refused otherwise: folded kernels cannot be
    unfolded (the mask divides out only where it is non-zero, BatchNorm statistics are gone)."""
    if _has_train_extras(model.state_dict(), _conv_prefixes(model)):
        raise Rep3DWeightsError(
            name, where, "the weights are in the deployed (folded) form and the model in the train form; folded "
            "kernels cannot be unfolded", "create the model with deploy=True (rep3d.create_model(..., deploy=True))",
            reason="form",
        )
    return dict(state)


# ------------------------------------------------------------------------------------------------ the family layout

def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a conv weight ``[O, C, ...]`` to ``in_chans`` inputs: sum (to 1) or tile and scale by ``C / in_chans``."""
    source = weight.shape[1]
    if source == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / source)
    tiled = weight.repeat(1, reps, *([1] * (weight.ndim - 2)))[:, :in_chans]
    return tiled * (source / in_chans)


def _adapt_input_channels(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                          name: str) -> dict[str, torch.Tensor]:
    if STEM_KEY not in state or STEM_KEY not in expected:
        return state
    source, target = state[STEM_KEY].shape[1], expected[STEM_KEY].shape[1]
    if source == target:
        return state
    for key in INPUT_CONV_KEYS:
        if key in state and key in expected and state[key].shape[1] == source:
            state[key] = adapt_input_channels(state[key], target)
    exact = target == 1 or target % source == 0
    warnings.warn(
        f"{name}: pretrained weights take {source} input channel(s), the model {target}; the input convs were "
        f"adapted ({'summed' if target == 1 else f'tiled and scaled by {source}/{target}'})"
        + ("; a volume repeated on every channel gives the pretrained output" if exact else ""),
        UserWarning, stacklevel=5,
    )
    return _match_input_projection(state, expected, name)


def _match_input_projection(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                            name: str) -> dict[str, torch.Tensor]:
    """The decoder's input block has a 1x1x1 residual projection only when ``in_chans != widths[0]``: drop it, or
    keep the model's fresh one, when the adapted channel count makes it (dis)appear."""
    key = INPUT_PROJECTION_KEY
    if (key in state) == (key in expected):
        return state
    if key in state:
        state.pop(key)
        what = "its pretrained residual projection was dropped (the block now adds its input unchanged)"
    else:
        state[key] = expected[key]
        what = "it now needs a residual projection, which starts from its fresh initialisation"
    warnings.warn(f"{name}: with in_chans equal to widths[0] or not, the decoder's input block changes: {what}",
                  UserWarning, stacklevel=6)
    return state


def _adapt_head(state: dict[str, torch.Tensor], model: nn.Module, head: str, name: str) -> dict[str, torch.Tensor]:
    expected = model.state_dict()
    head_keys = [f"{head}.weight", f"{head}.bias"]
    source = state[head_keys[0]].shape[0] if head_keys[0] in state else None
    target = expected[head_keys[0]].shape[0] if head_keys[0] in expected else None
    if source is None or target is None or source == target:
        return state
    for key in head_keys:
        state.pop(key, None)
    warnings.warn(
        f"{name}: pretrained head has {source} classes, the model {target}; the output conv {head} was "
        "re-initialised (train it before use)", UserWarning, stacklevel=5,
    )
    if isinstance(getattr(model, "pretrained_cfg", None), dict):  # the cfg describes the model, not the checkpoint
        model.pretrained_cfg = with_values(without_keys(model.pretrained_cfg, LABEL_NAME_KEYS), num_classes=target)
    state.update({key: expected[key] for key in head_keys if key in expected})
    return state


def _convs(model: nn.Module) -> list[tuple[str, RepLKConv3d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, RepLKConv3d)]


def _conv_prefixes(model: nn.Module) -> list[str]:
    return [name for name, _ in _convs(model)]


def _has_train_extras(keys: Mapping[str, torch.Tensor], prefixes: list[str]) -> bool:
    return any(k.startswith(p + ".") and k not in (f"{p}.weight", f"{p}.bias") for p in prefixes for k in keys)
