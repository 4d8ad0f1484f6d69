"""Runpod's job API as the SDK talks to it on the queue (runtime/job_api.py): failed job-takes
paced, results Runpod failed to take posted again. Driven here with failing calls and a clock
that moves only by the pauses taken; the real SDK against a failing stand-in of Runpod's API is
in tests/integration/test_queue_mode.py."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)


class Failing:
    """A call to Runpod's job API (a job-take, a result post) that raises each of ``errors`` in
    turn, then returns ``result``."""

    def __init__(self, *errors: Exception, result: object) -> None:
        self.errors, self.result, self.calls = list(errors), result, 0

    async def __call__(self, *args: object) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class Clock:
    """Time that passes only by the pauses taken."""

    def __init__(self) -> None:
        self.now, self.pauses = 0.0, []

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


# ---- PacedJobTakes: a failing job queue ----------------------------------------------------------
JOBS = [{"id": "job-1", "input": {}}]


def outage(failures: int, error: Exception) -> Failing:
    """A job-take that fails ``failures`` times with ``error``, then hands out a job."""
    return Failing(*[error] * failures, result=JOBS)


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
    from runtime.job_api import PacedJobTakes

    clock = Clock()
    paced = PacedJobTakes(outage(6, ConnectionRefusedError("connect call failed")), sleep=clock.sleep,
                          draw=lambda: 1.0)  # the top of each jitter range
    with caplog.at_level("INFO", logger="runtime.job_api"):
        outcomes = take_until_served(paced, 8)
    assert outcomes[:6] == ["ConnectionRefusedError"] * 6
    assert outcomes[6] == outcomes[7] == [{"id": "job-1", "input": {}}]
    assert clock.pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]  # none after a success
    assert paced.failures == 0
    assert "job-take failed (ConnectionRefusedError); next try in 8.0 s (6 in a row)" in caplog.text
    assert "a job-take succeeded again after 6 failed" in caplog.text

    low = Clock()
    take_until_served(PacedJobTakes(outage(2, OSError("x")), sleep=low.sleep, draw=lambda: 0.0), 3)
    assert low.pauses == [0.25, 0.5]  # the jitter's other end: half


def test_a_rate_limit_and_a_timed_out_long_poll_are_left_to_the_sdk_which_pauses_for_them() -> None:
    from runpod.serverless.modules.rp_job import TooManyRequests

    from runtime.job_api import PacedJobTakes

    clock = Clock()
    limited = TooManyRequests(request_info=None, history=(), status=429, message="slow down")
    for error in (limited, TimeoutError()):
        paced = PacedJobTakes(outage(1, error), sleep=clock.sleep)
        assert take_until_served(paced, 1) == [type(error).__name__]
        assert paced.failures == 0
    assert clock.pauses == []


def test_installed_the_sdks_job_loop_takes_its_jobs_through_it(monkeypatch) -> None:
    from runpod.serverless.modules import rp_scale

    from runtime.job_api import PacedJobTakes

    sdk_fetch = rp_scale.get_job
    monkeypatch.setattr(rp_scale, "get_job", sdk_fetch)  # put back after the test
    PacedJobTakes.install()
    scaler = rp_scale.JobScaler({"handler": lambda job: job})
    assert isinstance(scaler.jobs_fetcher, PacedJobTakes)
    assert scaler.jobs_fetcher._fetch is sdk_fetch


# ---- RetriedResults: a result Runpod fails to take ----------------------------------------------
def flaky_post(*errors: Exception) -> Failing:
    """A result post that fails with each of ``errors`` in turn, then is taken."""
    return Failing(*errors, result="taken")


def http_error(status: int, retry_after: str | None = None) -> Exception:
    import aiohttp

    return aiohttp.ClientResponseError(request_info=None, history=(), status=status,
                                       headers={"Retry-After": retry_after} if retry_after else None)


def post(retried, session: object = None) -> object:
    import asyncio

    try:
        return asyncio.run(retried(session, "http://runpod/job-done/w/j?gpu=x", "{}"))
    except Exception as exc:  # noqa: BLE001 - what the SDK's result poster catches
        return exc


def test_a_result_is_posted_again_after_a_5xx_a_reset_or_a_rate_limit_until_taken(caplog) -> None:
    import aiohttp

    from runtime.job_api import RetriedResults

    class Session:
        headers = {"X-Request-ID": "job-9"}

    clock = Clock()
    flaky = flaky_post(http_error(503), aiohttp.ServerDisconnectedError(), http_error(429, "12"),
                      TimeoutError(), http_error(502, "600"))
    retried = RetriedResults(flaky, sleep=clock.sleep, draw=lambda: 1.0, clock=lambda: clock.now)
    with caplog.at_level("INFO", logger="runtime.job_api"):
        assert post(retried, Session()) == "taken"
    assert flaky.calls == 6
    # 0.5, 1, 2, 4, 8 s; a Retry-After is waited where longer, at most 30 s.
    assert clock.pauses == [0.5, 1.0, 12.0, 4.0, 30.0]
    assert "job result not delivered (ServerDisconnectedError); posting it again in 1.0 s" in caplog.text
    assert "job result delivered after 5 failed tries" in caplog.text


def test_each_try_of_a_result_names_its_own_job_though_another_was_posted_meanwhile() -> None:
    """The SDK names the job in its shared session's headers as it posts a result; the next
    job's result, posted while this one waits to be tried again (OverlappedTakes), renames it."""
    from runtime.job_api import RetriedResults

    class Session:
        headers = {"X-Request-ID": "job-9"}

    named: list[str] = []
    flaky = flaky_post(http_error(503), http_error(503))

    async def transmit(session: Session, url: str, data: str) -> object:
        named.append(session.headers["X-Request-ID"])
        return await flaky(session, url, data)

    async def meanwhile(seconds: float) -> None:
        Session.headers["X-Request-ID"] = "job-10"  # the next job's result, posted meanwhile

    assert post(RetriedResults(transmit, sleep=meanwhile, draw=lambda: 1.0), Session()) == "taken"
    assert named == ["job-9"] * 3


