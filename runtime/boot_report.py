"""One record of the boot: stage timings, versions, device, optimizations, cache hits.

It is logged as one structured JSON line when boot ends and travels in the readiness webhook.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Iterator

log = logging.getLogger(__name__)

_VERSIONED = ("torch", "diffusers", "transformers", "huggingface_hub", "runpod", "triton",
              "torchao", "xformers", "fpng")


class BootRecord:
    def __init__(self) -> None:
        self.started = time.time()
        self._t0 = time.perf_counter()
        self.stages: dict[str, dict[str, Any]] = {}
        self.info: dict[str, Any] = {}
        # The stage that raised, so a failure is reported where it happened even when the
        # exception itself does not say (a library error inside fetch is a fetch failure).
        self.failed_stage: str | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage; the yielded dict collects what the stage wants to report."""
        entry: dict[str, Any] = {}
        self.stages[name] = entry
        t0 = time.perf_counter()
        try:
            yield entry
        except BaseException:
            entry["failed"] = True
            self.failed_stage = self.failed_stage or name
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 3)

    def total_seconds(self) -> float:
        return round(time.perf_counter() - self._t0, 3)

    def as_dict(self) -> dict[str, Any]:
        # Finished stages only: the record sent while a stage runs (announce) leaves that one out.
        finished = {name: entry for name, entry in self.stages.items() if "seconds" in entry}
        return {"started_at": round(self.started, 3), "total_seconds": self.total_seconds(),
                "stages": finished,
                "versions": versions(), "device": device_info(), **self.info}

    def log_line(self) -> None:
        log.info("boot record %s", json.dumps(self.as_dict(), sort_keys=True, default=str))


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        if torch.version.cuda:
            found["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return found


def device_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"type": "cpu"}
    if not torch.cuda.is_available():
        return {"type": "cpu", "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"type": "cuda", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}"}
