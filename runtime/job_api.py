"""Runpod's job API as the job SDK (runpod 1.12) talks to it on the queue, made to ride out
its failures: a failed job-take is asked again after a pause rather than at once
(``PacedJobTakes``), and a result Runpod failed to take is posted again rather than dropped
(``RetriedResults``); and its job loop takes the next job as soon as one ends, rather than at its
next once-a-second check (``PromptJobLoop``), while the last result is still being posted
(``OverlappedTakes``). Each wraps some of the SDK's module functions,
installed before its job loop starts; where another SDK version has no such function, its own
behaviour stays."""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
import threading
import time
from typing import Any, Callable

from runtime.errors import brief
from runtime.logs import job_context
from runtime.retry_after import parse_retry_after

log = logging.getLogger(__name__)


FIRST_PAUSE = 0.5
MOST_PAUSE = 8.0  # also bounds how late a job queued just after an outage is taken


def _pause(failures: int, draw: Callable[[], float]) -> float:
    """After ``failures`` failed calls in a row to Runpod's job API: doubling from ``FIRST_PAUSE``
    to ``MOST_PAUSE`` seconds, each drawn from half to all of that (jitter: the workers of an
    endpoint do not retry in step)."""
    return min(MOST_PAUSE, FIRST_PAUSE * 2 ** (failures - 1)) * (0.5 + draw() / 2)


def _failure(exc: BaseException) -> str:
    """Class and HTTP status: the SDK logs the whole message itself."""
    return " ".join(str(part) for part in (type(exc).__name__, getattr(exc, "status", ""))).strip()


def _wrap_sdk(module: str, name: str, wrapper: Callable[[Any], Any]) -> bool:
    """Replace one of the SDK's module functions by ``wrapper(it)``; where this SDK version has
    no such function, its own behaviour stays, with a warning (and False)."""
    try:
        sdk_module = importlib.import_module(module)
        setattr(sdk_module, name, wrapper(getattr(sdk_module, name)))
    except (ImportError, AttributeError) as exc:
        log.warning("job SDK's %s.%s not wrapped (%s): its own behaviour stays", module, name,
                    brief(exc))
        return False
    return True


def _then(method: Callable[[Any, Any], Any], after: Callable[[], None]) -> Callable[[Any, Any], Any]:
    """One of the SDK's ``JobsProgress`` methods (``add``, ``remove``), followed by ``after()``
    whatever it returned or raised."""
    def wrapped(sdk_self: Any, element: Any) -> Any:
        try:
            return method(sdk_self, element)
        finally:
            after()

    return wrapped


class PacedJobTakes:
    """On Runpod's job queue: a pause after each failed job-take (``_pause``), back to none after
    one that succeeds.

    The job SDK (runpod 1.12) retries a failed job-take at once: a 5xx from Runpod during an
    incident, a refused connection, a rejected key. Measured against a stand-in answering 503,
    about 1,400 requests a second, each with an ERROR line, from every worker of the endpoint.
    Its other paths pause already, and pass through untouched: a 429 (5 s), a long-poll that timed
    out (it waited)."""

    def __init__(self, fetch: Callable[..., Any],
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 draw: Callable[[], float] = random.random) -> None:
        self._fetch = fetch
        self._sleep = sleep
        self._draw = draw
        self.failures = 0  # failed job-takes in a row

    async def __call__(self, session: Any, num_jobs: int = 1) -> Any:
        try:
            jobs = await self._fetch(session, num_jobs)
        except Exception as exc:  # CancelledError (the SDK's own timeout) is not one: no pause
            if isinstance(exc, TimeoutError) or type(exc).__name__ == "TooManyRequests":
                raise
            self.failures += 1
            pause = _pause(self.failures, self._draw)
            log.warning("job queue: job-take failed (%s); next try in %.1f s (%d in a row)",
                        _failure(exc), pause, self.failures)
            await self._sleep(pause)
            raise  # the SDK logs it and asks again
        if self.failures:
            log.info("job queue: a job-take succeeded again after %d failed", self.failures)
            self.failures = 0
        return jobs

    @classmethod
    def install(cls) -> None:
        """Before the SDK's job loop is made: it takes its job-take function from its module."""
        _wrap_sdk("runpod.serverless.modules.rp_scale", "get_job", cls)