@pytest.mark.parametrize("status", [400, 401, 404, 413])
def test_a_result_runpod_refuses_is_not_posted_again(status: int) -> None:
    from runtime.job_api import RetriedResults

    clock = Clock()
    flaky = flaky_post(http_error(status))
    error = post(RetriedResults(flaky, sleep=clock.sleep, clock=lambda: clock.now))
    assert getattr(error, "status", None) == status
    assert flaky.calls == 1 and clock.pauses == []


def test_a_result_is_given_up_once_the_next_pause_would_pass_the_patience(caplog) -> None:
    from runtime.job_api import RetriedResults

    clock = Clock()
    flaky = flaky_post(*[http_error(503)] * 40)
    retried = RetriedResults(flaky, sleep=clock.sleep, draw=lambda: 1.0, clock=lambda: clock.now)
    error = post(retried)
    assert getattr(error, "status", None) == 503
    assert sum(clock.pauses) <= RetriedResults.PATIENCE_S < sum(clock.pauses) + 8.0
    assert flaky.calls == len(clock.pauses) + 1
    assert "giving up: Runpod will not have this job's result" in caplog.text


def test_installed_the_sdks_result_poster_posts_through_it(monkeypatch) -> None:
    from runpod.serverless.modules import rp_http

    from runtime.job_api import RetriedResults

    sdk_transmit = rp_http._transmit
    monkeypatch.setattr(rp_http, "_transmit", sdk_transmit)  # put back after the test
    RetriedResults.install()
    assert isinstance(rp_http._transmit, RetriedResults) and rp_http._transmit._transmit is sdk_transmit


# ---- PromptJobLoop: the SDK's job loop acts when a job is taken or ends ---------------------------
def test_a_pause_ends_when_a_job_enters_or_leaves_the_count_else_at_its_delay() -> None:
    import asyncio
    import time

    from runtime.job_api import PromptJobLoop

    loop = PromptJobLoop()

    async def scenario() -> tuple[float, float, float, str]:
        started = time.monotonic()
        assert await loop.sleep(0.05, result="kept") == "kept"
        undisturbed = time.monotonic() - started
        waiting = asyncio.ensure_future(loop.sleep(30))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        loop.changed()  # a job taken, or one whose result is posted
        await waiting
        woken = time.monotonic() - started
        # From another thread too (call_soon_threadsafe), and a cancelled pause leaves nothing.
        waiting = asyncio.ensure_future(loop.sleep(30))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, loop.changed)
        await waiting
        from_thread = time.monotonic() - started
        cancelled = asyncio.ensure_future(loop.sleep(30))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        return undisturbed, woken, from_thread, "none left" if not loop._waiters else "left"

    undisturbed, woken, from_thread, left = asyncio.run(scenario())
    assert 0.05 <= undisturbed < 5 and woken < 5 and from_thread < 5 and left == "none left"


