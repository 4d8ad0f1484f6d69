"""Worker entry point: ``python -m runtime``. Boots every stage, then serves Runpod jobs.

Runpod's own flags (``--test_input``, ``--rp_serve_api``, ...) are read by the SDK at serve time;
the job they would run (``--test_input``, or ``test_input.json`` in local mode) is checked at the
settings stage too, so a missing or malformed one stops the boot before any loading and before a
ready webhook.
"""

from __future__ import annotations

import signal

# As PID 1 the worker is sent no signal it has no handler for (the kernel drops it), and its
# imports take 0.5 s and more: from here on a stop signal is kept, and acted on as soon as the
# boot's own handlers are in (stop_signals_raise). Dropped, it let the worker boot and serve.
_ORIGINAL_HANDLERS = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
_early_stops: list[int] = []
for _signum in _ORIGINAL_HANDLERS:
    signal.signal(_signum, lambda signum, frame: _early_stops.append(signum))

# The imports, after the handlers.
import logging
import sys
from typing import Any

from runtime.announce import Announcer
from runtime.boot import (announce_ready, boot, read_settings, read_webhook_settings,
                          report_failure, stop_signals_raise, warn_unknown_names)
from runtime.boot_report import BootRecord
from runtime.errors import Stopped
from runtime.handler import job_handler
from runtime.logs import setup_logging
from runtime.job_api import (JobsInHand, OverlappedTakes, PacedJobTakes, PromptJobLoop,
                             RetriedResults)
from runtime.pipeline_thread import PipelineThread
from runtime.serve import JobSdk, StopWhenIdle, end_process
from runtime.settings import check_runpod_flags

log = logging.getLogger("runtime")


def main() -> int:
    record = BootRecord()
    setup_logging()
    try:
        with record.stage("settings"):
            settings = read_settings()
            on_queue = check_runpod_flags(sys.argv[1:])  # Runpod's job queue, not a local job or API
    except Exception as exc:  # noqa: BLE001 - SettingsError, or a fault reading the environment
        partial = read_webhook_settings()  # the webhook may still be usable: say why we stop
        setup_logging(partial.secrets if partial else ())
        report_failure(Announcer(partial), exc, record)
        return 2
    setup_logging(settings.secrets)
    warn_unknown_names(record)  # a misspelt setting would otherwise be left at its default unsaid
    announcer = Announcer(settings)  # the one transition: ready or failed, announced once
    sdk = JobSdk()  # imported on a side thread while the weights load
    pipeline = PipelineThread()  # warmup's generations, then every job's
    try:
        with stop_signals_raise(_early_stops):  # SIGTERM mid-boot unwinds the stages: no lock left on the volume
            service = boot(settings, record, before_warmup=sdk.wait,  # fetch -> load -> optimize -> warmup
                           pipeline=pipeline)
            with record.stage("serve"):  # the SDK is in before "ready": ready means able to take a job
                start = sdk.start_function()
                if on_queue:  # where the SDK checks the machine before its first job
                    sdk.check_machine()
            record.log_line()
    except (Exception, Stopped) as exc:  # noqa: BLE001 - every boot failure is reported, then final
        report_failure(announcer, exc, record)
        code = exc.exit_code if isinstance(exc, Stopped) else 1
        if pipeline.busy:  # stopped mid-warmup: its call goes on there; the process ends now,
            end_process(code)  # not at the interpreter's exit, which would meet it mid-call
        return code
    # On Runpod's queue a stop signal from here on ends the worker once no job is in progress
    # (the SDK's own shutdown could take a job and drop it). Installed before the announce,
    # whose own stop handlers put it back when they end: no moment without a handler.
    in_hand = JobsInHand()  # counted from a job-take's response on, not once its body is parsed
    stop = StopWhenIdle(in_hand.count, in_hand.lock, in_hand.close) if on_queue else None
    if stop:
        stop.install()
    try:
        # Runpod may scale the worker down while the receiver is slow to answer "ready". As PID 1
        # the worker had no handler here, so SIGTERM was dropped: it went on to take jobs until
        # the SIGKILL cut them short. Stopped now, it exits without serving; "ready" was (or is
        # being) announced, and no other event follows it, as after any stop while serving.
        with stop_signals_raise(_early_stops):
            announce_ready(announcer, service, record)  # only now, and before any job is taken
    except Stopped as exc:
        log.warning("stopped by %s while announcing ready: exiting, no job taken",
                    signal.Signals(exc.signum).name)
        return exc.exit_code
    if not stop:  # a local job or API server: the job SDK's own handling of signals, as before
        for signum, handler in _ORIGINAL_HANDLERS.items():
            signal.signal(signum, handler)
    config: dict[str, Any] = {"handler": job_handler(service, pipeline)}
    if stop:
        overlapped = OverlappedTakes()  # the next job is taken while the last result posts
        config["handler"] = overlapped.handler(config["handler"])
        config["concurrency_modifier"] = lambda current: overlapped.concurrency(
            stop.concurrency_modifier(current))  # which chains our stop handler
        in_hand.install()
        PacedJobTakes.install()  # a failing job queue is not asked again at once
        RetriedResults.install()  # nor is a made image dropped when Runpod fails to take it
        job_loop = PromptJobLoop.install()  # the next job is taken as soon as one ends, not up to 1 s later
        overlapped.install(job_loop)
    start(config)
    return stop.exit_code if stop else 0


if __name__ == "__main__":
    sys.exit(main())
