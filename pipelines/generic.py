"""Any other diffusers text-to-image pipeline, through AutoPipelineForText2Image.

Its facts are read from the repository's configs and the pipeline's own call signature, so a
model served here gets the defaults its authors chose.
"""

from __future__ import annotations

import inspect
from functools import cached_property
from typing import Any

from pipelines.base import Defaults, PipelineFamily, SizeRules


# diffusers' text-to-image mapping also lists pipelines that need an input image on every call
# (ControlNet, Control, Kontext): our job contract has no image, so every job would fail.
_NEEDS_AN_IMAGE = ("ControlNet", "Control", "Kontext")


def text2image_class_names() -> tuple[str, ...]:
    """Prompt-only pipeline classes AutoPipelineForText2Image can build (diffusers' own mapping)."""
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    return tuple(sorted(cls.__name__ for cls in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()
                        if not any(marker in cls.__name__ for marker in _NEEDS_AN_IMAGE)))


class GenericFamily(PipelineFamily):
    name = "generic"

    @classmethod
    def matches(cls, model_index: dict[str, Any]) -> bool:
        return model_index.get("_class_name") in text2image_class_names()

    def _detect_variant(self) -> str:
        return str(self.model_index.get("_class_name"))

    @cached_property
    def _denoiser_config(self) -> dict[str, Any]:
        for component in ("transformer", "unet", "prior", "decoder"):
            config = self.component_config(component)
            if config:
                return config
        return {}

    @cached_property
    def _call_defaults(self) -> dict[str, Any]:
        import diffusers

        cls = getattr(diffusers, str(self.model_index.get("_class_name")), None)
        if cls is None:
            return {}
        params = inspect.signature(cls.__call__).parameters
        return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}

    @property
    def defaults(self) -> Defaults:
        rules = self.size_rules
        side = int(self._denoiser_config.get("sample_size", 128)) * self.vae_scale_factor
        side = max(rules.min_side, min(side, rules.max_side))
        # A 2K-native model (sample_size 256) would default beyond the pixel limit: every job
        # without a size would be refused. Serve the largest square the rules allow instead.
        while side * side > rules.max_pixels and side - rules.factor >= rules.min_side:
            side -= rules.factor
        side -= side % rules.factor
        steps = self._call_defaults.get("num_inference_steps")
        guidance = self._call_defaults.get("guidance_scale")
        return Defaults(steps=steps if isinstance(steps, int) else 30,
                        guidance=float(guidance) if isinstance(guidance, (int, float)) else 5.0,
                        height=side, width=side)

    @property
    def size_rules(self) -> SizeRules:
        patch = int(self._denoiser_config.get("patch_size", 1) or 1)
        return SizeRules.with_factor(self.vae_scale_factor * patch)

    @property
    def denoiser_attr(self) -> str:  # type: ignore[override]
        return "transformer" if (self.model_dir / "transformer").is_dir() else "unet"

    def pipeline_class(self) -> type:
        from diffusers import AutoPipelineForText2Image

        return AutoPipelineForText2Image
