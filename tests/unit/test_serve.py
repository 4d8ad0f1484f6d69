"""The serve stage: the job SDK, imported on a side thread while the worker boots, and how the
queue worker ends on a stop signal (StopWhenIdle)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.serve import JobSdk

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def test_a_job_sdk_that_fails_to_import_fails_the_serve_stage_in_the_main_thread() -> None:
    """The SDK is imported on a side thread; its failure must still stop the boot (raised where
    the serve stage asks for it, after one more try there), not vanish with the thread."""
    class Missing(JobSdk):
        def _load(self):
            import visgate_no_such_job_sdk  # type: ignore[import-not-found]  # noqa: F401

    sdk = Missing()
    with pytest.raises(ModuleNotFoundError, match="visgate_no_such_job_sdk"):
        sdk.start_function()


def test_a_side_import_that_failed_once_is_retried_in_the_main_thread(caplog) -> None:
    """A passing failure on the side thread (CPython's import-lock _DeadlockError when both
    threads import one package) costs a second import, not the boot."""
    import threading

    class FlakyOnSideThread(JobSdk):
        def _load(self):
            if threading.current_thread() is not threading.main_thread():
                raise ImportError("deadlock detected by _ModuleLock('asyncio')")
            return print

    assert FlakyOnSideThread().start_function() is print
    assert "importing it again" in caplog.text


@pytest.fixture
def sdk_thresholds(monkeypatch):
    """Sets the SDK's own start-up thresholds (read from the environment at its import)."""
    from runpod.serverless.modules import rp_system_fitness

    def set_them(memory_gb: float, disk_percent: float) -> None:
        monkeypatch.setattr(rp_system_fitness, "MIN_MEMORY_GB", memory_gb)
        monkeypatch.setattr(rp_system_fitness, "MIN_DISK_PERCENT", disk_percent)

    return set_them


@pytest.mark.parametrize("memory_gb, disk_percent, said, advice", [
    (0.0, 100.0, "Insufficient disk space", "a larger container disk, or a network volume"),
    (1e9, 0.0, "Insufficient memory", "a machine with more memory"),
])
def test_a_machine_the_sdk_would_refuse_fails_the_serve_stage(sdk_thresholds, memory_gb: float,
                                                              disk_percent: float, said: str,
                                                              advice: str) -> None:
    """On Runpod's queue the SDK checks free memory and the space left on / before its first
    job, and ends the process if either is short: after the ready webhook. Checked before it,
    with the SDK's own functions, it is a failed boot at the serve stage that says why."""
    from runpod.serverless.modules.rp_system_fitness import _check_disk_space, _check_memory_availability

    from runtime.errors import BootError

    sdk_thresholds(memory_gb, disk_percent)
    with pytest.raises(RuntimeError, match=said):  # what the SDK itself would do
        (_check_disk_space if "disk" in said else _check_memory_availability)()
    with pytest.raises(BootError, match=f"Runpod's job SDK would stop this worker before its "
                                        f"first job: {said}.*; .*{advice}") as info:
        JobSdk().check_machine()
    assert info.value.stage == "serve"


def test_a_machine_the_sdk_accepts_passes(sdk_thresholds) -> None:
    sdk_thresholds(0.0, 0.0)
    JobSdk().check_machine()