def test_installed_a_job_taken_or_ended_wakes_the_sdks_job_loop(monkeypatch) -> None:
    """Installed as the worker does, the SDK's job-take task, paused while a job is in progress
    (its once-a-second check), takes up again as that job leaves the count of jobs in progress."""
    import asyncio

    from runpod.serverless.modules import rp_scale, worker_state

    from runtime.job_api import PromptJobLoop

    progress = worker_state.JobsProgress
    # put back after the test
    monkeypatch.setattr(rp_scale, "asyncio", rp_scale.asyncio)
    monkeypatch.setattr(progress, "add", progress.add)
    monkeypatch.setattr(progress, "remove", progress.remove)
    loop = PromptJobLoop.install()
    assert loop is not None and rp_scale.asyncio.sleep == loop.sleep
    assert rp_scale.asyncio.Queue is asyncio.Queue  # the rest of asyncio as it is

    async def scenario() -> list[str]:
        seen: list[str] = []
        jobs = worker_state.JobsProgress()
        jobs.add({"id": "in-progress"})

        async def sdk_pause(name: str) -> None:
            await rp_scale.asyncio.sleep(1000)  # as the SDK's job-take task waits for a free slot
            seen.append(name)

        paused = asyncio.ensure_future(sdk_pause("job-take"))
        await asyncio.sleep(0.05)
        assert not seen
        jobs.remove({"id": "in-progress"})  # its result is posted: the SDK lets go of it
        await asyncio.wait_for(paused, 5)
        paused = asyncio.ensure_future(sdk_pause("job-run"))
        await asyncio.sleep(0.05)
        jobs.add({"id": "taken"})  # a job taken: the job-run task's 0.1 s pause ends too
        await asyncio.wait_for(paused, 5)
        jobs.remove({"id": "taken"})
        return seen

    assert asyncio.run(scenario()) == ["job-take", "job-run"]


# ---- JobsInHand: a job being handed over when a stop signal lands -------------------------------
def test_a_job_take_answered_holds_its_job_in_hand_from_its_headers_until_the_sdk_counts_it(
        monkeypatch) -> None:
    """The SDK's own job-take (get_job, real aiohttp) against the stand-in of Runpod's job API,
    which sends the answer's headers and holds its body: from the headers on, the job counts as
    in hand, though the SDK's count of jobs in progress has it only once it adds it. A 204 (no
    job) leaves nothing in hand; once closed (a stop signal), no job-take is made at all."""
    import asyncio

    import aiohttp
    from runpod.serverless.modules import rp_job, rp_scale, worker_state

    from runtime.job_api import JobsInHand
    from tests.support.runpod_api import RunpodApi

    progress = worker_state.JobsProgress
    monkeypatch.setattr(rp_scale, "get_job", rp_job.get_job)  # put back after the test
    monkeypatch.setattr(progress, "add", progress.add)
    in_hand = JobsInHand()
    assert not in_hand.close()  # not installed: the SDK's own shutdown must stop its takes
    in_hand.install()
    take, sdk_count = rp_scale.get_job, progress().get_job_count

    async def scenario(api: RunpodApi) -> None:
        async with aiohttp.ClientSession(headers={"Authorization": api.api_key}) as session:
            assert await take(session, 1) is None and in_hand.count() == 0  # a 204 after the hold

            api.hold_body("handed")
            api.queue({"prompt": "a cat"}, job_id="handed")
            taking = asyncio.ensure_future(take(session, 1))
            for _ in range(200):  # the headers reach the session: nothing to await but the mark
                if in_hand.count():
                    break
                await asyncio.sleep(0.01)
            assert not taking.done() and in_hand.count() == 1 and sdk_count() == 0
            api.release_body()
            jobs = await asyncio.wait_for(taking, 10)
            assert [job["id"] for job in jobs] == ["handed"]
            assert in_hand.count() == 1  # parsed, not yet counted by the SDK: still in hand
            progress().add(jobs[0])  # what the SDK's job loop does next
            assert in_hand.count() == 1 and sdk_count() == 1  # counted once, by the SDK alone
            progress().remove(jobs[0])
            assert in_hand.count() == 0

            assert in_hand.close()
            takes = len(api.of_kind("take"))
            api.queue({"prompt": "too late"}, job_id="late")
            with pytest.raises(asyncio.TimeoutError):  # left unanswered, as the SDK's timeout ends it
                await asyncio.wait_for(take(session, 1), 0.5)
            assert len(api.of_kind("take")) == takes and api.queued() == ["late"]

    with RunpodApi(take_hold=0.2) as api:
        monkeypatch.setattr(rp_job, "JOB_GET_URL", api.worker_env()["RUNPOD_WEBHOOK_GET_JOB"])
        asyncio.run(scenario(api))


