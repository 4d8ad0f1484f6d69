"""The per-blob lock: one owner at a time, waiters released when the work is done, stale locks
from dead or silent owners broken, a taken-over owner told so."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.hub.lock import BlobLock
from tests.support.small_disk import require_small_disk, run_on_small_disk


def test_one_owner_and_a_waiter_that_returns_when_the_work_is_done(tmp_path: Path):
    path = tmp_path / "blob.lock"
    done = threading.Event()
    owner = BlobLock(path, heartbeat_s=0.05, stale_after_s=5)
    assert owner.acquire(done=done.is_set)
    waiter = BlobLock(path, heartbeat_s=0.05, stale_after_s=5, poll_s=0.01)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(waiter.acquire(done=done.is_set)))
    thread.start()
    time.sleep(0.3)
    assert not result, "the waiter must not get the lock while the owner holds it"
    done.set()
    owner.release()
    thread.join(5)
    assert result == [False]
    assert not path.exists()


def test_a_waiter_takes_the_lock_after_the_owner_releases_without_finishing(tmp_path: Path):
    path = tmp_path / "blob.lock"
    owner = BlobLock(path, heartbeat_s=0.05)
    assert owner.acquire(done=lambda: False)
    result: list[bool] = []
    waiter = BlobLock(path, poll_s=0.01)
    thread = threading.Thread(target=lambda: result.append(waiter.acquire(done=lambda: False)))
    thread.start()
    time.sleep(0.1)
    owner.release()  # e.g. its download failed: someone else must try
    thread.join(5)
    assert result == [True]
    waiter.release()


def test_heartbeat_keeps_a_slow_owner_alive(tmp_path: Path):
    path = tmp_path / "blob.lock"
    owner = BlobLock(path, heartbeat_s=0.05, stale_after_s=1.0)
    assert owner.acquire(done=lambda: False)
    waiter = BlobLock(path, stale_after_s=1.0, poll_s=0.01)
    stop = threading.Event()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(waiter.acquire(done=stop.is_set)))
    thread.start()
    time.sleep(2.5)  # well past the stale timeout: the heartbeat must have kept it
    assert not owner.lost and not result
    stop.set()
    thread.join(5)
    owner.release()
    assert result == [False]


def test_a_silent_lock_from_another_host_is_broken_after_the_timeout(tmp_path: Path):
    path = tmp_path / "blob.lock"
    path.write_text(json.dumps({"host": "another-worker", "pid": 1, "token": "x", "beat": 0}))
    lock = BlobLock(path, stale_after_s=0.4, poll_s=0.02)
    t0 = time.monotonic()
    assert lock.acquire(done=lambda: False)
    assert 0.4 <= time.monotonic() - t0 < 3
    lock.release()


def lock_of_a_dead_process(path: Path) -> dict:
    """The lock a worker left when it was killed: taken for real, never released."""
    take = ("import os, sys; from pathlib import Path; from runtime.hub.lock import BlobLock;"
            "BlobLock(Path(sys.argv[1])).acquire(done=lambda: False); os._exit(0)")
    subprocess.run([sys.executable, "-c", take, str(path)], check=True)
    return json.loads(path.read_text())


def test_a_lock_of_a_dead_process_in_our_pid_namespace_is_broken_at_once(tmp_path: Path):
    path = tmp_path / "blob.lock"
    lock_of_a_dead_process(path)
    lock = BlobLock(path, stale_after_s=60, poll_s=0.02)
    t0 = time.monotonic()
    assert lock.acquire(done=lambda: False)
    assert time.monotonic() - t0 < 2
    lock.release()


@pytest.mark.parametrize("where", ["another PID namespace", "another boot", "an older version"])
def test_a_pid_we_cannot_see_is_left_to_the_heartbeat_rule(tmp_path: Path, where: str):
    """Containers that share a hostname do not share PIDs: an owner whose PID is not ours to
    check is judged by its heartbeat only, never broken at once while it may be alive."""
    path = tmp_path / "blob.lock"
    owner = lock_of_a_dead_process(path)  # a PID that means nothing here, our hostname
    if where == "an older version":  # its lock did not say where its PID lives
        del owner["boot"], owner["pidns"]
    else:
        owner["pidns" if where == "another PID namespace" else "boot"] = "elsewhere"
    path.write_text(json.dumps(owner))
    lock = BlobLock(path, stale_after_s=0.6, poll_s=0.02)
    t0 = time.monotonic()
    assert lock.acquire(done=lambda: False)
    assert time.monotonic() - t0 >= 0.6, "broken at once: its owner may still be running"
    lock.release()


def test_an_owner_whose_lock_was_taken_over_knows_it(tmp_path: Path):
    path = tmp_path / "blob.lock"
    owner = BlobLock(path, heartbeat_s=0.05)
    assert owner.acquire(done=lambda: False)
    path.unlink()  # broken by a waiter that judged it stale
    other = BlobLock(path)
    assert other.acquire(done=lambda: False)
    deadline = time.monotonic() + 3
    while not owner.lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert owner.lost
    owner.release()
    assert path.exists(), "releasing a lost lock must not remove the new owner's lock"
    other.release()


def test_a_waiter_that_breaks_a_stale_lock_late_leaves_the_new_owners_lock(tmp_path: Path):
    """Two waiters judge the same silent lock stale; one breaks it and takes the lock; the other
    (its rename slower, on a network volume) acts only then: it must not remove the new lock."""
    path = tmp_path / "blob.lock"
    path.write_text(json.dumps({"host": "another-worker", "pid": 1, "token": "x", "beat": 0}))
    judged_stale = path.read_bytes()
    first = BlobLock(path, heartbeat_s=0.05, stale_after_s=0.2, poll_s=0.01)
    assert first.acquire(done=lambda: False)
    late = BlobLock(path)
    assert not late._remove_if(lambda now: now == judged_stale)
    assert json.loads(path.read_text())["token"] == first.token
    time.sleep(0.2)  # a few heartbeats: the owner still holds it
    assert not first.lost
    assert list(tmp_path.iterdir()) == [path], "nothing left aside"
    first.release()
    assert not path.exists()


# Fills the small disk, then takes a lock on it: the lock file is created (a free inode) but its
# owner's content cannot be written (no free block).
TAKE_ON_A_FULL_DISK = """
import json, sys
from pathlib import Path
from runtime.hub.lock import BlobLock
from tests.support.small_disk import fill
disk = Path(sys.argv[1])
fill(disk)
lock = disk / "locks" / "blob.lock"
try:
    BlobLock(lock).acquire(done=lambda: False)
    outcome = {"taken": True}
