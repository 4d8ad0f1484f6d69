"""Any other diffusers text-to-image pipeline, through AutoPipelineForText2Image.

Its facts are read from the repository's configs and the pipeline's own call signature, so a
model served here gets the defaults its authors chose.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import sys
from dataclasses import replace
from functools import cached_property
from typing import Any

from pipelines.base import Defaults, GenerationRequest, PipelineFamily, SizeRules


# diffusers' text-to-image mapping also lists pipelines that need an input image on every call
# (ControlNet, Control, Kontext): our job contract has no image, so every job would fail.
_NEEDS_AN_IMAGE = ("ControlNet", "Control", "Kontext")
# What every job passes (pipelines/base.py): a pipeline whose call takes less (no guidance_scale
# in Stable Cascade's combined pipeline, no num_inference_steps in Helios' pyramid one) would
# fail at its first call, so it is not offered.
_CALL_ARGUMENTS = ("prompt", "num_inference_steps", "guidance_scale", "height", "width", "generator",
                   "output_type")
# Pipelines whose few-step distilled checkpoints say so in model_index.json (``is_distilled``) while
# the call keeps the base checkpoint's defaults: (steps, guidance) their authors give for the
# distilled one. FLUX.2 [klein] 4B/9B: 4 steps, guidance 1 (ignored: no CFG); Krea 2 turbo (the
# pipeline's own docstring): 8 steps, guidance 0. Left to the call's 50/4.0 and 28/4.5, a
# distilled model would run 6-12x the steps it needs (Krea 2 also with classifier-free guidance).
_DISTILLED_DEFAULTS: dict[str, tuple[int, float]] = {
    "Flux2KleinPipeline": (4, 1.0),
    "Krea2Pipeline": (8, 0.0),
}
# Distilled checkpoints that run no classifier-free guidance at any guidance.
_CFG_OFF_WHEN_DISTILLED = ("Flux2KleinPipeline",)
# Pipelines whose classifier-free guidance is a second call of the denoiser (the negative prompt's
# prediction), not a batch of 2, with the negative prompt padded to the prompt's fixed length
# (T5's 512 tokens; Qwen3's 512): guidance on or off runs the same graphs. Keyed by guidance, a
# job that switched it was told it ran eagerly while the warmed graphs served it
# (tests/integration/test_more_families.py runs Chroma and FLUX.2 [klein] under
# fail_on_recompile; Krea 2 and Ovis-Image by their code: both pad to max_sequence_length).
_CFG_IN_A_SECOND_CALL = ("ChromaPipeline", "Flux2KleinPipeline", "Krea2Pipeline", "OvisImagePipeline")


def _takes_the_job(cls: type) -> bool:
    params = inspect.signature(cls.__call__).parameters
    if "num_frames" in params:  # a video pipeline (Helios): its output has frames, not images
        return False
    # Each by name: a call that takes the rest as **kwargs (Wuerstchen's combined pipeline) hands
    # them to its own stages, beside its own values: guidance_scale twice, a TypeError every job.
    return all(name in params for name in _CALL_ARGUMENTS)


def text2image_class_names() -> tuple[str, ...]:
    """Prompt-only pipeline classes AutoPipelineForText2Image can build (diffusers' own mapping)
    that take every argument of a job."""
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    return tuple(sorted(cls.__name__ for cls in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()
                        if not any(marker in cls.__name__ for marker in _NEEDS_AN_IMAGE)
                        and _takes_the_job(cls)))


class GenericFamily(PipelineFamily):
    name = "generic"
    # The pipeline's own post-processing: Kandinsky's and DeepFloyd IF's "pt" images are in
    # [-1, 1], where a [0, 1] conversion would turn every negative value black.
    output_type = "pil"

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
    def _class(self) -> type | None:
        import diffusers

        return getattr(diffusers, str(self.model_index.get("_class_name")), None)

    @cached_property
    def _call_defaults(self) -> dict[str, Any]:
        if self._class is None:
            return {}
        params = inspect.signature(self._class.__call__).parameters
        return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}

    @property
    def defaults(self) -> Defaults:
        rules = self.size_rules
        # The pipeline's own default size where its signature has one (AuraFlow, Kandinsky 3:
        # 1024), else what it computes: the denoiser's sample size in latents.
        native = int(self._denoiser_config.get("sample_size", 128)) * self.vae_scale_factor
        own = (self._call_defaults.get("height"), self._call_defaults.get("width"))
        if self._binned_resolution:
            # A pipeline that bins sizes (PixArt, Sana) generates at the size among its native
            # resolution's buckets nearest the asked one's aspect, then resizes the image to the
            # asked size: Sana's signature says 1024 for every checkpoint, so a 512 px one
            # (sample_size 16) upscaled every default image 2x from 512². Its native size instead.
            own = (None, None)
        height, width = (value if isinstance(value, int) and not isinstance(value, bool) else native
                         for value in own)
        height, width = _fit(height, width, rules)
        steps = self._call_defaults.get("num_inference_steps")
        guidance = self._call_defaults.get("guidance_scale")
        if self.model_index.get("is_distilled") is True and self.variant in _DISTILLED_DEFAULTS:
            steps, guidance = _DISTILLED_DEFAULTS[self.variant]
        if self._true_cfg:
            guidance = self._call_defaults.get("true_cfg_scale")
        if guidance is None and self._guidance_schedule:
            guidance = self._guidance_schedule[0]  # Ideogram 4: 7, its first 45 steps' guidance
        return Defaults(steps=steps if isinstance(steps, int) else 30,
                        guidance=float(guidance) if isinstance(guidance, (int, float)) else 5.0,
                        height=height, width=width)

    @cached_property
    def _true_cfg(self) -> bool:
        """Qwen-Image: classifier-free guidance is ``true_cfg_scale``, and it runs only when a
        negative prompt is given; ``guidance_scale`` (default None) is an input of
        guidance-distilled transformers alone, and the others ignore it with a warning."""
        return ("true_cfg_scale" in self._call_defaults and "guidance_scale" in self._call_defaults
                and self._call_defaults["guidance_scale"] is None
                and not self._denoiser_config.get("guidance_embeds", False))

    @cached_property
    def _guidance_schedule(self) -> tuple[float, ...] | None:
        """A per-step guidance the call defaults to instead of a constant ``guidance_scale``
        (Ideogram 4: 7 for 45 steps, then 3 for its 3 "polish" steps; its guidance_scale
        defaults to None, and it refuses both at once: every job failed)."""
        schedule = self._call_defaults.get("guidance_schedule")
        if (self._call_defaults.get("guidance_scale", 0) is not None
                or not isinstance(schedule, (tuple, list)) or not schedule
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in schedule)):
            return None
        return tuple(float(v) for v in schedule)

    def call_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        if self._guidance_schedule:
            # At the model's own steps and guidance, the authors' schedule; any other job asks
            # for a constant guidance over its steps (the schedule fits its own steps only).
            own = self.defaults
            if (request.steps, request.guidance) == (len(self._guidance_schedule), own.guidance):
                return {"guidance_scale": None}
            return {"guidance_schedule": None}
        if not self._true_cfg:
            return {}
        # The job's guidance_scale is the guidance these models have. Passed on as guidance_scale
        # it did nothing, and with no negative prompt the pipeline never ran classifier-free
        # guidance at all. An empty (" ") negative prompt is what the model's authors use.
        return {"guidance_scale": None, "true_cfg_scale": request.guidance,
                "negative_prompt": " " if request.guidance > 1 else None}

    def warm_key(self, request: GenerationRequest) -> tuple[Any, ...]:
        # Pipelines with a do_classifier_free_guidance switch (SD 1.x/2.x, SD3, PixArt, ...) run
        # the denoiser at batch 2 with guidance > 1 and at batch 1 without: another graph, as in
        # SDXL. Elsewhere guidance changes no shape.
        height, width = self._denoised_size(request.height, request.width)
        cfg_above = self._cfg_above
        if cfg_above is None:
            return (height, width)
        return (height, width, request.guidance > cfg_above)

    @cached_property
    def _binned_resolution(self) -> int | None:
        """The checkpoint's resolution (sample size x the VAE's factor) for a pipeline that bins
        sizes to it (PixArt, Sana); None for one that does not."""
        if self._call_defaults.get("use_resolution_binning") is not True or "sample_size" not in self._denoiser_config:
            return None
        return int(self._denoiser_config["sample_size"]) * self.vae_scale_factor

    @cached_property
    def _size_buckets(self) -> dict[str, Any] | None:
        """The aspect-ratio buckets a pipeline that bins sizes denoises at: those of its
        checkpoint's resolution, from the pipeline's own module; None where it does not bin or
        no such table is there."""
        if self._class is None or not self._binned_resolution:
            return None
        module = sys.modules.get(self._class.__module__)
        buckets = getattr(module, f"ASPECT_RATIO_{self._binned_resolution}_BIN", None)
        return buckets if isinstance(buckets, dict) else None

    def _denoised_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the denoiser and the VAE decoder run at for a job of this size: the job's, or
        the bucket a binning pipeline picks (it resizes the image to the job's size after the
        decoder). Sizes that share a bucket share the compiled graphs: keyed by the job's size,
        a job at an unwarmed size of a warmed bucket was told it ran eagerly when it had not,
        and to warm a size that adds no graph."""
        buckets = self._size_buckets
        if not buckets:
            return height, width
        from diffusers.image_processor import PixArtImageProcessor

        return PixArtImageProcessor.classify_height_width_bin(height, width, ratios=buckets)

    @property
    def _cfg_above(self) -> float | None:
        """The guidance above which the pipeline runs classifier-free guidance; None where it
        never does: no such switch, or a distilled FLUX.2 [klein] (its switch reads
        ``is_distilled``); also None where guidance runs the same graphs either way (a second
        call of the denoiser: Chroma, FLUX.2 [klein] base, Krea 2, Ovis-Image)."""
        if self._class is None or self.variant in _CFG_IN_A_SECOND_CALL:
            return None
        if not hasattr(self._class, "do_classifier_free_guidance"):
            # No property, but the same switch as a local of the call (PixArt-Alpha/Sigma,
            # AuraFlow, DeepFloyd IF): a job switching guidance on or off ran another graph,
            # eagerly, while its key said it was warmed, so no warning said so.
            return _local_cfg_switch(self._class)
        if self.variant in _CFG_OFF_WHEN_DISTILLED and self.model_index.get("is_distilled") is True:
            return None
        return 1.0

    @property
    def limits(self) -> dict[str, tuple[float, float]]:
        limits = super().limits
        floor = _guidance_floor(self._class) if self._class is not None else None
        if floor is not None:
            # PRX refuses guidance below 1 in its check_inputs: a job (or VISGATE_DEFAULT_GUIDANCE)
            # that validation let through failed inside diffusers.
            limits["guidance_scale"] = (max(floor, limits["guidance_scale"][0]), limits["guidance_scale"][1])
        return limits

    @property
    def size_rules(self) -> SizeRules:
        if self._class is not None and hasattr(self._class, "_pack_latents"):
            # Latents packed in 2x2 patches (Chroma, Flux 2, Qwen-Image): a side that is not a
            # multiple of twice the VAE's factor is silently rounded down by the pipeline, and the
            # image would not have the size the response states.
            rules = SizeRules.with_factor(2 * self.vae_scale_factor)
        elif self.component_config("movq"):
            # Kandinsky 2.2/3 round each side up to a multiple of 64 (8 latent pixels of 8x).
            rules = SizeRules.with_factor(64)
        else:
            rules = SizeRules.with_factor(self.vae_scale_factor * self._patch())
        # What the pipeline's own check_inputs asks sides to divide by, where stricter (GLM-Image:
        # the VAE's factor x the patch x 2 = 32, where the patched latents gave 16).
        asked = _checked_multiples(self._class, self.vae_scale_factor, self._patch()) if self._class else ()
        factor = math.lcm(rules.factor, *asked)
        if factor != rules.factor:
            rules = SizeRules.with_factor(factor)
        most = self._position_table_side()
        if most is not None and most < rules.max_side:
            rules = replace(rules, max_side=max(rules.min_side, most - most % rules.factor))
        shapes = self._standard_shapes(rules)
        return replace(rules, shapes=shapes) if shapes else rules

    def _standard_shapes(self, rules: SizeRules) -> frozenset[tuple[int, int]] | None:
        """HunyuanDiT makes only the sizes of its SUPPORTED_SHAPE list: it generated any other at
        the nearest of them (and did not resize back), so a job at another size spent its whole
        generation on an image the worker then refused as the wrong size."""
        if self._class is None or self._call_defaults.get("use_resolution_binning") is not True:
            return None
        module = sys.modules.get(self._class.__module__)
        listed = getattr(module, "SUPPORTED_SHAPE", None)
        if not isinstance(listed, (list, tuple)) or "map_to_standard_shapes" not in _source(self._class.__call__):
            return None
        shapes = frozenset((int(h), int(w)) for h, w in listed)
        # Within what every model allows (a listed size past it is refused as before).
        return frozenset(s for s in shapes if all(rules.min_side <= v <= rules.max_side for v in s)
                         and s[0] * s[1] <= rules.max_pixels) or None

    def _position_table_side(self) -> int | None:
        """The largest side, in pixels, the denoiser's table of positions covers
        (``pos_embed_max_size``: patches along a side in SD3, CogView3-Plus, OmniGen and
        GLM-Image; all of them, a square's, in AuraFlow). Past it AuraFlow indexed out of its
        table (1552 px: an IndexError; on a GPU a device-side assert, which has the worker
        replaced) and the others raised inside diffusers: an input error instead."""
        config = self._denoiser_config
        value = config.get("pos_embed_max_size")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            return None
        patches = math.isqrt(value) if config.get("_class_name") == "AuraFlowTransformer2DModel" else value
        return patches * self._patch() * self.vae_scale_factor

    def _patch(self) -> int:
        """The transformer's patch side: ``patch_size`` (a list for video models), or Z-Image's
        ``all_patch_size``; the largest, which every other divides."""
        config = self._denoiser_config
        value = config.get("patch_size") or config.get("all_patch_size") or 1
        values = value if isinstance(value, (list, tuple)) else [value]
        return max((int(v) for v in values if isinstance(v, (int, float))), default=1)

    def to_uint8(self, image: Any) -> Any:
        import numpy as np

        return np.asarray(image.convert("RGB"))

    @property
    def denoiser_attr(self) -> str:  # type: ignore[override]
        return "transformer" if (self.model_dir / "transformer").is_dir() else "unet"

    def pipeline_class(self) -> type:
        from diffusers import AutoPipelineForText2Image

        return AutoPipelineForText2Image


