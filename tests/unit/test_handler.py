"""The job handler and its one error mapping, on a real tiny Flux pipeline loaded in this process.

Failures are injected into real components (a forward hook that raises inside the transformer, the
VAE decoder or the T5 encoder), so the exception travels through diffusers exactly as a real one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch

from pipelines.registry import detect_family
from runtime import handler as handler_module
from runtime.encode import PngEncoder
from runtime.errors import JobInputError, WorkerError
from runtime.handler import MAX_ERROR_CHARS, Service, job_error, job_handler, make_handler
from runtime.pipeline_thread import PipelineThread
from runtime.settings import Settings
from runtime.validate import validate
from runtime.warmup import warmup_requests

pytestmark = pytest.mark.timeout(120)

MODEL_ID = "visgate/tiny-flux"
SECRET = "hf_TopSecretToken123"
CONTRACT_KEYS = {"image_base64", "model_id", "seed", "height", "width"}
# Not square, so a swapped height/width would show.
GOOD_JOB = {"input": {"prompt": "a red bicycle", "height": 256, "width": 320, "seed": 11,
                      "num_inference_steps": 2}}


@pytest.fixture(scope="module")
def tiny_flux_service(built_tiny_repo: Callable[[str], Path]) -> Service:
    """What boot hands the handler for visgate/tiny-flux on the CPU (a token configured)."""
    family = detect_family(built_tiny_repo(MODEL_ID))
    pipe = family.load(torch.float32, "cpu")
    return Service(model_id=MODEL_ID, family=family, pipe=pipe, encoder=PngEncoder(),
                   secrets=(SECRET,))


@pytest.fixture(scope="module")
def handle(tiny_flux_service: Service) -> Callable[[Any], dict[str, Any]]:
    return make_handler(tiny_flux_service)


@pytest.fixture
def component_that_raises(tiny_flux_service: Service) -> Callable[..., Any]:
    """``with component_that_raises("transformer", exc):`` -> that module raises ``exc`` when called."""

    @contextmanager
    def broken(path: str, exc: BaseException) -> Iterator[None]:
        module = tiny_flux_service.pipe
        for attr in path.split("."):
            module = getattr(module, attr)

        def raise_it(*_: Any) -> None:
            raise exc

        hook = module.register_forward_pre_hook(raise_it)
        try:
            yield
        finally:
            hook.remove()

    return broken


def assert_good_image(response: dict[str, Any], png_tools: Any, height: int = 256, width: int = 320,
                      seed: int | None = 11) -> np.ndarray:
    assert set(response) == CONTRACT_KEYS, response.get("error")
    assert response["model_id"] == MODEL_ID
    assert (response["height"], response["width"]) == (height, width)
    if seed is not None:
        assert response["seed"] == seed
    png = base64.b64decode(response["image_base64"])
    assert png_tools.header_size(png) == (width, height)
    pixels = png_tools.decode(png)
    assert pixels.shape == (height, width, 3) and pixels.dtype == np.uint8
    return pixels


# ---- job_error: the one mapping ----------------------------------------------------------------------
def test_input_error_is_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    response = job_error(JobInputError("'seed' must be from 0 to 4294967295, got -1"), MODEL_ID)
    assert response == {"error": "'seed' must be from 0 to 4294967295, got -1", "model_id": MODEL_ID}


@pytest.mark.parametrize("exc", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB "
                                "total capacity; 70.02 GiB already allocated)"),
    RuntimeError("CUDA out of memory. Tried to allocate 512.00 MiB"),
    RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
], ids=["OutOfMemoryError", "RuntimeError-text", "cuda-error-from-a-library-call", "cublas-workspace",
        "cudnn-workspace"])
def test_out_of_memory_frees_the_cache_and_says_what_to_reduce(
        exc: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    freed: list[bool] = []
    real_free = handler_module._free_device_memory
    monkeypatch.setattr(handler_module, "_free_device_memory", lambda: (freed.append(True), real_free()))
    response = job_error(exc, MODEL_ID)
    assert freed == [True]
    assert set(response) == {"error", "model_id"}  # recoverable: no refresh_worker
    assert response["error"].startswith("CUDA out of memory: reduce height/width")
    assert "num_inference_steps" in response["error"]


@pytest.mark.parametrize("message", [
    "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously "
    "reported at some other API call, so the stacktrace below might be incorrect.",
    "CUDA error: device-side assert triggered",
    "CUDA error: unspecified launch failure",
    "CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, opa, opb, m, n, k)`",
    "NVML_SUCCESS == r INTERNAL ASSERT FAILED: CUDA driver error: unknown",
    "CUDA error: unknown error",  # the usual face of a GPU lost from the host
    "CUDA error: the launch timed out and was terminated",
    "CUDA error: hardware stack error",
    "CUDA error: invalid program counter",
    "CUDA error: CUDA-capable device(s) is/are busy or unavailable",
], ids=["illegal-memory-access", "device-assert", "launch-failure", "cublas", "driver", "unknown",
        "timeout", "stack", "program-counter", "busy"])
def test_unrecoverable_device_error_replaces_the_worker(message: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler_module, "_free_device_memory", lambda: pytest.fail("not an OOM"))
    response = job_error(RuntimeError(message), MODEL_ID)
    assert response["refresh_worker"] is True
    assert response["model_id"] == MODEL_ID
    assert response["error"].startswith("unrecoverable GPU error, the worker will be replaced: ")
    assert message.splitlines()[0] in response["error"] and "\n" not in response["error"]


@pytest.mark.parametrize("exc", [
    RuntimeError("CUDA error: invalid argument"),       # a bad call, not a poisoned context
    ValueError("illegal memory access pattern in the prompt parser"),  # no device involved
], ids=["cuda-recoverable", "no-device"])
def test_other_errors_keep_the_worker(exc: BaseException) -> None:
    assert "refresh_worker" not in job_error(exc, MODEL_ID)


def raise_deep(depth: int) -> None:
    if depth == 0:
        raise ValueError("the scheduler produced an empty timestep list")
    raise_deep(depth - 1)


def test_unexpected_error_is_a_string_without_traceback() -> None:
    try:
        raise_deep(5)
    except ValueError as exc:
        response = job_error(exc, MODEL_ID)
    assert response == {"error": "generation failed: ValueError: the scheduler produced an empty "
                                 "timestep list", "model_id": MODEL_ID}


def test_error_is_one_bounded_line() -> None:
    response = job_error(RuntimeError("first line\n" + "Traceback (most recent call last):\n  File"), MODEL_ID)
    assert response["error"] == "generation failed: RuntimeError: first line"
    long = job_error(RuntimeError("x" * 5000), MODEL_ID)["error"]
    assert len(long) <= MAX_ERROR_CHARS + len("generation failed: RuntimeError: ")
    assert job_error(ValueError(), MODEL_ID)["error"] == "generation failed: ValueError: no details"


def test_worker_errors_are_shown_without_a_class_name() -> None:
    assert job_error(WorkerError("the VAE returned no image"), MODEL_ID)["error"] == \
        "generation failed: the VAE returned no image"


@pytest.mark.parametrize("exc", [
    ValueError(f"401 Client Error for url https://huggingface.co/api?token={SECRET}"),
    RuntimeError(f"CUDA error: an illegal memory access was encountered (token {SECRET})"),
    JobInputError(f"'prompt' must not contain {SECRET}"),
    WorkerError(f"{SECRET}"),
], ids=["unexpected", "fatal-device", "input", "worker"])
def test_secrets_are_redacted(exc: BaseException) -> None:
    response = job_error(exc, MODEL_ID, secrets=(SECRET, "unused-secret"))
    assert SECRET not in repr(response)
    assert "***" in response["error"]


# ---- the handler, on the real pipeline --------------------------------------------------------------
def test_good_job(handle: Callable, png_tools: Any) -> None:
    assert_good_image(handle(GOOD_JOB), png_tools)


@pytest.mark.parametrize("job, message", [
    (None, "input must be a JSON object, got null"),
    ({}, "input must be a JSON object, got null"),
    ({"input": "draw a cat"}, "input must be a JSON object, got a string"),
    ({"input": {"prompt": ""}}, "Missing or empty 'prompt' in input"),
    ({"input": {"prompt": "x", "height": 264}}, "'height' must be a multiple of 16 for this model"),
    ({"input": {"prompt": "x", "guidance_scale": float("nan")}}, "must be a finite number"),
], ids=["job-null", "no-input", "input-string", "empty-prompt", "height-factor", "nan"])
def test_bad_input_never_raises(handle: Callable, job: Any, message: str) -> None:
    response = handle(job)
    assert set(response) == {"error", "model_id"}
    assert isinstance(response["error"], str) and message in response["error"]


@pytest.mark.parametrize("job_input, error", [
    ({"prompt": "x", "height": 10**40}, "'height' must be from 256 to 2048, got a number too large"),
    ({"prompt": "x", "seed": 10**100}, "'seed' must be from 0 to 4294967295, got a number too large"),
    ({"prompt": "x", "seed": 1e100}, "'seed' must be from 0 to 4294967295, got 1e+100"),
    ({"prompt": "x", "seed": 4294967296}, "'seed' must be from 0 to 4294967295, got 4294967296"),
    ({"prompt": "x", "guidance_scale": 20.0000001},
     "'guidance_scale' must be from 0 to 20, got 20.0000001"),
], ids=["height-40-digits", "seed-101-digits", "seed-float", "seed-quoted", "guidance-just-over"])
def test_refused_number_in_the_error_response(handle: Callable, job_input: dict, error: str) -> None:
    """A huge integer is named, not echoed digit by digit; others are quoted as sent."""
    assert handle({"input": job_input}) == {"error": error, "model_id": MODEL_ID}


@pytest.mark.parametrize("component, exc, expected", [
    ("transformer", ValueError(f"corrupt weights near {SECRET}"),
     {"error": "generation failed: ValueError: corrupt weights near ***", "model_id": MODEL_ID}),
    ("vae.decoder", RuntimeError("CUDA error: an illegal memory access was encountered"),
     {"error": "unrecoverable GPU error, the worker will be replaced: CUDA error: an illegal memory "
               "access was encountered", "model_id": MODEL_ID, "refresh_worker": True}),
    ("text_encoder_2", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB"),
     {"error": "CUDA out of memory: reduce height/width (pixels) or num_inference_steps and retry; "
               "the worker freed its cache", "model_id": MODEL_ID}),
], ids=["transformer-ValueError", "vae-illegal-access", "t5-oom"])
def test_failure_inside_the_pipeline_then_the_next_job_works(
        handle: Callable, component_that_raises: Callable, png_tools: Any, component: str,
        exc: BaseException, expected: dict) -> None:
    with component_that_raises(component, exc):
        assert handle(GOOD_JOB) == expected
    assert_good_image(handle(GOOD_JOB), png_tools)


def test_a_jobs_log_lines_name_it(handle: Callable, component_that_raises: Callable,
                                  restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    """Runpod shows a job's id; its lines among a busy worker's are found by it."""
    from runtime.logs import setup_logging

    setup_logging()
    with component_that_raises("transformer", ValueError("bad latents")):
        handle({"id": "job-7c1e", **GOOD_JOB})
    handle({"id": "job-8d2f", **GOOD_JOB})
    err = capsys.readouterr().err
    assert "ERROR runtime.handler [job job-7c1e]: job failed: ValueError: bad latents" in err
    assert "INFO runtime.handler [job job-8d2f]: job done: 256x320" in err


def test_an_image_of_another_size_than_requested_is_an_error(tiny_flux_service: Service,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # As a pipeline that rounds the size down does (one its family's size rules missed).
    run = tiny_flux_service.family._run
    monkeypatch.setattr(tiny_flux_service.family, "_run",
                        lambda pipe, request, *rest: run(pipe, request, *rest)[:, :-16])
    assert make_handler(tiny_flux_service)(GOOD_JOB) == {
        "error": "generation failed: the pipeline made a 304x256 image for a 320x256 request; this "
                 "size is not supported by this model", "model_id": MODEL_ID}


def test_an_error_echoing_a_lone_surrogate_can_still_be_sent(handle: Callable) -> None:
    # The SDK replies with json.dumps(ensure_ascii=False) encoded as UTF-8: a lone surrogate
    # echoed from the input (an unknown field's name) would fail there, and the job would hang.
    response = handle({"input": {"prompt": "x", "\ud800bad": 1}})
    assert response["error"].startswith("unknown field(s) in input: \\ud800bad;")
    json.dumps(response, ensure_ascii=False).encode("utf-8")
    assert job_error(RuntimeError("broken \udcff byte"), MODEL_ID)["error"] == \
        "generation failed: RuntimeError: broken \\udcff byte"


def test_interrupt_is_not_swallowed(handle: Callable, component_that_raises: Callable) -> None:
    """Ctrl-C / SystemExit must still stop the process; only job failures become responses."""
    with component_that_raises("transformer", KeyboardInterrupt()):
        with pytest.raises(KeyboardInterrupt):
            handle(GOOD_JOB)


def test_same_seed_same_pixels_in_process(handle: Callable, png_tools: Any) -> None:
    first = assert_good_image(handle(GOOD_JOB), png_tools)
    again = assert_good_image(handle(GOOD_JOB), png_tools)
    other = assert_good_image(handle({"input": {**GOOD_JOB["input"], "seed": 12}}), png_tools, seed=12)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_runpod_sdk_sees_a_string_error_at_top_level(handle: Callable) -> None:
    """What the SDK does with our dict: ``error`` must be a string or Runpod may mark it COMPLETED."""
    from runpod.serverless.modules.rp_job import run_job

    result = asyncio.run(run_job(handle, {"id": "job-1", "input": {"prompt": 5}}))
    assert result == {"error": "'prompt' must be a string, got a number",
                      "output": {"model_id": MODEL_ID}}


def test_runpod_sdk_stops_the_pod_after_a_fatal_device_error(
        tiny_flux_service: Service, component_that_raises: Callable) -> None:
    from runpod.serverless.modules.rp_job import run_job

    with component_that_raises("transformer", RuntimeError("CUDA error: an illegal memory access "
                                                            "was encountered")):
        result = asyncio.run(run_job(make_handler(tiny_flux_service), {"id": "job-2", **GOOD_JOB}))
    assert result["stopPod"] is True
    assert isinstance(result["error"], str)


def test_the_response_prints_short_and_serializes_as_the_contract(handle: Callable) -> None:
    """The job SDK formats the handler's output into DEBUG lines even when they are not logged:
    spelt out, a 1024x1024 PNG's base64 took milliseconds a job (and megabytes of log at DEBUG)."""
    out = handle(GOOD_JOB)
    assert isinstance(out, dict) and set(out) == CONTRACT_KEYS
    text = f"Handler output: {out}"
    encoded = out["image_base64"]
    assert encoded not in text and len(text) < 300
    assert (f"{{'image_base64': '{encoded[:32]}' + <{len(encoded) - 32} more characters>, "
            f"'model_id': '{MODEL_ID}', 'seed': 11, 'height': 256, 'width': 320}}") in text
    assert base64.b64decode(encoded[:32])[:8] == b"\x89PNG\r\n\x1a\n"  # the head shows a PNG
    assert json.loads(json.dumps({"output": out}, ensure_ascii=False)) == {"output": dict(out)}


