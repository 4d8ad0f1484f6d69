"""A real full disk for one child process: a tiny tmpfs mounted over a directory in the child's
own mount namespace, so the kernel itself answers ENOSPC (no monkeypatched ``os.write``).

``unshare --map-root-user --mount`` needs no root where user namespaces are allowed; where they
are not (some containers), the tests that need it are skipped and say why. The mount is gone
with the child, and the rest of the machine never sees it.

    run_on_small_disk(mount, "size=64k", [sys.executable, "-c", code])   # few blocks
    run_on_small_disk(mount, "nr_inodes=40", [...])                      # few files

In the child, ``fill(mount)`` takes every free block: a file can still be created, not written.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[2]

# sh -c SCRIPT sh OPTIONS MOUNT CMD...: mount, then become the command (its exit status is ours).
_SCRIPT = 'mount -t tmpfs -o "$1" visgate-small-disk "$2" && shift 2 && exec "$@"'


def run_on_small_disk(mount: Path, options: str, command: Sequence[str],
                      env: Mapping[str, str] | None = None, timeout: float = 120
                      ) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (in the repository root) with a tmpfs of ``options`` over ``mount``."""
    mount.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", _SCRIPT, "sh",
                           options, str(mount), *command], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)


@functools.cache
def _available() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return run_on_small_disk(Path(tmp), "size=64k", ["true"], timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def require_small_disk() -> None:
    """Skip the calling test where a private tmpfs cannot be mounted."""
    if not _available():
        pytest.skip("cannot mount a private tmpfs here (unshare --map-root-user --mount refused)")


def fill(disk: Path) -> None:
    """Take every free block of ``disk`` (run in the child, on its small disk)."""
    try:
        with open(disk / "filler", "wb") as filler:
            while True:
                filler.write(bytes(4096))
                filler.flush()
    except OSError:
        pass
