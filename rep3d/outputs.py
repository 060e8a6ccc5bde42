"""Which files rep3d wrote, and the one rule every writing command follows: never replace a file it did not write.

Every folder a rep3d command writes into gets a small marker file, :data:`MARKER_NAME`, listing the files rep3d wrote
there (relative paths) and which command wrote each. A file is *ours* when its folder's marker lists it (or, for a
folder a command owns as a whole, when the folder's marker lists it under its relative path). ``--overwrite`` (or
``overwrite=True``) replaces only such files. It never replaces:

* a file that is being read by the same command (a source model, a checkpoint, an input volume);
* a file rep3d did not write, whatever its name;
* a folder: outputs are written file by file, so a folder (the working directory, the parent of an input, a folder
  of other files) is never removed. A command that owns a whole folder (a model folder, a MONAI bundle, a dataset)
  also refuses a non-empty folder without a marker before it starts.

The checks run before any long work starts (:func:`check_file_output`, :func:`check_folder_output`). Writes go to a
temporary file with a per-process name in the same folder and are renamed into place (:func:`install_file`); without
``overwrite`` the rename refuses to clobber a file that appeared in the meantime (a concurrent run), so two runs into
one folder never silently replace each other's outputs. The marker itself is updated under an exclusive lock on the
folder, so concurrent runs do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from rep3d.errors import Rep3DValueError

MARKER_NAME = ".rep3d-outputs.json"
"""Name of the marker file listing what rep3d wrote in a folder."""


class OutputRefused(Rep3DValueError):
    """An output path would replace or remove something rep3d did not write (or a file being read)."""


def file_mode() -> int:
    """The mode a new regular file gets under the current umask (``0o666 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def folder_mode() -> int:
    """The mode a new folder gets under the current umask (``0o777 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def read_files(paths: Iterable[str | os.PathLike | None]) -> set[Path]:
    """The resolved files a command reads: files as given, folders expanded to the files under them (a model
    folder ``local-dir:RUN`` protects every file in ``RUN``). ``None`` and missing paths are skipped."""
    found: set[Path] = set()
    for p in paths:
        if p is None:
            continue
        path = _resolved(p)
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(q.resolve() for q in path.rglob("*") if q.is_file())
    return found


def model_source_files(model: str, checkpoint: str | os.PathLike | None = None) -> set[Path]:
    """The files a ``MODEL`` argument (``local-dir:RUN`` / a path) and ``--checkpoint`` read."""
    paths: list[str | os.PathLike | None] = [checkpoint]
    if model.startswith("local-dir:"):
        paths.append(model.removeprefix("local-dir:"))
    return read_files(paths)


# ------------------------------------------------------------------------------------------------ the marker


def _marker_entries(folder: Path) -> dict[str, dict]:
    try:
        data = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {str(k): v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def _fingerprint(path: Path) -> dict[str, int]:
    """Size and modification time: a file rep3d wrote and someone replaced since no longer counts as rep3d's."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def has_marker(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` carries rep3d's marker (rep3d created it or wrote files into it)."""
    return (Path(folder) / MARKER_NAME).is_file()


def is_ours(path: str | os.PathLike, root: str | os.PathLike | None = None) -> bool:
    """Whether rep3d wrote ``path``: listed in the marker of ``root`` (as a relative path) or, without ``root``, of
    its own folder."""
    path = Path(path)
    folder = Path(root) if root is not None else path.parent
    try:
        name = path.resolve().relative_to(folder.resolve()).as_posix()
        entry = _marker_entries(folder).get(name)
        return entry is not None and path.is_file() and \
            {k: entry.get(k) for k in ("size", "mtime_ns")} == _fingerprint(path)
    except (ValueError, OSError):
        return False


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (``flock`` on the folder itself; a no-op where that is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: renames are still atomic, the marker may lose an entry
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def record_outputs(folder: str | os.PathLike, names: Iterable[str], command: str) -> None:
    """Add ``names`` (paths relative to ``folder``, files that exist) to ``folder``'s marker as written by
    ``command``, with their size and modification time."""
    folder = Path(folder)
    names = list(names)
    with _folder_lock(folder):
        entries = _marker_entries(folder)
        entries.update({n: {"command": command, **_fingerprint(folder / n)} for n in names})
        text = json.dumps({"written_by": "rep3d", "files": dict(sorted(entries.items()))}, indent=1) + "\n"
        tmp = folder / f".{MARKER_NAME}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / MARKER_NAME)


# ------------------------------------------------------------------------------------------------ the checks


def _describe_flag(flag: str, path: Path) -> str:
    return f"{flag} {path}" if flag else str(path)


def check_file_output(path: str | os.PathLike, *, overwrite: bool, reads: Iterable[Path] = (), flag: str = "-o",
                      also_ours: Callable[[Path], bool] | None = None, root: str | os.PathLike | None = None) -> Path:
    """Refuse, before any work, to write file ``path`` where that would destroy something; returns ``path``.

    Refused: ``path`` is a folder; ``path`` is one of ``reads`` (the files the command reads); ``path`` exists and
    ``overwrite`` is false; ``path`` exists and rep3d did not write it (:func:`is_ours` with ``root``, or
    ``also_ours(path)``, e.g. a NIfTI header that says it is a rep3d prediction). A parent that is a file or not
    writable is refused too.
    """
    path = Path(path)
    where = _describe_flag(flag, path)
    if path.is_dir():
        raise OutputRefused(f"{where} is a folder; give a file path (folders are never replaced)")
    if path.exists() or path.is_symlink():
        if _resolved(path) in reads:
            raise OutputRefused(f"{where} is a file this command reads; write the output to another path")
        if not overwrite:
            raise OutputRefused(f"{where} exists; pass --overwrite (overwrite=True) to replace it (only files rep3d "
                                "wrote are replaced)")
        if path.is_symlink() or not (is_ours(path, root) or (also_ours is not None and also_ours(path))):
            raise OutputRefused(f"{where} exists and was not written by rep3d; --overwrite only replaces rep3d's own "
                                "earlier outputs: move it or choose another path")
    _check_parent(path.parent, where)
    return path


def check_folder_output(folder: str | os.PathLike, *, overwrite: bool, names: Iterable[str] = (),
                        reads: Iterable[Path] = (), flag: str = "-o", owned: bool = True,
                        also_ours: Callable[[Path], bool] | None = None) -> Path:
    """Refuse, before any work, to write files ``names`` (relative paths) into ``folder``; returns ``folder``.

    ``owned``: the command owns the folder as a whole (a model folder, a bundle, a dataset), so an existing non-empty
    folder without rep3d's marker is refused (``also_ours(folder)`` can accept a folder an older rep3d wrote). Every
    name is checked with :func:`check_file_output`. Nothing is ever removed: files rep3d did not write stay.
    """
    folder = Path(folder)
    where = _describe_flag(flag, folder)
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"{where} is an existing file; give a folder path")
    if owned and folder.is_dir() and any(p.name != MARKER_NAME for p in folder.iterdir()) \
            and not has_marker(folder) and not (also_ours is not None and also_ours(folder)):
        raise OutputRefused(f"{where} is a non-empty folder rep3d did not create; give a new or empty folder "
                            "(rep3d never writes into or replaces a folder of other files)")
    for name in names:
        check_file_output(folder / name, overwrite=overwrite, reads=reads, flag=flag, root=folder,
                          also_ours=(lambda p: also_ours(folder)) if also_ours is not None else None)
    _check_parent(folder, where)
    return folder


def _check_parent(folder: Path, where: str) -> None:
    parent = folder
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputRefused(f"{where}: {parent} is a file, so the path cannot be created; give another path")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputRefused(f"{where}: {parent} is not writable; give a path you can write to")


# ------------------------------------------------------------------------------------------------ writing


def make_folder(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` with the umask's mode."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def staging_path(path: str | os.PathLike) -> Path:
    """A fresh per-process temporary name next to ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def install_file(tmp: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool, command: str,
                 root: str | os.PathLike | None = None) -> Path:
    """Move the finished ``tmp`` to ``path`` atomically, with the umask's file mode, and record it as ours.

    Without ``overwrite`` the move refuses to replace a file that appeared since the checks (a concurrent run):
    ``tmp`` is removed and :class:`OutputRefused` raised. ``root``: the folder whose marker lists the file (default:
    the file's own folder)."""
    tmp, path = Path(tmp), Path(path)
    try:
        os.chmod(tmp, file_mode())  # mkstemp and some writers create 0600 files
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: no clobbering a concurrent run's output
            except FileExistsError:
                raise OutputRefused(f"{path} appeared while this command ran (another run?); it was kept, and this "
                                    "output was not written: rerun with another path") from None
            except OSError:  # a file system without hard links: a plain rename after one more check
                if path.exists():
                    raise OutputRefused(f"{path} appeared while this command ran (another run?); it was kept") \
                        from None
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = Path(root) if root is not None else path.parent
    record_outputs(folder, [path.resolve().relative_to(folder.resolve()).as_posix()], command)
    return path


def write_text_output(path: str | os.PathLike, text: str, *, overwrite: bool, command: str,
                      root: str | os.PathLike | None = None) -> Path:
    """Write ``text`` to ``path`` through :func:`staging_path` and :func:`install_file`."""
    tmp = staging_path(path)
    try:
        tmp.write_text(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return install_file(tmp, path, overwrite=overwrite, command=command, root=root)


def write_output(path: str | os.PathLike, write: Callable[[Path], object], *, overwrite: bool, command: str,
                 root: str | os.PathLike | None = None) -> Path:
    """``write(tmp)`` to a per-run temporary name next to ``path`` that keeps its suffix (``.nii.gz``, ``.png``: the
    writers pick the format from it), then :func:`install_file` it."""
    import uuid

    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    make_folder(path.parent)
    stem = path.name[:len(path.name) - len(suffix)]
    tmp = path.with_name(f".{stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        write(tmp)
        return install_file(tmp, path, overwrite=overwrite, command=command, root=root)
    finally:
        tmp.unlink(missing_ok=True)


def install_tree(staging: str | os.PathLike, folder: str | os.PathLike, *, overwrite: bool, command: str) -> Path:
    """Move every file under ``staging`` to the same relative path under ``folder`` (created with the umask's
    mode), each with :func:`install_file`, and list them in ``folder``'s marker. Files of ``folder`` that are not in
    ``staging`` are kept."""
    staging, folder = Path(staging), make_folder(folder)
    names = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    for name in names:
        target = folder / name
        make_folder(target.parent)
        install_file(staging / name, target, overwrite=overwrite, command=command, root=folder)
    if not names:
        record_outputs(folder, [], command)
    return folder


__all__ = [
    "MARKER_NAME",
    "OutputRefused",
    "check_file_output",
    "check_folder_output",
    "file_mode",
    "has_marker",
    "install_file",
    "install_tree",
    "is_ours",
    "make_folder",
    "write_output",
    "model_source_files",
    "read_files",
    "record_outputs",
    "staging_path",
    "write_text_output",
]
