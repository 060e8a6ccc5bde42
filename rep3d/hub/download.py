"""Where pretrained weights come from, in order: an explicit local file, a file bundled in the package, the Hub.

* explicit file: the cfg's ``file`` (``pretrained_cfg_overlay=dict(file=PATH)``; a folder written by
  :func:`rep3d.save_pretrained` works too);
* bundled file: the rep3d cfg key ``bundled="NAME.safetensors"`` names a file in the installed package's
  ``rep3d/weights/`` (``$REP3D_WEIGHTS_DIR`` overrides that folder);
* Hub: ``hf_hub_id`` (``"org/name"``, optionally ``"org/name@revision"``), the rep3d key ``hf_revision`` (pin a 40-hex
  commit: then a cached file is served with zero requests) and ``hf_hub_filename`` (default ``model.safetensors``),
  fetched by ``huggingface_hub.hf_hub_download`` with its cache, ``cache_dir``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``.

Failing fast: when a file is not cached yet, one HEAD request without retries comes first, so an unreachable Hub, a
missing repository, revision or file raises a :class:`Rep3DWeightsError` at once instead of after
``huggingface_hub``'s retry back-off (about 23 s on connection errors and 5xx answers).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from rep3d.configs.pretrained import PretrainedCfg
from rep3d.errors import Rep3DWeightsError
from rep3d.hub.config import BUNDLED_PREFIX, DEFAULT_FILENAME
from rep3d.version import __version__

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "REP3D_WEIGHTS_DIR"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class WeightsSource:
    """A resolved weight file: ``kind`` is ``"file"``, ``"bundled"`` or ``"hub"``; ``where`` is for messages."""

    kind: Literal["file", "bundled", "hub"]
    path: Path
    where: str
    repo_id: str | None = None
    revision: str | None = None


def bundled_weights_dir() -> Path:
    """The folder of weight files shipped inside the package (``rep3d/weights``), or ``$REP3D_WEIGHTS_DIR``."""
    override = os.environ.get(WEIGHTS_DIR_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files("rep3d") / "weights"))


def split_hub_id(hub_id: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; no ``@`` -> revision ``None``.

    Raises :class:`Rep3DWeightsError` (reason ``config``) for an id the Hub cannot hold (``../etc``, spaces, ...)."""
    repo_id, _, revision = str(hub_id).partition("@")
    problem = None
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        problem = "a Hub model id must look like 'org/name' or 'org/name@revision'"
    else:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            problem = f"not a valid Hub repository id ({err})"
    if problem is not None:
        raise Rep3DWeightsError(
            f"hf-hub:{hub_id}", "the Hub model id", f"{problem}, got {hub_id!r}",
            "use the id shown on the model's Hub page: ORG/NAME with letters, digits, '-', '_' or '.' (no spaces, "
            "no '..'), optionally @REVISION", reason="config",
        )
    return repo_id, revision or None


def weights_name(cfg: Mapping[str, Any]) -> str:
    """How errors name the weights: ``"arch.tag"``, or ``"hf-hub:org/name@rev"`` for a model built from the Hub."""
    typed = PretrainedCfg.from_dict(cfg)
    source = typed.weights
    if source.source == "hf-hub" and source.hf_hub_id:
        hub_id, revision = source.hf_hub_id, source.hf_revision
        return f"hf-hub:{hub_id}" + (f"@{revision}" if revision and "@" not in hub_id else "")
    return (typed.architecture or "model") + (f".{typed.tag}" if typed.tag else "")


def has_weight_source(cfg: Mapping[str, Any]) -> bool:
    return PretrainedCfg.from_dict(cfg).weights.names_weights


def no_weights_error(name: str, tags_with_weights: list[str] | None = None) -> Rep3DWeightsError:
    """The error for a model/tag without registered weights; lists ``tags_with_weights`` when the caller (the
    registry, which knows them) gives them."""
    if tags_with_weights is None:
        listed = "rep3d.list_models(pretrained=True) lists them"
    else:
        listed = ", ".join(tags_with_weights) if tags_with_weights else "none yet"
    return Rep3DWeightsError(
        name, "the rep3d model registry",
        f"no weights are published for {name!r} (no file, bundled file or Hub repository is registered for it); "
        f"tags with weights: {listed}",
        "use a tag from rep3d.list_models(pretrained=True), load your own file with "
        "pretrained_cfg_overlay=dict(file=PATH) or checkpoint_path=PATH, or create the model with pretrained=False",
        reason="no_weights",
    )


