"""A stand-in for Runpod's job API on 127.0.0.1, for the worker in queue mode (``python -m runtime``,
no flags, as Runpod starts it).

It answers what the runpod SDK (1.12, ``runpod/serverless/modules``: rp_job, rp_http, rp_ping)
asks, at the URLs ``worker_env()`` gives it, in the shape Runpod's own variables have:

    GET  /v2/{endpoint}/job-take/{worker}?gpu=..&job_in_progress=0|1
         held open (long-poll) until a job is queued or ``take_hold`` seconds pass: 200 with
         {"id", "input"} (application/json), else 204, Runpod's "no job"
    GET  /v2/{endpoint}/job-take-batch/{worker}?..&batch_size=N      the same, a JSON list
    GET  /v2/{endpoint}/job-stop/{worker}?gpu=..
         held open until ``stop_job(id)`` or ``stop_hold`` seconds: 200 {"jobsToStop": [...]}, else 204
    POST /v2/{endpoint}/job-done/{worker}/{job}?gpu=..&isStream=false   the result: a JSON text
         ({"output": ...} and/or {"error": ...}), sent as application/x-www-form-urlencoded
    POST /v2/{endpoint}/job-stream/{worker}/{job}?..                  a streamed part, the same way
    GET  /v2/{endpoint}/ping/{worker}?gpu=..&job_id=..&runpod_version=..  the heartbeat

``hold_body(job_id)`` hands that job over slowly: the job-take's status and headers are sent
(and the job counts as taken), its body only once ``release_body()`` is called: a response that
a stop signal meets half-read.

``result_latency`` (seconds) delays every answer to a result, as the network between a worker
and Runpod would (the result is recorded when it is read, before the delay).

``fail_takes(status)`` and ``fail_done(status or "drop")`` stand for outages: every job-take, or
every result posted, is answered with that status at once (or its connection dropped).

Every request is recorded (time, kind, path, query, headers, body, what was answered) before it
is answered. Each must carry ``Authorization: <api key>`` (the raw key, as the SDK sends it);
one that does not gets 401 and is recorded with ``authorized=False``. A held poll whose client
hangs up (a worker that exits) is let go without handing it a job: the job stays queued, as a
job must not be given to a connection nobody reads.

    with RunpodApi() as api:
        api.queue({"prompt": "a cat"}, job_id="job-1")
        ... env = worker_env({..., **api.worker_env()}) ... boot the worker ...
        result = api.wait_for_result("job-1")
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

GPU = "NVIDIA+H200"  # Runpod's URLs carry the worker's GPU type in the query


@dataclass
class Call:
    at: float  # time.time() when the request was read (for a held poll: before the hold)
    kind: str  # take, take-batch, stop, done, stream, ping, unknown
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    authorized: bool
    job_id: str | None = None  # done / stream: the job the URL names
    status: int | None = None  # what was answered (None while held; 0: dropped, no answer)
    jobs: list[str] = field(default_factory=list)  # take: the ids handed out
    answered_at: float | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A worker that exits mid-request (SIGTERM, SIGKILL) is part of what the tests do.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class RunpodApi:
    def __init__(self, api_key: str = "rpa_STANDIN0123456789abcdef", worker_id: str = "wkr-7q2x9",
                 endpoint_id: str = "ep-visgate01", take_hold: float = 2.0,
                 stop_hold: float = 2.0, result_latency: float = 0.0) -> None:
        self.api_key = api_key
        self.worker_id = worker_id
        self.endpoint_id = endpoint_id
        self.take_hold = take_hold
        self.stop_hold = stop_hold
        # Seconds before a result is answered: the network between a worker and Runpod's API
        # (an upload of megabytes of base64 and its round trip), which 127.0.0.1 leaves out.
        self.result_latency = result_latency
        self.calls: list[Call] = []
        self._jobs: deque[dict[str, Any]] = deque()
        self._stops: list[str] = []
        self._counter = 0
        self._take_failure: int | None = None
        self._done_failure: int | str | None = None
        self._held_bodies: set[str] = set()
        self._bodies_released = threading.Event()
        # Re-entrant: a wait_until predicate reads the record (under the lock) while waiting on it.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread: threading.Thread | None = None

    # ---- set-up ----------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v2/{self.endpoint_id}"

    def worker_env(self, ping_interval_ms: int = 1000) -> dict[str, str]:
        """What Runpod sets in a serverless worker's container, pointed at this server: with
        RUNPOD_WEBHOOK_GET_JOB set, the SDK serves the queue. ``$ID`` and ``$RUNPOD_POD_ID`` stay
        placeholders, as in Runpod's own values: the SDK substitutes them. The ping interval
        (Runpod's default: 10 s) is short, so that a test sees heartbeats."""
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.base}/job-take/$ID?gpu={GPU}",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.base}/job-done/$RUNPOD_POD_ID/$ID?gpu={GPU}",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{self.base}/job-stream/$RUNPOD_POD_ID/$ID?gpu={GPU}",
            "RUNPOD_WEBHOOK_PING": f"{self.base}/ping/$RUNPOD_POD_ID?gpu={GPU}",
            "RUNPOD_PING_INTERVAL": str(ping_interval_ms),
            "RUNPOD_AI_API_KEY": self.api_key,
            "RUNPOD_POD_ID": self.worker_id,
            "RUNPOD_POD_HOSTNAME": f"{self.worker_id}-64410f2c",
            "RUNPOD_ENDPOINT_ID": self.endpoint_id,
            "RUNPOD_GPU_COUNT": "1",
        }

    def queue(self, job_input: Any, job_id: str | None = None) -> str:
        """Queue a job; the next job-take (a held one at once) hands it out. Returns its id."""
        with self._changed:
            self._counter += 1
            job_id = job_id or f"job-{self._counter}"
            self._jobs.append({"id": job_id, "input": job_input})
            self._changed.notify_all()
        return job_id

    def fail_takes(self, status: int | None) -> None:
        """An outage of the job queue: from now on every job-take is answered ``status`` at
        once (a 5xx, as during an incident), until ``fail_takes(None)``."""
        with self._changed:
            self._take_failure = status
            self._changed.notify_all()

    def fail_done(self, failure: int | str | None) -> None:
        """From now on every job-done (a result) fails, until ``fail_done(None)``: answered with
        that status, or with ``"drop"`` the connection is closed with no answer at all (a reset
        on the way). Recorded all the same: ``results()`` lists the attempts, ``delivered()`` the
        results that were answered 200."""
        with self._changed:
            self._done_failure = failure
            self._changed.notify_all()

    def hold_body(self, job_id: str) -> None:
        """The job-take that hands ``job_id`` out sends its headers at once, its body (the job)
        only at ``release_body()``."""
        with self._changed:
            self._held_bodies.add(job_id)

    def release_body(self) -> None:
        self._bodies_released.set()

    def stop_job(self, job_id: str) -> None:
        """Runpod's per-job stop (a cancel, a timeout): the next job-stop poll names it."""
        with self._changed:
            self._stops.append(job_id)
            self._changed.notify_all()

    # ---- what happened ---------------------------------------------------------------------
    def of_kind(self, kind: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.kind == kind]

    def taken(self) -> list[str]:
        """The ids handed out, in order."""
        return [job for call in self.of_kind("take") + self.of_kind("take-batch") for job in call.jobs]

    def queued(self) -> list[str]:
        with self._lock:
            return [job["id"] for job in self._jobs]

    def results(self, job_id: str | None = None) -> list[Call]:
        return [c for c in self.of_kind("done") if job_id is None or c.job_id == job_id]

    def delivered(self, job_id: str | None = None) -> list[Call]:
        return [c for c in self.results(job_id) if c.status == 200]

    def wait_until(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Until ``predicate()`` is truthy (checked at every request and answer), or the timeout:
        its last value."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate()
                left = deadline - time.monotonic()
                if value or left <= 0:
                    return value
                self._changed.wait(min(left, 0.5))

    def wait_for_result(self, job_id: str, timeout: float = 120.0) -> Call:
        results = self.wait_until(lambda: self.results(job_id), timeout)
        assert results, f"no result for {job_id} within {timeout}s; calls: {self.summary()}"
        return results[0]

    def summary(self) -> list[str]:
        with self._lock:
            return [f"{c.kind} {c.job_id or ','.join(c.jobs) or ''} -> {c.status}" for c in self.calls]

    # ---- server ----------------------------------------------------------------------------
    def start(self) -> "RunpodApi":
        self._thread = threading.Thread(target=self._server.serve_forever, name="runpod-api",
                                        daemon=True, kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._bodies_released.set()
        with self._changed:
            self._changed.notify_all()  # releases held polls
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "RunpodApi":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, call: Call) -> None:
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def _answered(self, call: Call, status: int, jobs: list[str] = ()) -> None:
        with self._changed:
            call.status, call.jobs, call.answered_at = status, list(jobs), time.time()
            self._changed.notify_all()

    def _hold(self, ready: Callable[[], bool], seconds: float, gone: Callable[[], bool]) -> bool:
        """Hold a long-poll until ``ready()`` (called under the lock), ``seconds`` pass, the
        client hangs up or the server stops. Returns with the lock held, ``ready()``'s answer."""
        deadline = time.monotonic() + seconds
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping.is_set():
                return False
            self._changed.wait(min(left, 0.05))
            if gone():
                return False
        return True

    def _take(self, count: int, gone: Callable[[], bool]) -> list[dict[str, Any]]:
        with self._changed:
            if not self._hold(lambda: bool(self._jobs), self.take_hold, gone) or gone():
                return []
            return [self._jobs.popleft() for _ in range(min(count, len(self._jobs)))]

    def _stop_signals(self, gone: Callable[[], bool]) -> list[str]:
        with self._changed:
            if not self._hold(lambda: bool(self._stops), self.stop_hold, gone):
                return []
            ids, self._stops[:] = list(self._stops), []
            return ids

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self
        prefix = f"/v2/{self.endpoint_id}/"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # aiohttp keeps connections alive: lengths always sent

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass

            def _gone(self) -> bool:
                """Whether the client hung up (EOF, or a reset) while its poll was held."""
                try:
                    readable, _, _ = select.select([self.connection], [], [], 0)
                    return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                parts = url.path[len(prefix):].split("/") if url.path.startswith(prefix) else []
                kind = {"job-take": "take", "job-take-batch": "take-batch", "job-stop": "stop",
                        "job-done": "done", "job-stream": "stream",
                        "ping": "ping"}.get(parts[0] if parts else "", "unknown")
                call = Call(at=time.time(), kind=kind, method=self.command, path=self.path,
                            query=dict(parse_qsl(url.query, keep_blank_values=True)),
                            headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                            authorized=self.headers.get("Authorization") == api.api_key,
                            job_id=parts[2] if kind in ("done", "stream") and len(parts) > 2 else None)
                api._record(call)
                if not call.authorized:
                    return self._reply(call, 401, b'{"error": "unauthorized"}')
                if kind in ("take", "take-batch") and api._take_failure is not None:
                    return self._reply(call, api._take_failure, b'{"error": "service unavailable"}')
                if kind in ("take", "take-batch"):
                    count = int(call.query.get("batch_size", "1")) if kind == "take-batch" else 1
                    jobs = api._take(count, self._gone)
                    if not jobs:
                        return self._reply(call, 204)
                    payload = jobs if kind == "take-batch" else jobs[0]
                    return self._reply(call, 200, json.dumps(payload).encode(), [j["id"] for j in jobs])
                if kind == "stop":
                    ids = api._stop_signals(self._gone)
                    if not ids:
                        return self._reply(call, 204)
                    return self._reply(call, 200, json.dumps({"jobsToStop": ids}).encode())
                if kind == "done" and api._done_failure == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # no answer: a reset on the way
                    return api._answered(call, 0)
                if kind == "done" and api._done_failure is not None:
                    return self._reply(call, api._done_failure, b'{"error": "service unavailable"}')
                if kind == "done" and api.result_latency:
                    time.sleep(api.result_latency)
                if kind in ("done", "stream", "ping"):
                    return self._reply(call, 200, b"{}")
                return self._reply(call, 404, b'{"error": "not found"}')

            def _reply(self, call: Call, status: int, body: bytes = b"", jobs: list[str] = ()) -> None:
                self.send_response(status)
                if body:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if api._held_bodies.intersection(jobs):
                    self.wfile.flush()  # the status and headers: the worker knows a job is coming
                    api._answered(call, status, jobs)
                    api._bodies_released.wait()
                self.wfile.write(body)
                self.wfile.flush()
                api._answered(call, status, jobs)

            do_GET = do_POST = _handle

        return Handler
