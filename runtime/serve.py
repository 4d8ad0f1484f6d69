"""Serve stage: the job SDK that takes Runpod jobs once the worker is ready."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable


class JobSdk:
    """The runpod SDK, imported on a side thread during the boot stages.

    Its import (fastapi, aiohttp, ...) takes 1.3-1.5 s, while loading weights mostly waits on
    disk and the GPU with the GIL released: overlapped, it leaves the cold start.
    """

    def __init__(self) -> None:
        # The SDK logs every job's input and output at DEBUG (its default level): that would
        # print prompts and megabytes of base64 per job. INFO unless the operator asks otherwise.
        # Set before the import, which reads it.
        os.environ.setdefault("RUNPOD_DEBUG_LEVEL", "INFO")
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

    def start_function(self) -> Callable[[dict[str, Any]], None]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._start is not None
        return self._start