def check_weights_available(cfg: Mapping[str, Any], tags_with_weights: list[str] | None = None) -> None:
    """Raise :func:`no_weights_error` when ``cfg`` names no weight source at all (no network, no file access)."""
    if not has_weight_source(cfg):
        raise no_weights_error(weights_name(cfg), tags_with_weights)


def resolve_weights(cfg: Mapping[str, Any], *, cache_dir: str | Path | None = None,
                    name: str | None = None) -> WeightsSource:
    """Find the weight file ``cfg`` points at (explicit file, bundled file, Hub download), or raise."""
    name = name or weights_name(cfg)
    weights = PretrainedCfg.from_dict(cfg).weights
    file = weights.file
    if file and not str(file).startswith(BUNDLED_PREFIX):
        path = Path(file).expanduser()
        if path.is_dir():
            path = path / (weights.hf_hub_filename or DEFAULT_FILENAME)
        if not path.is_file():
            raise Rep3DWeightsError(
                name, str(path), "the file does not exist",
                "check the path given as pretrained_cfg_overlay=dict(file=...) (a weight file or a folder written by "
                "rep3d.save_pretrained)", reason="not_found",
            )
        return WeightsSource("file", path, f"local file {path}")
    bundled = weights.bundled or (str(file)[len(BUNDLED_PREFIX):] if file else None)
    hub_id = weights.hf_hub_id
    if bundled:
        path = bundled_weights_dir() / bundled
        if path.is_file():
            return WeightsSource("bundled", path, f"bundled file {path}")
        if not hub_id:
            raise Rep3DWeightsError(
                name, str(path), "the weight file bundled with rep3d is missing from this installation",
                "reinstall rep3d from a wheel or sdist that includes its package data (rep3d/weights/), or pass "
                "pretrained_cfg_overlay=dict(file=PATH)", reason="not_found",
            )
        logger.warning("%s: bundled weight file %s is missing; trying the Hub (%s)", name, path, hub_id)
    if hub_id:
        repo_id, revision = split_hub_id(hub_id)
        revision = weights.hf_revision or revision or "main"
        filename = weights.hf_hub_filename or DEFAULT_FILENAME
        path = Path(hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, name=name))
        return WeightsSource("hub", path, hub_where(repo_id, filename, revision), repo_id, revision)
    if weights.url:
        raise Rep3DWeightsError(
            name, str(weights.url), "rep3d loads weights from a local file, the package or the Hugging Face Hub, "
            "not from arbitrary URLs", "download the file and pass pretrained_cfg_overlay=dict(file=PATH)",
            reason="no_weights",
        )
    raise no_weights_error(name)


def hub_where(repo_id: str, filename: str, revision: str) -> str:
    return f"{hf_hub_url(repo_id, filename, revision=revision)} (repo {repo_id}, revision {revision})"


def _offline() -> bool:
    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if callable(check) else constants.HF_HUB_OFFLINE)


def _cache_location(cache_dir: str | Path | None) -> str:
    return str(cache_dir or constants.HF_HUB_CACHE)


