"""What a pipeline family must define.

A family knows its own facts (defaults, size rules, which files to fetch, how to call diffusers);
the runtime knows nothing model-specific. Heavy imports (torch, diffusers) happen inside methods,
never at import time, so settings and validation stay importable without them.
"""

from __future__ import annotations

import functools
import inspect
import json
import warnings
import weakref
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

from runtime.errors import ImageRejected, JobStopped, WorkerError

if TYPE_CHECKING:
    from pipelines.files import FileSelection, RepoFile


@dataclass(frozen=True)
class Defaults:
    """What a job gets for every field it leaves out."""

    steps: int
    guidance: float
    height: int
    width: int


# Sides up to 2048 px, but not both at once: 2048x1152 or 1536x1536 (2.36 MP) is the largest image.
# Beyond it these models leave their training range, a job's time and memory grow past what one
# request should hold, and a base64 PNG nears Runpod's 10 MB /run limit.
MAX_PIXELS = 1536 * 1536

NON_FINITE = ("the model produced NaN/inf pixels (a numerical overflow, most often of fp16), so no "
              "image is returned; try another seed, or VISGATE_PRECISION=bf16 or fp32")


@dataclass(frozen=True)
class SizeRules:
    """Height and width must be multiples of ``factor``, within sides and total pixels."""

    factor: int
    min_side: int
    max_side: int
    max_pixels: int
    # Whose rules these are, in messages: a job's model, or (settings, before any model is known)
    # every model.
    scope: str = "this model"
    # The only (height, width) sizes a model makes, where it has such a list (HunyuanDiT); None:
    # any size within the rules above.
    shapes: frozenset[tuple[int, int]] | None = None

    @classmethod
    def with_factor(cls, factor: int) -> "SizeRules":
        """The sides and pixel limit every family shares, with the family's own size factor."""
        return cls(factor=factor, min_side=256, max_side=2048, max_pixels=MAX_PIXELS)


# What every family accepts at most; a family may be stricter (FLUX: multiples of 16).
COMMON_SIZE_RULES = replace(SizeRules.with_factor(8), scope="any model")


@dataclass(frozen=True)
class GenerationRequest:
    """A validated job: every field set, defaults already applied."""

    prompt: str
    steps: int
    guidance: float
    height: int
    width: int
    seed: int


# Devices diffusers' from_pretrained takes as a device_map: device types only, so "cuda:1" is
# loaded on the CPU and then moved.
DIRECT_DEVICES = ("cuda", "cpu")


