"""Logging set-up: one format, and secrets removed from every record before it is written."""

from __future__ import annotations

import logging
import sys
from typing import Any

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


def setup_logging(secrets: tuple[str, ...] = ()) -> None:
    register_secrets(secrets)
    redactor = RedactSecrets(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redactor)

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
