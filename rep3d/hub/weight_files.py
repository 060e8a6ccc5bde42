"""Weight files as bytes: reading without executing code, unwrapping checkpoints, checksums and storage checks.

Reading never executes pickled code: safetensors first; ``.pth`` / ``.bin`` / ``.pt`` only through
``torch.load(weights_only=True)``. Nothing here knows a model: :mod:`rep3d.hub.weights` loads what this reads into
a given model, after the model's family has adapted it.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from rep3d.errors import Rep3DTypeError, Rep3DWeightsError, printable

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
