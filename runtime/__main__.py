"""Worker entry point: ``python -m runtime``. Boots every stage, then serves Runpod jobs.

Runpod's own flags (``--test_input``, ``--rp_serve_api``, ...) are read by the SDK at serve time.
"""

from __future__ import annotations

import logging
import os
import sys

from runtime.boot import boot, failure_message, read_settings
from runtime.boot_report import BootRecord
from runtime.errors import SettingsError
from runtime.handler import make_handler
from runtime.logs import setup_logging

log = logging.getLogger("runtime")


def main() -> int:
    record = BootRecord()
    setup_logging()
    try:
        with record.stage("settings"):
            settings = read_settings()
    except SettingsError as exc:
        log.error("boot failed at settings: %s", exc)
        return 2
    setup_logging(settings.secrets)
    try:
        service = boot(settings, record)
    except Exception as exc:  # noqa: BLE001 - every boot failure is reported, then final
        stage, message = failure_message(exc, settings.secrets)
        log.error("boot failed at %s: %s", stage, message)
        log.debug("boot failure detail", exc_info=True)
        return 1
    record.log_line()

    # The SDK logs every job's input and output at DEBUG (its default level): that would print
    # prompts and megabytes of base64 per job. INFO unless the operator asks otherwise.
    os.environ.setdefault("RUNPOD_DEBUG_LEVEL", "INFO")
    import runpod

    runpod.serverless.start({"handler": make_handler(service)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
