"""Logging set-up: one format, and secrets removed from every record before it is written.

While a job runs, every line our handler writes names it: ``[job <id>]``, the id Runpod shows for
the job and the SDK's own lines carry (``requestId``), so that a failed job's log lines are found
by its id among a busy worker's. (diffusers and transformers write theirs through handlers of
their own, in their own format.)"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Any, Iterator

from runtime.errors import redact, register_secrets


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001
                # A log call whose arguments do not fit its format. This runs as the record is
                # created, outside logging's own error handling: raising here would fail the
                # library call that logged (a boot, a job). Keep the format and the argument types
                # only: the values may hold a secret and cannot be rendered safely.
                message = f"{record.msg!s} (unformattable log arguments: " \
                          f"{', '.join(type(a).__name__ for a in _as_tuple(record.args))})"
            cleaned = redact(message, self.secrets)
            if record.exc_info:
                # Format the traceback now so it can be cleaned too, then drop the raw one.
                cleaned += "\n" + redact(logging.Formatter().formatException(record.exc_info), self.secrets)
                record.exc_info = None
            record.msg, record.args = cleaned, None
        return True


def _as_tuple(args: Any) -> tuple[Any, ...]:
    if args is None:
        return ()
    return args if isinstance(args, tuple) else (args,)


_BASE_RECORD_FACTORY = logging.getLogRecordFactory()
_JOB: contextvars.ContextVar[str] = contextvars.ContextVar("visgate_job", default="")
JOB_ID_CHARS = 64  # Runpod's ids are UUIDs with a prefix; a longer one is cut, not a log flood


@contextlib.contextmanager
def job_context(job_id: Any) -> Iterator[None]:
    """Lines logged inside name the job (``None``, or no id: they name none)."""
    text = "".join(c for c in str(job_id) if c.isprintable())[:JOB_ID_CHARS] if job_id else ""
    token = _JOB.set(f" [job {text}]" if text else "")
    try:
        yield
    finally:
        _JOB.reset(token)


class NameTheJob(logging.Filter):
    """On our handler, which runs in the logging call's own thread and context: the job, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = _JOB.get()
        return True


def setup_logging(secrets: tuple[str, ...] = ()) -> None:
    register_secrets(secrets)
    redactor = RedactSecrets(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s%(job)s: %(message)s"))
    handler.addFilter(redactor)
    handler.addFilter(NameTheJob())

    # Some libraries (diffusers, transformers) log through handlers of their own that never reach
    # ours: cleaning each record as it is created covers every logger, whatever its handlers.
    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = _BASE_RECORD_FACTORY(*args, **kwargs)
        redactor.filter(record)
        return record

    logging.setLogRecordFactory(redacting_factory)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
