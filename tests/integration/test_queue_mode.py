"""The worker as Runpod runs it: ``python -m runtime`` with no flags, as PID 1 of its container,
taking jobs from Runpod's job queue.

The queue is a real HTTP server on 127.0.0.1 standing in for Runpod's job API
(tests.support.runpod_api), reached by the real runpod SDK through the variables Runpod sets
(RUNPOD_WEBHOOK_GET_JOB, ..., RUNPOD_AI_API_KEY). Its polls are held open as long-polls, so a
worker that waits for them, or takes a job from one, is seen doing it. The ready webhook goes to
tests.support.receiver. The model is the built-in tiny FLUX, on the CPU.

What the SDK does with our answers, checked here and not ours to change: it posts a result as
``{"output": <the handler's dict>}``, and an error as ``{"output": {"model_id": ...}, "error": ...}``
(it takes ``error`` out of the dict; Runpod then shows the job FAILED with that message).

"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping

import pytest

from tests.support.pid1 import as_pid_1, inner_pid
from tests.support.receiver import WebhookReceiver
from tests.support.runpod_api import RunpodApi
from warmup.local_worker import ROOT, worker_env

MODEL = "visgate/tiny-flux"
API_KEY = "rpa_QUEUEtestKey7f3c91d0e2b4a6"
HF_TOKEN = "hf_queueTokenDoNotLeak4821"
CONTRACT_KEYS = {"image_base64", "model_id", "seed", "height", "width"}  # README: the job contract
HOLD = 30.0  # seconds a poll is held open with nothing to hand out: longer than any wait below
OUTAGE = 6.0  # seconds the job API fails every job-take, in the outage test

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(warm_cache_dir: Path, built_tiny_repo) -> Path:
    """The session's warm volume, tiny-flux already built on it (boots here skip the build)."""
    built_tiny_repo(MODEL)
    return warm_cache_dir


class QueueWorker:
    """The real entry point with no flags, as PID 1 where user namespaces allow it."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = worker_env(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid_1 = False
        self.exited_at: float | None = None

    def __enter__(self) -> "QueueWorker":
        argv, self.pid_1 = as_pid_1([sys.executable, "-m", "runtime"])
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def signal(self, signum: int) -> float:
        os.kill(inner_pid(self.proc, self.pid_1), signum)
        return time.time()

    def wait(self, timeout: float) -> int | None:
        """The exit status (of the worker: unshare passes it on), or None if still running."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.exited_at = time.time()
        return code

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


def queue_env(cache_dir: Path, api: RunpodApi, **extra: str) -> dict[str, str]:
    return {"HF_MODEL_ID": MODEL, "VISGATE_CACHE_DIR": str(cache_dir), "HF_TOKEN": HF_TOKEN,
            # The SDK's start-up checks include a TCP connection to 8.8.8.8:53: these tests must
            # not depend on the internet. (Its memory and disk checks: test_lifecycle.py.)
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            **api.worker_env(), **extra}


def assert_success(png_tools, call, job_id: str, seed: int, height: int, width: int) -> None:
    """A result as Runpod receives it: the exact contract, a PNG of the size asked for."""
    assert call.method == "POST" and call.authorized
    assert call.header("X-Request-ID") == job_id
    assert call.query["gpu"] == "NVIDIA H200" and call.query["isStream"] == "false"
    body = call.json()
    assert list(body) == ["output"], body.keys()  # no "error", no "stopPod"
    output = body["output"]
    assert set(output) == CONTRACT_KEYS
    assert (output["model_id"], output["seed"], output["height"], output["width"]) == (
        MODEL, seed, height, width)
    png = base64.b64decode(output["image_base64"], validate=True)
    assert png_tools.header_size(png) == (width, height)
    assert png_tools.decode(png).shape == (height, width, 3)


