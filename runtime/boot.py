"""The boot stages in order: settings -> fetch -> load -> optimize -> warmup -> (announce) -> serve.

Each stage is timed into the BootRecord. Any failure is final: it is reported with its stage and
a safe message, and the process exits non-zero (a worker that half-booted must not take jobs).
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

from runtime.boot_report import BootRecord
from runtime.encode import PngEncoder
from runtime.errors import BootError, WorkerError, redact
from runtime.fetch import fetch
from runtime.handler import Service
from runtime.load import load
from runtime.optimize import optimize
from runtime.settings import Settings
from runtime.warmup import serving_shapes, warmup

log = logging.getLogger("runtime")


def read_settings(env: Mapping[str, str] | None = None) -> Settings:
    return Settings.from_env(os.environ if env is None else env)


def boot(settings: Settings, record: BootRecord) -> Service:
    with record.stage("fetch") as report:
        fetched = fetch(settings)
        report.update(source=fetched.source, **fetched.report)
    with record.stage("load") as report:
        loaded = load(settings, fetched.model_dir)
        report.update(loaded.family.describe(), precision=loaded.precision, device=loaded.device)
    with record.stage("optimize") as report:
        report.update(optimize(loaded, settings))
    shapes = serving_shapes(loaded.family, settings.warmup_shapes)
    with record.stage("warmup") as report:
        report["runs"] = warmup(loaded.family, loaded.pipe, shapes)
    encoder = PngEncoder()
    record.info["png_encoder"] = encoder.name
    return Service(model_id=settings.model_id, family=loaded.family, pipe=loaded.pipe,
                   encoder=encoder, secrets=settings.secrets)


def failure_message(exc: BaseException, secrets: tuple[str, ...]) -> tuple[str, str]:
    """(stage, message) safe to log and send: no traceback, no secrets."""
    if isinstance(exc, BootError):
        return exc.stage, redact(str(exc), secrets)
    if isinstance(exc, WorkerError):
        return "settings", redact(str(exc), secrets)
    return "boot", redact(f"{exc.__class__.__name__}: {exc}".splitlines()[0], secrets)