def test_the_sdks_own_switch_turns_the_check_off(sdk_thresholds, monkeypatch) -> None:
    """RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true turns the SDK's checks off (a baked image whose weights
    fill most of its container disk): the worker's copy of them must not fail that boot."""
    from runpod.serverless.modules import rp_fitness

    sdk_thresholds(0.0, 100.0)  # a disk the SDK would refuse
    monkeypatch.setenv("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "True")
    monkeypatch.setitem(rp_fitness._registration_state, "system_checks", False)
    rp_fitness._ensure_system_checks_registered()  # what the SDK does with the switch: no checks
    assert not any("disk" in getattr(check, "__name__", "") for check in rp_fitness._fitness_checks)
    JobSdk().check_machine()


# ---- StopWhenIdle: the queue worker's stop signals --------------------------------------------
# Each in a fresh interpreter: it installs signal handlers and ends its process with os._exit.
def run_script(body: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent("""
        import logging, multiprocessing, os, signal, sys, time
        from runtime.serve import StopWhenIdle
        logging.basicConfig(level=logging.INFO)
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


def test_a_process_forked_after_install_still_ends_on_sigterm() -> None:
    """The SDK forks its heartbeat process while our handler is in. There the handler's thread
    does not exist: without its own way out the child ignored SIGTERM, and multiprocessing's
    terminate-then-join at exit (the SDK ending by itself) waited for it forever."""
    done = run_script("""
        StopWhenIdle(jobs_in_progress=lambda: 0).install()
        running = multiprocessing.Event()

        def heartbeat():
            running.set()
            time.sleep(60)

        child = multiprocessing.Process(target=heartbeat, daemon=True)  # forked, as the SDK's
        child.start()
        assert running.wait(10)  # past fork's own clean-up, which drops a signal pending then
        os.kill(child.pid, signal.SIGTERM)
        child.join(10)
        print("child exit", child.exitcode)
    """)
    assert done.returncode == 0, done.stderr
    assert "child exit 143" in done.stdout


def test_once_chained_a_sigterm_reaches_the_sdk_and_ends_the_process_when_its_job_is_done() -> None:
    """The SDK's own handler (it stops taking jobs) still runs; the process waits for the job in
    progress, then ends with 143 without waiting for anything else."""
    done = run_script("""
        jobs = [1]
        stop = StopWhenIdle(jobs_in_progress=lambda: jobs[0])
        stop.install()
        # What the SDK's JobScaler does before its loop first asks for its concurrency:
        signal.signal(signal.SIGTERM, lambda signum, frame: print("sdk handler", signum, flush=True))
        assert stop.concurrency_modifier(1) == 1 and stop.concurrency_modifier(1) == 1
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop._stopping.wait(5)
        time.sleep(0.5)  # ten of its polls: still here while the job runs
        print("alive during the job", flush=True)
        jobs[0] = 0  # the job's result is posted
        time.sleep(20)
        print("not ended", flush=True)
    """)
    assert done.returncode == 143, done.stderr
    assert done.stdout.splitlines() == [f"sdk handler {signal.SIGTERM.value}", "alive during the job"]
    assert "stopped by SIGTERM: taking no more jobs; exiting once the job in progress" in done.stderr
    assert "stopped by SIGTERM: the job in progress posted its result; exiting" in done.stderr


def test_a_job_count_that_cannot_be_read_leaves_the_shutdown_to_the_sdk() -> None:
    """The count is the SDK's internals (runpod 1.12's JobsProgress): where another version
    lacks it, ending at once could cut a job short, so the SDK's own shutdown is left to run."""
    done = run_script("""
        def unreadable():
            raise ImportError("no JobsProgress in this SDK")

        stop = StopWhenIdle(jobs_in_progress=unreadable)
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop._stopping.wait(5)
        stop._thread.join(5)
        print("still here", stop.exit_code, flush=True)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["still here 143"]
    assert "cannot be read (ImportError: no JobsProgress in this SDK); leaving the shutdown to the SDK" in done.stderr


# ---- PacedJobTakes: a failing job queue ----------------------------------------------------------
class Outage:
    """A job-take that fails ``failures`` times with ``error``, then hands out a job."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.left, self.error, self.calls = failures, error, 0

    async def __call__(self, session: object, num_jobs: int = 1) -> list[dict[str, str]]:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.error
        return [{"id": "job-1", "input": {}}]


def take_until_served(paced, attempts: int) -> list[object]:
    """Call it as the SDK's loop does: an exception is logged and the next call made."""
    import asyncio

    outcomes: list[object] = []
    for _ in range(attempts):
        try:
            outcomes.append(asyncio.run(paced(None, 1)))
        except Exception as exc:  # noqa: BLE001 - what the SDK's loop catches
            outcomes.append(type(exc).__name__)
    return outcomes


def test_failed_job_takes_pause_longer_each_time_up_to_a_bound_and_not_after_one_succeeds(caplog) -> None:
    from runtime.serve import PacedJobTakes

    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    outage = Outage(6, ConnectionRefusedError("connect call failed"))
    paced = PacedJobTakes(outage, sleep=sleep, draw=lambda: 1.0)  # the top of each jitter range
    with caplog.at_level("INFO", logger="runtime.serve"):
        outcomes = take_until_served(paced, 8)
    assert outcomes[:6] == ["ConnectionRefusedError"] * 6
    assert outcomes[6] == outcomes[7] == [{"id": "job-1", "input": {}}]
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]  # none after a success
    assert paced.failures == 0
    assert "job-take failed (ConnectionRefusedError); next try in 8.0 s (6 in a row)" in caplog.text
    assert "a job-take succeeded again after 6 failed" in caplog.text

    low: list[float] = []

    async def sleep_low(seconds: float) -> None:
        low.append(seconds)

    take_until_served(PacedJobTakes(Outage(2, OSError("x")), sleep=sleep_low, draw=lambda: 0.0), 3)
    assert low == [0.25, 0.5]  # the jitter's other end: half


def test_a_rate_limit_and_a_timed_out_long_poll_are_left_to_the_sdk_which_pauses_for_them() -> None:
    from runpod.serverless.modules.rp_job import TooManyRequests

    from runtime.serve import PacedJobTakes

    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    limited = TooManyRequests(request_info=None, history=(), status=429, message="slow down")
    for error in (limited, TimeoutError()):
        paced = PacedJobTakes(Outage(1, error), sleep=sleep)
        assert take_until_served(paced, 1) == [type(error).__name__]
        assert paced.failures == 0
    assert pauses == []


def test_installed_the_sdks_job_loop_takes_its_jobs_through_it(monkeypatch) -> None:
    from runpod.serverless.modules import rp_scale

    from runtime.serve import PacedJobTakes

    sdk_fetch = rp_scale.get_job
    monkeypatch.setattr(rp_scale, "get_job", sdk_fetch)  # put back after the test
    PacedJobTakes.install()
    scaler = rp_scale.JobScaler({"handler": lambda job: job})
    assert isinstance(scaler.jobs_fetcher, PacedJobTakes)
    assert scaler.jobs_fetcher._fetch is sdk_fetch


# ---- RetriedResults: a result Runpod fails to take ----------------------------------------------
class FlakyPost:
    """A result post that fails with each of ``errors`` in turn, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors, self.calls = list(errors), 0

    async def __call__(self, session: object, url: str, job_data: str) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "taken"


def http_error(status: int, retry_after: str | None = None) -> Exception:
    import aiohttp

    return aiohttp.ClientResponseError(request_info=None, history=(), status=status,
                                       headers={"Retry-After": retry_after} if retry_after else None)


class Clock:
    """Time that passes only by the pauses taken."""

    def __init__(self) -> None:
        self.now, self.pauses = 0.0, []

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def post(retried, session: object = None) -> object:
    import asyncio

    try:
        return asyncio.run(retried(session, "http://runpod/job-done/w/j?gpu=x", "{}"))
    except Exception as exc:  # noqa: BLE001 - what the SDK's result poster catches
        return exc


def test_a_result_is_posted_again_after_a_5xx_a_reset_or_a_rate_limit_until_taken(caplog) -> None:
    import aiohttp

    from runtime.serve import RetriedResults

    class Session:
        headers = {"X-Request-ID": "job-9"}

    clock = Clock()
    flaky = FlakyPost(http_error(503), aiohttp.ServerDisconnectedError(), http_error(429, "12"),
                      TimeoutError(), http_error(502, "600"))
    retried = RetriedResults(flaky, sleep=clock.sleep, draw=lambda: 1.0, clock=lambda: clock.now)
    with caplog.at_level("INFO", logger="runtime.serve"):
        assert post(retried, Session()) == "taken"
    assert flaky.calls == 6
    # 0.5, 1, 2, 4, 8 s; a Retry-After is waited where longer, at most 30 s.
    assert clock.pauses == [0.5, 1.0, 12.0, 4.0, 30.0]
    assert "job result not delivered (ServerDisconnectedError); posting it again in 1.0 s" in caplog.text
    assert "job result delivered after 5 failed tries" in caplog.text


@pytest.mark.parametrize("status", [400, 401, 404, 413])
def test_a_result_runpod_refuses_is_not_posted_again(status: int) -> None:
    from runtime.serve import RetriedResults

    clock = Clock()
    flaky = FlakyPost(http_error(status))
    error = post(RetriedResults(flaky, sleep=clock.sleep, clock=lambda: clock.now))
    assert getattr(error, "status", None) == status
    assert flaky.calls == 1 and clock.pauses == []


def test_a_result_is_given_up_once_the_next_pause_would_pass_the_patience(caplog) -> None:
    from runtime.serve import RetriedResults

    clock = Clock()
    flaky = FlakyPost(*[http_error(503)] * 40)
    retried = RetriedResults(flaky, sleep=clock.sleep, draw=lambda: 1.0, clock=lambda: clock.now)
    error = post(retried)
    assert getattr(error, "status", None) == 503
    assert sum(clock.pauses) <= RetriedResults.PATIENCE_S < sum(clock.pauses) + 8.0
    assert flaky.calls == len(clock.pauses) + 1
    assert "giving up: Runpod will not have this job's result" in caplog.text


def test_installed_the_sdks_result_poster_posts_through_it(monkeypatch) -> None:
    from runpod.serverless.modules import rp_http

    from runtime.serve import RetriedResults

    sdk_transmit = rp_http._transmit
    monkeypatch.setattr(rp_http, "_transmit", sdk_transmit)  # put back after the test
    RetriedResults.install()
    assert isinstance(rp_http._transmit, RetriedResults) and rp_http._transmit._transmit is sdk_transmit