def with_nvidia_smi(tmp_path: Path, script: str) -> str:
    """A PATH whose ``nvidia-smi`` is this shell script: how the SDK asks whether the host has a
    GPU (and which), made to answer as a test needs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\n{script}")
    fake.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def in_progress(api: RunpodApi, job_id: str) -> bool:
    """Whether the worker has the job in progress as Runpod sees it: a heartbeat names it.
    ("Taken" alone, the stand-in having sent it, is not that: a SIGTERM or a stop can beat the
    answer to the worker.)"""
    return any(p.query.get("job_id") == job_id for p in api.of_kind("ping"))


def idle_since(api: RunpodApi, result) -> bool:
    """Whether a heartbeat after ``result`` was answered names no job: the worker has seen its
    answer, and has no job in progress."""
    answered = result.answered_at
    return answered is not None and any(p.at > answered and "job_id" not in p.query
                                        for p in api.of_kind("ping"))


def assert_no_secrets(text: str) -> None:
    assert API_KEY not in text and HF_TOKEN not in text


def test_serves_the_contract_after_ready_and_an_idle_sigterm_exits_143_at_once(cache_dir, tmp_path,
                                                                              png_tools):
    """One boot: ready before any request to the queue; a valid job, two invalid ones (the
    worker keeps taking jobs), a valid one again; heartbeats; then SIGTERM while idle.

    Idle, the SDK sits in a job-take long-poll. Left to itself it exited (status 0) only once
    that poll came back (and its job-stop poll: up to 90 s each), and a job handed to the poll
    meanwhile was taken and dropped: never run, no result. Now the worker ends at once, 143."""
    with RunpodApi(api_key=API_KEY, take_hold=HOLD, stop_hold=HOLD) as api, WebhookReceiver() as hook:
        # Queued before the boot: the worker's very first job-take would get one.
        api.queue({"prompt": "a red apple", "height": 320, "width": 256, "seed": 7,
                   "num_inference_steps": 1}, job_id="ok-1")
        api.queue({"prompt": "a red apple", "width": 1000}, job_id="bad-width")
        api.queue(None, job_id="no-input")
        api.queue({"prompt": "a green pear", "height": 256, "width": 256, "seed": 4294967295,
                   "num_inference_steps": 1}, job_id="ok-2")
        env = queue_env(cache_dir, api, VISGATE_WEBHOOK=hook.url)
        with QueueWorker(env, tmp_path / "worker.log") as worker:
            last = api.wait_for_result("ok-2", timeout=240)
            # Idle now: its next job-take is held open, with nothing to hand out, and the last
            # result posted (the take is made while it posts).
            assert api.wait_until(lambda: any(c.status is None for c in api.of_kind("take")), 10)
            assert api.wait_until(lambda: idle_since(api, last), 10), api.summary()
            sigterm_at = worker.signal(signal.SIGTERM)
            code = worker.wait(timeout=10)
            # Queued after the SIGTERM: a worker still polling would take it (and drop it).
            api.queue({"prompt": "too late"}, job_id="late")
            taken_late = api.wait_until(lambda: "late" in api.taken(), 2)
            exited = worker.wait(timeout=HOLD + 30) if code is None else code
            # Heartbeats stop with the worker (an orphaned one would tell Runpod it is alive).
            exited_at = worker.exited_at
            late_pings = api.wait_until(
                lambda: [p for p in api.of_kind("ping") if p.at > exited_at + 0.2], 2.5)
            log = worker.log()
        [ready] = hook.received

    assert code == 143, f"exit {code} (then {exited}) within 10 s of SIGTERM\n{log[-3000:]}"
    assert exited_at - sigterm_at < 5
    assert not taken_late and api.queued() == ["late"]
    assert not late_pings
    assert "stopped by SIGTERM: no job in progress; exiting" in log
    # A job's lines name it, as Runpod shows it (set on the pipeline thread, where the job runs).
    assert "INFO runtime.handler [job ok-1]: job done: 320x256, 1 steps" in log

    # "ready" before the worker asked the queue for anything (a job included).
    assert ready.json()["status"] == "ready"
    assert (ready.json()["worker_id"], ready.json()["endpoint_id"]) == (api.worker_id, api.endpoint_id)
    assert api.calls and min(c.at for c in api.calls) > ready.at
    first_take = api.of_kind("take")[0]
    assert first_take.jobs == ["ok-1"]
    assert first_take.path.startswith(f"/v2/{api.endpoint_id}/job-take/{api.worker_id}?")
    assert first_take.query["job_in_progress"] == "0"

    # Each job once, in order, one result each.
    assert api.taken() == ["ok-1", "bad-width", "no-input", "ok-2"]
    assert [c.job_id for c in api.results()] == api.taken()
    assert_success(png_tools, api.results("ok-1")[0], "ok-1", seed=7, height=320, width=256)
    assert_success(png_tools, last, "ok-2", seed=4294967295, height=256, width=256)
    for job_id, said in (("bad-width", "'width' must be a multiple of 16 for this model, got 1000"),
                         ("no-input", "input")):
        [call] = api.results(job_id)
        body = call.json()
        assert set(body) == {"output", "error"} and body["output"] == {"model_id": MODEL}
        assert isinstance(body["error"], str) and said in body["error"]
    assert api.results("bad-width")[0].json()["error"] == (
        "'width' must be a multiple of 16 for this model, got 1000")

    # Every request carried the API key as Runpod expects it; heartbeats came.
    assert all(c.authorized for c in api.calls), [c.path for c in api.calls if not c.authorized]
    pings = api.of_kind("ping")
    assert pings and {p.query["runpod_version"] for p in pings} and all(
        p.path.startswith(f"/v2/{api.endpoint_id}/ping/{api.worker_id}?") for p in pings)
    assert_no_secrets(log)
    assert "Traceback" not in log


def test_sigterm_during_a_job_posts_its_result_takes_no_other_and_exits_143(cache_dir, tmp_path,
                                                                            png_tools):
    """Runpod scales a worker down while it generates. The job in progress must finish and its
    result reach Runpod; no other job may be taken; then the worker must exit without waiting
    for the SDK's long-polls (which it did, status 0, up to 90 s after the result)."""
    with RunpodApi(api_key=API_KEY, take_hold=HOLD, stop_hold=HOLD) as api:
        api.queue({"prompt": "a slow one", "height": 1024, "width": 1024, "seed": 3,
                   "num_inference_steps": 8}, job_id="slow")
        api.queue({"prompt": "next", "height": 256, "width": 256}, job_id="next")
        with QueueWorker(queue_env(cache_dir, api), tmp_path / "worker.log") as worker:
            assert api.wait_until(lambda: in_progress(api, "slow"), 240), api.summary()
            worker.signal(signal.SIGTERM)
            code = worker.wait(timeout=HOLD - 5)  # no waiting out a held poll
            log = worker.log()
            exited_at = worker.exited_at

    assert code == 143, f"exit {code}\n{log[-3000:]}"
    [result] = api.results("slow")
    assert_success(png_tools, result, "slow", seed=3, height=1024, width=1024)
    assert exited_at - result.at < 5  # once the result was posted
    assert api.taken() == ["slow"] and api.queued() == ["next"]
    assert "exiting once the job in progress has posted its result" in log
    assert "stopped by SIGTERM: the job in progress posted its result; exiting" in log
    assert_no_secrets(log)
    assert "Traceback" not in log


