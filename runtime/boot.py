"""The boot stages in order: settings -> fetch -> load -> optimize -> warmup -> announce -> serve.

Each stage is timed into the BootRecord. Any failure is final: it is reported with its stage and
a safe message, and the process exits non-zero (a worker that half-booted must not take jobs).
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from pipelines.registry import detect_family
from runtime import compile_cache
from runtime.aot import AotStore
from runtime.announce import Announcer
from runtime.boot_report import BootRecord
from runtime.encode import PngEncoder
from runtime.errors import STOP_SIGNALS, BootError, Stopped, WorkerError, brief, redact
from runtime.fetch import fetch
from runtime.handler import Service
from runtime.load import Loaded, load
from runtime.optimize import optimize, serve_stance, warm_with_fallback
from runtime.pipeline_thread import PipelineThread
from runtime.settings import Settings, unknown_names, webhook_settings
from runtime.warmup import fit_prompt_lengths, serving_plan, warmup, warmup_requests

log = logging.getLogger("runtime")


def read_settings(env: Mapping[str, str] | None = None) -> Settings:
    return Settings.from_env(os.environ if env is None else env)


def warn_unknown_names(record: BootRecord, env: Mapping[str, str] | None = None) -> None:
    """Say which VISGATE_* names the worker ignores (likely typos), in the log and in the boot
    record's settings stage (so in the ready webhook too)."""
    unknown = unknown_names(os.environ if env is None else env)
    if unknown:
        record.stages.setdefault("settings", {})["unknown_variables"] = unknown
        log.warning("ignored: the worker reads no variable named %s; check the spelling (README: "
                    "environment variables)", ", ".join(unknown))


def boot(settings: Settings, record: BootRecord, before_warmup: Callable[[], None] | None = None,
         pipeline: PipelineThread | None = None) -> Service:
    """``before_warmup``: waits for side work that must not overlap generation (the job SDK's
    import: the image checks capture warnings, whose filters are process-wide).
    ``pipeline``: the thread that will run the jobs; warmup's generations run there too (see
    runtime/pipeline_thread.py). Without it, in the calling thread."""
    on_pipeline = pipeline.call if pipeline is not None else _here
    record.device = settings.device
    with record.stage("fetch") as report:
        fetched = fetch(settings)
        report.update(source=fetched.source, **fetched.report)
    with record.stage("load") as report:
        # The family's own size rules, from model_index.json: a bad warmup shape stops the boot
        # (as a settings error) before gigabytes of weights are loaded onto the GPU.
        family = detect_family(fetched.model_dir)
        shapes = serving_plan(family, settings)
        loaded = load(settings, fetched.model_dir, variant=fetched.variant, family=family)
        report.update(loaded.family.describe(), precision=loaded.precision, device=loaded.device,
                      imports_seconds=loaded.imports_seconds,
                      device_init_seconds=loaded.device_init_seconds,
                      weights_seconds=loaded.weights_seconds)
    cache = compile_cache_for(settings, fetched.model_dir, loaded, shapes)
    with record.stage("optimize") as report:
        if cache:
            report["compile_cache"] = dict(cache.activate())
        tuning = optimize(loaded, settings, aot_store=aot_store_for(cache))
        report.update(tuning.as_dict())
    if before_warmup is not None:
        before_warmup()
    with record.stage("warmup") as report:
        report["runs"] = on_pipeline(warm_with_fallback,
                                     lambda: warmup(loaded.family, loaded.pipe, shapes), tuning,
                                     discard_restored=cache.discard if cache else None)
        check_lengths = tuning.compiled and not loaded.family.fixed_prompt_shapes
        if check_lengths and not tuning.aot_modules:  # before the save: the archive keeps its graphs
            report["other_prompt_lengths"] = on_pipeline(fit_prompt_lengths, loaded.family,
                                                         loaded.pipe, shapes, [])
        if cache and tuning.compiled:
            report["compile_cache"] = compile_cache.finish(cache)
        elif cache:
            # Serving eagerly after all: nothing to save, but the record must still say what
            # became of the archive (a restored one may have been discarded from the volume).
            report["compile_cache"] = dict(cache.status)
        serve_stance(tuning)
        if check_lengths and tuning.aot_modules:  # once frozen: before, a new signature compiles
            report["other_prompt_lengths"] = on_pipeline(fit_prompt_lengths, loaded.family,
                                                         loaded.pipe, shapes, tuning.aot_modules)
    encoder = PngEncoder()
    record.info["png_encoder"] = encoder.name
    return Service(model_id=settings.model_id, family=loaded.family, pipe=loaded.pipe,
                   encoder=encoder, secrets=settings.secrets, compiled=tuning.compiled,
                   warm_keys=frozenset(loaded.family.warm_key(r)
                                       for r in warmup_requests(loaded.family, shapes)))


