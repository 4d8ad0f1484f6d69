"""The per-blob lock: one owner at a time, waiters released when the work is done, stale locks
from dead or silent owners broken, a taken-over owner told so."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from runtime.hub.lock import BlobLock


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


def test_a_lock_of_a_dead_process_on_this_host_is_broken_at_once(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "blob.lock"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "x"}))
    lock = BlobLock(path, stale_after_s=60, poll_s=0.02)
    t0 = time.monotonic()
    assert lock.acquire(done=lambda: False)
    assert time.monotonic() - t0 < 2
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