# ---- Runpod's per-job stop (a cancel, an execution timeout) -------------------------------------
@contextmanager
def transformer_calls(service: Service) -> Iterator[list[str]]:
    """The denoiser's calls while inside, one per step: the name of the thread each ran on."""
    threads: list[str] = []
    hook = service.pipe.transformer.register_forward_pre_hook(
        lambda module, args: threads.append(threading.current_thread().name))
    try:
        yield threads
    finally:
        hook.remove()


def test_a_stop_seen_after_a_step_ends_the_generation_there(tiny_flux_service: Service) -> None:
    job = {"id": "stopped", "input": {**GOOD_JOB["input"], "num_inference_steps": 6}}
    with transformer_calls(tiny_flux_service) as calls:
        result = handler_module.handle(tiny_flux_service, job, should_stop=lambda: len(calls) >= 2)
    assert result == {"error": "stopped by Runpod (cancelled, or past its execution timeout) after 2 "
                               "of 6 steps", "model_id": MODEL_ID}
    assert len(calls) == 2
    with transformer_calls(tiny_flux_service) as calls:  # a stop already set: no step at all
        result = handler_module.handle(tiny_flux_service, job, should_stop=lambda: True)
    assert "after 0 of 6 steps" in result["error"] and not calls
    # The pipeline is whole for the next job: the same image as an undisturbed run's.
    first, again = (make_handler(tiny_flux_service)(GOOD_JOB) for _ in range(2))
    assert set(first) == CONTRACT_KEYS and first == again


