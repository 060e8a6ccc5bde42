"""A loopback stand-in for the Hugging Face Hub's file-resolve protocol (stdlib only), for tests.

It answers what ``huggingface_hub.hf_hub_download`` asks of the Hub:

* ``HEAD`` / ``GET {endpoint}/{repo_id}/resolve/{revision}/{filename}`` with ``X-Repo-Commit`` (40-hex commit),
  ``ETag`` (quoted sha256 for LFS-like files, git blob sha1 otherwise), ``Content-Length``; ``Range`` gives 206;
* 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` as the real Hub does;
* ``/api/...`` -> 404 (never an ``X-Xet-Hash``: downloads stay plain HTTP).

Every request is recorded in :attr:`HubServer.requests`, so a test can assert that a cached call made none. Faults
are switched per file with :meth:`HubServer.fault`: ``"truncate"`` (HEAD announces the full file, GET sends half of
it with an honest Content-Length) or ``"error500"`` (HEAD and GET answer 500).
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass
class _Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch / tag -> commit


class HubServer:
    """Threaded HTTP server on 127.0.0.1 serving in-memory repos; :attr:`endpoint` is its base URL."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def publish(self, repo_id: str, files: dict[str, bytes] | Path, branch: str = "main") -> str:
        """Commit ``files`` (a dict or a folder) to ``repo_id`` on ``branch``; returns the new 40-hex commit."""
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        repo = self.repos.setdefault(repo_id, _Repo())
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        digest.update(str(len(repo.commits)).encode())
        commit = digest.hexdigest()
        repo.commits[commit] = dict(files)
        repo.refs[branch] = commit
        return commit

    def fault(self, repo_id: str, filename: str, kind: str | None) -> None:
        """Make GET of ``filename`` misbehave (``"truncate"``, ``"error500"``) or behave again (``None``)."""
        if kind is None:
            self.faults.pop((repo_id, filename), None)
        else:
            self.faults[(repo_id, filename)] = kind

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


def etag_for(filename: str, data: bytes) -> str:
    """The Hub's ETag: sha256 for LFS files, the git blob sha1 for small text files."""
    if filename.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _make_handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _reply(self, status: int, headers: dict[str, str], payload: bytes = b"", body: bool = True) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body and payload:
                self.wfile.write(payload)

        def _error(self, code: str | None, status: int = 404, commit: str | None = None, body: bool = True) -> None:
            headers = {"X-Error-Code": code} if code else {}
            if commit:
                headers["X-Repo-Commit"] = commit
            self._reply(status, headers, f"{code or status}".encode(), body)

        def _serve(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            server._record(self.command, path)
            match = _RESOLVE.match(path)
            if path.startswith("/api/") or not match:
                return self._error(None, 404, body=body)
            repo = server.repos.get(match["repo"])
            if repo is None:
                return self._error("RepoNotFound", body=body)
            rev = match["rev"]
            commit = rev if rev in repo.commits else repo.refs.get(rev)
            if commit is None:
                return self._error("RevisionNotFound", body=body)
            filename = match["file"]
            data = repo.commits[commit].get(filename)
            if data is None:
                return self._error("EntryNotFound", commit=commit, body=body)
            headers = {"X-Repo-Commit": commit, "ETag": f'"{etag_for(filename, data)}"', "Accept-Ranges": "bytes"}
            fault = server.faults.get((match["repo"], filename))
            if fault == "error500":
                return self._error(None, 500, body=body)
            if not body:
                return self._reply(200, headers, data, body=False)
            if fault == "truncate":
                return self._reply(200, headers, data[: len(data) // 2])
            range_header = self.headers.get("Range")
            if range_header and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)):
                start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._reply(206, headers, data[start: end + 1])
            return self._reply(200, headers, data)

    return Handler
