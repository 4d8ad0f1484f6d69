"""Logging set-up: one format, and secrets removed from every record before it is written."""

from __future__ import annotations

import logging
import sys

from runtime.errors import redact


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            cleaned = redact(message, self.secrets)
            if record.exc_info:
                # Format the traceback now so it can be cleaned too, then drop the raw one.
                cleaned += "\n" + redact(logging.Formatter().formatException(record.exc_info), self.secrets)
                record.exc_info = None
            record.msg, record.args = cleaned, None
        return True


def setup_logging(secrets: tuple[str, ...] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
