"""One blob, downloaded once by one worker, resumable, verified, and published atomically.

    trusted already?  -> done (another worker or an earlier boot fetched it)
    take the blob's lock (or wait, until it is trusted or the lock goes stale)
    copy the largest partial file a previous owner left -> <blob>.<our token>.part
    GET with Range from its size; append; hash as the bytes stream
    size and hash match  -> fsync, rename to blobs/<blob>, stamp it, release the lock

Partial files carry their owner's token, so a worker never appends to a file another live
worker is writing (a previous owner's partial is copied, never renamed: see ``_adopt_partial``);
they are opened in append mode, so an owner that lost its lock and kept writing makes the file
too long, which the final size check catches. A blob is only ever
created by ``rename`` of a file whose size and hash matched: a killed worker leaves a
``.part`` that the next boot resumes, never a blob that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runtime.errors import BootError
from runtime.hub.api import HubClient, TransientHubError, iter_body
from runtime.hub.integrity import Hasher, stamp_valid, trusted, write_stamp
from runtime.hub.layout import NO_ROOM, RemoteFile, RepoCache
from runtime.hub.lock import BlobLock
from runtime.hub.progress import Progress, human_bytes

log = logging.getLogger("runtime.fetch")


@dataclass(frozen=True)
class TransferOptions:
    heartbeat_s: float = 5.0
    stale_after_s: float = 60.0
    chunk_bytes: int = 256 << 10  # also what a cut connection can lose: whole chunks are kept
    retries: int = 5  # consecutive failed attempts (no byte gained) before giving up on a file
    backoff_s: float = 1.0


class LockLost(TransientHubError):
    """Our lock was taken over while we downloaded (we stalled too long)."""


def disk_free(path: Path) -> int:
    """Bytes free on ``path``'s filesystem: the fetch's disk check and a takeover's copy use
    this one measure."""
    return shutil.disk_usage(path).free


class Transfer:
    """Downloads for one repository at one commit; ``ensure`` is safe to call from threads."""

    def __init__(self, cache: RepoCache, client: HubClient, commit: str, progress: Progress,
                 options: TransferOptions | None = None, abort: threading.Event | None = None,
                 disk_free: Callable[[Path], int] = disk_free,
                 reserve_bytes: int = 0) -> None:
        self.cache = cache
        self.client = client
        self.commit = commit
        self.progress = progress
        self.options = options or TransferOptions()
        self.abort = abort or threading.Event()
        self.disk_free = disk_free  # what the disk says is free (the fetch's own measure)
        self.reserve_bytes = reserve_bytes  # what the fetch leaves free (its disk check's headroom)

    def ensure(self, f: RemoteFile, wait: bool = True) -> int | None:
        """Make ``blobs/<blob>`` complete and verified; return the bytes this process downloaded.

        With ``wait=False``, return None at once when another live worker is downloading it.
        """
        blob, stamp = self.cache.blob(f), self.cache.stamp_path(f)
        self.cache.blobs.mkdir(parents=True, exist_ok=True)
        while not stamp_valid(stamp, blob, f):
            lock = BlobLock(self.cache.lock_path(f), self.options.heartbeat_s,
                            self.options.stale_after_s, report_s=self.progress.interval_s)
            owned = lock.acquire(done=lambda: stamp_valid(stamp, blob, f), abort=self.abort,
                                 on_wait=lambda owner: self._waiting(f, owner), wait=wait)
            if owned is None:
                return None
            if not owned:
                return 0  # another worker published it while we waited
            try:
                # Under the lock: a blob without a valid stamp (an older boot, another tool, a
                # rewritten file) is rehashed once, then kept or refetched.
                if trusted(blob, stamp, f, rehash=True):
                    return 0
                return self._download(f, blob, stamp, lock)
            except LockLost:
                log.warning("another worker took over %s: waiting for it", f.path)
            finally:
                lock.release()
        return 0

    def _waiting(self, f: RemoteFile, owner: dict) -> None:
        have = max((part_size(p) for p in self.cache.blobs.glob(f"{f.blob_name}.*.part")), default=0)
        log.info("waiting for %s (pid %s) to download %s: %s of %s so far", owner.get("host", "?"),
                 owner.get("pid", "?"), f.path, human_bytes(have), human_bytes(f.size))

    # ---- the download ------------------------------------------------------------------------
    def _download(self, f: RemoteFile, blob: Path, stamp: Path, lock: BlobLock) -> int:
        part = self._adopt_partial(f, lock.token)
        try:
            return self._download_into(part, f, blob, stamp, lock)
        except FileNotFoundError:
            # Our partial file gone: a worker that found our lock stale (we stalled past
            # stale_after_s) adopted it. Between two of _fill's checks (at the last chunk, say)
            # this surfaced as a bare FileNotFoundError that failed the boot.
            if part.exists() and not lock.lost:
                raise
            raise LockLost("partial file adopted by another worker") from None

    def _download_into(self, part: Path, f: RemoteFile, blob: Path, stamp: Path, lock: BlobLock) -> int:
        received = 0
        for attempt in (1, 2):  # a second full try after a hash mismatch, then give up
            hasher = Hasher(f)
            with open(part, "rb") as prefix:
                hasher.feed_file(prefix)  # resumed bytes count towards the hash too
            received += self._fill(f, part, hasher, lock)
            size = _part_size(part, lock)
            if size == f.size and hasher.matches():
                break
            detail = f"size {size}, expected {f.size}" if size != f.size else hasher.describe()
            log.warning("downloaded %s does not verify (%s): %s", f.path, detail,
                        "downloading it again" if attempt == 1 else "giving up")
            part.unlink()
            part.touch()
        else:
            raise BootError(f"{f.path} of {self.cache.repo_id} failed its integrity check twice "
                            "(the hub, a proxy or the disk changes its bytes)", stage="fetch")
        with open(part, "rb+") as out:
            os.fsync(out.fileno())  # other hosts must read the bytes, not a promise of them
        _part_size(part, lock)  # taken over meanwhile: the new owner publishes it, not us
        os.replace(part, blob)
        write_stamp(stamp, blob)
        return received

    def _adopt_partial(self, f: RemoteFile, token: str) -> Path:
        """Resume from the longest partial download a previous owner left; drop the others.

        The bytes are copied, not the file renamed: the previous owner may be alive (a stalled
        worker whose lock went stale, a worker whose PIDs we cannot see) with the file still open
        for appending, and a renamed inode would take its late writes into our download. Removing
        its file instead leaves those writes to an unlinked inode, and tells it (its next size
        check) that the download was taken over. A copy costs one local read of the bytes kept,
        and only on a takeover.

        A copy also needs room for a second copy of those bytes, which the disk check does not
        ask for (it counts a partial file as bytes already there). Where the disk has no room
        for it, or the copy runs out of it, the file is renamed after all: a previous owner still
        writing could then only make the download fail its check once (it is downloaded again),
        where giving up the bytes kept would have to download them again every time, and keeping
        both files would fill the disk at every boot. A copy that fails is removed, never resumed:
        on a network volume a failed copy may hold holes, not just fewer bytes.
        """
        mine = self.cache.blobs / f"{f.blob_name}.{token}.part"
        leftovers = sorted(self.cache.blobs.glob(f"{f.blob_name}.*.part"), key=part_size, reverse=True)
        for candidate in leftovers:
            size = part_size(candidate)
            if not mine.exists() and 0 < size <= f.size:
                self._take_over(f, candidate, mine, size)
            try:
                candidate.unlink()  # gone already when it was renamed to ours
            except OSError:
                pass
        mine.touch()
        return mine

    def _take_over(self, f: RemoteFile, theirs: Path, mine: Path, size: int) -> None:
        """Make ``mine`` a copy of ``theirs`` (or ``theirs`` itself, on a disk too full to copy
        it); leave no ``mine`` when neither can be done."""
        how = "copy"
        try:
            # Room for the copy beside what this fetch's other downloads still write meanwhile
            # (the disk check counted the partial as bytes already there): a copy that takes
            # their room (a minute for gigabytes on a network volume) fails them with ENOSPC.
            still = max(0, self.progress.total - self.progress.done - size)
            if self.disk_free(self.cache.blobs) < size + still + self.reserve_bytes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            shutil.copyfile(theirs, mine)
        except OSError as exc:
            # A failed removal (the volume erroring) must not hide why the copy failed; a
            # leftover is overwritten by the rename below or verified before any resume.
            with contextlib.suppress(OSError):
                mine.unlink(missing_ok=True)
            if exc.errno not in NO_ROOM:
                if not isinstance(exc, FileNotFoundError):  # gone: another worker took it
                    log.warning("could not copy the partial download of %s (%s): not resuming "
                                "from it", f.path, exc.strerror or exc)
                return
            try:
                os.rename(theirs, mine)
            except OSError:
                return  # another worker took it (or removed it) first
            how = f"no room for a copy: {exc.strerror or exc}"
        log.info("resuming %s from %s (%s)", f.path, human_bytes(part_size(mine)), how)

    def _fill(self, f: RemoteFile, part: Path, hasher: Hasher, lock: BlobLock) -> int:
        """Append the rest of ``f`` to ``part`` (hashing it); resume cuts with Range. Bytes received."""
        received, failures, wait = 0, 0, self.options.backoff_s
        while (have := _part_size(part, lock)) < f.size:
            if self.abort.is_set():
                raise InterruptedError("fetch aborted")
            reason, pause = "the connection ended early", wait
            try:
                received += self._stream(f, part, have, hasher, lock)
            except LockLost:
                raise
            except TransientHubError as exc:
                reason, pause = str(exc), self.client.retry_pause(exc, wait)
                if pause is None:
                    raise BootError(f"downloading {f.path} of {self.cache.repo_id}: the hub kept "
                                    f"rate limiting it past the {self.client.options.wait_budget_s:.0f}s "
                                    f"the worker waits ({reason})", stage="fetch") from None
            now = _part_size(part, lock)
            if now >= f.size:
                break
            if now > have:  # progress was made: resume at once, the failure budget starts over
                failures, wait = 0, self.options.backoff_s
                log.warning("download of %s cut at %s of %s (%s): resuming", f.path,
                            human_bytes(now), human_bytes(f.size), reason)
                continue
            failures += 1
            if failures > self.options.retries:
                raise BootError(f"downloading {f.path} of {self.cache.repo_id} failed "
                                f"{failures} times in a row ({reason})", stage="fetch")
            log.warning("download of %s failed (%s): try %d of %d in %.1fs", f.path, reason,
                        failures + 1, self.options.retries + 1, pause)
            if self.abort.wait(pause):  # another file failed the fetch: stop waiting at once
                raise InterruptedError("fetch aborted")
            wait *= 2
        return received

    def _stream(self, f: RemoteFile, part: Path, start: int, hasher: Hasher, lock: BlobLock) -> int:
        response = self.client.open(self.commit, f.path, start)
        received = 0
        with response:
            if response.status_code == 416 or (start and response.status_code == 200):
                # 416: what we have is not a prefix of the file; 200: the server ignored Range.
                # Either way start over; the hash is reset by the caller.
                os.truncate(part, 0)
                hasher.reset()
                if response.status_code == 416:
                    raise TransientHubError("range not satisfiable: restarting the file")
            _part_size(part, lock)  # "ab" would create an orphan if our partial was adopted
            with open(part, "ab") as out:
                for chunk in iter_body(response, self.options.chunk_bytes):
                    if self.abort.is_set():
                        raise InterruptedError("fetch aborted")
                    if lock.lost:
                        raise LockLost("lock taken over")
                    out.write(chunk)  # a full disk: runtime.fetch says so, for every write
                    hasher.update(chunk)
                    received += len(chunk)
                    self.progress.add(len(chunk))
        return received


def part_size(path: Path) -> int:
    """Size of a file another worker may rename or remove at any moment (-1: gone)."""
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _part_size(part: Path, lock: BlobLock) -> int:
    """Our partial file's size, or LockLost when another worker has taken the download over
    (after we stalled past the stale-lock timeout it breaks the lock and adopts the partial):
    the caller then waits for that worker instead of failing the boot."""
    if lock.lost:
        raise LockLost("lock taken over")
    try:
        return part.stat().st_size
    except FileNotFoundError:
        raise LockLost("partial file adopted by another worker") from None
