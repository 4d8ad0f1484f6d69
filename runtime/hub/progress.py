"""Download progress as log lines: bytes, rate and time left, at most once per interval.

Worker logs are read in Runpod's console, line by line; a progress bar would be noise there.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("runtime.fetch")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def human_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Thread-safe byte counter shared by the parallel downloads of one fetch."""

    def __init__(self, label: str, total: int, interval_s: float = 10.0) -> None:
        self.label = label
        self.total = total
        self.interval_s = interval_s
        self.done = 0
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._last = self._t0

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last < self.interval_s:
                return
            self._last = now
            done, elapsed = self.done, now - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("inf")
        pct = 100.0 * done / self.total if self.total else 100.0
        log.info("downloading %s: %s of %s (%.0f%%), %s/s, about %s left", self.label,
                 human_bytes(done), human_bytes(self.total), pct, human_bytes(rate),
                 human_seconds(left) if left != float("inf") else "?")

    def elapsed(self) -> float:
        return time.monotonic() - self._t0