def _here(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def compile_cache_for(settings: Settings, model_dir: Path, loaded: Loaded,
                      shapes: list[tuple[int, int]]) -> compile_cache.CompileCache | None:
    """The compile-cache archive this boot uses (None with VISGATE_COMPILE=off)."""
    if settings.compile == "off":
        return None
    options = {"precision": loaded.precision, "attention": settings.attention,
               "compile": settings.compile, "quantize": settings.quantize}
    if settings.default_guidance is not None:
        # Warmup compiles the guidance jobs get by default: classifier-free guidance on or off is
        # another graph. Only when set, so that the keys of existing archives stay as they were.
        options["default_guidance"] = settings.default_guidance
    return compile_cache.for_boot(settings.cache_dir, settings.model_id, model_dir, settings.revision,
                                  loaded.family.name, loaded.family.variant, loaded.device,
                                  options, shapes)


def aot_store_for(cache: compile_cache.CompileCache | None) -> AotStore | None:
    """Ahead-of-time packages sit beside the archive, under the same key; what happened to each
    lands in the boot record's compile_cache entry (its "aot" part)."""
    if cache is None:
        return None
    return AotStore(cache.volume_dir, cache.key, status=cache.status.setdefault("aot", {}))


def read_webhook_settings(env: Mapping[str, str] | None = None) -> Settings | None:
    """After a settings error: what is still readable (the webhook, the ids), to announce it."""
    return webhook_settings(os.environ if env is None else env)


@contextmanager
def stop_signals_raise(pending: list[int] | None = None) -> Iterator[None]:
    """While booting, SIGTERM and SIGINT raise ``Stopped`` in the main thread, so that the boot
    unwinds as it does for any error: the fetch stops its downloads and releases its locks on
    the volume, temporary files are removed, the failure is logged and announced. Ended by
    SIGTERM's default action instead, the worker left its locks behind, and the next worker (in
    another container, where its PID means nothing) waited 60 s for each to go stale.

    In the image the worker is PID 1, for which the kernel drops a signal that has no handler:
    before this, SIGTERM did nothing at all and the boot went on until Runpod's SIGKILL.

    A second signal ends the process at once, for an operator who does not want to wait for the
    clean-up (``os._exit``: a default action would be dropped too, as PID 1). The previous
    handlers are back on the way out: serving keeps the job SDK's own.

    ``pending``: signals that came before any handler of ours (``runtime.__main__`` keeps them
    from its first line), acted on at once."""
    def stop(signum: int, frame: object) -> None:
        for each in STOP_SIGNALS:
            signal.signal(each, _end_now)
        raise Stopped(signum)

    with _stop_signals_handled_by(stop):
        if pending:
            stop(pending[0], None)
        yield


@contextmanager
def _stop_signals_handled_by(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGTERM and SIGINT go to ``handler`` inside; the previous handlers are back after."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def announce_ready(announcer: Announcer, service: Service, record: BootRecord) -> None:
    """The announce stage: only after warmup, and before serving, is the worker ready."""
    with record.stage("announce") as report:
        report.update(announcer.ready(service.family, record))


def report_failure(announcer: Announcer, exc: BaseException, record: BootRecord) -> None:
    """Log the failure and post it (status "failed"); the caller then exits non-zero. A stop
    signal while it is posted (a slow receiver holds it up to the webhook budget, 600 s at most)
    ends the process at once: as PID 1 the worker dropped it, and outlived Runpod's grace."""
    secrets = announcer.settings.secrets if announcer.settings else ()
    stage, message = failure_message(exc, secrets, record.failed_stage)
    log.error("boot failed at %s: %s", stage, message)
    log.debug("boot failure detail", exc_info=exc)
    with _stop_signals_handled_by(_end_now):
        announcer.failed(stage, message, record)


def _end_now(signum: int, frame: object) -> None:
    """Exit 128 + the signal, now (a default action would be dropped too, as PID 1)."""
    os._exit(128 + signum)


def failure_message(exc: BaseException, secrets: tuple[str, ...],
                    stage: str | None = None) -> tuple[str, str]:
    """(stage, message) safe to log and send: no traceback, no secrets.

    ``stage`` is where the exception was raised (BootRecord.failed_stage), for exceptions that
    do not carry their own stage.
    """
    if isinstance(exc, Stopped):
        return stage or "boot", str(exc)
    if isinstance(exc, BootError):
        return (exc.stage if exc.stage != "boot" else stage or "boot"), redact(str(exc), secrets)
    if isinstance(exc, WorkerError):
        return stage or "settings", redact(str(exc), secrets)
    return stage or "boot", redact(brief(exc, limit=10_000), secrets)
