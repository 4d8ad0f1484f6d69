"""validate(): a table of bad inputs, each with the message a client gets, and good inputs completed
with the family's defaults. Pure Python: the family facts are the ones the tiny models report."""

from __future__ import annotations

import pytest

from pipelines.base import Defaults, GenerationRequest, SizeRules
from runtime.errors import JobInputError
from runtime.validate import ALLOWED_FIELDS, PROMPT_MAX_CHARS, SEED_MAX, validate

pytestmark = pytest.mark.timeout(30)

# The facts FluxFamily / SDXLFamily report for the tiny models (test_registry.py checks the
# families give exactly these rules: 1536x1536 pixels at most, sides 256-2048).
FLUX_DEFAULTS = Defaults(steps=4, guidance=0.0, height=1024, width=1024)
FLUX_RULES = SizeRules.with_factor(16)
SDXL_DEFAULTS = Defaults(steps=30, guidance=5.0, height=1024, width=1024)
SDXL_RULES = SizeRules.with_factor(8)
LIMITS = {"num_inference_steps": (1, 100), "guidance_scale": (0.0, 20.0)}
# A family whose pixel budget is smaller than its largest side squared (e.g. a 1 MP model).
ONE_MP_RULES = SizeRules(factor=16, min_side=256, max_side=2048, max_pixels=1024 * 1024)

ALLOWED = "allowed: prompt, num_inference_steps, guidance_scale, height, width, seed"


def flux(job_input: object) -> GenerationRequest:
    return validate(job_input, FLUX_DEFAULTS, FLUX_RULES, LIMITS)


def sdxl(job_input: object) -> GenerationRequest:
    return validate(job_input, SDXL_DEFAULTS, SDXL_RULES, LIMITS)


def job(**fields: object) -> dict:
    return {"prompt": "a lighthouse at dusk", **fields}


