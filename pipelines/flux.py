"""FLUX.1 (schnell and dev), told apart by the transformer's configuration.

schnell is guidance-distilled away (no guidance embedding): 4 steps, guidance 0, 256 T5 tokens.
dev embeds the guidance scale: 28 steps, guidance 3.5, 512 T5 tokens.
"""

from __future__ import annotations

from typing import Any

from pipelines.base import Defaults, GenerationRequest, PipelineFamily, SizeRules


class FluxFamily(PipelineFamily):
    name = "flux"
    pipeline_classes = ("FluxPipeline",)
    denoiser_attr = "transformer"
    fixed_prompt_shapes = True  # CLIP's 77 tokens and T5's padded max length

    def _detect_variant(self) -> str:
        config = self.component_config("transformer")
        return "dev" if config.get("guidance_embeds", False) else "schnell"

    @property
    def defaults(self) -> Defaults:
        # diffusers' FluxPipeline uses default_sample_size 128 latents: 1024 px at the usual VAE.
        side = 128 * self.vae_scale_factor
        if self.variant == "dev":
            return Defaults(steps=28, guidance=3.5, height=side, width=side)
        return Defaults(steps=4, guidance=0.0, height=side, width=side)

    @property
    def size_rules(self) -> SizeRules:
        # Latents are packed 2x2, so pixels must be a multiple of twice the VAE factor.
        return SizeRules.with_factor(2 * self.vae_scale_factor)

    @property
    def max_sequence_length(self) -> int:
        return 512 if self.variant == "dev" else 256

    def pipeline_class(self) -> type:
        from diffusers import FluxPipeline

        return FluxPipeline

    def call_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}