except OSError as exc:
    outcome = {"errno": exc.errno, "error": str(exc)}
outcome["left"] = sorted(p.name for p in lock.parent.iterdir())
print(json.dumps(outcome))
"""


def test_a_lock_whose_content_cannot_be_written_is_not_left_behind(tmp_path: Path):
    """An empty lock names no owner and never beats: every worker would wait it out."""
    require_small_disk()
    disk = tmp_path / "disk"
    done = run_on_small_disk(disk, "size=64k", [sys.executable, "-c", TAKE_ON_A_FULL_DISK, str(disk)])
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["left"] == [], "a half-made lock file was left for the others to wait on"
    assert outcome["errno"] == errno.ENOSPC
    assert "could not write the lock file" in outcome["error"]
    assert str(disk / "locks" / "blob.lock") in outcome["error"]


# Takes a lock on the small disk, then another process (another worker's download on the shared
# volume) fills the disk and keeps retrying its writes, so a block freed for a moment is taken at
# once. Meanwhile this worker's main thread is busy (it holds the GIL between the heartbeat's
# system calls, as a download does), and the owner beats for a while. One JSON line: what the
# lock looked like.
BEAT_ON_A_FULL_DISK = """
import json, multiprocessing, os, sys, time
from pathlib import Path
from runtime.hub.lock import BlobLock
disk = Path(sys.argv[1])
lock = disk / "locks" / "blob.lock"
owner = BlobLock(lock, heartbeat_s=0.02, stale_after_s=60)
assert owner.acquire(done=lambda: False)
taken = lock.read_bytes()

def other_download(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    while True:
        try:
            os.write(fd, bytes(4096))
        except OSError:
            time.sleep(0.0002)

other = multiprocessing.Process(target=other_download, args=(disk / "other.part",), daemon=True)
other.start()
while True:  # the disk is full
    try:
        with open(disk / "probe", "wb") as probe:
            probe.write(bytes(4096))
        time.sleep(0.01)
    except OSError:
        break
mtimes, torn = set(), 0
deadline = time.monotonic() + 2.5
while time.monotonic() < deadline and not owner.lost:
    for _ in range(20000):  # busy, as a worker is
        pass
    try:
        mtimes.add(lock.stat().st_mtime_ns)
        torn += lock.read_bytes() != taken
    except OSError:
        torn += 1
other.kill()
print(json.dumps({"lost": owner.lost, "torn_reads": torn, "mtimes": len(mtimes),
                  "content_kept": lock.read_bytes() == taken if lock.exists() else False}))
owner.release()
"""


def test_a_heartbeat_on_a_full_disk_neither_empties_the_lock_nor_gives_it_up(tmp_path: Path):
    """A beat that rewrote the lock (truncate, then write) lost the freed block to another writer
    on a full volume: the owner's own lock was left empty, naming no owner, and the owner gave up
    a download it still held. A beat must keep the lock whole and keep showing it alive."""
    require_small_disk()
    disk = tmp_path / "disk"
    done = run_on_small_disk(disk, "size=64k", [sys.executable, "-c", BEAT_ON_A_FULL_DISK, str(disk)])
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["content_kept"] and outcome["torn_reads"] == 0, outcome
    assert not outcome["lost"], outcome
    assert outcome["mtimes"] > 5, f"waiters must still see the heartbeat: {outcome}"


# Takes a lock, then the volume turns read-only for a while (a network volume failing over):
# beats fail, yet nobody else has the lock.
BEAT_ON_A_READ_ONLY_DISK = """
import json, subprocess, sys, time
from pathlib import Path
from runtime.hub.lock import BlobLock
disk = Path(sys.argv[1])
lock = disk / "locks" / "blob.lock"
owner = BlobLock(lock, heartbeat_s=0.02, stale_after_s=60)
assert owner.acquire(done=lambda: False)
subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
time.sleep(0.3)
lost_while_read_only, before = owner.lost, lock.stat().st_mtime_ns
subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
time.sleep(0.3)
print(json.dumps({"lost_while_read_only": lost_while_read_only, "lost": owner.lost,
                  "beats_again": lock.stat().st_mtime_ns != before}))
owner.release()
"""


def test_a_heartbeat_that_fails_while_the_lock_is_still_ours_is_tried_again(tmp_path: Path):
    """Only a lock taken over (gone, or another token in it) is lost; a failed beat is not."""
    require_small_disk()
    disk = tmp_path / "disk"
    done = run_on_small_disk(disk, "size=64k", [sys.executable, "-c", BEAT_ON_A_READ_ONLY_DISK, str(disk)])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"lost_while_read_only": False, "lost": False, "beats_again": True}
