"""Drive the real worker (``python -m runtime``) through the Runpod SDK's local API server.

Used by the demo, the integration tests and the cold-start benchmark: the worker runs as a
fresh process exactly as Runpod starts it, and jobs go through the SDK's ``/runsync`` endpoint.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parents[1]


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

    def start(self) -> "LocalWorker":
        self._log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
             "--rp_api_port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode} before serving; "
                                   f"log: {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    self.ready_seconds = time.perf_counter() - t0
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"worker did not serve within {self.boot_timeout}s; log: {self.log_path}")

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
