"""The real worker process end to end on the CPU: ``python -m runtime`` with the Runpod SDK's
``--test_input`` (one job, exit code) and its ``--rp_serve_api`` local server (``POST /runsync``).

Jobs are 256 px and few steps so that the whole file runs in about a minute on two cores; the two
serving workers are shared by the session (see conftest.py).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONTRACT_KEYS = {"image_base64", "model_id", "seed", "height", "width"}
SEED_MAX = 2**32 - 1
PNG_B64_PREFIX = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()[:10]  # "iVBORw0KGg"


@pytest.fixture(params=["serving_tiny_flux", "serving_tiny_sdxl"], ids=["flux", "sdxl"])
def serving(request: pytest.FixtureRequest) -> Any:
    """Each test below runs against both families' workers."""
    return request.getfixturevalue(request.param)


def job(**fields: Any) -> dict[str, Any]:
    """A cheap job: 256 px, 2 steps."""
    return {"prompt": "a lighthouse on a cliff at sunset", "height": 256, "width": 256,
            "num_inference_steps": 2, **fields}


def completed_image(worker: Any, job_input: dict[str, Any], png_tools: Any) -> tuple[dict, np.ndarray]:
    """POST /runsync, check the response is a COMPLETED contract result, return (output, pixels)."""
    result = worker.runsync(job_input, timeout=120)
    assert result.get("status") == "COMPLETED", result
    output = result["output"]
    assert set(output) == CONTRACT_KEYS
    png = base64.b64decode(output["image_base64"], validate=True)
    assert png_tools.header_size(png) == (output["width"], output["height"])
    return output, png_tools.decode(png)


