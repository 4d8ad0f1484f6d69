"""Warmup stage: real generations at the serving shapes before any job is taken.

Every compiled graph runs at each shape here, so the first user does not pay for compilation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipelines.base import GenerationRequest, PipelineFamily
from runtime.errors import BootError, ImageRejected, JobInputError, brief
from runtime.validate import check_shape

if TYPE_CHECKING:
    from runtime.settings import Settings

log = logging.getLogger(__name__)

WARMUP_PROMPT = "a photo of a cat sitting on a wooden table, warm light"
# Two steps run the denoiser twice (the second call is the steady state a compiled graph needs)
# and the VAE decoder once: enough to touch every graph at each shape. The family's default
# guidance is kept, so a family that serves with classifier-free guidance (SDXL base, 5.0) warms
# its batch-2 denoiser graph. (tests/integration/test_lifecycle.py counts the calls.)
WARMUP_STEPS = 2


# Longer than WARMUP_PROMPT in any tokenizer, each longer than the one before, and within CLIP's
# 77 tokens: a text encoder whose output follows the prompt's length, even rounded up to 16 or 32
# tokens (CogView4, Z-Image), gives the denoiser other shapes for each than for warmup's (~12
# tokens, then ~30 and ~60 here).
PROBE_PROMPT = ("a wide view of a quiet harbour town at dawn, fishing boats on still water, gulls "
                "over the pier, soft mist, warm light on old stone houses")
SECOND_PROBE_PROMPT = (PROBE_PROMPT + ", a red lighthouse on the far rocks, nets drying on the "
                       "quay, a cat asleep on a barrel, children running along the sea wall, "
                       "clouds breaking over the hills")
# As short as a prompt gets: as long as the empty negative prompt once rounded up, where the
# denoiser then runs without the mask it needs between a batch's prompts of unequal lengths
# (Z-Image with classifier-free guidance): another graph again.
SHORT_PROMPTS = ("a fox", "a red fox")


def check_prompt_lengths(family: PipelineFamily, pipe: Any, shape: tuple[int, int],
                         aot_modules: list[Any], prompt: str | None = None) -> str:
    """After a compiled warmup: whether a prompt of another length than warmup's runs the
    compiled graphs ("compiled") or would not ("served eagerly"), compiling nothing: one step at
    ``shape`` with recompiling made an error (and, for frozen ``aot_modules``, no eager call).

    A pipeline that cuts its text embeddings to the prompt's token count gives the denoiser
    other shapes for nearly every prompt, and serving never recompiles: without this check such
    a model served almost every job eagerly, having paid for the compile, and said nothing."""
    import torch

    [request] = warmup_requests(family, [shape], steps=1)
    request = replace(request, prompt=prompt or PROBE_PROMPT)
    eager_calls = sum(module.eager_calls for module in aot_modules)
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            family.generate(pipe, request)
        eager = sum(module.eager_calls for module in aot_modules) > eager_calls
    except ImageRejected:  # the whole pipeline ran: its graphs matched
        eager = False
    except Exception as exc:  # noqa: BLE001 - a check: what it cannot tell must not stop the boot
        if not (isinstance(exc, RuntimeError) and "fail_on_recompile" in str(exc)):
            log.warning("the prompt-length check did not run to its end (%s)", brief(exc))
            return f"not checked ({brief(exc, 120)})"
        eager = True
    return "served eagerly" if eager else "compiled"


def fit_prompt_lengths(family: PipelineFamily, pipe: Any, shapes: list[tuple[int, int]],
                       aot_modules: list[Any]) -> str:
    """After a compiled warmup, before the compile cache is saved: make prompts of any length
    run compiled, where the text embeddings follow the prompt's length and the static graphs
    warmup made would serve only prompts as long as its own.

    Such a model gets a second warmup pass at every shape with prompts of other lengths (a long
    one and a short one), in which Dynamo compiles the graphs again with the sizes that changed
    symbolic (one graph then serves every length; the compile cache keeps it for the next boot),
    and a check with lengths neither pass saw. Ahead-of-time packages are static per input
    signature, so ``aot`` only checks.
    Returns what the boot record says: "compiled", "compiled, dynamic in prompt length",
    "served eagerly" (with a warning) or "not checked (...)"."""
    from runtime.optimize import dynamic_lengths

    found = check_prompt_lengths(family, pipe, shapes[0], aot_modules)
    if found != "served eagerly":
        return found
    if not aot_modules:
        t0 = time.perf_counter()
        try:
            with dynamic_lengths(len(shapes)):
                for prompt in (PROBE_PROMPT, SHORT_PROMPTS[0]):
                    for request in warmup_requests(family, shapes):
                        family.generate(pipe, replace(request, prompt=prompt))
        except Exception as exc:  # noqa: BLE001 - the static graphs still serve warmup's length
            log.warning("compiling for other prompt lengths failed (%s)", brief(exc))
        else:
            for prompt in (SECOND_PROBE_PROMPT, SHORT_PROMPTS[1]):
                found = check_prompt_lengths(family, pipe, shapes[0], aot_modules, prompt)
                if found != "compiled":
                    break
            log.info("compiled for other prompt lengths in %.2fs: %s", time.perf_counter() - t0, found)
            if found == "compiled":
                return "compiled, dynamic in prompt length"
    if found == "served eagerly":
        log.warning("compiled graphs serve only prompts of the warmup prompt's length in tokens: this "
                    "model's text embeddings follow the prompt's length, so most jobs will be served "
                    "eagerly; VISGATE_COMPILE=off saves the compile at boot")
    return found


def serving_plan(family: PipelineFamily, settings: "Settings") -> list[tuple[int, int]]:
    """Bind the settings' default overrides to ``family`` and return the shapes to serve and
    warm up; a BootError (stage "settings") for an override or shape this model refuses."""
    try:
        family.use_defaults(settings.default_steps, settings.default_guidance)
    except ValueError as exc:
        raise BootError(str(exc), stage="settings") from None
    return serving_shapes(family, settings.warmup_shapes)


def serving_shapes(family: PipelineFamily, extra: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """The family's default shape first, then the extra shapes, each checked against its rules."""
    d = family.serving_defaults
    shapes: list[tuple[int, int]] = []
    for index, (height, width) in enumerate(((d.height, d.width), *extra)):
        try:
            check_shape(height, width, family.size_rules)
        except JobInputError as exc:
            if index == 0:  # a family bug, not the user's: say so rather than serve a dead default
                raise BootError(f"the model's default size {height}x{width} breaks its own size "
                                f"rules: {exc}", stage="load") from exc
            raise BootError(f"VISGATE_WARMUP_SHAPES {height}x{width} is not valid for this model: {exc}",
                            stage="settings") from exc
        if (height, width) not in shapes:
            shapes.append((height, width))
    return shapes


