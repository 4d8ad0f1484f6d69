"""The two hub requests the fetch stage makes, and what their failures mean to a user.

- ``GET /api/models/{repo}/revision/{revision}?blobs=true``: the commit, and every file with its
  size, git object id and (LFS files) sha256. One request, whatever the repository's size.
- ``GET /{repo}/resolve/{commit}/{path}`` (``Range: bytes=N-`` to resume): the file, possibly
  through a redirect to the CDN (``requests`` drops the token when the host changes).

Plain ``requests`` rather than ``hf_hub_download``: we need our own lock, resume, hash and
progress around each byte, and the hub client's own locks misbehave on network filesystems.
Error classification follows the hub's ``X-Error-Code`` headers, as ``huggingface_hub`` does.
The token goes only into the Authorization header; no message here ever contains it.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import quote, urlsplit

import requests
import requests.auth

from runtime.errors import BootError, safe_target
from runtime.hub.layout import COMMIT_RE, RemoteFile
from runtime.retry_after import parse_retry_after

log = logging.getLogger(__name__)

TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
# A git object id (40 hex digits, SHA-1) or a sha256 (64): what names a blob in the cache.
HASH_RE = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")


class TransientHubError(Exception):
    """The hub could not be reached or answered 5xx/429: worth retrying, or using the cache.
    ``retry_after``: the seconds the hub itself asked for (a rate limit's reset), when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RevisionNotFound(BootError):
    """The hub has no such revision: a wrong HF_MODEL_REVISION, or a commit that a force-push
    or a squash removed from its branch (the caller knows which, and whether to list again)."""


class HubUnreachable(TransientHubError):
    """No connection to the hub at all."""


@dataclass(frozen=True)
class Listing:
    commit: str
    files: dict[str, RemoteFile]


@dataclass(frozen=True)
class HubOptions:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4  # extra tries for the listing after a transient failure
    backoff_s: float = 1.0  # doubled after each try
    # Waiting out a rate limit, when the hub names its reset: at most this long per wait (the
    # hub's windows are 5 minutes long), and no more waits once this long has passed since the
    # first (two windows: a limit that outlasts them is someone else's traffic, not a blip).
    max_wait_s: float = 300.0
    wait_budget_s: float = 600.0


class _BearerToken(requests.auth.AuthBase):
    """``Authorization: Bearer <token>``. Its repr does not show the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerToken(***)"


class HubClient:
    def __init__(self, endpoint: str, repo_id: str, token: str | None,
                 options: HubOptions | None = None) -> None:
        if token and urlsplit(endpoint).netloc.rpartition("@")[1]:
            log.warning("HF_ENDPOINT holds a user name or password and HF_TOKEN is set: HF_TOKEN "
                        "is sent to the hub, the URL's credentials are not (one Authorization "
                        "header per request)")
        self.endpoint = endpoint.rstrip("/")
        self.repo_id = repo_id
        self.options = options or HubOptions()
        self._token = token
        self._local = threading.local()
        self._count_lock = threading.Lock()
        self.requests = 0
        self._rate_limited_since: float | None = None

    @property
    def host(self) -> str:
        """The endpoint without any credentials in it, for messages."""
        return safe_target(self.endpoint)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "visgate-worker (+requests)"
            if self._token:
                # As the session's auth, not a default header: requests replaces the header with
                # Basic credentials when it finds some itself (the endpoint URL's user-info, a
                # .netrc entry for the hub), and the hub would then never see HF_TOKEN. A
                # redirect to another host (the CDN) still drops it: requests strips the header
                # there and does not apply the session's auth again.
                session.auth = _BearerToken(self._token)
            self._local.session = session
        return session

    def _get(self, url: str, **kwargs: Any) -> requests.Response:
        with self._count_lock:
            self.requests += 1
        timeout = (self.options.connect_timeout, self.options.read_timeout)
        try:
            return self._session().get(url, timeout=timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise HubUnreachable(f"{self.host} unreachable ({_root_cause(exc)})") from None
        except requests.Timeout as exc:
            raise TransientHubError(f"{self.host} timed out ({exc.__class__.__name__})") from None
        except requests.RequestException as exc:  # their messages quote the whole URL: name the class
            raise TransientHubError(f"request to {self.host} failed ({exc.__class__.__name__})") from None

    def retry_pause(self, exc: TransientHubError, backoff: float) -> float | None:
        """How long to wait before trying again: our backoff, or the reset the hub named, since
        retrying sooner only spends requests of a window that is used up (and a boot that gives
        up restarts and asks again). Plus up to a second of jitter, so that download threads and
        workers do not all return at the same instant; capped per wait. None once the wait would
        end past this fetch's budget for rate limits: then the caller gives up."""
        if exc.retry_after is None:
            return backoff
        pause = min(self.options.max_wait_s, max(backoff, exc.retry_after + random.uniform(0, 1)))
        now = time.monotonic()
        with self._count_lock:
            if self._rate_limited_since is None:
                self._rate_limited_since = now
            if now + pause - self._rate_limited_since > self.options.wait_budget_s:
                return None
        return pause

    # ---- listing -------------------------------------------------------------------------------
    def listing(self, revision: str) -> Listing:
        url = (f"{self.endpoint}/api/models/{self.repo_id}/revision/{quote(revision, safe='')}")
        wait = self.options.backoff_s
        for attempt in range(self.options.retries + 1):
            try:
                response = self._get(url, params={"blobs": "true"})
                self.raise_for(response, revision)
                try:
                    data = response.json()
                except ValueError:  # a proxy's or a captive portal's HTML page: try again
                    raise TransientHubError(f"{self.host} answered with something that is not "
                                            "the hub's JSON") from None
                return _parse_listing(data)
            except TransientHubError as exc:
                pause = None if attempt == self.options.retries else self.retry_pause(exc, wait)
                if pause is None:
                    raise
                log.warning("hub listing failed (%s); retrying in %.1fs", exc, pause)
                time.sleep(pause)
                wait *= 2
        raise AssertionError("unreachable")

    # ---- files ---------------------------------------------------------------------------------
    def open(self, commit: str, path: str, start: int) -> requests.Response:
        """A streaming response for ``path`` from byte ``start`` (206), or the whole file (200)."""
        url = f"{self.endpoint}/{self.repo_id}/resolve/{commit}/{quote(path)}"
        headers = {"Accept-Encoding": "identity"}  # the size we check is the size on the wire
        if start:
            headers["Range"] = f"bytes={start}-"
        response = self._get(url, headers=headers, stream=True)
        if response.status_code == 416:
            return response  # the caller's partial file is already complete (or longer)
        self.raise_for(response, commit, path)
        return response

    # ---- errors --------------------------------------------------------------------------------
    def raise_for(self, response: requests.Response, revision: str, path: str | None = None) -> None:
        status = response.status_code
        if status < 400:
            return
        response.close()
        code = response.headers.get("X-Error-Code", "")
        message = response.headers.get("X-Error-Message", "")
        # The CDN a download was redirected to may be the one answering (without our token).
        host = safe_target(response.url) if response.url else self.host
        if status in TRANSIENT_STATUS:
            wait = reset_seconds(status, response.headers)
            text = f"{host} answered {status}"
            if status == 429:
                shown = f", resets in {min(wait, self.options.max_wait_s):.0f}s" if wait is not None else ""
                text += f" (rate limited{shown})"
                if not self._token and host == self.host:
                    text += "; anonymous requests get the hub's lowest rate limits: set HF_TOKEN"
            raise TransientHubError(text, retry_after=wait)
        if path is not None and host != self.host:  # a download the hub redirected elsewhere
            raise BootError(self.describe_redirect(status, host, path), stage="fetch")
        error = RevisionNotFound if code == "RevisionNotFound" else BootError
        raise error(self.describe(status, code, message, revision, path), stage="fetch")

    def describe_redirect(self, status: int, host: str, path: str) -> str:
        """An error from the host the hub redirected a download to (its CDN): not the hub's word
        on the repository, which the hub gave by redirecting, so never "gated" or "not found"."""
        text = (f"{host}, where the hub sent the download of {path} of "
                f"{self.repo_id}, answered {status}")
        if status in (401, 403):
            text += (": not a refusal of the repository by the hub (HF_TOKEN is not sent there); "
                     "an expired download link (the hub signs a fresh one on the next boot), or a "
                     "proxy or firewall refusing that host")
        return text

    def describe(self, status: int, code: str, message: str, revision: str,
                 path: str | None) -> str:
        repo, has_token = self.repo_id, bool(self._token)
        if status == 401 and "invalid credentials" in message.lower():
            return (f"the hub rejected HF_TOKEN (invalid or expired) while reading {repo}: "
                    "set HF_TOKEN to a valid read token")
        # Gated only when the hub says so, as huggingface_hub reads it: its X-Error-Code.
        if code == "GatedRepo":
            if not has_token:
                return (f"{repo} is gated and HF_TOKEN is not set: accept its license at "
                        f"https://huggingface.co/{repo} and set HF_TOKEN to a read token of that account")
            return (f"{repo} is gated and the account of HF_TOKEN has no access: accept its license "
                    f"at https://huggingface.co/{repo} with that account, or use another token")
        if code == "RevisionNotFound" and path:  # a file of the commit a listing resolved
            return f"commit {revision[:12]} of {repo} is no longer on the hub (history rewritten)"
        if code == "RevisionNotFound":
            return f"revision {revision!r} of {repo} does not exist: check HF_MODEL_REVISION"
        if code == "EntryNotFound" and path:
            return f"{path} is listed in {repo} but the hub has no such file at {revision[:12]}"
        if status in (401, 404) or code == "RepoNotFound":
            hint = ("or HF_TOKEN has no access to it" if has_token
                    else "or it is private or gated: then set HF_TOKEN")
            return f"model {repo} was not found on {self.host}: check HF_MODEL_ID, {hint}"
        if status == 403 and has_token:
            return (f"the hub refused HF_TOKEN access to {repo} (403): the token may lack the "
                    "permission (a fine-grained token needs read access to this repository), or "
                    "use another token")
        if status == 403:
            return f"the hub refused access to {repo} (403): set HF_TOKEN to a token with access"
        return f"the hub answered {status} for {repo}{f' ({path})' if path else ''}"


def reset_seconds(status: int, headers: Mapping[str, str]) -> float | None:
    """Seconds until the hub answers again, when it said so: an exhausted rate limit's reset
    (the IETF draft's ``RateLimit`` header, read by huggingface_hub's own parser; whole
    seconds, so one more), else ``Retry-After``. A header that makes no sense is ignored."""
    from requests.structures import CaseInsensitiveDict

    headers = CaseInsensitiveDict(headers)
    try:
        if status == 429:
            from huggingface_hub.utils import parse_ratelimit_headers  # only on this rare path

            info = parse_ratelimit_headers(headers)
            if info is not None and info.remaining == 0:
                return float(info.reset_in_seconds) + 1.0
        return parse_retry_after(headers.get("Retry-After"))
    except (ValueError, OverflowError):  # digits beyond int() or float(): not a real reset
        return None


def _parse_listing(data: Any) -> Listing:
    # The commit, file names and hashes become paths in the cache (snapshots/<commit>/<name>,
    # blobs/<hash>): from a hub (HF_ENDPOINT: any server) they must be what the hub's are, or
    # "../" in one would write outside the cache.
    if not isinstance(data, dict) or not COMMIT_RE.match(str(data.get("sha"))):
        raise TransientHubError("the hub's answer has no commit sha")
    files: dict[str, RemoteFile] = {}
    for sibling in data.get("siblings") or ():
        name = sibling.get("rfilename")
        if not _plain_path(name):
            log.warning("the hub's listing names a file %.80r outside the repository: ignored", name)
            continue
        lfs = sibling.get("lfs") or {}
        size = sibling.get("size", lfs.get("size"))
        if not isinstance(size, int):
            raise TransientHubError(f"the hub gave no size for {name}")
        files[name] = RemoteFile(path=name, size=size, blob_id=_hex(sibling.get("blobId")),
                                 sha256=_hex(lfs.get("sha256") or lfs.get("oid")))
    return Listing(commit=data["sha"], files=files)


def _plain_path(name: Any) -> bool:
    """A relative path inside the repository: no absolute path, no "..", no empty part."""
    return (isinstance(name, str) and bool(name) and not name.startswith("/") and "\\" not in name
            and "\0" not in name and all(part not in ("", ".", "..") for part in name.split("/")))


def _hex(value: Any) -> str | None:
    """A git object id or sha256 as the hub gives them (else none: the file is named otherwise)."""
    return value if isinstance(value, str) and HASH_RE.match(value) else None


def _root_cause(exc: BaseException) -> str:
    """A short reason ("Connection refused") without the URL soup of urllib3's messages."""
    seen: BaseException | None = exc
    text = exc.__class__.__name__
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            text = seen.strerror
        seen = seen.__cause__ or seen.__context__ or (seen.args[0] if seen.args and
                                                       isinstance(seen.args[0], BaseException) else None)
    return text


def iter_body(response: requests.Response, chunk: int) -> Iterator[bytes]:
    """The body as it arrives; a cut connection surfaces as TransientHubError (a compressed
    body cut short fails to decode: the same cut)."""
    try:
        yield from response.iter_content(chunk_size=chunk)
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError, requests.Timeout) as exc:
        raise TransientHubError(f"connection cut ({exc.__class__.__name__})") from None
