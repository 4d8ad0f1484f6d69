"""Drive the real worker (``python -m runtime``) through the Runpod SDK's local API server.

Used by the demo, the integration tests and the cold-start benchmark: the worker runs as a
fresh process exactly as Runpod starts it, and jobs go through the SDK's ``/runsync`` endpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def signals_held() -> Iterator[None]:
    """Stop signals (SIGTERM, SIGINT) that arrive inside the block are handled once it is over.

    For the ``Popen`` of a worker: a signal whose handler raises (bench_coldstart's SIGTERM ->
    SystemExit) while Popen waits for the child's exec left a forked worker that no ``proc``
    refers to, so nothing stopped it (seen once in CI; made certain in
    tests/integration/test_bench_coldstart.py by signalling from the child's preexec_fn)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    for signum in previous:
        signal.signal(signum, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in held:
            signal.raise_signal(signum)  # to the handler that was there before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISGATE_", "HF_", "RUNPOD_"))}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DEVICE": "cpu"})
    env.update(overrides)
    return env


class LocalWorker:
    """``with LocalWorker(env) as w: w.runsync({...})`` — boots, serves, stops."""

    def __init__(self, env: Mapping[str, str], log_path: Path | None = None,
                 boot_timeout: float = 600.0) -> None:
        self.env = worker_env(env)
        self.port = free_port()
        self.log_path = log_path or Path(os.devnull)
        self.boot_timeout = boot_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # What "serving" is, for start() and its errors: the local API server accepting connections.
    NOT_YET = ("before serving", "did not serve")

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "runtime", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
                "--rp_api_port", str(self.port)]

    def _serving(self) -> bool:
        """Whether the worker can take a job now; waits a little when not."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
            return False

    def start(self) -> "LocalWorker":
        self._log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        with signals_held():  # else a stop signal in Popen could leave a worker nothing stops
            self.proc = subprocess.Popen(self._argv(), cwd=ROOT, env=self.env, stdout=self._log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode} {self.NOT_YET[0]}; "
                                   f"log: {self.log_path}")
            if self._serving():
                self.ready_seconds = time.perf_counter() - t0
                return self
        self.stop()
        raise TimeoutError(f"worker {self.NOT_YET[1]} within {self.boot_timeout}s; log: {self.log_path}")

    def post(self, path: str, body: Any, timeout: float = 600.0) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def runsync(self, job_input: Any, timeout: float = 600.0) -> dict[str, Any]:
        return self.post("/runsync", {"input": job_input}, timeout=timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "LocalWorker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class QueuedWorker(LocalWorker):
    """The worker as Runpod starts it on an endpoint (``python -m runtime``, no flags), taking
    its jobs from a stand-in for Runpod's job API on 127.0.0.1 (tests.support.runpod_api). Its
    "ready" comes after the job SDK's start-up checks, as on Runpod: its GPU health check (the
    gpu_test binary) on a GPU host; its system checks (memory, disk, a TCP connection to
    8.8.8.8 and, on a GPU, CUDA's version, initialisation and a matrix multiply) only where
    ``env`` sets RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=false, since the network check needs the
    internet. Its jobs go through the SDK's job loop: take, run, post.

    LocalWorker's calls; ``ready_seconds`` runs to the worker's first job-take, where it can
    first be handed a job, and ``runsync`` answers as the SDK's /runsync would. ``result_latency``:
    seconds the stand-in takes to answer each result (the network to Runpod's API)."""

    def __init__(self, env: Mapping[str, str], log_path: Path | None = None,
                 boot_timeout: float = 600.0, result_latency: float = 0.0) -> None:
        from tests.support.runpod_api import RunpodApi

        self.api = RunpodApi(take_hold=5.0, stop_hold=5.0, result_latency=result_latency)
        super().__init__({"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", **env,
                          **self.api.worker_env(ping_interval_ms=10_000)}, log_path, boot_timeout)
        self._serving_api = False

    NOT_YET = ("before taking a job", "took no job")

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "runtime"]

    def _serving(self) -> bool:
        return bool(self.api.wait_until(lambda: self.api.of_kind("take"), 0.2))

    def start(self) -> "QueuedWorker":
        self.api.start()
        self._serving_api = True
        super().start()
        return self

    def runsync(self, job_input: Any, timeout: float = 600.0) -> dict[str, Any]:
        """One job through the queue, answered as the SDK's /runsync answers it."""
        job_id = self.api.queue(job_input)
        [result] = self._results([job_id], timeout)
        return _as_runsync(result.json())

    def backlog(self, inputs: list[Any], timeout: float = 600.0) -> tuple[list[float], list[dict[str, Any]]]:
        """``inputs`` queued at once, as on a busy endpoint: the seconds between one job's result
        and the next's (the first from its job-take), which include the worker's time between
        jobs; and each answer, as /runsync's."""
        ids = [self.api.queue(job_input) for job_input in inputs]
        results = self._results(ids, timeout)
        [taken] = [call for call in self.api.of_kind("take") if ids[0] in call.jobs]
        ends = [taken.answered_at] + [call.at for call in results]
        return [b - a for a, b in zip(ends, ends[1:])], [_as_runsync(call.json()) for call in results]

    def _results(self, ids: list[str], timeout: float) -> list[Any]:
        done = self.api.wait_until(lambda: all(self.api.results(i) for i in ids), timeout)
        if not done:
            raise TimeoutError(f"no result for every job within {timeout}s; calls: {self.api.summary()[-10:]}")
        return [self.api.results(i)[0] for i in ids]

    def stop(self) -> None:
        super().stop()  # SIGTERM: on the queue the worker exits at once when idle (143)
        if self._serving_api:
            self.api.stop()
            self._serving_api = False


def _as_runsync(body: dict[str, Any]) -> dict[str, Any]:
    """A result as Runpod's job API received it ({"output"} and/or {"error"}), as /runsync
    answers it: an error's output carries it back, as the handler returned it."""
    if "error" in body:
        return {"status": "FAILED", "output": {**(body.get("output") or {}), "error": body["error"]}}
    return {"status": "COMPLETED", "output": body.get("output")}
