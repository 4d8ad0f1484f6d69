"""Run a command as PID 1 of a new PID namespace, as the worker runs in its container.

There the kernel drops a signal for which the process has no handler (SIGTERM included), which
is what the lifecycle and queue tests must see. ``unshare -Urpf --mount-proc`` needs no root
where user namespaces are allowed; where they are not, the command runs as it is.

    argv, pid_1 = as_pid_1([sys.executable, "-m", "runtime"])
    proc = subprocess.Popen(argv, ...)
    os.kill(inner_pid(proc, pid_1), signal.SIGTERM)
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def as_pid_1(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` run as PID 1 of a new PID namespace where user namespaces allow it (as on Docker,
    a signal sent from outside with no handler for it is then dropped); else as it is."""
    probe = subprocess.run(["unshare", "-Urpf", "--mount-proc", "true"], capture_output=True)
    if probe.returncode:
        return argv, False
    return ["unshare", "-Urpf", "--mount-proc", *argv], True


def inner_pid(proc: subprocess.Popen, pid_1: bool) -> int:
    """The command's own PID, as seen from outside: under unshare it is unshare's child."""
    if not pid_1:
        return proc.pid
    return int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
