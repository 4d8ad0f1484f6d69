"""Each job field reaches the diffusers pipeline, observed where the real modules consume it
(forward pre-hooks on the tiny pipelines): steps, guidance, prompt, and the family's extra
arguments. A family that dropped or hard-coded one would still produce an image of the right
size, so the handler tests alone would not notice."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch

from pipelines.base import GenerationRequest
from pipelines.registry import detect_family

pytestmark = pytest.mark.timeout(300)


def _request(**fields: Any) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red bicycle", "steps": 2, "guidance": 0.0, "height": 256,
                                "width": 256, "seed": 11, **fields})


def _loaded(built_tiny_repo: Callable, model: str) -> tuple[Any, Any]:
    family = detect_family(built_tiny_repo(model))
    return family, family.load(torch.float32, "cpu")


@pytest.fixture(scope="module")
def flux_dev(built_tiny_repo):
    return _loaded(built_tiny_repo, "visgate/tiny-flux-dev")


@pytest.fixture(scope="module")
def flux_schnell(built_tiny_repo):
    return _loaded(built_tiny_repo, "visgate/tiny-flux")


@pytest.fixture(scope="module")
def sdxl(built_tiny_repo):
    return _loaded(built_tiny_repo, "visgate/tiny-sdxl")


def _seen(module: torch.nn.Module, key: Callable, family: Any, pipe: Any, *requests: GenerationRequest) -> list:
    seen: list[Any] = []
    hook = module.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(key(args, kwargs)),
                                            with_kwargs=True)
    try:
        for request in requests:
            family.generate(pipe, request)
    finally:
        hook.remove()
    return seen


def test_steps_reach_the_denoiser(flux_dev):
    family, pipe = flux_dev
    assert len(_seen(pipe.transformer, lambda a, k: 1, family, pipe, _request(steps=3))) == 3


def test_guidance_reaches_the_flux_dev_transformer(flux_dev):
    family, pipe = flux_dev  # FLUX.1-dev is guidance-distilled: the scale is a transformer input
    seen = _seen(pipe.transformer, lambda a, k: float(k["guidance"][0]), family, pipe,
                 _request(steps=1, guidance=7.0))
    assert seen == [7.0]


def test_guidance_decides_the_sdxl_cfg_batch(sdxl):
    family, pipe = sdxl
    seen = _seen(pipe.unet, lambda a, k: (a[0] if a else k["sample"]).shape[0], family, pipe,
                 _request(steps=1, guidance=0.0), _request(steps=1, guidance=5.0))
    assert seen == [1, 2]


def test_t5_sequence_length_is_the_variant_s(flux_schnell):
    family, pipe = flux_schnell
    seen = _seen(pipe.text_encoder_2, lambda a, k: (a[0] if a else k["input_ids"]).shape[-1],
                 family, pipe, _request(steps=1))
    assert seen == [family.max_sequence_length] == [256]


def test_the_prompt_reaches_the_text_encoder_and_changes_the_image(sdxl):
    family, pipe = sdxl
    ids = _seen(pipe.text_encoder, lambda a, k: (a[0] if a else k["input_ids"])[0].tolist(), family, pipe,
                _request(steps=1, prompt="a red bicycle"))
    tokens = pipe.tokenizer("a red bicycle", padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True).input_ids
    assert ids and ids[0] == tokens
    a = family.generate(pipe, _request(steps=1, prompt="a red bicycle"))
    b = family.generate(pipe, _request(steps=1, prompt="a lighthouse at dusk"))
    assert not np.array_equal(a, b)


@pytest.fixture(scope="module")
def generic_sd(built_tiny_repo):
    return _loaded(built_tiny_repo, "visgate/tiny-sd")


def test_the_generic_family_serves_a_pipeline_without_a_family_of_its_own(generic_sd):
    family, pipe = generic_sd
    assert (family.name, family.variant, type(pipe).__name__) == ("generic", "StableDiffusionPipeline",
                                                                   "StableDiffusionPipeline")
    # the pipeline's own defaults: 50 steps, guidance 7.5 (classifier-free: a batch of 2), 512 px
    assert (family.defaults.steps, family.defaults.guidance, family.defaults.height) == (50, 7.5, 512)
    seen = _seen(pipe.unet, lambda a, k: (a[0] if a else k["sample"]).shape, family, pipe,
                 _request(steps=3, guidance=7.5, height=256, width=320))
    assert seen == [torch.Size([2, 4, 32, 40])] * 3
    image = family.generate(pipe, _request(steps=2, guidance=7.5, height=256, width=320))
    assert image.shape == (256, 320, 3) and image.std() > 1.0


def test_a_generic_image_is_the_pipelines_own(built_tiny_repo, tmp_path):
    """Kandinsky 3's (and DeepFloyd IF's) "pt" images are in [-1, 1]: a [0, 1] conversion there
    turned every negative value black. The generic family takes the pipeline's own output."""
    from diffusers import DDPMScheduler, Kandinsky3Pipeline, Kandinsky3UNet, VQModel
    from transformers import AutoTokenizer, T5EncoderModel

    flux = built_tiny_repo("visgate/tiny-flux")  # its tiny T5 serves as Kandinsky 3's encoder
    torch.manual_seed(0)
    unet = Kandinsky3UNet(in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4,
                          layers_per_block=3, block_out_channels=(32, 64), cross_attention_dim=4,
                          encoder_hid_dim=32)
    # four levels: the pipeline assumes the real MoVQ's 8x (a 2-level one gives 64 px images)
    movq = VQModel(block_out_channels=[32, 32, 32, 32], in_channels=3, out_channels=3, latent_channels=4,
                   down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
                   up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3, layers_per_block=1,
                   norm_num_groups=8, norm_type="spatial", num_vq_embeddings=12, vq_embed_dim=4)
    Kandinsky3Pipeline(tokenizer=AutoTokenizer.from_pretrained(flux / "tokenizer_2"),
                       text_encoder=T5EncoderModel.from_pretrained(flux / "text_encoder_2"),
                       unet=unet, movq=movq, scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2")
                       ).save_pretrained(tmp_path / "k3", safe_serialization=True)
    family = detect_family(tmp_path / "k3")
    assert (family.name, family.variant) == ("generic", "Kandinsky3Pipeline")
    pipe = family.load(torch.float32, "cpu")
    request = _request(guidance=3.0)
    image = family.generate(pipe, request)
    own = pipe(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance,
               height=request.height, width=request.width, output_type="np",
               generator=torch.Generator().manual_seed(request.seed)).images[0]
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - (own * 255).round().astype(int)).max() <= 1


