"""One thread runs every call into the pipeline: warmup's at boot, then every job's.

Why jobs leave the main thread: Runpod's job SDK (runpod 1.12) runs the handler on its asyncio
event loop in the main thread, and reads Runpod's per-job stop (a cancel, an execution timeout)
on that same loop. A handler that generated there held the loop for the whole job: the stop was
read only once the job was over, so a stopped job ran all its steps, its image was posted for
nothing and the next job waited for it. Generating here leaves the loop free to read the stop.

Why one thread, and the same one for warmup and jobs: torch.compile's CUDA graphs
(``max-autotune``) are kept per thread; graphs recorded by warmup on one thread would be
recorded again, in a second memory pool, by the first job on another. One thread also runs one
generation at a time, as the pipeline requires (its scheduler's state, the process-wide warning
capture in pipelines/base.py).

The thread is a daemon: a boot stopped by a signal mid-warmup does not wait for the warmup's
call to end (the main thread ends the process instead: ``busy``).
"""

from __future__ import annotations

import contextvars
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable


class PipelineThread:
    def __init__(self, name: str = "pipeline") -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._unfinished = 0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue ``fn(*args, **kwargs)``; calls run in the order submitted. It runs in a copy of
        the caller's context (contextvars: the job named in log lines), as asyncio.to_thread's."""
        future: Future[Any] = Future()
        context = contextvars.copy_context()
        with self._lock:
            if not self._thread.is_alive():
                self._thread.start()
            self._unfinished += 1
        self._calls.put((future, lambda: context.run(fn, *args, **kwargs)))
        return future

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` there and wait for its result (the boot's warmup). A stop signal still
        interrupts the wait at once (a lock's wait is interruptible); the call itself goes on."""
        return self.submit(fn, *args, **kwargs).result()

    @property
    def busy(self) -> bool:
        """Whether a call is queued or running."""
        with self._lock:
            return self._unfinished > 0

    def _serve(self) -> None:
        while True:
            self._run_one(*self._calls.get())

    def _run_one(self, future: Future[Any], call: Callable[[], Any]) -> None:
        # A method of its own: nothing of a call (a job's image) stays referenced after it.
        try:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    future.set_exception(exc)
        finally:
            with self._lock:
                self._unfinished -= 1