def test_the_sdk_stopping_a_job_ends_its_generation_within_a_step_and_frees_the_pipeline(
        tiny_flux_service: Service) -> None:
    """As the SDK's job loop does on Runpod's stop: the job's task is cancelled. The handler
    generated on the SDK's event loop, which could not see the stop until the job was over; now
    the loop is free while the job's steps run on the pipeline's thread, and the cancel stops
    them."""
    from runpod.serverless.modules.rp_job import run_job

    steps = 40
    pipeline = PipelineThread()
    handle = job_handler(tiny_flux_service, pipeline)
    # 512x512: steps long enough (tens of ms here) that a busy machine's scheduling is not a step
    job = {"id": "cancelled", "input": {**GOOD_JOB["input"], "height": 512, "width": 512,
                                        "num_inference_steps": steps}}

    async def cancel_after_two_steps(calls: list[str]) -> tuple[int, int]:
        task = asyncio.create_task(run_job(handle, job))
        while len(calls) < 2:  # the event loop runs while the job does
            assert not task.done()
            await asyncio.sleep(0.005)
        cancelled_at = len(calls)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return cancelled_at, len(calls)  # the task ends once the generation has

    with transformer_calls(tiny_flux_service) as calls:
        cancelled_at, ended_at = asyncio.run(cancel_after_two_steps(calls))
        time.sleep(0.5)  # nothing runs on after the task ended
    # The step running as the stop arrived, at most one more on a busy machine, then none.
    assert cancelled_at <= ended_at <= cancelled_at + 2 < steps, (cancelled_at, ended_at)
    assert len(calls) == ended_at
    assert set(calls) == {"pipeline"} and not pipeline.busy
    # The next job on that pipeline is whole.
    with transformer_calls(tiny_flux_service) as calls:
        result = asyncio.run(run_job(handle, {"id": "next", **GOOD_JOB}))
    assert set(result["output"]) == CONTRACT_KEYS and len(calls) == 2