class JobsInHand:
    """On Runpod's job queue: the jobs a stop signal must let this worker see through. The job
    SDK (runpod 1.12) counts a job in progress (``JobsProgress``) only once its job-take's
    response has been read and parsed. From the response's arrival until then the job was Runpod's
    no longer and not yet in the count: a SIGTERM landing then ended the worker as idle, and the
    job, handed over, was never run (CI: test_sigterm_during_a_job_posts_its_result_takes_no_other
    _and_exits_143, once in its 900 tests). Here a job-take whose response arrives with a job holds
    it in hand until the SDK counts it, or the take ends with none.

    Each change is made under ``lock``, under which the stop decides to end the process and
    does: a response arriving after that decision waits for the end, as one still on the wire
    would (Runpod's to hand out again). The in-hand mark is cleared only after the SDK's count
    has taken the job in, so the two together never read zero in between. After ``close`` (the
    stop signal) no job-take is made: each waits, unanswered, for the process to end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._arriving = False  # a job-take's response has come with a job the count lacks yet
        self._installed = False
        self._closed = False

    def count(self) -> int:
        """Jobs in hand: the SDK's count, and one arriving. Read under ``lock``."""
        return int(self._arriving) + sdk_jobs_in_progress()

    def close(self) -> bool:
        """From a signal handler: no job-take from now on. False where not installed (another SDK
        version): its own shutdown must stop its job-takes."""
        self._closed = self._installed
        return self._closed

    def install(self) -> None:
        """Before ``PacedJobTakes`` (inside it: a failed take's pause is not spent in hand)."""
        try:
            progress = importlib.import_module("runpod.serverless.modules.worker_state").JobsProgress
            add = progress.add
        except (ImportError, AttributeError) as exc:
            log.warning("job SDK's count of jobs in progress not found (%s): a stop signal may "
                        "end the worker while a job-take's response is being read", brief(exc))
            return

        progress.add = _then(add, self._settle)  # after: the job is counted before it leaves our hand
        self._installed = _wrap_sdk("runpod.serverless.modules.rp_scale", "get_job", self._watched)

    def _watched(self, fetch: Callable[..., Any]) -> Callable[..., Any]:
        async def take(session: Any, num_jobs: int = 1) -> Any:
            if self._closed:  # stopping: left unanswered until the process ends (the SDK's
                await asyncio.get_running_loop().create_future()  # own timeout asks again)
            self._settle()  # a new take: the last one's jobs were counted (or there were none)
            jobs = None
            try:
                jobs = await fetch(_ArrivalSession(session, self._arrived), num_jobs)
                return jobs
            finally:
                if not jobs:  # none to count (204, an error, a cancel): nothing stays in hand
                    self._settle()

        return take

    def _arrived(self, response: Any) -> None:
        if getattr(response, "status", None) == 200:  # Runpod's "here is a job"; 204 is none
            with self.lock:
                self._arriving = True

    def _settle(self) -> None:
        with self.lock:
            self._arriving = False


def sdk_jobs_in_progress() -> int:
    """Jobs the SDK has taken and not finished: it adds a job once its job-take's response is
    parsed, and removes it only once the job's result is posted."""
    from runpod.serverless.modules.worker_state import JobsProgress

    return JobsProgress().get_job_count()


class _ArrivalSession:
    """The SDK's HTTP session as its job-take sees it: ``get``'s response is told to ``arrived``
    as soon as its status and headers are in, before its body is read."""

    def __init__(self, session: Any, arrived: Callable[[Any], None]) -> None:
        self._session = session
        self._arrived = arrived

    def get(self, *args: Any, **kwargs: Any) -> "_Arrival":
        return _Arrival(self._session.get(*args, **kwargs), self._arrived)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class _Arrival:
    def __init__(self, request: Any, arrived: Callable[[Any], None]) -> None:
        self._request = request
        self._arrived = arrived

    async def __aenter__(self) -> Any:
        response = await self._request.__aenter__()
        self._arrived(response)
        return response

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._request.__aexit__(*exc)