def test_sigterm_while_a_job_is_being_handed_over_runs_that_job_and_posts_its_result(
        cache_dir, tmp_path, png_tools):
    """A SIGTERM lands while a job-take's response is being read: Runpod has handed the job
    over, the SDK does not count it in progress yet. Ended as idle there, the worker lost the
    job: taken, never run (CI, once, in the test above). The stand-in sends the take's status
    and headers, holds its body until after the signal: the worker must wait for it, run the
    job, post its result, then exit."""
    with RunpodApi(api_key=API_KEY, take_hold=HOLD, stop_hold=HOLD) as api:
        api.hold_body("handed")
        with QueueWorker(queue_env(cache_dir, api), tmp_path / "worker.log") as worker:
            assert api.wait_until(lambda: api.of_kind("take"), 240), api.summary()
            api.queue({"prompt": "in hand", "height": 256, "width": 256, "seed": 5},
                      job_id="handed")
            assert api.wait_until(lambda: "handed" in api.taken(), 30), api.summary()
            time.sleep(1.0)  # the headers reach the worker, idle but for this take
            worker.signal(signal.SIGTERM)
            assert api.wait_until(lambda: "stopped by SIGTERM" in worker.log(), 10), worker.log()
            still = worker.wait(timeout=1.0)  # the old worker ended here, the job unread
            api.release_body()
            code = worker.wait(timeout=HOLD - 5) if still is None else still
            log = worker.log()
            exited_at = worker.exited_at

    assert still is None, f"exit {still} with the job half-read\n{log[-3000:]}"
    assert code == 143, f"exit {code}\n{log[-3000:]}"
    [result] = api.results("handed")
    assert_success(png_tools, result, "handed", seed=5, height=256, width=256)
    assert exited_at - result.at < 5
    assert "stopped by SIGTERM: taking no more jobs; exiting once the job in progress" in log
    assert "stopped by SIGTERM: the job in progress posted its result; exiting" in log
    assert "Traceback" not in log


