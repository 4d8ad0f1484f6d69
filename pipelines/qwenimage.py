"""Qwen-Image (and Qwen-Image-2512): the generic family's facts, with text embeddings of one length.

QwenImagePipeline cuts its text embeddings to the prompt's own token count, so the transformer's
input shapes change with every prompt. The worker compiles static graphs at warmup and serves
without recompiling (runtime/optimize.py): a job whose prompt has another token count than the
warmup prompt ran eagerly, which was nearly every job, with the compile paid at boot for nothing.
Under compilation this family pads every prompt's embeddings (and the negative prompt's) to
``TEXT_TOKENS`` with an attention mask that hides the padding, so one graph per image size
serves every prompt up to that length. The transformer takes the mask for any padding pattern
(``encoder_hidden_states_mask``) and positions its text tokens from 0 whatever the length, so
the image is the one the unpadded prompt gives (tests/integration/test_prompt_lengths.py).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from pipelines.generic import GenericFamily

log = logging.getLogger(__name__)

# Tokens each prompt's embeddings are padded to. Prompts are rarely longer (the pipeline drops its
# 34-token template; a detailed English prompt is 60-150 tokens), and the padding's cost is small
# next to the image's tokens: 4096 at 1024x1024, so 256 text tokens are 6% of the sequence. A
# longer prompt keeps its own length and runs eagerly, with a warning.
TEXT_TOKENS = 256


class QwenImageFamily(GenericFamily):
    name = "qwen-image"
    pipeline_classes = ("QwenImagePipeline",)

    @classmethod
    def matches(cls, model_index: dict[str, Any]) -> bool:
        return model_index.get("_class_name") in cls.pipeline_classes

    def fix_input_shapes(self, pipe: Any, masks: Callable[[], bool]) -> str | None:
        if not masks():
            # FlashAttention 2/3 refuse a mask: padded, every job would fail. Unpadded, the boot
            # compiles graphs dynamic in the prompt's length instead (runtime/warmup.py,
            # fit_prompt_lengths): a second compile at boot, and kernels for any length.
            log.warning("prompt embeddings not padded: this attention backend takes no attention "
                        "mask; VISGATE_ATTENTION=sdpa pads them to one static length")
            return "prompt embeddings not padded (the attention backend takes no mask)"
        if getattr(pipe.encode_prompt, "text_tokens", None) != TEXT_TOKENS:  # not wrapped twice
            pipe.encode_prompt = padded_encoder(pipe.encode_prompt, TEXT_TOKENS)
        self.fixed_prompt_shapes = True
        return f"prompt embeddings padded to {TEXT_TOKENS} tokens (masked)"


def padded_encoder(encode_prompt: Any, tokens: int) -> Any:
    """``encode_prompt`` whose embeddings are padded to ``tokens``, with a mask that hides the
    padding (always a mask: the pipeline returns none where no token is padding, and a graph
    without one would be another graph)."""

    @functools.wraps(encode_prompt)
    def encode(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        import torch

        embeds, mask = encode_prompt(*args, **kwargs)
        batch, length, _ = embeds.shape
        if length > tokens:
            log.warning("a prompt of %d tokens is longer than the %d the compiled graphs take: this "
                        "job is served eagerly", length, tokens)
            return embeds, mask
        if mask is None:
            mask = torch.ones((batch, length), dtype=torch.long, device=embeds.device)
        embeds = torch.cat([embeds, embeds.new_zeros(batch, tokens - length, embeds.shape[2])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(batch, tokens - length)], dim=1)
        return embeds, mask

    encode.text_tokens = tokens  # type: ignore[attr-defined]
    return encode