@functools.lru_cache(maxsize=None)
def _source(function: Any) -> str:
    """A pipeline method's source, read once (size_rules and warm_key are read for every job);
    empty where it cannot be read or there is no such method."""
    try:
        return inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return ""


_LOCAL_CFG_SWITCH = re.compile(r"\bdo_classifier_free_guidance\s*=\s*guidance_scale\s*>\s*([0-9]+(?:\.[0-9]*)?)\b")


@functools.lru_cache(maxsize=None)  # read per job (warm_key)
def _local_cfg_switch(cls: type) -> float | None:
    """The threshold of ``do_classifier_free_guidance = guidance_scale > X`` in the pipeline's
    call, where it is computed there rather than as a property; None where it is not (or the
    source cannot be read: then guidance is taken to change no shape, as before)."""
    found = _LOCAL_CFG_SWITCH.search(_source(cls.__call__))
    return float(found[1]) if found else None


_SIDE_MULTIPLE = re.compile(r"\b(?:height|width)\s*%\s*(\([^()]*\)|\d+)\s*!=\s*0")
# The names such a check divides by, as this family knows them.
_SIDE_NAMES = ("self.vae_scale_factor", "self.transformer.config.patch_size", "self.patch_size")


@functools.lru_cache(maxsize=None)
def _checked_multiples(cls: type, vae_scale_factor: int, patch: int) -> tuple[int, ...]:
    """The multiples the pipeline's check_inputs requires of the height and width
    (``if height % (self.vae_scale_factor * 2) != 0 ...: raise``), where each is a product of
    numbers, the VAE's factor and the patch side; others (a local variable's) are left out."""
    source = _source(getattr(cls, "check_inputs", None))
    values = {"self.vae_scale_factor": vae_scale_factor, "self.patch_size": patch,
              "self.transformer.config.patch_size": patch}
    found = []
    for expression in _SIDE_MULTIPLE.findall(source):
        terms = [term.strip() for term in expression.strip("()").split("*")]
        numbers = [values[t] if t in _SIDE_NAMES else int(t) if t.isdigit() else None for t in terms]
        if numbers and None not in numbers and math.prod(numbers) > 0:
            found.append(math.prod(numbers))
    return tuple(found)


_GUIDANCE_FLOOR = re.compile(r"\bif\s+guidance_scale\s*<\s*([0-9]+(?:\.[0-9]*)?)\s*:")


@functools.lru_cache(maxsize=None)
def _guidance_floor(cls: type) -> float | None:
    """The least guidance the pipeline's check_inputs accepts (``if guidance_scale < X:`` raises),
    where it has such a check; None where it has none, or its source cannot be read."""
    found = _GUIDANCE_FLOOR.search(_source(getattr(cls, "check_inputs", None)))
    return float(found[1]) if found else None


def _fit(height: int, width: int, rules: SizeRules) -> tuple[int, int]:
    """A default size the rules accept: each side within range and on the factor, and scaled
    down to the pixel limit keeping its aspect (a 2K-native model's own default would be
    refused on every job that gives no size)."""
    def side(value: float) -> int:
        value = max(rules.min_side, min(int(value), rules.max_side))
        return max(rules.min_side, value - value % rules.factor)

    height, width = side(height), side(width)
    if height * width > rules.max_pixels:
        scale = (rules.max_pixels / (height * width)) ** 0.5
        height, width = side(height * scale), side(width * scale)  # floored: within the limit
    return height, width