def test_a_size_the_pipeline_does_not_make_fails_the_warmup(flux_schnell, monkeypatch):
    """A warmup shape the pipeline rounds: the boot fails at warmup (every job at that size
    would fail too), with the same message a job would get."""
    from runtime.boot import failure_message
    from runtime.boot_report import BootRecord
    from runtime.errors import WorkerError
    from runtime.warmup import warmup

    family, pipe = flux_schnell
    run = family._run
    monkeypatch.setattr(family, "_run", lambda *args: run(*args)[:-16])
    record = BootRecord()
    with pytest.raises(WorkerError) as info, record.stage("warmup"):
        warmup(family, pipe, [(256, 320)], steps=1)
    assert failure_message(info.value, (), record.failed_stage) == (
        "warmup", "the pipeline made a 320x240 image for a 320x256 request; this size is not "
                  "supported by this model")


@pytest.mark.parametrize("model", ["flux_schnell", "sdxl", "generic_sd"])
def test_a_generated_image_is_contiguous_for_the_png_encoder(model, request):
    """The "pt" conversion returned a transposed view of the CHW tensor: fpng took 6.9 ms on a
    1024² one against 3.2 ms on the same pixels in HWC order."""
    family, pipe = request.getfixturevalue(model)
    image = family.generate(pipe, _request(steps=1))
    assert image.flags["C_CONTIGUOUS"] and image.shape == (256, 256, 3) and image.dtype == np.uint8


# ---- the execution device ------------------------------------------------------------------------
def test_the_execution_device_is_looked_up_once_per_pipeline(built_tiny_repo, monkeypatch):
    """diffusers' _execution_device walks every module (7.6 ms for FLUX.1-dev, 10.7 ms for SDXL on
    a CPU); generate() asked it on every job. Now once per pipeline, and each pipeline has its own.
    (The pipeline's own __call__ still asks once per call: those walks are diffusers'.)"""
    from pipelines.base import execution_device

    family, pipe = _loaded(built_tiny_repo, "visgate/tiny-flux")
    walks: list[Any] = []
    walk = type(pipe)._execution_device.fget
    monkeypatch.setattr(type(pipe), "_execution_device", property(lambda p: walks.append(p) or walk(p)))

    def walks_in(job: Callable[[], Any]) -> int:
        before = len(walks)
        job()
        return len(walks) - before

    first = walks_in(lambda: family.generate(pipe, _request(steps=1, seed=1)))
    second = walks_in(lambda: family.generate(pipe, _request(steps=1, seed=2)))
    assert second == first - 1 and execution_device(pipe) == torch.device("cpu")
    # Another pipeline of the same class, elsewhere (the meta device), gets its own answer.
    _, other = _loaded(built_tiny_repo, "visgate/tiny-flux")
    other.to("meta")
    assert walks_in(lambda: execution_device(other)) == 1 and execution_device(other) == torch.device("meta")
    assert walks_in(lambda: execution_device(pipe)) == 0 and execution_device(pipe) == torch.device("cpu")


# ---- images that must not come back as a success ------------------------------------------------
def _job(family: Any, pipe: Any, **fields: Any) -> dict[str, Any]:
    """One job through the real handler (validate -> generate -> encode -> job_error)."""
    from runtime.encode import PngEncoder
    from runtime.handler import Service, make_handler

    service = Service(model_id="tiny", family=family, pipe=pipe, encoder=PngEncoder())
    job = {"prompt": "a red bicycle", "num_inference_steps": 2, "height": 256, "width": 256, "seed": 3}
    return make_handler(service)({"input": {**job, **fields}})