def hub_download(repo_id: str, filename: str, *, revision: str = "main", cache_dir: str | Path | None = None,
                 name: str | None = None) -> str:
    """``hf_hub_download`` that fails fast and raises :class:`Rep3DWeightsError` naming the model, source and fix.

    A file cached for a 40-hex ``revision`` is returned without any request; one cached for a branch is
    re-validated with one HEAD (and served from the cache if the Hub is unreachable). An uncached file costs one HEAD
    without retries, then the download itself (written to a temporary file and moved into the cache when complete).
    """
    name = name or f"hf-hub:{repo_id}@{revision}"
    where = hub_where(repo_id, filename, revision)
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    is_cached = isinstance(cached, str)
    if is_cached and COMMIT_RE.match(revision):
        return cached
    if _offline():
        if is_cached:
            return cached
        raise Rep3DWeightsError(
            name, where, f"HF_HUB_OFFLINE is set and {filename} of {repo_id}@{revision} is not in the cache "
            f"{_cache_location(cache_dir)}",
            f"run once with network access to fill the cache (or `hf download {repo_id} {filename} --revision "
            f"{revision}`), point cache_dir / HF_HUB_CACHE at a cache that holds it, or pass "
            "pretrained_cfg_overlay=dict(file=PATH)", reason="offline",
        )
    if not is_cached:
        kwargs: dict[str, Any] = {}
        if "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters:
            kwargs["retry_on_errors"] = False
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision),
                                 timeout=constants.HF_HUB_ETAG_TIMEOUT, library_name="rep3d",
                                 library_version=__version__, **kwargs)
        except Exception as err:
            raise _classify(err, name, where, repo_id, filename, revision, cache_dir) from err
    try:
        return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, library_name="rep3d",
                               library_version=__version__)
    except Exception as err:
        raise _classify(err, name, where, repo_id, filename, revision, cache_dir) from err


def _classify(err: Exception, name: str, where: str, repo_id: str, filename: str, revision: str,
              cache_dir: str | Path | None) -> Exception:
    """Turn a huggingface_hub / transport error into a :class:`Rep3DWeightsError`; unknown errors pass through."""
    login = "log in for a private or gated repository (`hf auth login` or HF_TOKEN)"
    local = "or pass pretrained_cfg_overlay=dict(file=PATH) to use a local copy"
    if isinstance(err, GatedRepoError):
        return Rep3DWeightsError(name, where, f"{repo_id} is gated and this client has no access",
                                 f"accept the repository's terms on the Hub and {login}", reason="access")
    if isinstance(err, RepositoryNotFoundError):
        return Rep3DWeightsError(
            name, where, f"repository {repo_id} does not exist on {constants.ENDPOINT} (or is private)",
            f"check the repository id (hf_hub_id / hf-hub:ORG/NAME), or {login}", reason="repo_not_found",
        )
    if isinstance(err, RevisionNotFoundError):
        return Rep3DWeightsError(
            name, where, f"revision {revision!r} does not exist in {repo_id}",
            "check the revision (a branch, tag or full commit hash) in hf_revision / hf-hub:ORG/NAME@REVISION",
            reason="revision_not_found",
        )
    if isinstance(err, EntryNotFoundError) and not isinstance(err, LocalEntryNotFoundError):
        return Rep3DWeightsError(
            name, where, f"{repo_id}@{revision} has no file {filename}",
            "check hf_hub_filename; a repository written by rep3d.save_pretrained / push_to_hub holds "
            "model.safetensors and config.json", reason="entry_not_found",
        )
    if isinstance(err, OfflineModeIsEnabled):
        return Rep3DWeightsError(name, where, f"HF_HUB_OFFLINE is set and {filename} is not cached",
                                 f"unset HF_HUB_OFFLINE and download once, {local}", reason="offline")
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            return Rep3DWeightsError(name, where, f"the Hub refused access (HTTP {status})", login, reason="access")
        return Rep3DWeightsError(name, where, f"the Hub answered HTTP {status}",
                                 f"retry later, {local}", reason="unreachable")
    if isinstance(err, OSError) and "Consistency check failed" in str(err):
        return Rep3DWeightsError(
            name, where, f"the download was cut short ({str(err).splitlines()[0]}); the partial file was discarded "
            "and nothing was added to the cache", f"retry; if it keeps failing check proxies / firewalls, {local}",
            reason="truncated",
        )
    transport = type(err).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
    if transport or isinstance(err, (LocalEntryNotFoundError, ConnectionError, TimeoutError)):
        return Rep3DWeightsError(
            name, where, f"cannot reach the Hub at {constants.ENDPOINT} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}) and the file is not in the cache "
            f"{_cache_location(cache_dir)}",
            f"check the network and HF_ENDPOINT; once the file is cached, HF_HUB_OFFLINE=1 works without network; "
            f"{local}", reason="unreachable",
        )
    return err