class PromptJobLoop:
    """On Runpod's job queue: the job SDK's job loop acts as soon as a job is taken or ends,
    not at its next tick.

    The SDK (runpod 1.12) runs its job loop as polling tasks on its event loop: the job-take
    task, while a job is in progress, checks once a second whether it may take another, and the
    job-run task, while none runs, checks every 0.1 s whether one was taken. A job's end was
    thus seen up to a second late: measured 0.53-0.93 s with nothing to do between back-to-back
    jobs (tiny FLUX on the CPU, medians 0.69-0.90 s; warmup/results/cpu-logs/
    2026-11-29-queue-back-to-back.txt), which next to SDXL's 1.1 s per image on an H200 would be
    about 40% of a busy worker's time; and a job taken while idle waited up to 0.1 s to start.
    Here every pause of those tasks also ends when a job enters or leaves the SDK's count of jobs
    in progress (``JobsProgress``: a job enters it once its job-take's answer is parsed, and
    leaves it once its result is posted); the loop then checks again at once. An early wake is harmless to
    every one of those pauses: each is a wait before checking again."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()
        self._lock = threading.Lock()

    def changed(self) -> None:
        """A job entered or left the count: every pause ends now (from any thread)."""
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        if delay <= 0:  # a bare yield to the event loop, as asyncio.sleep(0)
            return await asyncio.sleep(delay, result)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay, _wake, waiter)
        with self._lock:
            self._waiters.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            with self._lock:
                self._waiters.discard(waiter)
        return result

    @classmethod
    def install(cls) -> "PromptJobLoop | None":
        """Before the SDK's job loop is made: its module's ``asyncio`` gets this ``sleep``, and
        its count of jobs in progress tells this of each change."""
        try:
            scale = importlib.import_module("runpod.serverless.modules.rp_scale")
            progress = importlib.import_module("runpod.serverless.modules.worker_state").JobsProgress
            add, remove = progress.add, progress.remove
            if getattr(scale, "asyncio", None) is not asyncio:
                raise AttributeError("its job loop module does not use asyncio as this one knows it")
        except (ImportError, AttributeError) as exc:
            log.warning("job SDK's job loop left as it is (%s): it may see a job's end up to a "
                        "second late", brief(exc))
            return None
        loop = cls()
        progress.add, progress.remove = _then(add, loop.changed), _then(remove, loop.changed)
        scale.asyncio = _WithSleep(loop.sleep)
        return loop


class _WithSleep:
    """The asyncio module as the SDK's job loop module sees it: all of it, but its ``sleep``."""

    def __init__(self, sleep: Callable[..., Any]) -> None:
        self.sleep = sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class OverlappedTakes:
    """On Runpod's job queue: the next job is taken as soon as the pipeline is free, while the
    last job's result is still on its way to Runpod, not once Runpod has answered it.

    The job SDK (runpod 1.12) counts a job in progress until its result is posted, and takes
    jobs only below its concurrency (1 by default): a busy worker's pipeline idled through every
    result's post (JSON-encoding megabytes of base64, the upload, Runpod's answer) before the
    next job-take even began. Against the stand-in answering each result 150 ms late, one-step
    tiny-FLUX jobs on the CPU took 0.263 s each, 0.153 s of it idle; 0.169 s overlapped
    (warmup/results/cpu-logs/2026-11-30-queue-overlapped-takes.txt).

    Here the SDK's concurrency is 2, and each job-take first waits until every job in its count
    has left the handler: jobs still generate one at a time, the next is handed over while the
    last one's result posts, and a result that Runpod is slow to take (``RetriedResults``)
    holds back at most one more job. After a result asking Runpod to replace this worker (an
    unrecoverable GPU error: ``refresh_worker``), no job is taken again: it would fail too."""

    CONCURRENCY = 2

    def __init__(self) -> None:
        self._past_handler: set[str] = set()  # job ids out of the handler, results not yet posted
        self._replaced = False
        self._installed = False
        self._waiters: set[asyncio.Future[None]] = set()
        self._wake_job_loop: Callable[[], None] | None = None

    def concurrency(self, current: int) -> int:
        """The SDK's concurrency (its modifier hook): 2 once the job-takes wait for the pipeline."""
        return self.CONCURRENCY if self._installed else current

    def handler(self, handle: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
        """The job handler, telling when each job leaves it (its generation over, or stopped)."""
        async def handled(job: dict[str, Any]) -> Any:
            self._changed()  # out of the SDK's queue: its job-take loop may go on to the gate
            try:
                result = await handle(job)
                if isinstance(result, dict) and result.get("refresh_worker") and not self._replaced:
                    self._replaced = True
                    log.warning("job queue: no more jobs are taken: this worker asked Runpod to "
                                "replace it")
                return result
            finally:
                self._past_handler.add(_job_id(job))
                self._changed()

        return handled

    def install(self, job_loop: "PromptJobLoop | None") -> None:
        """Before the SDK's job loop is made, after ``PacedJobTakes`` (a job-take's wait for the
        pipeline is no failure's pause). ``job_loop`` wakes the SDK's job-take loop when a job
        leaves its queue: it counts a queued job twice (queued, and in progress), so with one
        job queued it pauses as if full, and without a wake would go on only at the next job's
        entry or exit from its count (the last result posted: what this is for)."""
        self._wake_job_loop = job_loop.changed if job_loop else None
        try:
            progress = importlib.import_module("runpod.serverless.modules.worker_state").JobsProgress
            progress.remove = _then(progress.remove, self._changed)
        except (ImportError, AttributeError) as exc:
            log.warning("job SDK's count of jobs in progress not found (%s): the next job is "
                        "taken once the last one's result is posted", brief(exc))
            return
        self._installed = _wrap_sdk("runpod.serverless.modules.rp_scale", "get_job", self._gated)

    def _pipeline_free(self) -> bool:
        from runpod.serverless.modules.worker_state import JobsProgress

        in_progress = {str(job.id) for job in JobsProgress()}
        self._past_handler &= in_progress  # posted since: out of the count
        return not self._replaced and in_progress <= self._past_handler

    def _gated(self, fetch: Callable[..., Any]) -> Callable[..., Any]:
        async def take(session: Any, num_jobs: int = 1) -> Any:
            while not self._pipeline_free():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)
            # One job: with one free, a second taken would only wait behind it.
            return await fetch(session, 1)

        return take

    def _changed(self) -> None:
        """A job entered or left the handler, or left the SDK's count."""
        for waiter in list(self._waiters):
            waiter.get_loop().call_soon_threadsafe(_wake, waiter)
        if self._wake_job_loop:
            self._wake_job_loop()