def test_waiting_jobs_are_taken_as_the_last_generation_ends_while_its_result_posts(
        cache_dir, tmp_path, png_tools):
    """A busy endpoint: jobs wait in Runpod's queue, and Runpod's API takes a second to answer
    each result (the stand-in's ``result_latency``; over the internet, megabytes of base64).
    The SDK took the next job only once the last result was answered, and then at its next
    once-a-second check: the pipeline idled through both. Now the next job is handed over as
    soon as the last one's generation ends, while its result is still posting; one generation
    at a time, at most one result posting beside it. A SIGTERM landing with a result posting
    and a job generating lets both post their results, then ends the worker.

    Behaviours, not speed targets: the margins are generations of 1024x1024 images on the CPU."""
    count = 5
    with RunpodApi(api_key=API_KEY, take_hold=HOLD, stop_hold=HOLD, result_latency=1.0) as api:
        for i in range(count - 1):
            api.queue({"prompt": f"job {i}", "height": 1024, "width": 1024, "seed": i,
                       "num_inference_steps": 1}, job_id=f"job-{i}")
        api.queue({"prompt": "last", "height": 1024, "width": 1024, "seed": 9,
                   "num_inference_steps": 4}, job_id="last")
        with QueueWorker(queue_env(cache_dir, api), tmp_path / "worker.log") as worker:
            assert api.wait_until(lambda: "last" in api.taken(), 240), api.summary()
            worker.signal(signal.SIGTERM)  # job-3's result posting, the last one handed over
            code = worker.wait(timeout=HOLD - 5)
            log = worker.log()
            exited_at = worker.exited_at

    ids = [f"job-{i}" for i in range(count - 1)] + ["last"]
    assert code == 143, f"exit {code}\n{log[-3000:]}"
    assert api.taken() == ids
    results = api.delivered()
    assert [c.job_id for c in results] == ids and len(api.results()) == count
    assert_success(png_tools, results[-1], "last", seed=9, height=1024, width=1024)
    assert exited_at - results[-1].answered_at < 5
    takes = [call for call in api.of_kind("take") if call.jobs]
    for k in range(count - 1):
        # The next job asked for before Runpod answered this one's result...
        assert takes[k + 1].at < results[k].answered_at, api.summary()
        # ...yet only once this one had generated: a 1024x1024 image, not milliseconds.
        assert takes[k + 1].at - takes[k].answered_at > 0.1, api.summary()
    # And at once: as this one's generation ended, or the result before it was answered (at
    # most one result posts beside a generation), not at the SDK's next tick, a second later.
    lags = sorted(takes[k + 1].at - max(results[k].at, results[k - 1].answered_at if k else 0.0)
                  for k in range(count - 1))
    assert lags[len(lags) // 2] < 0.25, lags
    assert "stopped by SIGTERM: the job in progress posted its result; exiting" in log
    assert_no_secrets(log)
    assert "Traceback" not in log


def test_a_job_runpod_stops_ends_at_its_next_step_posts_nothing_and_the_next_job_runs(
        cache_dir, tmp_path, png_tools):
    """Runpod's per-job stop (a cancel, an execution timeout) reaches the worker through the
    SDK's job-stop long-poll, which runs on the SDK's event loop. The handler used to generate
    on that loop: the stop was read only once the job was over, so a stopped job ran all its
    steps, its result was posted all the same, and the next job waited for it. Now the loop is
    free while the pipeline runs, and the stop ends the generation at its next step."""
    steps = 100  # the most a job may ask: tens of seconds at 1024x1024 on the CPU
    with RunpodApi(api_key=API_KEY, take_hold=HOLD, stop_hold=HOLD) as api:
        api.queue({"prompt": "a long one", "height": 1024, "width": 1024, "seed": 3,
                   "num_inference_steps": steps}, job_id="long")
        with QueueWorker(queue_env(cache_dir, api), tmp_path / "worker.log") as worker:
            assert api.wait_until(lambda: in_progress(api, "long"), 240), api.summary()
            api.stop_job("long")
            api.queue({"prompt": "next", "height": 256, "width": 256, "seed": 5,
                       "num_inference_steps": 1}, job_id="next")
            after = api.wait_for_result("next", timeout=120)
            long_results = api.results("long")
            worker.signal(signal.SIGTERM)
            code = worker.wait(timeout=20)
            log = worker.log()

    assert code == 143, f"exit {code}\n{log[-3000:]}"
    assert not long_results, [c.json() for c in long_results]  # stopped: Runpod takes no result
    assert_success(png_tools, after, "next", seed=5, height=256, width=256)
    assert api.taken() == ["long", "next"]
    [line] = [ln for ln in log.splitlines() if "[job long]" in ln and "stopped" in ln and "steps" in ln]
    done, total = (int(n) for n in re.search(r"after (\d+) of (\d+) steps", line).groups())
    assert total == steps and done < steps, line
    assert "INFO runtime.handler [job next]: job done: 256x256, 1 steps" in log
    assert_no_secrets(log)
    assert "Traceback" not in log


def test_sigterm_while_the_sdk_checks_the_machine_exits_143_without_taking_a_job(cache_dir, tmp_path):
    """The SDK's start-up checks take seconds on a GPU host (nvidia-smi, a memory test on each
    GPU, CUDA init, a benchmark, the network). Run by the SDK after "ready", before it installed
    its signal handlers, a SIGTERM to PID 1 then was dropped: the worker went on to take jobs
    until Runpod's SIGKILL. They run before "ready" now, in the boot's serve stage, where a stop
    signal ends the boot. Here the slow check is the first, ``nvidia-smi`` (asked whether the
    host has a GPU): one that answers only after 5 s (the SDK's timeout)."""
    started = tmp_path / "nvidia-smi.started"
    path = with_nvidia_smi(tmp_path, f": > '{started}'\nexec sleep 30\n")
    with RunpodApi(api_key=API_KEY, take_hold=HOLD, stop_hold=HOLD) as api, WebhookReceiver() as hook:
        api.queue({"prompt": "a red apple", "height": 256, "width": 256}, job_id="queued")
        env = queue_env(cache_dir, api, VISGATE_WEBHOOK=hook.url, PATH=path)
        with QueueWorker(env, tmp_path / "worker.log") as worker:
            deadline = time.monotonic() + 240
            while not started.exists() and worker.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)  # a file the check makes: nothing to wait on but its existence
            assert started.exists(), worker.log()[-3000:]
            sigterm_at = worker.signal(signal.SIGTERM)
            code = worker.wait(timeout=15)
            log = worker.log()
            exited_at = worker.exited_at
        events = [r.json() for r in hook.received]

    assert code == 143, f"exit {code}\n{log[-3000:]}"
    assert exited_at - sigterm_at < 3  # not after the check's 5 s
    assert [(e["status"], e["stage"]) for e in events] == [("failed", "serve")], events
    assert "stopped by SIGTERM before the worker was ready" in events[0]["error"]
    assert api.calls == [] and api.queued() == ["queued"]  # the queue was never asked
    assert "Traceback" not in log