BAD = [
    # the input itself
    pytest.param(None, "input must be a JSON object, got null", id="input-null"),
    pytest.param("a cat", "input must be a JSON object, got a string", id="input-string"),
    pytest.param(["a cat"], "input must be a JSON object, got an array", id="input-array"),
    pytest.param(42, "input must be a JSON object, got a number", id="input-number"),
    pytest.param(True, "input must be a JSON object, got a boolean", id="input-bool"),
    # prompt
    pytest.param({}, "Missing or empty 'prompt' in input", id="prompt-missing"),
    pytest.param({"prompt": None}, "Missing or empty 'prompt' in input", id="prompt-null"),
    pytest.param({"prompt": ""}, "Missing or empty 'prompt' in input", id="prompt-empty"),
    pytest.param({"prompt": " \n\t "}, "Missing or empty 'prompt' in input", id="prompt-blank"),
    pytest.param({"prompt": 7}, "'prompt' must be a string, got a number", id="prompt-number"),
    pytest.param({"prompt": ["a", "b"]}, "'prompt' must be a string, got an array", id="prompt-list"),
    pytest.param({"prompt": {"text": "a"}}, "'prompt' must be a string, got an object",
                 id="prompt-object"),
    pytest.param({"prompt": False}, "'prompt' must be a string, got a boolean", id="prompt-false"),
    pytest.param({"prompt": "x" * (PROMPT_MAX_CHARS + 1)},
                 f"'prompt' is too long: {PROMPT_MAX_CHARS + 1} characters, at most {PROMPT_MAX_CHARS}",
                 id="prompt-too-long"),
    # types
    pytest.param(job(num_inference_steps=True),
                 "'num_inference_steps' must be an integer from 1 to 100, got a boolean", id="steps-bool"),
    pytest.param(job(num_inference_steps="28"),
                 "'num_inference_steps' must be an integer from 1 to 100, got a string",
                 id="steps-string"),
    pytest.param(job(num_inference_steps=28.5),
                 "'num_inference_steps' must be an integer from 1 to 100, got 28.5", id="steps-fraction"),
    pytest.param(job(num_inference_steps=[4]),
                 "'num_inference_steps' must be an integer from 1 to 100, got an array", id="steps-list"),
    pytest.param(job(guidance_scale=False),
                 "'guidance_scale' must be a number from 0 to 20, got a boolean", id="guidance-bool"),
    pytest.param(job(guidance_scale="3.5"),
                 "'guidance_scale' must be a number from 0 to 20, got a string", id="guidance-string"),
    pytest.param(job(seed="42"), "'seed' must be an integer from 0 to 4294967295, got a string",
                 id="seed-string"),
    pytest.param(job(seed=1.5), "'seed' must be an integer from 0 to 4294967295, got 1.5",
                 id="seed-fraction"),
    pytest.param(job(height="512"), "'height' must be an integer from 256 to 2048, got a string",
                 id="height-string"),
    pytest.param(job(width=True), "'width' must be an integer from 256 to 2048, got a boolean",
                 id="width-bool"),
    # NaN / inf (what json.loads makes of NaN, Infinity, 1e400)
    pytest.param(job(num_inference_steps=float("nan")),
                 "'num_inference_steps' must be an integer from 1 to 100, got nan", id="steps-nan"),
    pytest.param(job(num_inference_steps=float("inf")),
                 "'num_inference_steps' must be an integer from 1 to 100, got inf", id="steps-inf"),
    pytest.param(job(guidance_scale=float("nan")),
                 "'guidance_scale' must be a finite number from 0 to 20, got nan", id="guidance-nan"),
    pytest.param(job(guidance_scale=float("inf")),
                 "'guidance_scale' must be a finite number from 0 to 20, got inf", id="guidance-inf"),
    pytest.param(job(guidance_scale=float("-inf")),
                 "'guidance_scale' must be a finite number from 0 to 20, got -inf", id="guidance-neg-inf"),
    pytest.param(job(seed=float("nan")), "'seed' must be an integer from 0 to 4294967295, got nan",
                 id="seed-nan"),
    pytest.param(job(height=float("inf")), "'height' must be an integer from 256 to 2048, got inf",
                 id="height-inf"),
    # ranges
    pytest.param(job(num_inference_steps=0), "'num_inference_steps' must be from 1 to 100, got 0",
                 id="steps-zero"),
    pytest.param(job(num_inference_steps=101), "'num_inference_steps' must be from 1 to 100, got 101",
                 id="steps-over"),
    pytest.param(job(num_inference_steps=-3), "'num_inference_steps' must be from 1 to 100, got -3",
                 id="steps-negative"),
    pytest.param(job(guidance_scale=-0.5), "'guidance_scale' must be from 0 to 20, got -0.5",
                 id="guidance-negative"),
    pytest.param(job(guidance_scale=20.5), "'guidance_scale' must be from 0 to 20, got 20.5",
                 id="guidance-over"),
    pytest.param(job(guidance_scale=10**400),
                 "'guidance_scale' must be from 0 to 20, got a number too large", id="guidance-huge-int"),
    pytest.param(job(seed=-1), "'seed' must be from 0 to 4294967295, got -1", id="seed-negative"),
    pytest.param(job(seed=SEED_MAX + 1), "'seed' must be from 0 to 4294967295, got 4294967296",
                 id="seed-over"),
    pytest.param(job(height=128), "'height' must be from 256 to 2048, got 128", id="height-small"),
    pytest.param(job(width=4096), "'width' must be from 256 to 2048, got 4096", id="width-large"),
    pytest.param(job(width=0), "'width' must be from 256 to 2048, got 0", id="width-zero"),
    # the family's size factor: Flux packs 2x2 latents of a x8 VAE -> multiples of 16
    pytest.param(job(height=520), "'height' must be a multiple of 16 for this model, got 520",
                 id="height-not-multiple-of-16"),
    pytest.param(job(width=1000), "'width' must be a multiple of 16 for this model, got 1000",
                 id="width-not-multiple-of-16"),
    # unknown fields: named, with the allowed list
    pytest.param(job(negative_prompt="blurry"),
                 f"unknown field(s) in input: negative_prompt; {ALLOWED}", id="unknown-one"),
    pytest.param(job(steps=4, num_images=2),
                 f"unknown field(s) in input: num_images, steps; {ALLOWED}", id="unknown-two"),
    pytest.param({"text": "a cat"}, f"unknown field(s) in input: text; {ALLOWED}",
                 id="unknown-without-prompt"),
    # echoed back bounded: five names, each cut to one short line
    pytest.param(job(**{f"x{i}": 1 for i in range(50_000)}, **{"a\nb" + "c" * 10**6: 1}),
                 f"unknown field(s) in input: a b{'c' * 37}..., x0, x1, x10, x100 and 49996 more; "
                 f"{ALLOWED}", id="unknown-many-and-long"),
    # JSON can carry a lone surrogate; tokenizers cannot take it
    pytest.param(job(prompt="a cat \ud800"), "'prompt' must be valid Unicode text",
                 id="prompt-unpaired-surrogate"),
]


