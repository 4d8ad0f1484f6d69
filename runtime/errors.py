"""The worker's small exception family.

Boot errors carry the stage they happened in and a message that is safe to show (no traceback,
no secrets). Job errors carry a message for the client and whether the worker must be replaced.
"""

from __future__ import annotations

import errno
import signal
from typing import Any
from urllib.parse import urlsplit


class WorkerError(Exception):
    """Base of every error the worker raises on purpose; its message is safe to show."""


class SettingsError(WorkerError):
    """An environment variable is missing or invalid."""


class BootError(WorkerError):
    """A boot stage failed; the worker reports it and exits non-zero."""

    def __init__(self, message: str, stage: str = "boot") -> None:
        super().__init__(message)
        self.stage = stage


class UnsupportedModelError(BootError):
    """The repository is not a text-to-image pipeline we can serve."""

    def __init__(self, message: str) -> None:
        # Raised while fetching (choosing files) or loading: the boot record knows which.
        super().__init__(message, stage="boot")


class ImageRejected(WorkerError):
    """The pipeline ran, but its image must not be returned as a success: the model's safety
    checker blacked it out, or it holds NaN/inf (a numerical overflow), which would encode as a
    black PNG. The worker itself is fine: the next job runs normally."""


class JobInputError(WorkerError):
    """The job's input is invalid; the message names the field and what is allowed."""


class JobStopped(WorkerError):
    """Runpod stopped the job in progress (a cancel, or its execution timeout): its generation
    ended at the next denoising step. Runpod takes no result for it."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"stopped by Runpod (cancelled, or past its execution timeout) after "
                         f"{done} of {total} steps")


# How Runpod scales a worker down (SIGTERM), and an operator's Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """SIGTERM (Runpod scaling the worker down) or SIGINT arrived while the worker booted.

    A BaseException, as KeyboardInterrupt is: a library's ``except Exception`` (a retry loop)
    must not swallow it on its way out of the boot."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} before the worker was ready")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by this signal


# The secrets of this process (HF_TOKEN, the webhook's), set once at boot by
# runtime.logs.setup_logging. brief() removes them *before* it cuts a message: a later redact()
# cannot recognise a secret that the cut has already split in two.
_process_secrets: tuple[str, ...] = ()


def register_secrets(secrets: tuple[str, ...]) -> None:
    global _process_secrets
    _process_secrets = tuple(s for s in secrets if s)


def brief(exc: BaseException, limit: int = 200, named: bool = True) -> str:
    """``Class: first line of the message`` (at most ``limit`` characters of it, secrets already
    removed; without ``Class: `` if not ``named``): what a log line or a report says about a
    foreign exception, without its traceback or later lines. Every cut of a foreign message goes
    through here."""
    lines = redact(str(exc), _process_secrets).strip().splitlines()
    if not lines:
        return exc.__class__.__name__
    return f"{exc.__class__.__name__}: {lines[0][:limit]}" if named else lines[0][:limit]


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """Replace every secret in ``text``; used wherever a foreign message may echo one back.

    Longest first: a secret that contains another (a hub URL's query holding HF_TOKEN) would
    no longer match once the shorter one inside it had been replaced."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def redact_values(value: Any, secrets: tuple[str, ...]) -> Any:
    """``redact`` every string in a JSON-like value (dicts, lists), keys left as written: value by
    value, since replacing in the JSON text could hit a secret that equals a literal (true, a
    number) or miss one that JSON escapes."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: redact_values(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_values(v, secrets) for v in value]
    return value


def sendable(text: str) -> str:
    """Text the SDK can send: it encodes replies as UTF-8 (json.dumps(ensure_ascii=False)), and
    a lone surrogate echoed from the input fails that encoding, which leaves the job unanswered
    until Runpod's timeout."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_target(url: str) -> str:
    """A URL as it may be logged: scheme, host and port only (its user-info, path or query may
    hold a token). Shared by the webhook and the hub client."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def is_out_of_memory(exc: BaseException | None) -> bool:
    """The GPU ran out of memory: the allocator's error, CUDA's own from a library call or a
    launch (cuBLAS, cuDNN), or either as an AOTInductor package reports it (a RuntimeError)."""
    if exc is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in (
        "cuda out of memory", "cuda error: out of memory",
        "cublas_status_alloc_failed", "cudnn_status_alloc_failed"))  # a library's workspace


def is_no_space(exc: BaseException | None) -> bool:
    """A disk is full or over quota (ENOSPC, EDQUOT), anywhere in the exception's chain: inductor
    wraps the OSError in its own error, and AOTInductor's C++ loader reports only the text."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if "no space left on device" in text or "disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# Substrings of errors after which a CUDA context is unusable: only a new process recovers.
FATAL_DEVICE_MARKERS = (
    "illegal memory access", "device-side assert", "unspecified launch failure",
    "cuda error: misaligned address", "an illegal instruction", "ecc error",
    "uncorrectable", "cudaerrorlaunchfailure", "cublas_status_execution_failed",
    "cuda driver error", "device not ready", "nvml", "gpu has fallen off the bus",
    # A lost or hung GPU, or a corrupted kernel: the context is gone with it.
    "cuda error: unknown error", "launch timed out", "hardware stack error",
    "invalid program counter", "busy or unavailable",
)


def is_fatal_device_error(exc: BaseException) -> bool:
    """The CUDA context is poisoned: only a new process recovers (the handler asks Runpod to
    replace the worker)."""
    text = str(exc).lower()
    return ("cuda" in text or "cublas" in text or "gpu" in text) and any(
        marker in text for marker in FATAL_DEVICE_MARKERS)