# ---- OverlappedTakes: the next job taken while the last one's result posts ---------------------
def test_a_job_take_waits_for_the_handler_not_for_the_last_result_and_for_good_after_a_replace(
        monkeypatch) -> None:
    """Installed as the worker does: a job-take waits while a job in the SDK's count is in the
    handler, and goes on as soon as it has left it, though its result (still being posted) keeps
    it in the count; a stopped job leaves the handler too. One job is asked for, whatever the
    SDK asks. After a result asking Runpod to replace the worker, no job-take goes on."""
    import asyncio

    from runpod.serverless.modules import rp_scale, worker_state

    from runtime.job_api import OverlappedTakes

    progress = worker_state.JobsProgress
    asked: list[int] = []

    async def fetch(session: object, num_jobs: int = 1) -> list[dict[str, object]]:
        asked.append(num_jobs)
        return [{"id": f"job-{len(asked)}", "input": {}}]

    monkeypatch.setattr(rp_scale, "get_job", fetch)  # the SDK's, put back after the test
    monkeypatch.setattr(progress, "remove", progress.remove)
    overlapped = OverlappedTakes()
    assert overlapped.concurrency(1) == 1  # not installed: the SDK's own
    overlapped.install(None)
    assert overlapped.concurrency(1) == 2
    take = rp_scale.get_job

    async def scenario() -> None:
        jobs = progress()
        release = asyncio.Event()
        answer: dict[str, object] = {"model_id": "m"}

        async def generate(job: dict[str, object]) -> dict[str, object]:
            await release.wait()
            return dict(answer)

        handler = overlapped.handler(generate)

        async def run(job: dict[str, object]) -> "asyncio.Future[object]":
            jobs.add(job)  # the SDK's job loop counts it, then runs it
            return asyncio.ensure_future(handler(job))

        async def still_waiting(taking: "asyncio.Future[object]") -> bool:
            await asyncio.sleep(0.05)
            return not taking.done()

        [first] = await asyncio.wait_for(take(None, 2), 5)  # idle: at once, one job of the two
        running = await run(first)
        taking = asyncio.ensure_future(take(None, 1))
        assert await still_waiting(taking)  # the first is generating
        release.set()
        await running  # out of the handler; its result not posted yet: still in the count
        assert jobs.get_job_count() == 1
        [second] = await asyncio.wait_for(taking, 5)
        release.clear()
        running = await run(second)
        taking = asyncio.ensure_future(take(None, 1))
        assert await still_waiting(taking)
        running.cancel()  # Runpod stops it: out of the handler too
        await asyncio.gather(running, return_exceptions=True)
        [third] = await asyncio.wait_for(taking, 5)
        for job in (first, second):
            jobs.remove(job)  # their results posted

        answer["refresh_worker"] = True  # an unrecoverable GPU error: Runpod replaces us
        release.set()
        await (await run(third))
        jobs.remove(third)
        assert jobs.get_job_count() == 0
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(take(None, 1), 0.3)
        assert asked == [1, 1, 1]

    asyncio.run(scenario())
