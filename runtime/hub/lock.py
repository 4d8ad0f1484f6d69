"""A per-blob lock file that works across processes and hosts on a network filesystem.

``fcntl``/``flock`` locks (what the hub's ``filelock`` uses) are unreliable on network volumes:
some never release a dead client's lock, some do not lock across hosts at all. This lock uses
only operations that are atomic there:

- acquire: ``open(O_CREAT | O_EXCL)``, which exactly one creator wins;
- heartbeat: the owner sets the file's mtime every ``heartbeat_s`` (``futimens`` on the file it
  opened and found its token in), so its mtime moves while it lives. The content, written once
  at acquire, is never rewritten: a rewrite (truncate, then write) on a full volume can fail
  after the truncate and leave an empty lock that names no owner, and an mtime needs no free
  block or quota; a beat that fails for any other reason than a lost lock is tried again;
- staleness is judged by a waiter on its *own* monotonic clock: "the lock has not changed for
  ``stale_after_s``" (no comparison of clocks across hosts), or at once when the owner is a dead
  process that provably ran where our PIDs mean the same thing (same host, boot and PID
  namespace: containers often share a hostname but not PIDs);
- a stale lock is broken by renaming it away (only one waiter's rename succeeds) and checking
  that what was renamed is the lock judged stale: another waiter may have broken that one and
  taken the lock between our read and our rename, and then its lock is put back. The waiter
  then competes for ``O_EXCL`` again like everyone else. Release renames away the same way, so
  an owner that lost its lock never removes its successor's.

An owner that stalls longer than ``stale_after_s`` can lose its lock; its heartbeat notices and
sets ``lost``, and the transfer stops writing. The transfer's size and hash checks make even that
race harmless: nothing is published that does not verify.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

_HOST = socket.gethostname()


def _read_id(read: Callable[[], str]) -> str | None:
    try:
        return read().strip() or None
    except OSError:
        return None


# Where a PID names a process: the same hostname alone does not say so (containers with host
# networking or one ``--hostname`` share it, each with its own PID namespace), nor does a host
# that has rebooted since. None where unknown: then no lock is ever judged dead by its PID.
_BOOT = _read_id(lambda: Path("/proc/sys/kernel/random/boot_id").read_text())
_PIDNS = _read_id(lambda: os.readlink("/proc/self/ns/pid"))


class BlobLock:
    def __init__(self, path: Path, heartbeat_s: float = 5.0, stale_after_s: float = 60.0,
                 poll_s: float = 0.25, report_s: float = 10.0) -> None:
        self.path = Path(path)
        self.report_s = report_s  # how often ``on_wait`` is called while waiting
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.token = uuid.uuid4().hex[:16]
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    # ---- acquire / release -------------------------------------------------------------------
    def acquire(self, done: Callable[[], bool], on_wait: Callable[[dict], None] | None = None,
                abort: threading.Event | None = None, wait: bool = True) -> bool | None:
        """Take the lock (True), or return False as soon as ``done()`` says the work is done.

        With ``wait=False``, return None at once when a live owner holds it (the caller does
        other work first). ``on_wait(owner)`` is called now and then while waiting.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        seen: bytes | None = None
        seen_sig: tuple[int, int] | None = None
        unchanged_since = last_report = time.monotonic()
        while True:
            if abort is not None and abort.is_set():
                raise InterruptedError("fetch aborted")
            if done():
                return False
            if self._try_create():
                self._start_heartbeat()
                return True
            content, sig = self._read()
            if content != seen or sig != seen_sig:
                seen, seen_sig, unchanged_since = content, sig, time.monotonic()
            owner = _parse(content)
            idle = time.monotonic() - unchanged_since
            dead = _dead_here(owner)
            if dead or idle > self.stale_after_s:
                reason = "its process is gone" if dead else f"no heartbeat for {idle:.0f}s"
                if self._remove_if(lambda now: now == content):
                    log.warning("took over the lock %s from %s (pid %s): %s", self.path.name,
                                owner.get("host", "?"), owner.get("pid", "?"), reason)
                continue
            if not wait and content is not None:
                return None
            if on_wait and time.monotonic() - last_report > self.report_s:
                last_report = time.monotonic()
                on_wait(owner)
            time.sleep(self.poll_s)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._remove_if(lambda now: _parse(now).get("token") == self.token)

    # ---- internals ---------------------------------------------------------------------------
    def _content(self) -> bytes:
        return json.dumps({"host": _HOST, "boot": _BOOT, "pidns": _PIDNS, "pid": os.getpid(),
                           "token": self.token, "time": time.time()}).encode()

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            try:
                _write_all(fd, self._content())
            finally:
                os.close(fd)  # a network filesystem may report a full disk or quota only here
        except OSError as exc:
            # A lock without its owner's content names no owner and no heartbeat: every worker
            # would wait ``stale_after_s`` for it, at this boot and the next. Nobody else can
            # have taken this file over yet (that takes ``stale_after_s``): it is simply removed.
            self.path.unlink(missing_ok=True)
            raise OSError(exc.errno, f"could not write the lock file ({exc.strerror})",
                          str(self.path)) from None
        return True

    def _read(self) -> tuple[bytes | None, tuple[int, int] | None]:
        try:
            with open(self.path, "rb") as f:
                content = f.read()
                st = os.fstat(f.fileno())
            return content, (st.st_ino, st.st_mtime_ns)
        except OSError:
            return None, None

    def _remove_if(self, judged: Callable[[bytes | None], bool]) -> bool:
        """Remove the lock file if its content is still what ``judged`` accepts.

        Reading, then unlinking, could remove a lock someone took in between; so the file is
        renamed aside first (atomic: whatever we then read is what we removed) and put back if
        it is not the one we meant.
        """
        aside = self.path.with_name(f"{self.path.name}.aside.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False  # another waiter broke it first, or the owner released it
        try:
            with open(aside, "rb") as f:
                ours = judged(f.read())
        except OSError:
            ours = False
        if not ours:
            try:
                os.link(aside, self.path)  # fails if a newer lock is there: its owner has it
            except OSError:
                pass  # that newer lock wins; the one set aside is lost and its owner told so
        try:
            os.unlink(aside)
        except OSError:
            pass
        return ours

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock-{self.path.name}",
                                        daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        failing = False
        while not self._stop.wait(self.heartbeat_s):
            try:
                with open(self.path, "r+b") as f:
                    if _parse(f.read()).get("token") != self.token:
                        raise FileNotFoundError
                    os.utime(f.fileno())  # the inode we read our token in, not a successor's
            except FileNotFoundError:
                log.warning("lost the lock %s (taken over as stale)", self.path.name)
                self._lost.set()
                return
            except OSError as exc:
                # The lock is still ours and still whole: beat again next time. Should the beats
                # keep failing past ``stale_after_s``, a waiter takes the lock over and the token
                # check above tells us.
                if not failing:
                    log.warning("could not renew the lock %s (%s): trying again every %gs",
                                self.path.name, exc.strerror or exc, self.heartbeat_s)
                failing = True
            else:
                failing = False


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` may write only part of ``data`` (a disk filling up): the next write of the
    rest then raises the real error, instead of a torn lock that names no owner."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _parse(content: bytes | None) -> dict:
    try:
        value = json.loads(content or b"")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _dead_here(owner: dict) -> bool:
    """The owner ran in our PID namespace and its process no longer exists (a killed worker
    restarted). An owner elsewhere, or one whose lock does not say where (written by an older
    version), is left to the heartbeat rule: its PID may be a live process we cannot see."""
    pid = owner.get("pid")
    here = (owner.get("host"), owner.get("boot"), owner.get("pidns")) == (_HOST, _BOOT, _PIDNS)
    if not here or None in (_BOOT, _PIDNS) or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
