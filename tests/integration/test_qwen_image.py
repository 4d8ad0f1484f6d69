"""Qwen-Image under compilation: one graph per image size serves prompts of any length.

QwenImagePipeline cuts its text embeddings to each prompt's token count. Compiled as the generic
family, the graphs warmup made matched only prompts of the warmup prompt's length: every other
job ran eagerly, silently. The qwen-image family pads the embeddings to a fixed length under a
mask; what must hold is that the padded image is the unpadded one, and that after warmup no
prompt up to that length needs another graph (``fail_on_recompile`` raises where it would).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from pipelines.base import GenerationRequest
from pipelines.qwenimage import TEXT_TOKENS, padded_encoder
from tests.integration.test_optimize import MAX_PIXEL_DIFF, MIN_PSNR_DB, _loaded, psnr

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Other lengths than warmup's prompt ("a photo of a cat sitting on a wooden table, warm light").
PROMPTS = ("a red fox", "a lighthouse at dusk on a rocky coast, long exposure")


def _request(prompt: str, guidance: float = 4.0) -> GenerationRequest:
    # 4.0 > 1: true classifier-free guidance, so the negative prompt's pass is served too.
    return GenerationRequest(prompt=prompt, steps=2, guidance=guidance, height=256, width=256, seed=3)


def test_the_family_serves_qwen_image(built_tiny_repo):
    from pipelines.registry import detect_family

    family = detect_family(built_tiny_repo("visgate/tiny-qwen-image"))
    assert (family.name, family.variant) == ("qwen-image", "QwenImagePipeline")
    assert family.defaults.guidance == 4.0  # true_cfg_scale, as the generic family reads it


def _predictions(family: Any, pipe: Any, prompt: str) -> tuple[np.ndarray, Any]:
    """The image and the transformer's outputs (every pass of every step) for ``prompt``."""
    import torch

    outputs: list[Any] = []
    hook = pipe.transformer.register_forward_hook(lambda m, a, out: outputs.append(out[0].clone()))
    try:
        image = family.generate(pipe, _request(prompt))
    finally:
        hook.remove()
    return image, torch.stack(outputs)


def test_padding_under_the_mask_gives_the_unpadded_image(built_tiny_repo):
    """Padding is lossless: the mask hides the padded tokens from every attention and the text
    positions start at 0 whatever the length. The same padding without the mask changes the
    transformer's predictions (so this test can tell)."""
    import torch

    loaded, _ = _loaded(built_tiny_repo("visgate/tiny-qwen-image"))
    family, pipe = loaded.family, loaded.pipe
    own = pipe.encode_prompt
    plain = {p: _predictions(family, pipe, p) for p in PROMPTS}

    def unmasked(*args: Any, **kwargs: Any) -> Any:
        embeds, _ = padded_encoder(own, TEXT_TOKENS)(*args, **kwargs)
        return embeds, None

    try:
        pipe.encode_prompt = padded_encoder(own, TEXT_TOKENS)
        for prompt, (image, predictions) in plain.items():
            padded_image, padded = _predictions(family, pipe, prompt)
            torch.testing.assert_close(padded, predictions, rtol=1e-4, atol=1e-5)
            assert np.abs(padded_image.astype(int) - image.astype(int)).max() <= MAX_PIXEL_DIFF
            assert psnr(padded_image, image) >= MIN_PSNR_DB
        pipe.encode_prompt = unmasked
        _, wrong = _predictions(family, pipe, PROMPTS[0])
        assert (wrong - plain[PROMPTS[0]][1]).abs().max() > 1e-3
    finally:
        pipe.encode_prompt = own


@pytest.mark.parametrize("compile_mode", ["regional", "aot"])
def test_compiled_graphs_serve_prompts_of_every_length(built_tiny_repo, tmp_path, compile_mode, caplog):
    import torch

    from runtime.aot import AotStore
    from runtime.optimize import optimize, serve_stance
    from runtime.warmup import warmup

    loaded, settings = _loaded(built_tiny_repo("visgate/tiny-qwen-image"), VISGATE_COMPILE=compile_mode,
                               VISGATE_CACHE_DIR=str(tmp_path))
    family, pipe = loaded.family, loaded.pipe
    eager = {p: family.generate(pipe, _request(p)) for p in PROMPTS}
    report = optimize(loaded, settings, aot_store=AotStore(tmp_path / "aot", "testkey"))
    assert f"prompt embeddings padded to {TEXT_TOKENS} tokens" in report.applied["compile"]
    try:
        warmup(family, pipe, [(256, 256)])
        serve_stance(report)
        caplog.set_level(logging.WARNING)
        # A recompile (torch.compile) raises here; an unseen aot signature would run eagerly
        # with a warning.
        with torch.compiler.set_stance("fail_on_recompile"):
            for prompt, image in eager.items():
                for guidance in (4.0, 1.0):  # with and without the negative prompt's pass
                    served = family.generate(pipe, _request(prompt, guidance))
                    if guidance == 4.0:
                        assert psnr(served, image) >= MIN_PSNR_DB
        assert not [r for r in caplog.records if "eagerly" in r.getMessage()]
        for wrapper in report.aot_modules:
            assert wrapper.eager_calls == 0

        # A prompt past the padded length keeps its own (the pipeline's limit is 512 tokens) and
        # is served eagerly, with a warning that says why.
        long = family.generate(pipe, _request("a fox " * 60))
        assert long.shape == (256, 256, 3)
        assert any(f"longer than the {TEXT_TOKENS} the compiled graphs take" in r.getMessage()
                   for r in caplog.records)
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()


def test_no_padding_where_nothing_is_compiled(built_tiny_repo):
    """Uncompiled, padding would only cost time (a longer sequence at every step)."""
    from runtime.optimize import optimize

    loaded, settings = _loaded(built_tiny_repo("visgate/tiny-qwen-image"), VISGATE_COMPILE="off")
    optimize(loaded, settings)
    assert not hasattr(loaded.pipe.encode_prompt, "text_tokens")