def _nan_out(module: torch.nn.Module) -> Any:
    """Every output of ``module`` NaN, as an fp16 overflow leaves it."""
    def poison(_module: Any, _args: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (out[0] * float("nan"), *out[1:])
        if hasattr(out, "sample"):
            out.sample = out.sample * float("nan")
            return out
        return out * float("nan")
    return module.register_forward_hook(poison)


@pytest.mark.parametrize("model", ["flux_schnell", "generic_sd"])
def test_nan_pixels_are_an_error_not_a_black_image(model, request):
    """FLUX's "pt" output, and the generic family's PIL one (where diffusers has already cast NaN
    to 0): both were served as a black PNG. Now the job fails with a reason and the worker serves
    the next job as before."""
    from pipelines.base import NON_FINITE

    family, pipe = request.getfixturevalue(model)
    before = _job(family, pipe)
    hook = _nan_out(pipe.transformer if model == "flux_schnell" else pipe.unet)
    try:
        response = _job(family, pipe)
    finally:
        hook.remove()
    assert response == {"error": f"generation failed: {NON_FINITE}", "model_id": "tiny"}
    assert _job(family, pipe) == before  # nothing left behind


def test_a_safety_checker_verdict_is_an_error_not_a_black_image(generic_sd):
    """SD 1.x repositories ship a safety checker: diffusers blacks out a flagged image and says so
    only in a flag, so the job came back a "success" of zeros. A real checker here (tiny CLIP),
    its concept thresholds set so that it flags every image."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    family, pipe = generic_sd
    tiny = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config={**tiny, "vocab_size": 1000}, vision_config={**tiny, "image_size": 32, "patch_size": 4},
        projection_dim=32)).eval()
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    checked = type(pipe)(**{**pipe.components, "safety_checker": checker, "feature_extractor": extractor})
    assert set(_job(family, checked)) == {"image_base64", "model_id", "seed", "height", "width"}
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-10.0)  # every image over every threshold
    response = _job(family, checked)
    assert response["model_id"] == "tiny" and set(response) == {"error", "model_id"}
    assert "safety checker flagged this image" in response["error"]


def test_a_rejected_warmup_image_warns_and_the_boot_goes_on(flux_schnell, caplog):
    """The pipeline ran whole (every graph warm): only the image is unusable."""
    from runtime.warmup import warmup

    family, pipe = flux_schnell
    hook = _nan_out(pipe.vae.decoder)
    try:
        runs = warmup(family, pipe, [(256, 256)], steps=1)
    finally:
        hook.remove()
    assert runs[0]["rejected"].startswith("the model produced NaN/inf pixels")
    assert "the image was rejected" in caplog.text


def test_the_generic_warm_key_knows_classifier_free_guidance(generic_sd, flux_schnell):
    """SD runs its UNet at batch 2 with guidance > 1: a guidance-0 job is another graph, which a
    compiled worker must name as not warmed up (as SDXL's key does)."""
    family, _ = generic_sd
    assert family.warm_key(_request(guidance=7.5)) != family.warm_key(_request(guidance=0.0))
    assert family.warm_key(_request(guidance=7.5)) == family.warm_key(_request(guidance=2.0))
    flux, _ = flux_schnell  # no such switch: guidance changes no shape
    assert flux.warm_key(_request(guidance=7.5)) == flux.warm_key(_request(guidance=0.0))


# ---- Qwen-Image: classifier-free guidance is true_cfg_scale -------------------------------------
@pytest.fixture(scope="module")
def qwen_image(built_tiny_repo):
    """The built-in tiny Qwen-Image pipeline (random weights; a byte-level tokenizer with no
    merges): the generic family's facts, in the qwen-image family."""
    return _loaded(built_tiny_repo, "visgate/tiny-qwen-image")


def test_qwen_image_guidance_is_classifier_free_guidance(qwen_image):
    """QwenImagePipeline runs classifier-free guidance from true_cfg_scale, and only with a
    negative prompt; its guidance_scale is for guidance-distilled transformers and is otherwise
    ignored. The job's guidance_scale was passed as guidance_scale with no negative prompt: it
    changed nothing, and no Qwen-Image job ever ran with guidance (one transformer pass per step)."""
    family, pipe = qwen_image
    assert (family.name, family.variant) == ("qwen-image", "QwenImagePipeline")
    assert family.defaults.guidance == 4.0  # the pipeline's true_cfg_scale
    passes = _seen(pipe.transformer, lambda a, k: 1, family, pipe, _request(steps=2, guidance=4.0))
    assert len(passes) == 4  # a conditional and an unconditional pass per step
    assert len(_seen(pipe.transformer, lambda a, k: 1, family, pipe, _request(steps=2, guidance=1.0))) == 2
    a, b = (family.generate(pipe, _request(steps=2, guidance=g)) for g in (2.0, 6.0))
    assert a.shape == b.shape == (256, 256, 3) and not np.array_equal(a, b)
