"""One record of the boot: stage timings, versions, device, optimizations, cache hits.

It is logged as one structured JSON line when boot ends and travels in the readiness webhook.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
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
        self.device: str | None = None  # the serving device, set by boot from DEVICE

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
                "versions": versions(), "device": device_info(self.device), **self.info}

    def log_line(self) -> None:
        log.info("boot record %s", json.dumps(self.as_dict(), sort_keys=True, default=str))


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (compiled CPU code targets its instruction set)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The CPU's model and a digest of its instruction-set flags, for keys of compiled host code
    (-march=native): a hypervisor can hide AVX-512 from one VM of a CPU model and not another."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86, ARM
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    return f"{cpu_model()} [{hashlib.sha256(flags.encode()).hexdigest()[:12]}]"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        version = package_version(name)
        if version is not None:
            found[name] = version
    torch = sys.modules.get("torch")  # no import just to report: see device_info
    if torch is not None and torch.version.cuda:
        found["cuda"] = torch.version.cuda
    return found


def device_info(device: str | None = None) -> dict[str, Any]:
    """The serving device (``DEVICE``), once boot has set it; before that, what the machine has."""
    # Only describe devices through torch if something already imported it: a settings failure
    # must not pay for a torch import (seconds) before it can report.
    torch = sys.modules.get("torch")
    if torch is None or (device or "").startswith("cpu"):
        return {"type": "cpu", "threads": torch.get_num_threads() if torch else None}
    if not torch.cuda.is_available():
        return {"type": "cpu", "threads": torch.get_num_threads()}
    index = int(device.split(":", 1)[1]) if device and ":" in device else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {"type": "cuda", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}"}