def warmup_requests(family: PipelineFamily, shapes: list[tuple[int, int]],
                    steps: int = WARMUP_STEPS) -> list[GenerationRequest]:
    guidance = family.serving_defaults.guidance
    return [GenerationRequest(prompt=WARMUP_PROMPT, steps=steps, guidance=guidance,
                              height=height, width=width, seed=0) for height, width in shapes]


def warmup(family: PipelineFamily, pipe: Any, shapes: list[tuple[int, int]],
           steps: int = WARMUP_STEPS) -> list[dict[str, Any]]:
    runs = []
    for request in warmup_requests(family, shapes, steps):
        height, width = request.height, request.width
        t0 = time.perf_counter()
        run: dict[str, Any] = {"height": height, "width": width, "steps": steps}
        try:
            family.generate(pipe, request)  # raises if the model does not serve this size
        except ImageRejected as exc:
            # The whole pipeline ran (every graph is warm); only its image is unusable, which a
            # job would report as its error. A warning, not a failed boot: a 2-step warmup
            # image is noise, and the safety checker's verdict on it says nothing of real jobs.
            log.warning("warmup %dx%d: the image was rejected: %s", height, width, exc)
            run["rejected"] = str(exc)
        run["seconds"] = round(time.perf_counter() - t0, 3)
        # HEIGHTxWIDTH, as VISGATE_WARMUP_SHAPES and the job log lines name sizes.
        log.info("warmup %dx%d, %d steps: %.2fs", height, width, steps, run["seconds"])
        runs.append(run)
    return runs
