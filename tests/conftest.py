"""Shared fixtures: built tiny models, real worker processes, and PNG helpers.

Fixtures are named by what they simulate: ``warm_cache_dir`` is a volume on which the built-in tiny
models were already built (workers booted on it skip the build, as on a warm volume);
``serving_tiny_flux`` / ``serving_tiny_sdxl`` are real ``python -m runtime --rp_serve_api``
processes shared by the whole session; ``run_worker_once`` boots the real entry point with
``--test_input`` and returns its exit code and log.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Mapping

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) must import the project too
    sys.path.insert(0, str(ROOT))

from warmup.local_worker import LocalWorker, worker_env  # noqa: E402

TINY_FLUX = "visgate/tiny-flux"
TINY_FLUX_DEV = "visgate/tiny-flux-dev"
TINY_SDXL = "visgate/tiny-sdxl"
TINY_SDXL_TURBO = "visgate/tiny-sdxl-turbo"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONTRACT_KEYS = {"image_base64", "model_id", "seed", "height", "width"}


# ---- logging -------------------------------------------------------------------------------------
@pytest.fixture
def restore_logging() -> Iterator[None]:
    """prefetch.main() (the bake step) installs the worker's log handler on the root logger, its
    redacting record factory and the process's secrets: put pytest's back."""
    from runtime.errors import register_secrets

    root = logging.getLogger()
    handlers, level, factory = list(root.handlers), root.level, logging.getLogRecordFactory()
    yield
    register_secrets(())
    logging.setLogRecordFactory(factory)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


# ---- PNG helpers ---------------------------------------------------------------------------------
def png_header_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature and chunk order."""
    assert png[:8] == PNG_SIGNATURE, f"not a PNG: starts with {png[:8]!r}"
    assert png[12:16] == b"IHDR", "the first PNG chunk must be IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def decode_png(png: bytes) -> Any:
    """Decode with Pillow (fully, so a truncated or corrupt file fails) into an HxWxC uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        image.load()
        return np.asarray(image)


def decode_b64_png(image_base64: str) -> Any:
    png = base64.b64decode(image_base64, validate=True)
    png_header_size(png)
    return decode_png(png)


@pytest.fixture(scope="session")
def png_tools() -> Any:
    """The PNG helpers, for tests in any tier: header size, decode, decode from base64."""

    return SimpleNamespace(header_size=png_header_size, decode=decode_png, decode_b64=decode_b64_png)


# ---- built-in tiny models ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def warm_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``VISGATE_CACHE_DIR`` shared by the session; tiny models are built into it on first use."""
    return tmp_path_factory.mktemp("visgate-cache")


@pytest.fixture(scope="session")
def built_tiny_repo(warm_cache_dir: Path) -> Callable[[str], Path]:
    """``built_tiny_repo("visgate/tiny-flux")`` -> its repository directory, built once per session
    exactly where a worker with ``VISGATE_CACHE_DIR=warm_cache_dir`` looks for it."""
    from pipelines.tiny import ensure_tiny

    def build(model_id: str) -> Path:
        return ensure_tiny(model_id, warm_cache_dir / "builtin")

    return build


# ---- real worker processes -----------------------------------------------------------------------
@dataclass
class WorkerRun:
    """One ``python -m runtime`` process that ran to its end."""

    returncode: int
    log: str


def _tail(text: str, chars: int = 3000) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


@pytest.fixture(scope="session")
def run_worker_once(warm_cache_dir: Path) -> Callable[..., WorkerRun]:
    """Run the real entry point with the SDK's ``--test_input`` (one job, then exit).

    ``run_worker_once({"HF_MODEL_ID": ...}, {"prompt": ...})``; the env is the worker's (CPU,
    offline, the session's warm cache) plus the overrides. Pass ``job_input=None`` for a boot that
    is expected to fail before it serves.
    """

    def run(env: Mapping[str, str], job_input: Any = None, timeout: float = 180.0) -> WorkerRun:
        full_env = worker_env({"VISGATE_CACHE_DIR": str(warm_cache_dir), **env})
        job = {"input": job_input if job_input is not None else {"prompt": "boot check"}}
        proc = subprocess.run(
            [sys.executable, "-m", "runtime", "--test_input", json.dumps(job)],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=timeout)
        return WorkerRun(proc.returncode, proc.stdout.decode("utf-8", errors="replace"))

    return run


class ServingWorker(LocalWorker):
    """A LocalWorker that knows its model and can show its log (for assertions and failures)."""

    def __init__(self, model_id: str, env: Mapping[str, str], log_path: Path) -> None:
        super().__init__({"HF_MODEL_ID": model_id, **env}, log_path=log_path, boot_timeout=240.0)
        self.model_id = model_id

    def log_text(self) -> str:
        if getattr(self, "_log", None):
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def start(self) -> "ServingWorker":
        try:
            super().start()
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            pytest.fail(f"{self.model_id} worker did not boot: {exc}\n{_tail(self.log_text())}")
        return self


@pytest.fixture(scope="session")
def start_worker(warm_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Callable[..., ServingWorker]]:
    """``start_worker(model_id, **env)`` -> a booted ``--rp_serve_api`` worker on 127.0.0.1,
    stopped at the end of the session (or earlier with ``.stop()``)."""
    started: list[ServingWorker] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(model_id: str, **env: str) -> ServingWorker:
        log_path = logs / f"{model_id.replace('/', '--')}-{len(started)}.log"
        worker = ServingWorker(model_id, {"VISGATE_CACHE_DIR": str(warm_cache_dir), **env}, log_path)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def serving_tiny_flux(start_worker: Callable[..., ServingWorker]) -> ServingWorker:
    """A worker serving visgate/tiny-flux (schnell-like) for the whole session."""
    return start_worker(TINY_FLUX)


@pytest.fixture(scope="session")
def serving_tiny_sdxl(start_worker: Callable[..., ServingWorker]) -> ServingWorker:
    """A worker serving visgate/tiny-sdxl (base-like) for the whole session."""
    return start_worker(TINY_SDXL)
