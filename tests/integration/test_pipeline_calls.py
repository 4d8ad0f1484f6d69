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
