"""File integrity: the hub's hashes, computed while streaming, and "verified" stamps.

Every file the hub lists has a hash we can check: LFS files their sha256, the others their git
object id (sha1 of ``"blob <size>\\0" + content``). Downloads are hashed as they stream, so a
fresh download is never reread. A stamp (size and mtime of the blob when its hash last matched)
lets a warm boot trust a blob with one ``stat``; a blob whose size or mtime moved since is
rehashed before use, so a truncated or rewritten file is caught and fetched again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import BinaryIO

from runtime.hub.layout import RemoteFile, write_atomic

log = logging.getLogger(__name__)

READ_CHUNK = 8 * 1024 * 1024


class Hasher:
    """The hash the hub gives for ``f``, fed incrementally; ``None`` expected when it gives none."""

    def __init__(self, f: RemoteFile) -> None:
        self._file = f
        self.expected: str | None = f.sha256 or f.blob_id
        self.kind = "sha256" if f.sha256 else "git-sha1"
        self.reset()

    def reset(self) -> None:
        """Forget what was fed: the file is being written again from byte 0."""
        if self._file.sha256:
            self._h = hashlib.sha256()
        else:
            self._h = hashlib.sha1()
            self._h.update(b"blob %d\0" % self._file.size)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def feed_file(self, stream: BinaryIO) -> int:
        total = 0
        while chunk := stream.read(READ_CHUNK):
            self._h.update(chunk)
            total += len(chunk)
        return total

    def matches(self) -> bool:
        return self.expected is None or self._h.hexdigest() == self.expected

    def describe(self) -> str:
        return f"{self.kind} {self._h.hexdigest()[:12]}…, expected {str(self.expected)[:12]}…"


def file_matches(path: Path, f: RemoteFile) -> bool:
    """Reread ``path`` and compare size and hash with what the hub says ``f`` is."""
    try:
        if path.stat().st_size != f.size:
            return False
        hasher = Hasher(f)
        with open(path, "rb") as stream:
            hasher.feed_file(stream)
    except OSError:
        return False
    return hasher.matches()


def _signature(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def write_stamp(stamp: Path, blob: Path) -> None:
    sig = _signature(blob)
    if sig is not None:
        write_atomic(stamp, json.dumps({"size": sig[0], "mtime_ns": sig[1]}))


def stamp_valid(stamp: Path, blob: Path, f: RemoteFile) -> bool:
    """True when the blob is the size the hub says and unchanged since its hash last matched."""
    sig = _signature(blob)
    if sig is None or sig[0] != f.size:
        return False
    return _recorded(stamp) == sig


def _recorded(stamp: Path) -> list[int] | None:
    """The signature a stamp records; None when it is missing or is not a stamp (any other JSON:
    a list, a number, a torn or hand-edited file): the blob is then rehashed, as if unstamped."""
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    sig = [data.get("size"), data.get("mtime_ns")]
    return sig if all(type(v) is int for v in sig) else None  # not True, not 1.0


def trusted(blob: Path, stamp: Path, f: RemoteFile, rehash: bool) -> bool:
    """Whether ``blob`` can be served as ``f``: its stamp holds, or (``rehash``) its hash matches.

    A blob that fails is left in place, unstamped, so nothing trusts it: the worker that takes its
    lock replaces it by an atomic rename. (Removing it here, without the lock, could remove the
    good copy another worker has just published.)
    """
    if stamp_valid(stamp, blob, f):
        return True
    if not rehash or not blob.exists():
        return False
    if file_matches(blob, f):
        try:
            write_stamp(stamp, blob)
        except OSError as exc:
            # A read-only volume (or a full one) still serves a verified file; without its stamp
            # it is only rehashed again at the next boot.
            log.warning("%s verified, but its stamp could not be written (%s): it is rehashed "
                        "at every boot until it can", f.path, exc.strerror or exc)
        return True
    log.warning("cached %s is corrupt or truncated (%s): fetching it again", f.path, blob.name)
    return False
