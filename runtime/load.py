"""Load stage: bind the pipeline family to the fetched model and load it on the device."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.base import PipelineFamily
from pipelines.registry import detect_family
from runtime.errors import BootError
from runtime.settings import Settings

log = logging.getLogger(__name__)

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class Loaded:
    family: PipelineFamily
    pipe: Any
    precision: str  # bf16 / fp16 / fp32, as actually loaded
    device: str  # where the pipeline serves
    # Where the weights are now: "cpu" while they wait to be quantized on their way to the GPU.
    placed_on: str = ""
    # Of the load stage: importing torch/diffusers/transformers and the pipeline class's module,
    # creating the CUDA context (0 on a CPU), and building the pipeline from its files onto
    # ``placed_on`` (the CPU when the weights wait there to be quantized: their move to the GPU
    # is then the optimize stage's).
    imports_seconds: float = 0.0
    device_init_seconds: float = 0.0
    weights_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.placed_on = self.placed_on or self.device


def check_device(device: str) -> None:
    """Fail boot clearly when the asked device is missing: no silent CPU fallback."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise BootError(f"DEVICE={device} but no CUDA GPU is available "
                        "(set DEVICE=cpu to run on the CPU)", stage="load")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise BootError(f"DEVICE={device} but only {torch.cuda.device_count()} CUDA device(s) exist",
                        stage="load")


def init_device(device: str) -> float:
    """Create the CUDA context now (one tensor), returning its seconds. The first weight would
    create it anyway; done here, its cost is measured apart from the weights'."""
    if not device.startswith("cuda"):
        return 0.0
    import torch

    t0 = time.perf_counter()
    torch.empty(1, device=device)
    torch.cuda.synchronize(device)
    return round(time.perf_counter() - t0, 3)


def choose_precision(setting: str, family: PipelineFamily, device: str) -> str:
    if setting != "auto":
        return setting
    preferred = family.preferred_dtype(device)
    if preferred == "bf16" and device.startswith("cuda"):
        import torch

        # Not torch.cuda.is_bf16_supported(): it says True on pre-Ampere GPUs too (T4, V100, by
        # emulation). Native bf16 starts at compute capability 8.0, of the serving device.
        if torch.cuda.get_device_capability(device) < (8, 0):
            # Pre-Ampere GPUs emulate bf16 slowly; fp16 is their native half precision.
            return "fp16"
    return preferred


def quiet_libraries() -> None:
    """Progress bars and load chatter would flood the worker's logs on every boot."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def load(settings: Settings, model_dir: Path, variant: str | None = None,
         family: PipelineFamily | None = None) -> Loaded:
    """``variant``: FetchResult.variant, the weight variant the fetch stage downloaded;
    ``family``: the model's family when the caller has detected it already."""
    family = family or detect_family(model_dir)
    t0 = time.perf_counter()
    check_device(settings.device)  # the first torch import
    precision = choose_precision(settings.precision, family, settings.device)
    import torch

    quiet_libraries()  # the first diffusers and transformers imports
    # diffusers imports a pipeline's module (and the transformers models it names) on its first
    # use: 1.3-1.4 s for tiny SDXL/FLUX on this project's CPU. Left to from_pretrained, it counted
    # as weights (full-size SDXL's weights_seconds read 2.8-3.1 s for a true 0.5-1.1 s).
    family.pipeline_class()
    imports_seconds = round(time.perf_counter() - t0, 3)
    device_init_seconds = init_device(settings.device)
    dtype = getattr(torch, DTYPE_NAMES[precision])
    # To quantize, weights stay in CPU memory and go to the GPU layer by layer as they are
    # quantized (optimize stage): FLUX.1-dev in bf16 (33 GB) would not fit a 24 GB GPU first.
    placed_on = "cpu" if settings.quantize != "none" and settings.is_cuda else settings.device
    log.info("loading %s (%s/%s) as %s on %s", settings.model_id, family.name, family.variant,
             precision, placed_on)
    t1 = time.perf_counter()
    try:
        pipe = family.load(dtype, placed_on, variant=variant)
    except torch.cuda.OutOfMemoryError as exc:
        raise BootError(f"the model does not fit in GPU memory as {precision}: use a larger GPU "
                        "or VISGATE_QUANTIZE=int8-weight", stage="load") from exc
    if placed_on.startswith("cuda"):
        torch.cuda.synchronize(placed_on)  # copies still queued belong to the weights' time
    return Loaded(family=family, pipe=pipe, precision=precision, device=settings.device,
                  placed_on=placed_on, imports_seconds=imports_seconds,
                  device_init_seconds=device_init_seconds,
                  weights_seconds=round(time.perf_counter() - t1, 3))