# ---- encoding --------------------------------------------------------------------------------------
def photo_like(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], axis=-1)
    return np.clip(base + rng.integers(-12, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("array", [
    photo_like(96, 160),
    np.ascontiguousarray(photo_like(64, 48).transpose(2, 0, 1)).transpose(1, 2, 0),  # a CHW view
], ids=["contiguous", "strided-view"])
def test_fpng_and_pillow_encode_the_same_pixels(array: np.ndarray, png_tools: Any) -> None:
    fast, slow = PngEncoder(), PngEncoder(prefer_fast=False)
    assert (fast.name, slow.name) == ("fpng", "pillow")  # fpng is a requirement: it must load here
    for encoder in (fast, slow):
        png = encoder.encode(array)
        assert png_tools.header_size(png) == (array.shape[1], array.shape[0])
        assert np.array_equal(png_tools.decode(png), array), encoder.name


def test_generated_image_encodes_identically(handle: Callable, tiny_flux_service: Service,
                                             png_tools: Any) -> None:
    from runtime.validate import validate

    family = tiny_flux_service.family
    request = validate(GOOD_JOB["input"], family.defaults, family.size_rules, family.limits)
    image = family.generate(tiny_flux_service.pipe, request)
    assert np.array_equal(png_tools.decode(PngEncoder().encode(image)),
                          png_tools.decode(PngEncoder(prefer_fast=False).encode(image)))


def test_fpng_failure_falls_back_to_pillow_for_good(png_tools: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    encoder = PngEncoder()
    assert encoder.name == "fpng"
    gray = photo_like(32, 40)[..., 0]  # fpng refuses 2-D arrays; Pillow writes an L-mode PNG
    png = encoder.encode(gray)
    assert np.array_equal(png_tools.decode(png), gray)
    assert encoder.name == "pillow"
    assert "fpng failed" in caplog.text
    color = photo_like(32, 40)
    assert np.array_equal(png_tools.decode(encoder.encode(color)), color)


def test_missing_fpng_falls_back_to_pillow(monkeypatch: pytest.MonkeyPatch, png_tools: Any) -> None:
    monkeypatch.setitem(sys.modules, "fpng", None)  # `import fpng` raises ImportError
    encoder = PngEncoder()
    assert encoder.name == "pillow"
    array = photo_like(24, 24)
    assert np.array_equal(png_tools.decode(encoder.encode(array)), array)


def test_an_sdxl_decode_that_runs_out_of_memory_leaves_the_vae_as_it_was(
        built_tiny_repo: Callable[[str], Path], png_tools: Any) -> None:
    # SDXL serves in fp16 and diffusers upcasts its VAE to fp32 to decode, casting it back only
    # on success: an OOM in the decoder must not leave an fp32 VAE that fails every later job.
    family = detect_family(built_tiny_repo("visgate/tiny-sdxl"))
    pipe = family.load(torch.float16, "cpu")
    assert pipe.vae.config.force_upcast and pipe.vae.dtype == torch.float16
    handle = make_handler(Service(model_id="visgate/tiny-sdxl", family=family, pipe=pipe,
                                  encoder=PngEncoder()))
    job = {"input": {"prompt": "a red apple", "height": 256, "width": 256, "seed": 3,
                     "num_inference_steps": 2}}
    reference = handle(job)
    assert set(reference) == CONTRACT_KEYS, reference.get("error")

    def out_of_memory(*_: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    hook = pipe.vae.decoder.register_forward_pre_hook(out_of_memory)
    try:
        assert handle(job)["error"].startswith("CUDA out of memory")
    finally:
        hook.remove()
    assert pipe.vae.dtype == torch.float16
    again = handle(job)
    assert set(again) == CONTRACT_KEYS, again.get("error")
    assert again["image_base64"] == reference["image_base64"]


# ---- jobs a compiled worker did not warm up --------------------------------------------------------
SIZE_IN_LOG = re.compile(r"\b(\d+)x(\d+)\b")


def keys_warmed_by(family: Any, warmup_shapes: str) -> set[tuple[Any, ...]]:
    """The warm keys a boot with this VISGATE_WARMUP_SHAPES compiles (its default shape aside)."""
    settings = Settings.from_env({"HF_MODEL_ID": MODEL_ID, "DEVICE": "cpu",
                                  "VISGATE_WARMUP_SHAPES": warmup_shapes})
    return {family.warm_key(r) for r in warmup_requests(family, list(settings.warmup_shapes))}


def test_the_shape_a_job_log_names_is_the_one_to_warm_up(tiny_flux_service: Service,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A compiled worker serves a shape warmup did not compile eagerly, and its warning says to add
    that shape to VISGATE_WARMUP_SHAPES, which reads HEIGHTxWIDTH. The size it names (as the job's
    "job done" line does), added there, must warm that very job: named width first, it warmed the
    transposed shape and the job stayed eager."""
    family = tiny_flux_service.family
    service = Service(model_id=MODEL_ID, family=family, pipe=tiny_flux_service.pipe,
                      encoder=PngEncoder(), compiled=True, warm_keys=frozenset({(1024, 1024)}))
    with caplog.at_level(logging.INFO, logger="runtime.handler"):
        assert set(make_handler(service)(GOOD_JOB)) == CONTRACT_KEYS  # 256 high, 320 wide
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    [done] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job done")]
    assert "VISGATE_WARMUP_SHAPES" in warning
    job_key = family.warm_key(validate(GOOD_JOB["input"], family.serving_defaults,
                                       family.size_rules, family.limits))
    for line in (warning, done):
        named = "x".join(SIZE_IN_LOG.search(line).groups())
        assert job_key in keys_warmed_by(family, named), line


def test_a_warmed_shape_missed_on_guidance_is_not_told_to_add_the_shape(
        built_tiny_repo: Callable[[str], Path], caplog: pytest.LogCaptureFixture) -> None:
    # SDXL's key also holds whether classifier-free guidance runs: a 256x256 job without it, on a
    # worker that warmed 256x256 at its default guidance 5, has a warmed shape already.
    family = detect_family(built_tiny_repo("visgate/tiny-sdxl"))
    service = Service(model_id="visgate/tiny-sdxl", family=family, pipe=family.load(torch.float32, "cpu"),
                      encoder=PngEncoder(), compiled=True, warm_keys=frozenset({(256, 256, True)}))
    job = {"input": {"prompt": "a red apple", "height": 256, "width": 256, "seed": 3,
                     "num_inference_steps": 1, "guidance_scale": 0}}
    with caplog.at_level(logging.WARNING, logger="runtime.handler"):
        assert set(make_handler(service)(job)) == CONTRACT_KEYS
    [warning] = [r.getMessage() for r in caplog.records]
    assert "VISGATE_WARMUP_SHAPES" not in warning
    assert "guidance_scale 0 was not warmed up" in warning and "VISGATE_DEFAULT_GUIDANCE" in warning
