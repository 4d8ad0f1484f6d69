"""Serve stage: the job SDK that takes Runpod jobs once the worker is ready."""

from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Any, Callable

from runtime.errors import BootError, brief

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
        """On Runpod's job queue, before "ready": the SDK's own start-up checks of this machine
        that the boot itself can fail. Before its first job the SDK checks free memory and the
        space left on / (RUNPOD_MIN_MEMORY_GB, default 4 GB; RUNPOD_MIN_DISK_PERCENT, default
        10%), and a failure ends the process at once: after the ready webhook, as a worker that
        never takes a job, boot after boot. Weights fetched to the container disk are what most
        often leave / under its threshold. Run here, with the SDK's own functions, the same
        failure is a failed boot that says why. (Its network and GPU checks are left to it.)"""
        from runpod.serverless.modules import rp_system_fitness as fitness

        if os.environ.get(SKIP_CHECKS, "").lower() == "true":  # the SDK's own switch, its test
            log.info("%s=true: the job SDK's machine checks are off, not checked before ready",
                     SKIP_CHECKS)
            return
        advice = {"_check_memory_availability": "a machine with more memory is needed",
                  "_check_disk_space": "give the endpoint a larger container disk, or a network "
                                       "volume for the weights cache (VISGATE_CACHE_DIR); "
                                       f"{SKIP_CHECKS}=true turns the SDK's checks off"}
        for name, what_to_do in advice.items():
            check = getattr(fitness, name, None)
            if check is None:  # another SDK version: it will judge for itself
                log.warning("job SDK has no %s; not checked before ready", name)
                continue
            try:
                check()
            except RuntimeError as exc:
                raise BootError(f"Runpod's job SDK would stop this worker before its first job: "
                                f"{exc}; {what_to_do}", stage="serve") from None
