"""Stable Diffusion XL: base-style models and distilled "turbo"-style ones.

Turbo-style checkpoints (sdxl-turbo) are trained at 512 px (UNet sample_size 64) with a
trailing-timestep scheduler and no classifier-free guidance: 1 step, guidance 0. Base-style
ones (SDXL base 1.0) serve 1024 px, 30 steps, guidance 5.
"""

from __future__ import annotations

from typing import Any

from pipelines.base import Defaults, GenerationRequest, PipelineFamily, SizeRules


class SDXLFamily(PipelineFamily):
    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    denoiser_attr = "unet"
    fixed_prompt_shapes = True  # CLIP pads to 77 tokens

    def _detect_variant(self) -> str:
        scheduler = self.component_config("scheduler", "scheduler_config.json")
        sample_size = self.component_config("unet").get("sample_size", 128)
        if scheduler.get("timestep_spacing") == "trailing" and sample_size <= 64:
            return "turbo"
        return "base"

    @property
    def defaults(self) -> Defaults:
        side = self.component_config("unet").get("sample_size", 128) * self.vae_scale_factor
        if self.variant == "turbo":
            return Defaults(steps=1, guidance=0.0, height=side, width=side)
        return Defaults(steps=30, guidance=5.0, height=side, width=side)

    @property
    def size_rules(self) -> SizeRules:
        return SizeRules.with_factor(self.vae_scale_factor)

    def warm_key(self, request: GenerationRequest) -> tuple[Any, ...]:
        # Classifier-free guidance (guidance > 1) doubles the UNet batch: another graph.
        return (request.height, request.width, request.guidance > 1)

    def preferred_dtype(self, device: str) -> str:
        # The SDXL UNet is trained and shipped in fp16; the VAE is kept safe from fp16 overflow
        # by diffusers' force_upcast: the pipeline decodes with the VAE upcast to fp32.
        return "fp16" if device.startswith("cuda") else "fp32"

    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline
