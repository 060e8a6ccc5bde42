"""Read, verify, adapt and load weights into rep3d models.

Reading never executes pickled code: safetensors first; ``.pth`` / ``.bin`` / ``.pt`` only through
``torch.load(weights_only=True)``.

Adapting pretrained weights to the model asked for (:func:`adapt_state_dict`):

* ``num_classes`` differs: the output conv (cfg ``classifier``, ``decoder.out.conv.conv``) keeps its fresh
  initialisation and a ``UserWarning`` says so;
* ``in_chans`` differs: every conv that reads the raw input (the stem ``encoder.downsample_layers.0.0`` and the
  decoder's input block ``decoder.encoder1.layer.conv1`` / ``conv3``) is adapted along its input-channel axis with
  timm's rule generalised to any source count ``C``: to 1 channel, sum over the ``C`` channels; to ``N`` channels,
  tile the ``C`` channels to ``N`` and scale by ``C / N``. When ``N`` is 1, ``C`` is 1 or ``N`` a multiple of ``C``,
  an input whose channels all hold the same volume gives exactly the pretrained model's output;
* form: train-form weights load into a deployed model (they are folded on the way); deployed weights cannot be
  unfolded into a train-form model.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm.utils
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from rep3d.configs.folder import SOURCE_KEYS, clean_data, load_config_json
from rep3d.errors import Rep3DError, Rep3DTypeError, Rep3DWeightsError, printable
from rep3d.hub.config import CONFIG_NAME, metadata_from_json
from rep3d.hub.download import WeightsSource, resolve_weights, weights_name
from rep3d.layers import RepLKConv3d, is_deployed

INPUT_CONV_KEYS = (
    "encoder.downsample_layers.0.0.weight",
    "decoder.encoder1.layer.conv1.conv.weight",
    "decoder.encoder1.layer.conv3.conv.weight",
)
"""Weights that read the raw input volume: the ones adapted when ``in_chans`` differs from the pretrained one."""
STEM_KEY = INPUT_CONV_KEYS[0]
DEFAULT_CLASSIFIER = "decoder.out.conv.conv"
WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict", "network")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_REFUSED_GLOBAL = re.compile(r"unsupported global", re.IGNORECASE)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def unwrap_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Find the tensor dict in a checkpoint (``{"state_dict": ...}``, ``{"model": ...}``, ``{"net": ...}`` wrappers,
    a ``module.`` / ``_orig_mod.`` prefix); returns it and the wrapper entries that were left out."""
    ignored: list[str] = []
    while isinstance(obj, Mapping) and not _all_tensors(obj):
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        ignored += [f"{k} (checkpoint wrapper entry)" for k in obj if k != inner]
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise Rep3DTypeError(f"expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            ignored.append(f"{key} (not a tensor: {type(value).__name__})")
            continue
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state, ignored


def _all_tensors(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_weights(path: str | Path, name: str, where: str | None = None,
                 ignored: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a weight file without executing code: ``(state_dict, safetensors metadata)``.

    Wrappers (``state_dict`` / ``model`` / ``net``) are unwrapped and ``module.`` prefixes stripped; the entries left
    out are appended to ``ignored``. Raises :class:`Rep3DWeightsError` (``corrupt`` / ``unsafe`` / ``not_found``).
    """
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise Rep3DWeightsError(name, where, "the file does not exist", "check the path", reason="not_found")
    metadata: dict = {}
    if weights_format(path) == "pickle":
        obj = _read_pickle(path, name, where)
    else:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                obj = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise Rep3DWeightsError(
                name, where, f"not a valid safetensors file ({type(err).__name__}: {err}); it is truncated or corrupt",
                "download it again (a corrupt Hub download is removed from the cache), or re-export it with "
                "rep3d.save_pretrained", reason="corrupt",
            ) from err
    try:
        state, left_out = unwrap_state_dict(obj)
    except TypeError as err:
        raise Rep3DWeightsError(name, where, str(err), "save model.state_dict() (or a dict holding it under "
                                "'state_dict' / 'model')", reason="corrupt") from err
    if ignored is not None:
        ignored.extend(left_out)
    check_tensor_storage(state, name, where)
    return state, metadata


def check_tensor_storage(state: Mapping[str, torch.Tensor], name: str, where: str) -> None:
    """Raise :class:`Rep3DWeightsError` (``corrupt``) for a tensor that claims more elements than its storage holds
    (a pickled size with zero strides over one value): touching it, even to count NaNs, would allocate what it
    claims. Checked before any value is read."""
    for key, tensor in state.items():
        stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
        if tensor.numel() > stored:
            raise Rep3DWeightsError(
                name, where, f"tensor {printable(key)!r} claims {tensor.numel():,} elements of shape "
                f"{tuple(tensor.shape)} but its storage holds {stored:,}: not a saved weight", "use the original "
                "checkpoint (a weight file saves every element it holds)", reason="corrupt")


def weights_format(path: str | Path) -> str:
    """``"pickle"`` (a ``torch.save`` zip or legacy pickle) or ``"safetensors"``, from the file's first bytes (a
    safetensors file starts with an 8-byte header length and ``{``); the suffix decides only when the bytes do not."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        head = b""
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return "pickle" if path.suffix in PICKLE_SUFFIXES else "safetensors"


def _read_pickle(path: Path, name: str, where: str) -> Any:
    try:
        with open(path, "rb") as f:  # a file object: torch picks no loader from the file name
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch words the refusal of a pickled global differently across versions: "Unsupported global: GLOBAL
        # os.system was not an allowed global" (2.4-2.6), "Trying to load unsupported GLOBAL posix.system whose module
        # posix is blocked" (2.14)
        detail = next((line.strip() for line in str(err).splitlines() if _REFUSED_GLOBAL.search(line)), None)
        if detail is None:  # not a refusal of a Python object: garbage or a damaged pickle
            raise Rep3DWeightsError(name, where, "not a readable PyTorch checkpoint (corrupt or truncated pickle "
                                    "stream, or not a checkpoint at all)", "download or export it again",
                                    reason="corrupt") from err
        raise Rep3DWeightsError(
            name, where, "the file holds code: pickled Python objects besides tensors, and rep3d never executes "
            f"pickled code (torch.load(weights_only=True) refused: {detail})",
            "in an environment you trust, re-save only the tensors (torch.save(ckpt['state_dict'], 'clean.pth') or "
            "safetensors.torch.save_file(state_dict, 'model.safetensors')) and load that", reason="unsafe",
        ) from err
    except Exception as err:  # noqa: BLE001 - garbage makes the unpickler raise anything (KeyError, IndexError, ...)
        if "resize storage" in str(err):  # torch refuses a pickled size larger than the storage it points into
            raise Rep3DWeightsError(name, where, "a tensor claims more elements than its storage holds: not a saved "
                                    "weight (refused before any value was read)", "use the original checkpoint",
                                    reason="corrupt") from err
        raise Rep3DWeightsError(name, where, f"cannot read the checkpoint ({type(err).__name__}: {err}); it is "
                                "truncated or corrupt", "download or export it again", reason="corrupt") from err


def read_header_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes from a safetensors file's header, without reading any tensor; ``None`` when the file is not a
    readable safetensors file (the loader then reports what is wrong with it)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None


def verify_sha256(path: Path, expected: str, name: str, where: str) -> None:
    if not (isinstance(expected, str) and re.fullmatch(r"[0-9a-fA-F]{64}", expected)):
        raise Rep3DWeightsError(name, where, f"the expected sha256 is {expected!r}, not 64 hexadecimal digits",
                                "give the sha256 as a hex string (sha256sum FILE), or leave it out", reason="config")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise Rep3DWeightsError(
            name, where, f"sha256 mismatch: expected {expected}, got {actual}",
            "the file differs from the one these weights were registered with: download it again, check that "
            "hf_revision pins the published commit, or update rep3d if the weights were re-published",
            reason="checksum",
        )


# ----------------------------------------------------------------------------------------------------------- adapting

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


def _conv_prefixes(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, RepLKConv3d)]


def _has_train_extras(keys: set[str] | dict, prefixes: list[str]) -> bool:
    return any(k.startswith(p + ".") and k not in (f"{p}.weight", f"{p}.bias") for p in prefixes for k in keys)


def _weights_form(state: Mapping[str, torch.Tensor], model: nn.Module, metadata: Mapping[str, str]) -> str | None:
    """``"train"``/``"deploy"`` when the weights' large-kernel convs are recognisably in one form, else ``None``.

    The safetensors metadata written by :func:`rep3d.save_pretrained` says it; otherwise the keys tell: train-only
    tensors (mask generator, BatchNorm, small branch) mean train form; ``bias`` where the model's train form has a
    BatchNorm means deploy form.
    """
    if metadata.get("rep3d_form") in ("train", "deploy"):
        return metadata["rep3d_form"]
    prefixes = _conv_prefixes(model)
    if _has_train_extras(state, prefixes):
        return "train"
    expected = model.state_dict()
    with_bn = [p for p in prefixes if f"{p}.bn.weight" in expected]
    if with_bn and all(f"{p}.bias" in state and f"{p}.bn.weight" not in state for p in with_bn):
        return "deploy"
    return None


def _convert_form(model: nn.Module, state: dict[str, torch.Tensor], metadata: Mapping[str, str], name: str,
                  where: str) -> dict[str, torch.Tensor]:
    form = _weights_form(state, model, metadata)
    model_deployed = is_deployed(model)
    if form == "train" and model_deployed and _has_train_extras(state, _conv_prefixes(model)):
        return _fold_into_deploy_form(model, state, name, where)
    if form == "deploy" and not model_deployed and _has_train_extras(model.state_dict(), _conv_prefixes(model)):
        raise Rep3DWeightsError(
            name, where, "the weights are in the deployed (folded) form and the model in the train form; folded "
            "kernels cannot be unfolded", "create the model with deploy=True (rep3d.create_model(..., deploy=True))",
            reason="form",
        )
    return state


def adapt_state_dict(model: nn.Module, state: dict[str, torch.Tensor], cfg: Mapping[str, Any] | None = None,
                     name: str = "model", where: str = "weights",
                     metadata: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Adapt pretrained ``state`` to ``model``: in_chans, num_classes (head left fresh, warned) and deploy form."""
    cfg = cfg or {}
    state = dict(state)
    expected = model.state_dict()
    if STEM_KEY in state and STEM_KEY in expected:
        source, target = state[STEM_KEY].shape[1], expected[STEM_KEY].shape[1]
        if source != target:
            for key in INPUT_CONV_KEYS:
                if key in state and key in expected and state[key].shape[1] == source:
                    state[key] = adapt_input_channels(state[key], target)
            exact = target == 1 or target % source == 0
            warnings.warn(
                f"{name}: pretrained weights take {source} input channel(s), the model {target}; the input convs were "
                f"adapted ({'summed' if target == 1 else f'tiled and scaled by {source}/{target}'})"
                + ("; a volume repeated on every channel gives the pretrained output" if exact else ""),
                UserWarning, stacklevel=4,
            )
            state = _match_input_projection(state, expected, name)
    head = cfg.get("classifier") or DEFAULT_CLASSIFIER
    head_keys = [f"{head}.weight", f"{head}.bias"]
    source = state[head_keys[0]].shape[0] if head_keys[0] in state else None
    target = expected[head_keys[0]].shape[0] if head_keys[0] in expected else None
    if source is not None and target is not None and source != target:
        for key in head_keys:
            state.pop(key, None)
        warnings.warn(
            f"{name}: pretrained head has {source} classes, the model {target}; the output conv {head} was "
            "re-initialised (train it before use)", UserWarning, stacklevel=4,
        )
        if isinstance(getattr(model, "pretrained_cfg", None), dict):
            model.pretrained_cfg.pop("class_names", None)
            model.pretrained_cfg.pop("label_names", None)
            model.pretrained_cfg["num_classes"] = target  # the cfg describes the model, not the checkpoint
        state.update({key: expected[key] for key in head_keys if key in expected})
    return _convert_form(model, state, metadata or {}, name, where)


def _match_input_projection(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                            name: str) -> dict[str, torch.Tensor]:
    """The decoder's input block has a 1x1x1 residual projection only when ``in_chans != widths[0]``: drop it, or
    keep the model's fresh one, when the adapted channel count makes it (dis)appear."""
    key = INPUT_CONV_KEYS[2]
    if (key in state) == (key in expected):
        return state
    if key in state:
        state.pop(key)
        what = "its pretrained residual projection was dropped (the block now adds its input unchanged)"
    else:
        state[key] = expected[key]
        what = "it now needs a residual projection, which starts from its fresh initialisation"
    warnings.warn(f"{name}: with in_chans equal to widths[0] or not, the decoder's input block changes: {what}",
                  UserWarning, stacklevel=5)
    return state


def _fold_into_deploy_form(model: nn.Module, state: dict[str, torch.Tensor], name: str,
                           where: str) -> dict[str, torch.Tensor]:
    """Load train-form ``state`` into a train-form twin of ``model`` and fold it, giving deploy-form weights."""
    args = getattr(model, "model_args", None)
    if not isinstance(args, dict):
        raise Rep3DWeightsError(
            name, where, "train-form weights cannot be folded into a deployed model that was not built by "
            "rep3d.create_model", "load them into a train-form model, then call rep3d.reparameterize_model",
            reason="form",
        )
    twin = type(model)(**{**args, "deploy": False})
    load_exact(twin, state, strict=True, name=name, where=where, metadata={})
    # timm's fold calls every RepLKConv3d.reparameterize(); only the folded state_dict is kept
    return timm.utils.reparameterize_model(twin, inplace=True).state_dict()


# ------------------------------------------------------------------------------------------------------------ loading

def load_exact(model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool, name: str, where: str,
                metadata: Mapping[str, str]) -> None:
    """Load ``state`` into ``model`` as it is (no adaptation): shape mismatches always, and with ``strict`` missing or
    unexpected keys, raise :class:`Rep3DWeightsError` saying whether the weights belong to another architecture."""
    expected = model.state_dict()
    check_tensor_values(state, expected, name, where)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        saved = metadata.get("rep3d_architecture")
        other = len(missing) + len(unexpected) + len(mismatched) > len(expected) // 2 or (saved and saved != arch)
        what = f"weights saved from {saved!r}" if saved else "a checkpoint of another architecture"
        problem = (f"{what} do not fit {arch!r}: " if other else f"the weights do not fit {arch!r}: ") + _key_report(
            missing, unexpected, [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched])
        if saved and saved != arch:
            fix = f"create the model these weights belong to (rep3d.create_model({saved!r}, ...))"
        else:
            fix = "create the model the weights were trained with (same name and size arguments)"
        if not mismatched:
            fix += ", or pass pretrained_strict=False to load the matching tensors (the rest stays at initialisation)"
        raise Rep3DWeightsError(name, where, problem, fix, reason="architecture" if other else "keys")
    if missing or unexpected:
        warnings.warn(f"{name}: non-strict load from {where}: {_key_report(missing, unexpected, [])}", UserWarning,
                      stacklevel=4)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def check_tensor_values(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], name: str,
                        where: str) -> None:
    """Raise :class:`Rep3DWeightsError` naming the tensor when a weight the model holds as floating point comes as an
    integer, boolean or complex tensor (``load_state_dict`` would cast it silently) or holds NaN / inf.

    Integer buffers of the model (BatchNorm's ``num_batches_tracked``) may stay integers."""
    for key, tensor in state.items():
        target = expected.get(key)
        if target is None or not target.is_floating_point():
            continue
        if not tensor.is_floating_point():
            given, wanted = (str(t.dtype).removeprefix("torch.") for t in (tensor, target))
            raise Rep3DWeightsError(
                name, where, f"tensor {key!r} is {given}, but the model holds it as {wanted}: integer, boolean or "
                "complex values are not trained weights (a quantised or wrongly converted file?)",
                "export the floating-point weights (state_dict of the trained model) and load those", reason="dtype",
            )
        bad = int(tensor.numel() - torch.isfinite(tensor).sum())
        if bad:
            raise Rep3DWeightsError(
                name, where, f"tensor {key!r} holds {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}: a "
                "model loaded from it computes NaN", "use a checkpoint saved before training diverged (or re-export "
                "the weights)", reason="non_finite",
            )


def _key_report(missing: list[str], unexpected: list[str], mismatched: list[str], show: int = 4) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            more = f", ... (+{len(keys) - show})" if len(keys) > show else ""
            parts.append(f"{len(keys)} {label} ({', '.join(printable(k) for k in keys[:show])}{more})")
    return "; ".join(parts)


def _sidecar_config(source: WeightsSource) -> dict[str, Any]:
    """The ``config.json`` next to Hub weights (same commit), when it is in the cache, or the ``NAME.json`` next to
    bundled ``NAME.safetensors``: its ``rep3d`` section."""
    path = source.path.parent / CONFIG_NAME if source.kind == "hub" else source.path.with_suffix(".json")
    if source.kind not in ("hub", "bundled") or not path.is_file():
        return {}
    try:  # read as untrusted data: size and depth caps, control characters replaced
        section = clean_data(load_config_json(path, "config.json", str(path))).get("rep3d", {})
    except (Rep3DError, AttributeError):
        return {}
    if not isinstance(section, dict):
        return {}
    metadata = section.get("metadata")
    if isinstance(metadata, dict):  # descriptions only: never a weight source
        section["metadata"] = {k: v for k, v in metadata.items() if k not in SOURCE_KEYS}
    return section


def _evict(path: Path) -> None:
    """Remove a bad file from the huggingface_hub cache (snapshot link and blob) so the next call downloads again."""
    try:
        blob = path.resolve() if path.is_symlink() else None
        path.unlink(missing_ok=True)
        if blob is not None:
            blob.unlink(missing_ok=True)
    except OSError:
        pass


def load_pretrained(model: nn.Module, cfg: Mapping[str, Any] | None = None, *, cache_dir: str | Path | None = None,
                    strict: bool = True) -> nn.Module:
    """Load the weights ``cfg`` (default ``model.pretrained_cfg``) points at into ``model``, in place.

    Resolution: explicit ``file``, ``bundled`` package file, then the Hub (``hf_hub_id`` / ``hf_revision`` /
    ``hf_hub_filename``). The file's sha256 is checked when the cfg lists one. Raises :class:`Rep3DWeightsError`;
    a Hub file that fails the checksum or does not parse is removed from the cache first.
    """
    cfg = dict(model.pretrained_cfg if cfg is None else cfg)
    name = weights_name(cfg)
    source = resolve_weights(cfg, cache_dir=cache_dir, name=name)
    sidecar = _sidecar_config(source)
    sidecar_weights = sidecar.get("weights", {}) if isinstance(sidecar.get("weights"), dict) else {}
    expected_sha = cfg.get("sha256") or sidecar_weights.get("sha256")
    try:
        if expected_sha:
            verify_sha256(source.path, expected_sha, name, source.where)
        state, metadata = read_weights(source.path, name, source.where)
    except Rep3DWeightsError as err:
        if source.kind == "hub" and err.reason in ("checksum", "corrupt"):
            _evict(source.path)
            raise Rep3DWeightsError(name, err.source, err.problem + " (the file was removed from the cache)", err.fix,
                                    err.reason) from err
        raise
    state = adapt_state_dict(model, state, cfg, name, source.where, metadata)
    load_exact(model, state, strict=strict, name=name, where=source.where, metadata=metadata)
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        for key, value in metadata_from_json(sidecar.get("metadata") or {}).items():
            # a bundled file's cfg is the registry's; its JSON adds only the recorded training distribution
            if source.kind == "hub" or key == "training_distribution":
                model.pretrained_cfg.setdefault(key, value)
        model.pretrained_cfg["weights_source"] = source.where
    return model


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load a local checkpoint (safetensors, or ``.pth``/``.bin`` via ``torch.load(weights_only=True)``) strictly.

    ``state_dict`` / ``model`` / ``net`` wrappers and a ``module.`` prefix are accepted; train-form weights fold into
    a deployed model. No head or input-channel adaptation: the checkpoint must match the model.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = weights_name(cfg) if cfg else type(model).__name__
    where = f"checkpoint {path}"
    state, metadata = read_weights(path, name, where)
    state = _convert_form(model, state, metadata, name, where)
    load_exact(model, state, strict=strict, name=name, where=where, metadata=metadata)
    return model
