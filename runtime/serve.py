"""Serve stage: the job SDK that takes Runpod jobs once the worker is ready."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any, Callable

from runtime.errors import STOP_SIGNALS, BootError, brief
from runtime.job_api import sdk_jobs_in_progress

log = logging.getLogger(__name__)

# The SDK's switch for its start-up machine checks ("true", any case, turns them off): a baked
# image whose weights fill most of its container disk needs it, and must get past ours too.
SKIP_CHECKS = "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"


class JobSdk:
    """The runpod SDK, imported on a side thread during the boot stages.

    Its import (fastapi, aiohttp, ...) takes 1.3-1.5 s, while loading weights mostly waits on
    disk and the GPU with the GIL released: overlapped, it leaves the cold start.
    """

    # Packages both threads import (measured: the SDK's imports against torch's, diffusers' and
    # transformers'), imported here first. Two threads importing one package and its submodule
    # at once can meet in CPython's import locks (_DeadlockError in one of them).
    SHARED = ("argparse", "asyncio", "contextvars", "ctypes", "difflib", "getpass", "gettext",
              "glob", "multiprocessing", "numbers", "pickle", "pkgutil", "pprint", "shlex",
              "signal", "subprocess", "unittest", "tqdm", "typing_extensions", "yaml")

    def __init__(self) -> None:
        # The SDK logs every job's input and output at DEBUG (its default level): that would
        # print prompts and megabytes of base64 per job. INFO unless the operator asks otherwise.
        # Set before the import, which reads it.
        os.environ.setdefault("RUNPOD_DEBUG_LEVEL", "INFO")
        for name in self.SHARED:
            try:
                importlib.import_module(name)
            except ImportError:  # an optional one missing: whoever needs it will say so
                pass
        self._start: Callable[[dict[str, Any]], None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._import, name="job-sdk-import", daemon=True)
        self._thread.start()

    def _import(self) -> None:
        try:
            self._start = self._load()
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread, at serve
            self._error = exc

    def _load(self) -> Callable[[dict[str, Any]], None]:
        import runpod

        return runpod.serverless.start

    def wait(self) -> None:
        """Until the side import is over (its result, or its error, is for ``start_function``).
        Before warmup: the libraries it imports set warning filters, which are process-wide,
        while generating captures warnings (pipelines/base.py); the import is normally over by
        then anyway (1.3 s beside seconds of loading)."""
        self._thread.join()

    def start_function(self) -> Callable[[dict[str, Any]], None]:
        self.wait()
        if self._start is None:  # a failed side import is tried once more, here, alone
            log.warning("job SDK import on the side thread failed (%s); importing it again",
                        brief(self._error) if self._error else "no result")
            self._start = self._load()
        return self._start

    def check_machine(self) -> None:
        """On Runpod's job queue, before "ready": every start-up check the SDK would run before
        its first job, with the SDK's own functions and switches, then none left for it to run.

        The SDK (runpod 1.12) checks free memory (RUNPOD_MIN_MEMORY_GB, 4 GB), the space left on
        / (RUNPOD_MIN_DISK_PERCENT, 10%: weights fetched to the container disk take it), a TCP
        connection to 8.8.8.8:53, and on a GPU host the GPU's health (its gpu_test binary, else
        nvidia-smi), the CUDA versions, CUDA's initialisation and a matrix multiply. Run by the
        SDK, after the ready webhook, a failure ends the process at once (``os._exit(1)``): a
        worker announced ready that never takes a job, boot after boot. Here it is a failed boot
        that says why; and the checks are not run twice."""
        try:
            from runpod.serverless.modules import rp_fitness

            # What the SDK's run_fitness_checks registers, in its order (GPU check first), each
            # honouring its switch (RUNPOD_SKIP_GPU_CHECK, RUNPOD_SKIP_AUTO_SYSTEM_CHECKS).
            rp_fitness._ensure_gpu_check_registered()
            rp_fitness._ensure_system_checks_registered()
            checks = rp_fitness._fitness_checks
        except (ImportError, AttributeError) as exc:  # another SDK version: it will judge itself
            log.warning("job SDK's start-up checks not run before ready (%s): the SDK runs them "
                        "after", brief(exc))
            return
        if os.environ.get(SKIP_CHECKS, "").lower() == "true":
            log.info("%s=true: the job SDK's system checks are off", SKIP_CHECKS)
        started = time.perf_counter()
        names = [getattr(check, "__name__", "check") for check in checks]
        for name, check in zip(names, checks):
            try:
                outcome = check()
                if inspect.iscoroutine(outcome):  # the SDK's async checks, as it runs them
                    asyncio.run(outcome)
            except Exception as exc:  # noqa: BLE001 - the SDK ends the process on any of them
                raise BootError(f"Runpod's job SDK would stop this worker before its first job: "
                                f"{brief(exc, 300, named=False)}; {CHECK_ADVICE.get(name, CHECK_ADVICE[''])}",
                                stage="serve") from None
        checks.clear()  # passed: the SDK's own run finds none ("No fitness checks registered")
        log.info("job SDK's start-up checks passed before ready in %.2fs: %s",
                 time.perf_counter() - started, ", ".join(names) or "none (all switched off)")


# What to do when one of the SDK's start-up checks fails, by the name it registers it under.
CHECK_ADVICE = {
    "_memory_check": "a machine with more memory is needed",
    "_disk_check": "give the endpoint a larger container disk, or a network volume for the weights "
                   f"cache (VISGATE_CACHE_DIR); {SKIP_CHECKS}=true turns the SDK's checks off",
    "_network_check": "the SDK requires a TCP connection to 8.8.8.8:53 (within "
                      f"RUNPOD_NETWORK_CHECK_TIMEOUT seconds, 5 by default); {SKIP_CHECKS}=true "
                      "turns the SDK's system checks off",
    "_gpu_health_check": "the GPU failed the SDK's health check; RUNPOD_SKIP_GPU_CHECK=true turns "
                         "that check off",
    "": f"{SKIP_CHECKS}=true turns the SDK's system checks off",
}


class StopWhenIdle:
    """On Runpod's job queue, from "ready" on: a SIGTERM (Runpod scaling the worker down) or
    SIGINT ends the process as soon as no job is in progress: at once when idle, else as soon as
    the job in progress has posted its result. Exit status 128 + the signal, as for a stop during
    the boot.

    Left to the job SDK (runpod 1.12), the same signal lost jobs and outlived Runpod's grace:

    - Its job-take long-poll stays open after the signal. A job Runpod hands to it then is queued
      after the SDK's job runner has already stopped: taken from Runpod, never run, no result.
    - It exits only once its long-polls (job-take, job-stop; each up to 90 s) come back.
    - Its handlers are installed only once its start-up checks are over (seconds on a GPU host:
      nvidia-smi, a memory test on each GPU, CUDA init, a benchmark, the network). As PID 1 a
      SIGTERM before that was dropped, and the worker then served until the SIGKILL.

    So our handler is installed before "ready" is announced, and chained ahead of the SDK's when
    the SDK first asks for its concurrency (``concurrency_modifier``, called by its job loop,
    in the main thread, once its own handlers are in). A thread here waits until no job is in
    hand (``jobs_in_progress``: a job leaves it only once its result is posted) and ends the
    process, its heartbeat process with it. No job is taken after the signal: ``stop_taking``
    (``JobsInHand.close``) holds back every job-take not yet made, and the SDK's own handler is
    then not run, since its job runner, stopped by it, would leave a job that a job-take made
    before the signal brings back after it queued and never run. Without ``stop_taking`` the
    SDK's handler stops its job-takes."""

    POLL_SECONDS = 0.05

    def __init__(self, jobs_in_progress: Callable[[], int] | None = None,
                 hold: AbstractContextManager[Any] | None = None,
                 stop_taking: Callable[[], bool] | None = None) -> None:
        self._jobs_in_progress = jobs_in_progress or sdk_jobs_in_progress
        self._hold = hold or threading.Lock()  # held from the last count to the process's end
        self._stop_taking = stop_taking or (lambda: False)  # True: the SDK's handler is not needed
        self._takes_stopped = False
        self.signum: int | None = None
        self._pid = os.getpid()
        self._chained = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stop-when-idle", daemon=True)

    @property
    def exit_code(self) -> int:
        """What the process exits with once the SDK returns: 0 unless a stop signal came."""
        return 0 if self.signum is None else 128 + self.signum

    def install(self) -> None:
        """In the main thread, before "ready": from then on no stop signal is dropped."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        self._thread.start()

    def concurrency_modifier(self, current: int) -> int:
        """The SDK's hook, asked before each job-take: the first call chains our handler ahead
        of the SDK's (installed by then); the concurrency stays as it is."""
        if not self._chained:
            self._chained = True
            try:
                for signum in STOP_SIGNALS:
                    sdk_handler = signal.getsignal(signum)
                    if sdk_handler is not self._on_signal:
                        signal.signal(signum, self._chain(sdk_handler))
            except ValueError:  # not the main thread: another SDK version's loop
                log.warning("cannot chain the stop handler to the job SDK's (not the main "
                            "thread): a SIGTERM now waits for the SDK's own shutdown")
        return current

    def _chain(self, sdk_handler: Any) -> Callable[[int, FrameType | None], None]:
        def both(signum: int, frame: FrameType | None) -> None:
            self._on_signal(signum, frame)
            if callable(sdk_handler) and not self._takes_stopped:
                sdk_handler(signum, frame)  # the SDK stops taking jobs, and running them

        return both

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # A process forked after install (the SDK's heartbeat) inherits this handler, but
            # not the thread: there the signal must end it, as before, or multiprocessing's
            # terminate-then-join at exit (the SDK ending by itself, refresh_worker) would hang.
            os._exit(128 + signum)
        if self.signum is None:  # the first decides the exit status; Runpod sends one
            self.signum = signum
        self._takes_stopped = self._takes_stopped or self._stop_taking()  # no lock taken: a flag
        self._stopping.set()  # the rest in the thread: no logging inside a signal handler

    def _watch(self) -> None:
        self._stopping.wait()
        name = signal.Signals(self.signum).name
        said = False
        while True:
            # The count is read, and the process ended, under the hold: with ``JobsInHand``'s
            # lock, a job being handed over meanwhile is either counted here or not yet in.
            with self._hold:
                try:
                    busy = self._jobs_in_progress()
                except Exception as exc:  # noqa: BLE001 - another SDK's internals: ending now could cut a job short
                    log.warning("stopped by %s: the job SDK's jobs in progress cannot be read "
                                "(%s); leaving the shutdown to the SDK", name, brief(exc))
                    return
                if not busy:
                    log.warning("stopped by %s: %s; exiting", name, "the job in progress posted "
                                "its result" if said else "no job in progress")
                    end_process(128 + self.signum)
            if not said:
                log.warning("stopped by %s: taking no more jobs; exiting once the job in progress "
                            "has posted its result", name)
                said = True
            time.sleep(self.POLL_SECONDS)  # a count, no event to wait on: polled


def end_process(code: int) -> None:
    """End now, from any thread: the SDK's heartbeat process first (else, orphaned, it would
    go on telling Runpod this worker is alive), then the logs flushed."""
    for child in multiprocessing.active_children():
        child.kill()
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