class PipelineFamily(ABC):
    """One family of diffusers pipelines (Flux, SDXL, ...), bound to one model directory."""

    name: ClassVar[str]
    # model_index.json `_class_name` values this family serves; empty means "decided by matches()".
    pipeline_classes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model_dir: Path, model_index: dict[str, Any]) -> None:
        self.model_dir = Path(model_dir)
        self.model_index = model_index
        self.variant = self._detect_variant()

    # ---- detection -------------------------------------------------------------------------
    @classmethod
    def matches(cls, model_index: dict[str, Any]) -> bool:
        return model_index.get("_class_name") in cls.pipeline_classes

    def _detect_variant(self) -> str:
        """A short name for the model within the family (e.g. 'schnell', 'dev')."""
        return self.name

    def component_config(self, component: str, filename: str = "config.json") -> dict[str, Any]:
        # Read once: defaults and size rules are consulted on every job, and the model may sit
        # on a network volume.
        cache = self.__dict__.setdefault("_configs", {})
        if (component, filename) not in cache:
            path = self.model_dir / component / filename
            cache[(component, filename)] = json.loads(path.read_text()) if path.is_file() else {}
        return cache[(component, filename)]

    # ---- the family's facts ------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent, as the pipelines compute it: 2 per VAE level after the first (8 for
        the usual 4-level VAE; 32 for Sana's deep-compression AutoencoderDC), or 2 per temporal
        downsampling flag (the Qwen-Image/Wan VAE)."""
        vae = self.component_config("vae")
        blocks = vae.get("block_out_channels") or vae.get("encoder_block_out_channels")
        if blocks:
            return 2 ** (len(blocks) - 1)
        if vae.get("temperal_downsample"):  # sic: diffusers' spelling
            return 2 ** len(vae["temperal_downsample"])
        return 8

    @property
    @abstractmethod
    def defaults(self) -> Defaults: ...

    @property
    @abstractmethod
    def size_rules(self) -> SizeRules: ...

    @property
    def limits(self) -> dict[str, tuple[float, float]]:
        """Allowed ranges of the numeric job fields (inclusive)."""
        return {"num_inference_steps": (1, 100), "guidance_scale": (0.0, 20.0)}

    def use_defaults(self, steps: int | None = None, guidance: float | None = None) -> None:
        """Serve with these defaults instead of the model's own (VISGATE_DEFAULT_STEPS and
        VISGATE_DEFAULT_GUIDANCE): what jobs that leave them out get, and what warmup compiles
        for. Each must lie in the range jobs may ask for (``limits``)."""
        for setting, limit, value in (("VISGATE_DEFAULT_STEPS", "num_inference_steps", steps),
                                      ("VISGATE_DEFAULT_GUIDANCE", "guidance_scale", guidance)):
            lo, hi = self.limits[limit]
            if value is not None and not lo <= value <= hi:
                raise ValueError(f"{setting}={value:g} is outside the range this model's jobs may ask "
                                 f"for ({limit} {lo:g} to {hi:g})")
        overrides = {"steps": steps, "guidance": guidance}
        self.__dict__["_default_overrides"] = {k: v for k, v in overrides.items() if v is not None}

    @property
    def serving_defaults(self) -> Defaults:
        """What a job gets for every field it leaves out: the model's ``defaults``, with any
        ``use_defaults`` override."""
        return replace(self.defaults, **self.__dict__.get("_default_overrides", {}))

    def warm_key(self, request: GenerationRequest) -> tuple[Any, ...]:
        """What decides the compiled graphs' input shapes: a job whose key was not warmed up is
        served eagerly rather than stalling for a recompile (runtime/optimize.py)."""
        return (request.height, request.width)

    def preferred_dtype(self, device: str) -> str:
        """'bf16', 'fp16' or 'fp32' for precision=auto on this device."""
        return "bf16" if device.startswith("cuda") else "fp32"

    @classmethod
    def select_files(cls, model_index: dict[str, Any], files: Sequence["RepoFile"],
                     precision: str) -> "FileSelection":
        """The repository files to download for ``precision`` (bf16/fp16/fp32), and the variant.

        The default (pipelines/files.py) suits any diffusers pipeline repository; a family
        overrides it only where its repositories need more or less than that.
        """
        from pipelines.files import select_files

        return select_files(model_index, files, precision)

    # The denoiser is what optimizations (compile, fp8, attention) target.
    denoiser_attr: ClassVar[str] = "unet"

    # ---- diffusers -----------------------------------------------------------------------------
    @abstractmethod
    def pipeline_class(self) -> type: ...

    def load(self, torch_dtype: Any, device: str, variant: str | None = None) -> Any:
        """``variant``: the weight variant the fetch stage chose (FetchResult.variant), e.g. "fp16"."""
        cls = self.pipeline_class()
        extra = {"variant": variant} if variant else {}
        pipe = None
        if device in DIRECT_DEVICES:
            # Each tensor goes from the safetensors file straight onto the device: no copy of
            # the whole pipeline in host memory first (33 GB for FLUX.1-dev) and then a second
            # one to the GPU. A plain device type loads with no accelerate hooks.
            try:
                pipe = cls.from_pretrained(str(self.model_dir), dtype=torch_dtype, device_map=device,
                                           **extra)
            except NotImplementedError:  # pipelines of connected pipes refuse a device map
                pass
        if pipe is None:
            pipe = cls.from_pretrained(str(self.model_dir), dtype=torch_dtype, **extra)
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # Whether the denoiser's input shapes are the same for every prompt (text embeddings padded
    # to a fixed length, as CLIP's and FLUX's T5's are). Where not known, a compiled warmup
    # checks it once with a prompt of another length (runtime/warmup.py, check_prompt_lengths).
    # A family may set it on its instance once fix_input_shapes has made it so.
    fixed_prompt_shapes: bool = False

    def fix_input_shapes(self, pipe: Any, masks: Callable[[], bool]) -> str | None:
        """Called before compiling: make the denoiser's input shapes depend on the job's size
        alone, where the family's text embeddings vary in length with the prompt. Graphs are
        compiled static at warmup and served without recompiling (runtime/optimize.py), so a
        length that varies would send nearly every job down the eager path. ``masks()``: whether
        the denoiser's attention backend takes an attention mask (FlashAttention does not), which
        padding needs; it runs an attention call, so only a family that pads asks. Returns what
        it did, or None where nothing needed doing (a tokenizer that pads to a fixed length)."""
        return None

    def call_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        """Family-specific keyword arguments beyond prompt/steps/guidance/size/generator (one
        named here replaces the standard one)."""
        return {}

    def generate(self, pipe: Any, request: GenerationRequest,
                 should_stop: Callable[[], bool] | None = None) -> Any:
        """Run the pipeline; return the image as a HxWx3 uint8 numpy array.

        ``should_stop``: asked before the pipeline starts and after each denoising step; once it
        answers True the generation ends there with JobStopped (Runpod stopped the job)."""
        import torch

        if should_stop is not None and should_stop():
            raise JobStopped(0, request.steps)

        device = execution_device(pipe)  # where the denoiser runs, so the seed means the same everywhere
        generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(request.seed)
        # diffusers upcasts an fp16 VAE to fp32 for decoding (force_upcast, SDXL) and casts it back
        # only when decoding succeeds: after an out-of-memory there, every later job would fail on
        # an fp32 VAE fed fp16 latents. Whatever happens, the VAE leaves in the dtype it came in.
        vae = getattr(pipe, "vae", None)
        vae_dtype = getattr(vae, "dtype", None)
        try:
            image = self._run(pipe, request, generator, should_stop)
        finally:
            if vae is not None and vae.dtype != vae_dtype:
                vae.to(dtype=vae_dtype)
        if tuple(image.shape[:2]) != (request.height, request.width):
            # A pipeline that rounds a size its family's rules let through: an error (in a job, or
            # at warmup, where it fails the boot), never an image whose size is not the one the
            # response states.
            raise WorkerError(f"the pipeline made a {image.shape[1]}x{image.shape[0]} image for a "
                              f"{request.width}x{request.height} request; this size is not supported "
                              "by this model")
        return image

    # "pt": tensors stay on the device until the last moment (the uint8 conversion there moves
    # a quarter of the bytes a float image would). Only for pipelines whose "pt" output is in
    # [0, 1]: Kandinsky and DeepFloyd IF return [-1, 1] there (the generic family uses "pil").
    output_type: ClassVar[str] = "pt"

    def _run(self, pipe: Any, request: GenerationRequest, generator: Any,
             should_stop: Callable[[], bool] | None = None) -> Any:
        import torch

        stop = {} if should_stop is None else _stop_between_steps(pipe, should_stop, request.steps)
        with torch.inference_mode():
            with _invalid_casts() as cast_nan:  # filled as the block ends
                # call_kwargs may also replace one of these (the generic family's true CFG).
                out = pipe(**{
                    "prompt": request.prompt,
                    "num_inference_steps": request.steps,
                    "guidance_scale": request.guidance,
                    "height": request.height,
                    "width": request.width,
                    "generator": generator,
                    "output_type": self.output_type,
                    **stop,
                    **self.call_kwargs(request),
                })
            if cast_nan:  # a "pil"/"np" pipeline already turned NaN/inf pixels into 0 on the way
                raise ImageRejected(NON_FINITE)
            # SD 1.x-style repositories ship a safety checker; diffusers replaces a flagged image
            # with zeros and says so only in this flag (DeepFloyd IF: nsfw_detected).
            flags = getattr(out, "nsfw_content_detected", None) or getattr(out, "nsfw_detected", None)
            if flags and flags[0]:
                raise ImageRejected("the model's safety checker flagged this image (it was blacked "
                                    "out, so none is returned); try another prompt or seed")
            return self.to_uint8(out.images[0])

    def to_uint8(self, image: Any) -> Any:
        """One image of the pipeline's ``output_type`` as a HxWx3 uint8 numpy array."""
        import torch

        if not bool(torch.isfinite(image).all()):  # NaN would cast to 0: a black "success"
            raise ImageRejected(NON_FINITE)
        # HWC in memory order, not a transposed view of the CHW tensor: fpng takes twice the time on
        # the view (6.9 vs 3.2 ms at 1024² on this project's CPU). torch's copy is the cheaper one
        # (numpy's strided copy ate the gain here), and on a GPU it runs there, before the transfer.
        return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        d = self.serving_defaults
        return {"family": self.name, "variant": self.variant,
                "defaults": {"num_inference_steps": d.steps, "guidance_scale": d.guidance,
                             "height": d.height, "width": d.width}}