@pytest.mark.parametrize("job_input, message", BAD)
def test_bad_input_message(job_input: object, message: str) -> None:
    with pytest.raises(JobInputError) as info:
        flux(job_input)
    assert message in str(info.value)


def test_messages_are_one_short_line() -> None:
    for case in BAD:
        with pytest.raises(JobInputError) as info:
            flux(case.values[0])
        text = str(info.value)
        assert "\n" not in text and len(text) < 300, case.id


# A refused number is shown as sent, except an integer of 30 digits or more, which is named: echoed
# in full it only makes the message long (and str() refuses an int of over 4300 digits outright).
SHOWN = [
    pytest.param(job(height=10**40), "'height' must be from 256 to 2048, got a number too large",
                 id="height-40-digits"),
    pytest.param(job(seed=10**100), "'seed' must be from 0 to 4294967295, got a number too large",
                 id="seed-101-digits"),
    pytest.param(job(seed=10**29), "'seed' must be from 0 to 4294967295, got a number too large",
                 id="seed-30-digits"),
    pytest.param(job(seed=10**29 - 1), f"'seed' must be from 0 to 4294967295, got {10**29 - 1}",
                 id="seed-29-digits-quoted"),
    pytest.param(job(num_inference_steps=-10**35),
                 "'num_inference_steps' must be from 1 to 100, got a number too small",
                 id="steps-36-digits-negative"),
    pytest.param(job(width=10**5000), "'width' must be from 256 to 2048, got a number too large",
                 id="width-5001-digits"),
    pytest.param(job(guidance_scale=10**40),
                 "'guidance_scale' must be from 0 to 20, got a number too large", id="guidance-40-digits"),
    pytest.param(job(guidance_scale=123456789),
                 "'guidance_scale' must be from 0 to 20, got 123456789", id="guidance-int-not-1e8"),
    # floats: their repr, not the digits int() makes of them, nor an int's spelling
    pytest.param(job(seed=1e100), "'seed' must be from 0 to 4294967295, got 1e+100", id="seed-float-1e100"),
    pytest.param(job(height=1e40), "'height' must be from 256 to 2048, got 1e+40", id="height-float-1e40"),
    pytest.param(job(width=4096.0), "'width' must be from 256 to 2048, got 4096.0", id="width-float"),
    # all its digits: rounded, 20.0000001 would read "got 20", as if the bound itself were refused
    pytest.param(job(guidance_scale=20.0000001), "'guidance_scale' must be from 0 to 20, got 20.0000001",
                 id="guidance-just-over"),
    pytest.param(job(guidance_scale=-0.0001), "'guidance_scale' must be from 0 to 20, got -0.0001",
                 id="guidance-just-under"),
    pytest.param(job(guidance_scale=1234567.5), "'guidance_scale' must be from 0 to 20, got 1234567.5",
                 id="guidance-seven-digits"),
]


@pytest.mark.parametrize("job_input, message", SHOWN)
def test_refused_number_is_shown_as_sent(job_input: object, message: str) -> None:
    with pytest.raises(JobInputError) as info:
        flux(job_input)
    assert str(info.value) == message


def test_size_factor_is_the_family_s() -> None:
    """520 is not a multiple of 16 (Flux) but is a multiple of 8 (SDXL's factor)."""
    assert sdxl(job(height=520, width=1000)).height == 520
    with pytest.raises(JobInputError, match="multiple of 8 for this model, got 1001"):
        sdxl(job(width=1001))


