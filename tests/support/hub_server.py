"""A Hugging Face-compatible hub on 127.0.0.1, serving repositories from local folders.

It speaks what the real ``huggingface_hub`` client (``snapshot_download``, ``hf_hub_download``)
and our fetch stage use:

    GET  /api/models/{repo}[/revision/{rev}]        info with siblings (+ size, blobId, lfs)
    GET  /api/models/{repo}/tree/{rev}[/{path}]     the recursive tree listing
    HEAD|GET /{repo}/resolve/{rev}/{path}           ETag, X-Repo-Commit, Content-Length, Range;
                                                    LFS files: 302 to the "CDN" (localhost, another
                                                    host name for this server) with X-Linked-Etag
                                                    and X-Linked-Size, as the real hub does
    HEAD|GET /cdn/{repo}/{sha256}                   the LFS bytes, with Range

and logs every request (``server.log``) without the token. Faults are scripted with
``server.inject(Fault(...))``: an HTTP status with the hub's ``X-Error-Code`` (and headers, such
as a rate limit's ``RateLimit`` or ``Retry-After``), a connection cut after N body bytes, a delay;
``server.rate`` throttles every body (bytes per second).
Access: ``add_repo(..., token=..., gated=True)`` answers 401/403 like the hub does for gated and
private repositories; an unknown repository or revision gets 404 with the hub's error code.

Run it alone (for the benchmark or by hand):
``python -m tests.support.hub_server DIR REPO_ID [BYTES_PER_S]``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

# What a Hugging Face repository's .gitattributes stores in LFS.
LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx_data", ".msgpack", ".h5", ".ckpt", ".pt",
                ".pth", ".pb", ".png", ".jpg", ".gguf")


@dataclass(frozen=True)
class Entry:
    path: str
    file: Path
    size: int
    oid: str  # git blob sha1
    sha256: str | None  # LFS files only

    def api(self, tree: bool) -> dict[str, Any]:
        if tree:
            item: dict[str, Any] = {"type": "file", "path": self.path, "size": self.size, "oid": self.oid}
            if self.sha256:
                item["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
            return item
        item = {"rfilename": self.path, "size": self.size, "blobId": self.oid}
        if self.sha256:
            item["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": 134}
        return item


@dataclass
class Repo:
    repo_id: str
    commit: str
    entries: dict[str, Entry]
    token: str | None = None
    gated: bool = False
    revisions: tuple[str, ...] = ("main",)


def scan(folder: Path) -> dict[str, Entry]:
    entries = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        lfs = rel.endswith(LFS_SUFFIXES)
        entries[rel] = Entry(rel, path, len(data), oid,
                             hashlib.sha256(data).hexdigest() if lfs else None)
    return entries


@dataclass
class Fault:
    """How to mistreat the next ``times`` matching requests (None: every one)."""

    kind: str = "*"  # "api", "tree", "resolve", "cdn" or "*"
    match: str = "*"  # fnmatch pattern on the file path (api: the repo id)
    status: int | None = None
    error_code: str | None = None
    cut_after: int | None = None  # send headers and this many body bytes, then drop the connection
    delay_s: float = 0.0
    times: int | None = 1
    headers: dict[str, str] = field(default_factory=dict)  # with an error status: e.g. RateLimit
    body: bytes | None = None  # with a status: this body instead of the hub's JSON error (HTML)


@dataclass(frozen=True)
class Logged:
    method: str
    kind: str  # api, tree, resolve, cdn, other
    repo: str
    path: str  # the file path for resolve/cdn, "" otherwise
    range: str | None
    status: int
    authorized: bool
    blob: str = ""  # the served file's sha256 (LFS) or git oid: identical files share it
    sent: int = 0  # body bytes sent
    at: float = field(default_factory=time.time)


class HubServer:
    """``with HubServer() as hub: hub.add_repo("org/name", folder); ... HF_ENDPOINT=hub.url``."""

    def __init__(self, port: int = 0) -> None:
        self.repos: dict[str, Repo] = {}
        self.known_tokens: set[str] = set()
        self.faults: list[Fault] = []
        self.log: list[Logged] = []
        self.rate: float | None = None  # bytes per second for every body, None: as fast as possible
        self._lock = threading.Lock()
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._sent = 0
        # Bumped by clear(): a request that began before it is not logged after it (a download
        # whose client was killed is logged when the server's next write fails, which can be
        # after the test has cleared the log for the next boot's requests).
        self._generation = 0
        # Requests begun and not yet logged: a client can act on an answer (and a test read the
        # log) before the server's thread has logged it, under load. requests() waits for them.
        self._in_flight = 0
        self._settled = threading.Condition(self._lock)

    # ---- set-up --------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, folder: Path, token: str | None = None, gated: bool = False,
                 revisions: tuple[str, ...] = ("main",)) -> Repo:
        entries = scan(folder)
        commit = hashlib.sha1(json.dumps(sorted((e.path, e.oid) for e in entries.values()))
                              .encode()).hexdigest()
        repo = Repo(repo_id, commit, entries, token, gated, revisions)
        self.repos[repo_id] = repo
        if token:
            self.known_tokens.add(token)
        return repo

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.log.clear()
            self._generation += 1

    # ---- what happened ---------------------------------------------------------------------------
    # The longest requests() waits for requests in flight to be logged: a killed client's
    # download stays in flight until the server's next write fails, and must not stall a test.
    SETTLE_S = 0.5

    def requests(self, kind: str | None = None, method: str | None = None,
                 settle: bool = True) -> list[Logged]:
        deadline = time.monotonic() + (self.SETTLE_S if settle else 0.0)
        with self._settled:
            while self._in_flight and (left := deadline - time.monotonic()) > 0:
                self._settled.wait(left)
            return [r for r in self.log if (kind is None or r.kind == kind)
                    and (method is None or r.method == method)]

    def downloads(self, settle: bool = True) -> list[Logged]:
        """Requests that sent a file's bytes (GET on resolve for regular files, on cdn for LFS)."""
        return [r for r in self.requests(method="GET", settle=settle) if r.kind in ("resolve", "cdn")
                and r.status in (200, 206)]

    def blob_of(self, repo_id: str, path: str) -> str:
        entry = self.repos[repo_id].entries[path]
        return entry.sha256 or entry.oid

    def bytes_sent(self) -> int:
        """Body bytes sent so far, over all requests."""
        with self._lock:
            return self._sent

    # ---- life --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> "HubServer":
        handler = type("BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]  # a restart keeps the address
        threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: clients see a hub that is gone."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._httpd = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- used by the handler -----------------------------------------------------------------------
    def _take_fault(self, kind: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.kind not in ("*", kind) or not fnmatch.fnmatch(path, fault.match):
                    continue
                if fault.times is not None:
                    if fault.times <= 0:
                        continue
                    fault.times -= 1
                return fault
        return None

    def _record(self, entry: Logged, sent: int, generation: int) -> None:
        with self._settled:
            if generation == self._generation:
                self.log.append(entry)
            self._sent += sent
            self._in_flight -= 1
            self._settled.notify_all()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the hub's own log is ``hub.log``; nothing on stderr

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._connections.discard(self.connection)
        super().finish()

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # ---- routing -----------------------------------------------------------------------------------
    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        self._sent = 0
        self._status = 0
        self._kind, self._repo_id, self._file, self._blob = "other", "", "", ""
        with self.hub._lock:
            generation = self.hub._generation
            self.hub._in_flight += 1  # until _record, below, whatever happens
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api(parts[2] + "/" + parts[3], parts[4:], parse_qs(url.query))
            elif len(parts) >= 2 and parts[0] == "cdn":
                self._cdn("/".join(parts[1:3]), parts[3] if len(parts) > 3 else "", head)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), head)
            elif parts == ["_stats"]:  # for a client in another process (the benchmark)
                self._kind = "stats"
                files = self.hub.downloads(settle=False)  # this request is in flight itself
                with self.hub._lock:
                    stats = {"bytes_sent": self.hub._sent, "file_bytes": sum(r.sent for r in files),
                             "requests": sum(1 for r in self.hub.log if r.kind != "stats"),
                             "downloads": len(files)}
                self._send(200, json.dumps(stats).encode(), {"Content-Type": "application/json"}, head)
            else:
                self._error(404, "EntryNotFound", "Not found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.hub._record(Logged(self.command, self._kind, self._repo_id, self._file,
                                    self.headers.get("Range"), self._status,
                                    bool(self.headers.get("Authorization")), self._blob,
                                    self._sent), 0 if self._kind == "stats" else self._sent,
                             generation)

    def _repo(self, repo_id: str, revision: str | None) -> Repo | None:
        """The repository if this request may see it; otherwise answer the hub's error."""
        self._repo_id = repo_id
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if token is not None and token not in self.hub.known_tokens:
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        if repo.token and token != repo.token:
            if token is None:
                self._error(401, "GatedRepo" if repo.gated else "RepoNotFound",
                            "Access to this model is restricted. You must be authenticated.")
            else:
                self._error(403 if repo.gated else 404, "GatedRepo" if repo.gated else "RepoNotFound",
                            "Access to this model is restricted and you are not in the authorized list.")
            return None
        if revision is not None and revision not in repo.revisions and revision != repo.commit:
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return None
        return repo

    def _faulted(self, kind: str, path: str) -> Fault | None:
        """Apply an injected fault: its delay, its error answer (``_status`` is then set), or
        return it so the body can be cut."""
        fault = self.hub._take_fault(kind, path)
        if fault is None:
            return None
        if fault.delay_s:
            time.sleep(fault.delay_s)
        if fault.status:
            self._error(fault.status, fault.error_code, "injected fault", fault.headers, fault.body)
            return None
        return fault

    # ---- endpoints ---------------------------------------------------------------------------------
    def _api(self, repo_id: str, rest: list[str], query: dict[str, list[str]]) -> None:
        self._kind = "tree" if rest[:1] == ["tree"] else "api"
        fault = self.hub._take_fault(self._kind, repo_id)
        if fault and fault.delay_s:
            time.sleep(fault.delay_s)
        if fault and fault.status:
            self._repo_id = repo_id
            self._error(fault.status, fault.error_code, "injected fault", fault.headers, fault.body)
            return
        revision = rest[1] if len(rest) >= 2 else "main"
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        if self._kind == "tree":
            body: Any = self._tree(repo, "/".join(rest[2:]),
                                   query.get("recursive", ["false"])[0].lower() in ("true", "1"))
        else:
            body = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": bool(repo.token),
                    "gated": "manual" if repo.gated else False, "disabled": False,
                    "library_name": "diffusers", "tags": ["diffusers"],
                    "siblings": [e.api(tree=False) for e in repo.entries.values()]}
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json",
                                                    "X-Repo-Commit": repo.commit}, head=False)

    @staticmethod
    def _tree(repo: Repo, prefix: str, recursive: bool) -> list[dict[str, Any]]:
        start = len(prefix) + 1 if prefix else 0
        under = [p for p in repo.entries if not prefix or p.startswith(prefix + "/")]
        folders = {"/".join(p.split("/")[:i]) for p in under for i in range(1, p.count("/") + 1)}
        items = [{"type": "directory", "path": d, "oid": "0" * 40} for d in sorted(folders)
                 if len(d) > len(prefix)] + [repo.entries[p].api(tree=True) for p in under]
        if not recursive:  # only the folder's own children
            items = [i for i in items if "/" not in i["path"][start:]]
        return items

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        self._kind, self._file = "resolve", path
        fault = self._faulted("resolve", path)
        if self._status:
            return
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        entry = repo.entries.get(path)
        if entry is None:
            self._error(404, "EntryNotFound", f"{path} does not exist")
            return
        self._blob = entry.sha256 or entry.oid
        common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if entry.sha256:
            # Another host name for the same server: clients treat it as the CDN, as with the
            # real hub (they do not send the token there, and do not follow it on HEAD).
            port = self.hub._port
            location = f"http://localhost:{port}/cdn/{quote(repo_id)}/{entry.sha256}"
            self._send(302, b"", {**common, "Location": location, "ETag": f'"{entry.oid}"',
                                  "X-Linked-Etag": f'"{entry.sha256}"',
                                  "X-Linked-Size": str(entry.size)}, head=head)
            return
        self._file_body(entry, {**common, "ETag": f'"{entry.oid}"'}, head, fault)

    def _cdn(self, repo_id: str, sha256: str, head: bool) -> None:
        self._kind, self._repo_id = "cdn", repo_id
        repo = self.hub.repos.get(repo_id)
        entry = next((e for e in repo.entries.values() if e.sha256 == sha256), None) if repo else None
        if entry is None:
            self._error(404, None, "no such object")
            return
        self._file, self._blob = entry.path, sha256
        fault = self._faulted("cdn", entry.path)
        if self._status:
            return
        self._file_body(entry, {"ETag": f'"{entry.sha256}"', "Accept-Ranges": "bytes"}, head, fault)

    def _file_body(self, entry: Entry, headers: dict[str, str], head: bool, fault: Fault | None) -> None:
        data = entry.file.read_bytes()
        status, start = 200, 0
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes="):].partition("-")
            start = int(first or 0)
            end = int(last) if last else len(data) - 1
            if start >= len(data):
                self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"}, head=head)
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        headers["Content-Type"] = "application/octet-stream"
        self._send(status, data, headers, head=head,
                   cut_after=fault.cut_after if fault else None)

    # ---- answering ---------------------------------------------------------------------------------
    def _error(self, status: int, code: str | None, message: str,
               extra: dict[str, str] | None = None, body: bytes | None = None) -> None:
        headers = {"Content-Type": "application/json" if body is None else "text/html",
                   "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        payload = json.dumps({"error": message}).encode() if body is None else body
        self._send(status, payload, headers, head=self.command == "HEAD")

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool,
              cut_after: int | None = None) -> None:
        self._status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head or not body:
            return
        limit = len(body) if cut_after is None else min(cut_after, len(body))
        step = 16384
        rate = self.hub.rate
        for offset in range(0, limit, step):
            piece = body[offset:min(offset + step, limit)]
            self.wfile.write(piece)
            self._sent += len(piece)
            if rate:
                time.sleep(len(piece) / rate)
        if cut_after is not None and cut_after < len(body):
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


def main(argv: list[str]) -> int:
    """``FOLDER REPO_ID [BYTES_PER_S]``: serve one folder as a repository until killed.

    Prints the URL on the first line; ``GET /_stats`` answers the bytes and requests served.
    """
    folder, repo_id = Path(argv[0]), argv[1]
    hub = HubServer().start()
    hub.rate = float(argv[2]) if len(argv) > 2 and float(argv[2]) > 0 else None
    hub.add_repo(repo_id, folder)
    print(hub.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