def _job_id(job: Any) -> str:
    return str(job.get("id")) if isinstance(job, dict) else str(job)


class RetriedResults:
    """On Runpod's job queue: a job's result that Runpod did not take is posted again, after a
    pause (``_pause``, or the server's ``Retry-After`` where longer), for up to ``PATIENCE_S``.

    The job SDK (runpod 1.12) posts a result with three tries over about 5 s for a 5xx, and one
    for a dropped connection, a timeout or a 429; then it drops the result: the job, done on the
    GPU, never completes for its client, whom Runpod shows it in progress until the endpoint's
    execution timeout (10 minutes by default). Only failures worth another try are tried again:
    a 4xx other than 408/425/429 says this result will never be taken."""

    PATIENCE_S = 120.0
    MOST_RETRY_AFTER_S = 30.0

    def __init__(self, transmit: Callable[..., Any],
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 draw: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._transmit = transmit
        self._sleep = sleep
        self._draw = draw
        self._clock = clock

    async def __call__(self, session: Any, url: str, job_data: Any) -> Any:
        started, failures = self._clock(), 0
        # The SDK names the job in the session's headers just before posting its result. The
        # session is shared: another job's result may be posted meanwhile (OverlappedTakes) and
        # rename it, so each try names this job again.
        headers = getattr(session, "headers", None)
        job_id = headers.get("X-Request-ID") if headers is not None else None
        with job_context(job_id):
            while True:
                if job_id is not None:
                    headers["X-Request-ID"] = job_id
                try:
                    result = await self._transmit(session, url, job_data)
                except Exception as exc:  # noqa: BLE001 - sorted below; re-raised to the SDK
                    if not _worth_another_post(exc):
                        raise
                    failures += 1
                    pause = max(_pause(failures, self._draw), _retry_after(exc, self.MOST_RETRY_AFTER_S))
                    waited = self._clock() - started
                    if waited + pause > self.PATIENCE_S:
                        log.error("job result not delivered after %d tries over %.0f s (%s); "
                                  "giving up: Runpod will not have this job's result",
                                  failures, waited, _failure(exc))
                        raise
                    log.warning("job result not delivered (%s); posting it again in %.1f s "
                                "(%d failed)", _failure(exc), pause, failures)
                    await self._sleep(pause)
                    continue
                if failures:
                    log.info("job result delivered after %d failed tries", failures)
                return result

    @classmethod
    def install(cls) -> None:
        """Where the SDK's result poster (send_result) looks its transmit function up."""
        _wrap_sdk("runpod.serverless.modules.rp_http", "_transmit", cls)


def _worth_another_post(exc: BaseException) -> bool:
    import aiohttp

    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status >= 500 or exc.status in (408, 425, 429)
    return isinstance(exc, (aiohttp.ClientConnectionError, TimeoutError))


def _retry_after(exc: BaseException, most: float) -> float:
    headers = getattr(exc, "headers", None) or {}
    seconds = parse_retry_after(headers.get("Retry-After")) if hasattr(headers, "get") else None
    return min(seconds, most) if seconds is not None else 0.0