def test_a_gpu_the_sdks_health_check_would_fail_fails_the_boot_before_ready(cache_dir, tmp_path):
    """On a GPU host the SDK also tests each GPU before its first job (its gpu_test binary, else
    ``nvidia-smi --list-gpus``) and ends the process on a failure, os._exit(1): run by the SDK,
    after the ready webhook, a worker announced ready then never took a job. Here a host whose
    ``nvidia-smi`` answers but lists no GPU (and no GPU for the binary to test)."""
    path = with_nvidia_smi(tmp_path, '[ "$1" = "--list-gpus" ] && exit 0\n'
                                     'echo "NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  '
                                     'CUDA Version: 12.4"\n')
    with RunpodApi(api_key=API_KEY, take_hold=HOLD, stop_hold=HOLD) as api, WebhookReceiver() as hook:
        api.queue({"prompt": "a red apple", "height": 256, "width": 256}, job_id="queued")
        env = queue_env(cache_dir, api, VISGATE_WEBHOOK=hook.url, PATH=path)
        with QueueWorker(env, tmp_path / "worker.log") as worker:
            code = worker.wait(timeout=240)
            log = worker.log()
        time.sleep(0.5)  # a late event would come now
        events = [r.json() for r in hook.received]

    assert code == 1, f"exit {code}\n{log[-3000:]}"
    assert [(e["status"], e["stage"]) for e in events] == [("failed", "serve")], events
    assert events[0]["error"].startswith("Runpod's job SDK would stop this worker before its first "
                                         "job: GPU health check failed")
    assert "No GPUs detected by nvidia-smi" in events[0]["error"]
    assert "RUNPOD_SKIP_GPU_CHECK=true" in events[0]["error"]
    assert api.calls == [] and api.queued() == ["queued"]
    assert "Starting Serverless Worker" not in log and "Traceback" not in log
    assert_no_secrets(log)