# diffusers' ``_execution_device`` walks every module of every component on each call: 7.6 ms for
# FLUX.1-dev and 10.7 ms for SDXL on this project's CPU, paid by every job. A served pipeline does
# not move once warmup has generated with it (the optimize stage places it before), so the first
# answer holds. Weak keys: each pipeline gets its own entry, and one that is dropped takes it along.
_EXECUTION_DEVICES: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def execution_device(pipe: Any) -> Any:
    """The torch.device the pipeline computes on, looked up once per pipeline."""
    device = _EXECUTION_DEVICES.get(pipe)
    if device is None:
        device = _EXECUTION_DEVICES[pipe] = pipe._execution_device
    return device


def _stop_between_steps(pipe: Any, should_stop: Callable[[], bool], total: int) -> dict[str, Any]:
    """The pipeline call's keyword that ends it with JobStopped after the first denoising step
    at which ``should_stop()`` is True: diffusers' ``callback_on_step_end``, which pipelines call
    outside the denoiser (compiled graphs and CUDA graphs are untouched). None for a pipeline
    without it (older ones): a stopped job there ends with its generation."""
    if not _takes_step_callback(type(pipe)):
        return {}

    def check(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if should_stop():
            raise JobStopped(step + 1, total)
        return callback_kwargs  # the tensors as they are: the pipeline takes them back

    return {"callback_on_step_end": check}


@functools.lru_cache(maxsize=None)
def _takes_step_callback(pipeline_class: type) -> bool:
    try:
        return "callback_on_step_end" in inspect.signature(pipeline_class.__call__).parameters
    except (TypeError, ValueError):
        return False


@contextmanager
def _invalid_casts() -> Iterator[list[str]]:
    """Yields a list that is non-empty after the block if numpy cast NaN/inf to an integer in it:
    how diffusers' "pil"/"np" post-processing turns a numerical overflow into black pixels
    (``(images * 255).round().astype("uint8")``), with only this warning to show for it. Every
    other warning is passed on as it would have been. The warning filters are process-wide: jobs
    run one at a time, and the boot waits for the job SDK's side import before warmup."""
    found: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            yield found
    finally:
        _pass_on(caught, found)


def _pass_on(caught: list[warnings.WarningMessage], found: list[str]) -> None:
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and "invalid value encountered in cast" in str(w.message):
            found.append(str(w.message))
            continue
        # Shown once per text and place for the process, as Python's default filter would
        # (catching resets its registry, so a pipeline's per-call warning would repeat every job).
        seen = (str(w.message)[:200], w.category, w.filename, w.lineno)
        if seen not in _SHOWN:
            if len(_SHOWN) < 1000:  # bounded: texts that vary per job would grow it forever
                _SHOWN.add(seen)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


_SHOWN: set[tuple[Any, ...]] = set()
