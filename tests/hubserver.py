"""A small Hugging Face Hub look-alike on 127.0.0.1, for tests.

It speaks what ``huggingface_hub`` 0.28 uses to fetch files and list a repository:

* ``HEAD``/``GET /{repo}/resolve/{revision}/{path}``: regular files answer 200 with
  ``ETag`` (the git blob id), ``X-Repo-Commit`` and ``Content-Length``; LFS files
  (``.safetensors``, ``.gguf``, ``.model``, ``.bin``) answer 302 to ``/lfs/{sha256}``
  with ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``, as the real hub does
  with its CDN. ``GET`` honours ``Range: bytes=N-`` (206 + ``Content-Range``).
* ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true`` adds sizes, blob ids and
  LFS sha256) and ``POST /api/models/{repo}/paths-info/{rev}``.
* Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``) so the client raises its typed errors.

``cut[path] = n`` makes the next ``GET`` of that file send ``n`` bytes of its body and
drop the connection. ``private`` repos want ``Authorization: Bearer <token>``; ``gated`` ones answer 403 ``GatedRepo``.
Every request is logged in ``requests`` (method, path, Range, Authorization).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".model", ".bin")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class File:
    path: str
    data: bytes

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()

    @property
    def oid(self) -> str:
        return git_blob_id(self.pointer if self.lfs else self.data)


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    commits: dict[str, dict[str, File]] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hung up (as huggingface_hub does after a failed write) is no error:
        say nothing rather than print a traceback into the next test's captured output."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.private: dict[str, str] = {}  # repo -> token it wants
        self.gated: set[str] = set()  # repos whose terms this client has not accepted (403 GatedRepo)
        self.requests: list[dict] = []
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ content
    def add(self, repo: str, files: dict[str, bytes], revision: str = "main") -> str:
        """Publish ``files`` as a new commit of ``repo`` at ``revision``; returns the commit id."""
        r = self.repos.setdefault(repo, Repo())
        h = hashlib.sha1(repo.encode() + revision.encode() + str(len(r.commits)).encode())
        for name in sorted(files):
            h.update(name.encode() + hashlib.sha256(files[name]).digest())
        commit = h.hexdigest()
        r.commits[commit] = {name: File(name, data) for name, data in files.items()}
        r.refs[revision] = commit
        for f in r.commits[commit].values():
            self.blobs[f.sha256] = f.data
        return commit

    def files(self, repo: str, revision: str = "main") -> dict[str, File]:
        r = self.repos[repo]
        return r.commits[r.refs.get(revision, revision)]

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name="hubserver").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def gets(self, path_part: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "GET" and path_part in r["path"]]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # ------------------------------------------------------------ helpers
    def _log(self) -> None:
        self.hub.requests.append({"method": self.command, "path": unquote(urlsplit(self.path).path),
                                  "range": self.headers.get("Range"),
                                  "authorization": self.headers.get("Authorization")})

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, extra: dict | None = None, head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message,
                                  "Content-Type": "application/json", **(extra or {})}, head=head)

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        token = self.hub.private.get(repo_id)
        if repo is None or (token and self.headers.get("Authorization") != f"Bearer {token}"):
            self._error(401 if token else 404, "RepoNotFound", "Repository not found", head=head)
            return None
        if repo_id in self.hub.gated:
            self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted", head=head)
            return None
        return repo

    def _commit(self, repo: Repo, revision: str, head: bool = False) -> str | None:
        commit = repo.refs.get(revision) or (revision if revision in repo.commits else None)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + revision, head=head)
        return commit

    def _body(self, data: bytes, headers: dict, *, head: bool, cut_key: str | None) -> None:
        size = len(data)
        start = 0
        rng = self.headers.get("Range")
        status = 200
        if rng and rng.startswith("bytes="):
            first = rng[len("bytes="):].split("-")[0]
            start = int(first or 0)
            if start >= size:
                self._send(416, b"", {"Content-Range": f"bytes */{size}"}, head=head)
                return
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{size - 1}/{size}"}
        part = data[start:]
        headers = {**headers, "Content-Length": len(part), "Accept-Ranges": "bytes"}
        cut = None if head or cut_key is None else self.hub.cut.pop(cut_key, None)
        if cut is None:
            self._send(status, part, headers, head=head)
            return
        # Promise the whole body, send part of it, drop the connection.
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(part[:cut])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------ routes
    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_POST(self) -> None:
        self._log()
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode()) if length else {}
        # api/models/{owner}/{name}/paths-info/{rev}
        if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "paths-info":
            repo = self._repo(f"{parts[2]}/{parts[3]}")
            if repo is None:
                return
            commit = self._commit(repo, parts[5])
            if commit is None:
                return
            files = repo.commits[commit]
            out = []
            for p in form.get("paths", []):
                f = files.get(p)
                if f is None:
                    continue
                item = {"type": "file", "path": f.path, "size": len(f.data), "oid": f.oid}
                if f.lfs:
                    item["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
                out.append(item)
            self._send(200, json.dumps(out).encode(), {"Content-Type": "application/json"})
            return
        self._error(404, "NotFound", "no such endpoint")

    def _route(self, head: bool) -> None:
        self._log()
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = parse_qs(split.query)
        if len(parts) == 2 and parts[0] == "lfs":
            data = self.hub.blobs.get(parts[1])
            if data is None:
                self._error(404, "EntryNotFound", "no such blob", head=head)
                return
            self._body(data, {"ETag": f'"{parts[1]}"'}, head=head, cut_key=parts[1])
            return
        if len(parts) >= 3 and parts[:2] == ["api", "models"]:
            self._model_info(parts[2:], query, head)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), head)
            return
        self._error(404, "NotFound", "no such endpoint", head=head)

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo = self._repo(repo_id, head)
        if repo is None:
            return
        commit = self._commit(repo, revision, head)
        if commit is None:
            return
        f = repo.commits[commit].get(path)
        if f is None:
            self._error(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": commit}, head=head)
            return
        if f.lfs:
            self._send(302, b"", {"Location": f"{self.hub.url}/lfs/{f.sha256}", "X-Repo-Commit": commit,
                                  "ETag": f'"{f.oid}"', "X-Linked-Etag": f'"{f.sha256}"',
                                  "X-Linked-Size": len(f.data)}, head=head)
            return
        self._body(f.data, {"X-Repo-Commit": commit, "ETag": f'"{f.oid}"'}, head=head, cut_key=path)

    def _model_info(self, rest: list[str], query: dict, head: bool) -> None:
        if len(rest) not in (2, 4) or (len(rest) == 4 and rest[2] != "revision"):
            self._error(404, "NotFound", "no such endpoint", head=head)
            return
        repo_id = f"{rest[0]}/{rest[1]}"
        repo = self._repo(repo_id, head)
        if repo is None:
            return
        commit = self._commit(repo, rest[3] if len(rest) == 4 else "main", head)
        if commit is None:
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in repo.commits[commit].values():
            item: dict = {"rfilename": f.path}
            if blobs:
                item.update(size=len(f.data), blobId=f.oid)
                if f.lfs:
                    item["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": len(f.pointer)}
            siblings.append(item)
        body = {"_id": commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                "disabled": False, "gated": False, "tags": [], "siblings": siblings}
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head=head)


def patch_hub(monkeypatch, server: HubServer, cache_dir) -> None:
    """Point huggingface_hub at ``server`` and ``cache_dir``, online, for one test.

    huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE once, at import;
    the resolve URL template is also copied into ``file_download``. Its per-thread
    HTTP sessions decide offline-or-not when made, so they are reset on both sides.
    """
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import reset_sessions

    url = server.url
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    # huggingface_hub writes what it receives in 10 MB chunks; small chunks let a cut
    # in a small test file leave a partial ``.incomplete`` file, as a big file would.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    reset_sessions()


def go_offline(monkeypatch) -> None:
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    reset_sessions()