def test_an_outage_of_the_job_queue_is_retried_with_growing_pauses_and_its_end_is_seen_at_once(
        cache_dir, tmp_path, png_tools):
    """Runpod's job API answers every job-take with a 503 for a while (an incident; a network
    fault refusing connections is the same to the SDK). Left to the SDK, a failed job-take was
    retried with no pause at all: here thousands of requests, and as many ERROR lines, in a few
    seconds, from every worker of the endpoint at once. Now the pauses grow (with jitter, up
    to a few seconds), and a job queued once the API is back is taken within the longest pause."""
    with RunpodApi(api_key=API_KEY, take_hold=HOLD, stop_hold=HOLD) as api, WebhookReceiver() as hook:
        api.fail_takes(503)
        env = queue_env(cache_dir, api, VISGATE_WEBHOOK=hook.url)
        with QueueWorker(env, tmp_path / "worker.log") as worker:
            first = api.wait_until(lambda: api.of_kind("take"), 240)
            assert first, worker.log()[-3000:]
            time.sleep(OUTAGE)
            during = [c for c in api.of_kind("take") if c.at < first[0].at + OUTAGE]
            api.fail_takes(None)
            back_at = time.time()
            api.queue({"prompt": "after the outage", "height": 256, "width": 256, "seed": 11,
                       "num_inference_steps": 1}, job_id="after")
            result = api.wait_for_result("after", timeout=60)
            taken = next(c for c in api.of_kind("take") if c.jobs == ["after"])
            worker.signal(signal.SIGTERM)
            code = worker.wait(timeout=10)
            log = worker.log()

    assert code == 143, f"exit {code}\n{log[-3000:]}"
    assert {c.status for c in during} == {503}
    # 0.5 + 1 + 2 + 4 s of pauses (each 50-100% of that, for jitter) fill the outage: about 5
    # job-takes, where the SDK alone made thousands.
    assert 3 <= len(during) <= 10, len(during)
    assert log.count("Failed to get job") <= len(api.of_kind("take"))
    assert "job queue: job-take failed" in log and "next try in" in log
    assert taken.at - back_at < 9  # the longest pause is 8 s
    assert_success(png_tools, result, "after", seed=11, height=256, width=256)
    assert "job queue: a job-take succeeded again after" in log
    assert_no_secrets(log)
    assert "Traceback" not in log


@pytest.mark.parametrize("failure", [503, "drop"])
def test_a_result_runpod_fails_to_take_is_posted_again_until_it_is_taken(cache_dir, tmp_path,
                                                                         png_tools, failure):
    """The image is made, but posting it fails: Runpod's job API answers 503 for a while (an
    incident), or the connection is reset on the way. The SDK tried a 5xx three times over about
    5 s, and a reset not again at all; then it dropped the result: the job, done on the GPU,
    never completed for its client (Runpod shows it in progress until its execution timeout).
    Now a result is posted again, with growing pauses, until Runpod takes it."""
    with RunpodApi(api_key=API_KEY, take_hold=HOLD, stop_hold=HOLD) as api:
        api.fail_done(failure)
        api.queue({"prompt": "deliver me", "height": 256, "width": 256, "seed": 5,
                   "num_inference_steps": 1}, job_id="kept")
        with QueueWorker(queue_env(cache_dir, api), tmp_path / "worker.log") as worker:
            assert api.wait_until(lambda: api.results("kept"), 240), worker.log()[-3000:]
            time.sleep(OUTAGE)
            api.fail_done(None)
            delivered = api.wait_until(lambda: api.delivered("kept"), 20)
            worker.signal(signal.SIGTERM)
            code = worker.wait(timeout=10)
            log = worker.log()

    assert delivered, f"{api.summary()}\n{log[-3000:]}"
    attempts = api.results("kept")
    assert len(attempts) >= 3 and attempts[-1] is delivered[0] and len(delivered) == 1
    assert {c.status for c in attempts[:-1]} == {0 if failure == "drop" else 503}
    assert_success(png_tools, delivered[0], "kept", seed=5, height=256, width=256)
    assert "job result not delivered" in log and "[job kept]" in log
    assert code == 143, f"exit {code}\n{log[-3000:]}"
    assert_no_secrets(log)
    assert "Traceback" not in log