# ---- POST /runsync: images -----------------------------------------------------------------------------
def test_png_of_exactly_height_by_width(serving: Any, png_tools: Any) -> None:
    # Not square, so a swapped height/width would show.
    output, pixels = completed_image(serving, job(height=256, width=384, seed=5), png_tools)
    assert output["model_id"] == serving.model_id
    assert (output["height"], output["width"], output["seed"]) == (256, 384, 5)
    assert all(type(output[k]) is int for k in ("seed", "height", "width"))
    assert pixels.shape == (256, 384, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 0  # an image, not a blank canvas


def test_same_seed_same_image_other_seed_other_image(serving: Any, png_tools: Any) -> None:
    first, a = completed_image(serving, job(seed=1234), png_tools)
    again, b = completed_image(serving, job(seed=1234), png_tools)
    _, c = completed_image(serving, job(seed=1235), png_tools)
    assert first["image_base64"] == again["image_base64"]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_missing_seed_is_returned_and_reproduces_the_image(serving: Any, png_tools: Any) -> None:
    drawn, a = completed_image(serving, job(), png_tools)
    other, _ = completed_image(serving, job(), png_tools)
    assert isinstance(drawn["seed"], int) and 0 <= drawn["seed"] <= SEED_MAX
    assert drawn["seed"] != other["seed"]
    _, b = completed_image(serving, job(seed=drawn["seed"]), png_tools)
    assert np.array_equal(a, b)


def test_size_factor_is_the_family_s(serving_tiny_flux: Any, serving_tiny_sdxl: Any,
                                     png_tools: Any) -> None:
    """264 px: a multiple of 8 (fine for SDXL), not of 16 (Flux packs 2x2 latents)."""
    refused = serving_tiny_flux.runsync(job(height=264), timeout=120)
    assert refused["status"] == "FAILED"
    assert refused["error"] == "'height' must be a multiple of 16 for this model, got 264"
    output, pixels = completed_image(serving_tiny_sdxl, job(height=264, num_inference_steps=1), png_tools)
    assert pixels.shape == (264, 256, 3)


# ---- POST /runsync: errors -----------------------------------------------------------------------------
BAD = [
    pytest.param({"prompt": "x", "num_inference_steps": 0},
                 "'num_inference_steps' must be from 1 to 100, got 0", id="steps-zero"),
    pytest.param({"prompt": ""}, "Missing or empty 'prompt' in input", id="prompt-empty"),
    pytest.param({"num_inference_steps": 4}, "Missing or empty 'prompt' in input", id="prompt-missing"),
    pytest.param({"prompt": "x", "num_inference_steps": True},
                 "'num_inference_steps' must be an integer from 1 to 100, got a boolean", id="steps-bool"),
    pytest.param({"prompt": "x", "num_inference_steps": "28"},
                 "'num_inference_steps' must be an integer from 1 to 100, got a string",
                 id="steps-string"),
    pytest.param({"prompt": "x", "guidance_scale": 1e400},
                 "'guidance_scale' must be a finite number from 0 to 20, got inf", id="guidance-inf"),
    pytest.param({"prompt": "x", "seed": -1}, "'seed' must be from 0 to 4294967295, got -1", id="seed"),
    pytest.param({"prompt": "x", "width": 4096}, "'width' must be from 256 to 2048, got 4096",
                 id="width-range"),
    pytest.param({"prompt": "x", "height": 10**40},
                 "'height' must be from 256 to 2048, got a number too large", id="height-40-digits"),
    pytest.param({"prompt": "x", "seed": 1e100}, "'seed' must be from 0 to 4294967295, got 1e+100",
                 id="seed-float"),
    pytest.param({"prompt": "x", "guidance_scale": 20.0000001},
                 "'guidance_scale' must be from 0 to 20, got 20.0000001", id="guidance-just-over"),
    pytest.param({"prompt": "x", "negative_prompt": "blur"},
                 "unknown field(s) in input: negative_prompt; allowed: prompt, num_inference_steps, "
                 "guidance_scale, height, width, seed", id="unknown-field"),
]


@pytest.mark.parametrize("job_input, message", BAD)
def test_bad_input_error_shape(serving_tiny_flux: Any, job_input: dict, message: str) -> None:
    """/runsync answers FAILED with our error string. (The SDK pops ``error`` out of the handler's
    dict and does not return the rest, so ``model_id`` is not visible here: see test_handler.py.)"""
    result = serving_tiny_flux.runsync(job_input, timeout=120)
    assert set(result) == {"id", "status", "error"}
    assert result["status"] == "FAILED"
    assert result["error"] == message
    assert "Traceback" not in serving_tiny_flux.log_text()


def test_keeps_serving_after_failed_jobs(serving: Any, png_tools: Any) -> None:
    assert serving.runsync({"prompt": "x", "height": 100}, timeout=120)["status"] == "FAILED"
    # A body the SDK's server itself refuses (input must be an object): 422, never reaches us.
    request = urllib.request.Request(serving.url + "/runsync", data=json.dumps({"input": "a cat"}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 422
    assert serving.runsync({"prompt": "y", "seed": 2**40}, timeout=120)["status"] == "FAILED"
    output, _ = completed_image(serving, job(seed=9), png_tools)
    assert output["seed"] == 9
    assert serving.proc.poll() is None


# ---- --test_input ---------------------------------------------------------------------------------------
# visgate/tiny-sd has no family of its own: the generic family (AutoPipelineForText2Image) serves it.
@pytest.mark.parametrize("model_id", ["visgate/tiny-flux", "visgate/tiny-sdxl", "visgate/tiny-sd",
                                      "visgate/tiny-qwen-image"])
def test_test_input_good_job(run_worker_once: Callable, model_id: str) -> None:
    run = run_worker_once({"HF_MODEL_ID": model_id}, job(seed=5))
    assert run.returncode == 0, run.log[-3000:]
    assert "Job local_test completed successfully." in run.log
    # The result line shows the head of the PNG's base64 and its length (runtime.handler's
    # JobOutput; spelt out, the SDK cut it in the middle at 4096 characters), then the other
    # keys, in the contract's order.
    assert f"Job result: {{'output': {{'image_base64': '{PNG_B64_PREFIX}" in run.log
    assert re.search(r"' \+ <\d+ more characters>, 'model_id': '%s', 'seed': 5, 'height': 256, "
                     r"'width': 256\}\}\n" % re.escape(model_id), run.log), run.log[-2000:]


@pytest.mark.parametrize("model_id", ["visgate/tiny-flux", "visgate/tiny-sdxl"])
def test_test_input_bad_job(run_worker_once: Callable, model_id: str) -> None:
    run = run_worker_once({"HF_MODEL_ID": model_id}, {"prompt": "x", "num_inference_steps": 0})
    assert run.returncode == 1, run.log[-3000:]
    assert ("Job local_test failed with error: 'num_inference_steps' must be from 1 to 100, got 0"
            in run.log)
    assert "Traceback" not in run.log and "Job result" not in run.log


# ---- boot failures ---------------------------------------------------------------------------------------
def assert_boot_failed(run: Any, message: str) -> None:
    assert run.returncode != 0, run.log[-3000:]
    assert message in run.log, run.log[-3000:]
    assert "Traceback" not in run.log
    assert "Starting Serverless Worker" not in run.log  # it never took a job


def test_cuda_asked_without_a_gpu_fails_boot(run_worker_once: Callable) -> None:
    import torch

    if torch.cuda.is_available():  # on a GPU machine: ask for a device index that is not there
        device = f"cuda:{torch.cuda.device_count()}"
        expected = f"DEVICE={device} but only {torch.cuda.device_count()} CUDA device(s) exist"
    else:
        device = "cuda"
        expected = "DEVICE=cuda but no CUDA GPU is available (set DEVICE=cpu to run on the CPU)"
    run = run_worker_once({"HF_MODEL_ID": "visgate/tiny-flux", "DEVICE": device})
    assert_boot_failed(run, expected)
    assert re.search(r"boot failed at load: ", run.log)


@pytest.mark.parametrize("files, message", [
    ({"model_index.json": {"_class_name": "StableVideoDiffusionPipeline", "_diffusers_version": "0.24.0"}},
     "StableVideoDiffusionPipeline is not a supported text-to-image pipeline. Supported: flux "
     "(FluxPipeline), sdxl (StableDiffusionXLPipeline), qwen-image (QwenImagePipeline), and through the "
     "generic family any of: "),
    ({"config.json": {"architectures": ["BertForMaskedLM"], "model_type": "bert"}},
     "has no model_index.json: it is not a diffusers pipeline repository. Supported: flux"),
], ids=["video-pipeline", "transformers-model"])
def test_unsupported_local_model_fails_boot(run_worker_once: Callable, tmp_path: Path,
                                            files: dict, message: str) -> None:
    model_dir = tmp_path / "baked-model"
    model_dir.mkdir()
    for name, content in files.items():
        (model_dir / name).write_text(json.dumps(content))
    run = run_worker_once({"HF_MODEL_ID": str(model_dir), "DEVICE": "cpu"})
    assert_boot_failed(run, message)
    assert "StableDiffusionPipeline" in run.log  # the generic list is spelled out


@pytest.mark.parametrize("env, message, code", [
    ({}, "HF_MODEL_ID is required", 2),
    ({"HF_MODEL_ID": "   "}, "HF_MODEL_ID is required", 2),
    ({"HF_MODEL_ID": "visgate/tiny-flux", "VISGATE_PRECISION": "fp64"},
     "VISGATE_PRECISION='fp64' is not valid: use one of auto, bf16, fp16, fp32", 2),
], ids=["model-missing", "model-blank", "bad-choice"])
def test_bad_settings_fail_boot(run_worker_once: Callable, env: dict, message: str, code: int) -> None:
    run = run_worker_once(env)
    assert_boot_failed(run, message)
    assert run.returncode == code


def test_a_warmup_shape_the_family_refuses_fails_boot_before_loading(run_worker_once: Callable) -> None:
    # 1032 is a multiple of 8 (settings accept it) but not of FLUX's 16: the family's rules,
    # read from model_index.json, stop the boot before any weights are loaded.
    run = run_worker_once({"HF_MODEL_ID": "visgate/tiny-flux", "DEVICE": "cpu",
                           "VISGATE_WARMUP_SHAPES": "1032x1024"})
    assert_boot_failed(run, "VISGATE_WARMUP_SHAPES 1032x1024 is not valid for this model: 'height' "
                            "must be a multiple of 16")
    assert "boot failed at settings" in run.log
    assert "loading visgate/tiny-flux" not in run.log


def test_default_overrides_serve_jobs_and_warmup(run_worker_once: Callable) -> None:
    # A few-step distilled SDXL (Lightning, Hyper-SD) has its base model's configs: 30 steps at
    # guidance 5 unless the deployment says otherwise. Warmup compiles for the override too.
    run = run_worker_once({"HF_MODEL_ID": "visgate/tiny-sdxl", "VISGATE_DEFAULT_STEPS": "3",
                           "VISGATE_DEFAULT_GUIDANCE": "0"}, {"prompt": "a fox", "height": 256, "width": 256})
    assert run.returncode == 0, run.log[-3000:]
    assert "job done: 256x256, 3 steps" in run.log, run.log[-3000:]
    # The boot record (sorted keys) says what jobs get.
    assert '"defaults": {"guidance_scale": 0.0, "height": 1024, "num_inference_steps": 3,' in run.log


@pytest.mark.parametrize("env, message", [
    ({"VISGATE_DEFAULT_STEPS": "500"}, "VISGATE_DEFAULT_STEPS=500 is outside the range this model's "
                                       "jobs may ask for (num_inference_steps 1 to 100)"),
    ({"VISGATE_DEFAULT_GUIDANCE": "25"}, "VISGATE_DEFAULT_GUIDANCE=25 is outside the range this "
                                         "model's jobs may ask for (guidance_scale 0 to 20)"),
], ids=["steps", "guidance"])
def test_a_default_override_the_model_refuses_fails_boot_before_loading(run_worker_once: Callable,
                                                                       env: dict, message: str) -> None:
    run = run_worker_once({"HF_MODEL_ID": "visgate/tiny-flux", **env})
    assert_boot_failed(run, message)
    assert "boot failed at settings" in run.log
    assert "loading visgate/tiny-flux" not in run.log


# ---- each variant's defaults through the real path ---------------------------------------------------
def test_flux_dev_defaults(start_worker: Callable, png_tools: Any) -> None:
    worker = start_worker("visgate/tiny-flux-dev")
    try:
        # Default steps (28) at a small size, then the default size (1024) at one step.
        output, _ = completed_image(worker, {"prompt": "a fox", "height": 256, "width": 256, "seed": 1},
                                    png_tools)
        assert "job done: 256x256, 28 steps" in worker.log_text()
        output, pixels = completed_image(worker, {"prompt": "a fox", "num_inference_steps": 1}, png_tools)
        assert (output["height"], output["width"]) == (1024, 1024) and pixels.shape == (1024, 1024, 3)
        log = worker.log_text()
        assert '"guidance_scale": 3.5' in log and '"variant": "dev"' in log
    finally:
        worker.stop()


def test_sdxl_turbo_defaults(start_worker: Callable, png_tools: Any) -> None:
    worker = start_worker("visgate/tiny-sdxl-turbo")
    try:
        output, pixels = completed_image(worker, {"prompt": "a fox"}, png_tools)
        assert (output["height"], output["width"]) == (512, 512) and pixels.shape == (512, 512, 3)
        assert "job done: 512x512, 1 steps" in worker.log_text()
        assert '"variant": "turbo"' in worker.log_text()
    finally:
        worker.stop()


def test_schnell_and_base_defaults(serving_tiny_flux: Any, serving_tiny_sdxl: Any) -> None:
    """The session workers report their variant's defaults in the boot record."""
    flux_log, sdxl_log = serving_tiny_flux.log_text(), serving_tiny_sdxl.log_text()
    assert '"variant": "schnell"' in flux_log
    assert re.search(r'"defaults": \{"guidance_scale": 0\.0, "height": 1024, "num_inference_steps": 4, '
                     r'"width": 1024\}', flux_log)
    assert '"variant": "base"' in sdxl_log
    assert re.search(r'"defaults": \{"guidance_scale": 5\.0, "height": 1024, "num_inference_steps": 30, '
                     r'"width": 1024\}', sdxl_log)