def test_pixel_limit() -> None:
    with pytest.raises(JobInputError) as info:
        validate(job(height=2048, width=1024), FLUX_DEFAULTS, ONE_MP_RULES, LIMITS)
    assert str(info.value) == ("height x width = 2097152 pixels is over this model's limit of "
                               "1048576 pixels; reduce height or width")
    # Exactly at the limit is fine, and so is a long thin image within it.
    assert validate(job(height=1024, width=1024), FLUX_DEFAULTS, ONE_MP_RULES, LIMITS).width == 1024
    assert validate(job(height=2048, width=512), FLUX_DEFAULTS, ONE_MP_RULES, LIMITS).height == 2048


def test_limits_are_the_family_s() -> None:
    """A family may narrow the ranges (e.g. a distilled model with at most 8 steps)."""
    narrow = {"num_inference_steps": (1, 8), "guidance_scale": (0.0, 0.0)}
    with pytest.raises(JobInputError, match="'num_inference_steps' must be from 1 to 8, got 9"):
        validate(job(num_inference_steps=9), FLUX_DEFAULTS, FLUX_RULES, narrow)
    with pytest.raises(JobInputError, match="'guidance_scale' must be from 0 to 0, got 1"):
        validate(job(guidance_scale=1), FLUX_DEFAULTS, FLUX_RULES, narrow)


# ---- good inputs -----------------------------------------------------------------------------------
def test_defaults_applied_flux() -> None:
    r = flux(job(seed=7))
    assert r == GenerationRequest(prompt="a lighthouse at dusk", steps=4, guidance=0.0, height=1024,
                                  width=1024, seed=7)


def test_defaults_applied_sdxl() -> None:
    r = sdxl({"prompt": "a fox", "seed": 0})
    assert (r.steps, r.guidance, r.height, r.width, r.seed) == (30, 5.0, 1024, 1024, 0)


def test_explicit_values_kept_and_typed() -> None:
    r = flux({"prompt": "  keep my spaces ", "num_inference_steps": 28.0, "guidance_scale": 3,
              "height": 256, "width": 2048, "seed": SEED_MAX})
    assert r == GenerationRequest(prompt="  keep my spaces ", steps=28, guidance=3.0, height=256,
                                  width=2048, seed=SEED_MAX)
    assert type(r.steps) is int and type(r.guidance) is float and type(r.height) is int


def test_null_fields_mean_default() -> None:
    r = flux(job(num_inference_steps=None, guidance_scale=None, height=None, width=None, seed=3))
    assert (r.steps, r.guidance, r.height, r.width) == (4, 0.0, 1024, 1024)


def test_range_bounds_are_inclusive() -> None:
    assert flux(job(num_inference_steps=1, guidance_scale=0.0, seed=0)).steps == 1
    assert flux(job(num_inference_steps=100, guidance_scale=20.0, seed=0)).guidance == 20.0


@pytest.mark.parametrize("missing", [{}, {"seed": None}], ids=["absent", "null"])
def test_missing_seed_is_drawn_in_range(missing: dict) -> None:
    seeds = {flux(job(**missing)).seed for _ in range(32)}
    assert all(isinstance(s, int) and 0 <= s <= SEED_MAX for s in seeds)
    # Drawn at random, not a fixed fallback: 32 draws from 2**32 values do not collide.
    assert len(seeds) == 32


def test_allowed_fields_are_the_contract() -> None:
    assert ALLOWED_FIELDS == ("prompt", "num_inference_steps", "guidance_scale", "height", "width", "seed")


@pytest.mark.parametrize("height, width", [(1536, 1536), (2048, 1152), (1152, 2048)])
def test_the_largest_images_the_readme_promises_are_accepted(height: int, width: int) -> None:
    assert (flux(job(height=height, width=width)).height, sdxl(job(height=height, width=width)).width) \
        == (height, width)


@pytest.mark.parametrize("height, width", [(1536, 1552), (2048, 2048), (2048, 1168)])
def test_over_1536_squared_pixels_is_refused_with_the_limit(height: int, width: int) -> None:
    with pytest.raises(JobInputError) as info:
        flux(job(height=height, width=width))
    assert str(info.value) == (f"height x width = {height * width} pixels is over this model's limit "
                               "of 2359296 pixels; reduce height or width")
