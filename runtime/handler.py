"""The job handler: validate -> generate -> encode.

``job_error`` is the one place where an exception becomes a job response. A job never raises out
of the handler: whatever happens, Runpod gets ``{"error": <string>, "model_id"}`` and the worker
takes the next job (or, after an unrecoverable device error, asks Runpod to replace it).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from pipelines.base import GenerationRequest, PipelineFamily
from runtime.encode import PngEncoder
from runtime.errors import (JobInputError, JobStopped, WorkerError, is_fatal_device_error,
                           is_out_of_memory, redact, sendable)
from runtime.logs import job_context
from runtime.pipeline_thread import PipelineThread
from runtime.validate import validate

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


@dataclass
class Service:
    """Everything a job needs, built once at boot."""

    model_id: str
    family: PipelineFamily
    pipe: Any
    encoder: PngEncoder
    secrets: tuple[str, ...] = ()
    # With compiled graphs: the warm keys (shapes) warmup compiled; others are served eagerly.
    compiled: bool = False
    warm_keys: frozenset[tuple[Any, ...]] = frozenset()


def generate_png(service: Service, job_input: Any,
                 should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    family = service.family
    request = validate(job_input, family.serving_defaults, family.size_rules, family.limits)
    if service.compiled and family.warm_key(request) not in service.warm_keys:
        _warn_not_warm(service, request)
    started = time.perf_counter()
    image = family.generate(service.pipe, request, should_stop)
    generated = time.perf_counter()
    png = service.encoder.encode(image)
    # Sizes as HEIGHTxWIDTH, the order VISGATE_WARMUP_SHAPES reads: the shapes jobs ask for most
    # are the ones to add there.
    log.info("job done: %dx%d, %d steps, generate %.3fs, encode %.3fs (%s)", request.height,
             request.width, request.steps, generated - started, time.perf_counter() - generated,
             service.encoder.name)
    return JobOutput({
        "image_base64": base64.b64encode(png).decode("ascii"),
        "model_id": service.model_id,
        "seed": request.seed,
        "height": request.height,
        "width": request.width,
    })


class JobOutput(dict):
    """A job's image response: the contract's dict, whose text form shows the head of the
    base64 (the PNG signature and its header's width and height) and its length rather than
    all of it. The job SDK (runpod 1.12) formats the handler's output into two DEBUG lines
    (``f"Handler output: {output}"``) whether or not DEBUG is logged: 13 ms each for a 4 MB
    base64 PNG on this project's CPU, every job; at RUNPOD_DEBUG_LEVEL=DEBUG, and for
    ``--test_input``'s result line, megabytes of base64 in the logs."""

    HEAD = 32  # base64 characters: 24 bytes, the PNG signature and its IHDR's width and height

    def __repr__(self) -> str:
        return "{%s}" % ", ".join(
            f"{key!r}: {value[:self.HEAD]!r} + <{len(value) - self.HEAD} more characters>"
            if key == "image_base64" and isinstance(value, str) and len(value) > self.HEAD
            else f"{key!r}: {value!r}" for key, value in self.items())

    __str__ = __repr__


def _warn_not_warm(service: Service, request: GenerationRequest) -> None:
    """Say why a job runs eagerly, and what would compile it: its shape, named as
    VISGATE_WARMUP_SHAPES takes it (HEIGHTxWIDTH; the other order would warm the transposed
    shape), or, where that shape was warmed and only the guidance's graph differs (SDXL with
    classifier-free guidance switched), the default guidance warmup compiles for."""
    shape = f"{request.height}x{request.width}"
    key = service.family.warm_key(request)
    # The key's size, not the job's: a pipeline that bins sizes (PixArt, Sana) keys the size it
    # denoises at.
    if key[:2] in {warm[:2] for warm in service.warm_keys}:
        log.warning("a %s (HEIGHTxWIDTH) job with guidance_scale %g was not warmed up (key %s): "
                    "served eagerly, without recompiling; warmup compiles this shape for the "
                    "default guidance (VISGATE_DEFAULT_GUIDANCE) only", shape, request.guidance, key)
    else:
        log.warning("a %s (HEIGHTxWIDTH) job was not warmed up (key %s): served eagerly, without "
                    "recompiling; add %s to VISGATE_WARMUP_SHAPES to serve it compiled", shape, key,
                    shape)


def handle(service: Service, job: Any, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One job, start to end, in the calling thread; ``should_stop`` as for generate_png."""
    job_id, job_input = (job.get("id"), job.get("input")) if isinstance(job, dict) else (None, None)
    with job_context(job_id):
        try:
            return generate_png(service, job_input, should_stop)
        except BaseException as exc:  # noqa: BLE001 - a job must never take the worker down
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return job_error(exc, service.model_id, service.secrets)


def make_handler(service: Service) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A handler that runs the job in the caller's thread (tests, benchmarks)."""
    return lambda job: handle(service, job)


def job_handler(service: Service, pipeline: PipelineThread) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """The handler the job SDK awaits on its event loop: the job runs on the pipeline's thread,
    so the loop stays free to read Runpod's per-job stop (a cancel, an execution timeout)
    meanwhile. A stop ends the generation at its next denoising step; the SDK then posts no
    result, and takes its next job only once the pipeline is idle again."""

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        stop = threading.Event()
        running = asyncio.wrap_future(pipeline.submit(handle, service, job, stop.is_set))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            stop.set()
            with job_context(job.get("id") if isinstance(job, dict) else None):
                log.warning("Runpod stopped this job (a cancel, or its execution timeout): its "
                            "generation ends at the next step, and no result is posted")
            await _outlast(running)
            raise

    return handler


async def _outlast(running: asyncio.Future[Any]) -> None:
    """Until a stopped job's call has ended (within a step): the SDK counts the job in progress
    until then, so the next job starts on an idle pipeline with its memory given back."""
    while not running.done():
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            continue  # stopped again (the SDK shutting down): the call still ends at its step
        except Exception:  # noqa: BLE001 - its outcome is dropped with the job
            return


def job_error(exc: BaseException, model_id: str, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """The one mapping from an exception to the contract's error shape."""
    if isinstance(exc, JobInputError):
        return {"error": sendable(redact(str(exc), secrets)), "model_id": model_id}
    if isinstance(exc, JobStopped):
        log.warning("job %s", exc)
        return {"error": str(exc), "model_id": model_id}
    response: dict[str, Any] = {"model_id": model_id}
    if is_out_of_memory(exc):
        # The traceback's frames still hold the job's latents and activations: drop them first,
        # or empty_cache() has little to give back.
        traceback.clear_frames(exc.__traceback__)
        _free_device_memory()
        log.warning("job ran out of GPU memory; cache freed")
        response["error"] = ("CUDA out of memory: reduce height/width (pixels) or "
                             "num_inference_steps and retry; the worker freed its cache")
        return response
    detail = sendable(_one_line(redact(str(exc), secrets)))
    log.error("job failed: %s: %s", exc.__class__.__name__, detail)
    if is_fatal_device_error(exc):
        # The CUDA context is poisoned: every later job would fail too. Runpod replaces us.
        response["refresh_worker"] = True
        response["error"] = f"unrecoverable GPU error, the worker will be replaced: {detail}"
        return response
    kind = "" if isinstance(exc, WorkerError) else f"{exc.__class__.__name__}: "
    response["error"] = f"generation failed: {kind}{detail}"
    return response


def _one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line[:MAX_ERROR_CHARS]


def _free_device_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing is best effort; the error response matters more
        log.debug("could not empty the CUDA cache", exc_info=True)
