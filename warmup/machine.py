"""Facts about the machine a benchmark ran on, and where its results go."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from runtime.boot_report import cpu_model, package_version

# VISGATE_BENCH_RESULTS sends results elsewhere (the CI smoke run must not overwrite the
# committed figures in warmup/results/).
RESULTS = Path(os.environ.get("VISGATE_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def machine_info(device: str = "cpu") -> dict[str, Any]:
    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "python": platform.python_version(), "cpu": cpu_model(),
                            **{name: package_version(name)
                               for name in ("torch", "diffusers", "transformers", "torchao", "triton")}}
    try:
        import torch

        info["cpu_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(device)
            info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                        cuda=torch.version.cuda, driver=_driver())
    except ImportError:
        pass
    return info


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def result_path(name: str, device: str) -> Path:
    """warmup/results/<name>-<cpu|gpu name>.json"""
    info = machine_info(device)
    where = (info.get("gpu") or "cpu").lower().replace(" ", "-")
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{name}-{re.sub(r'[^a-z0-9.-]', '', where)}.json"
