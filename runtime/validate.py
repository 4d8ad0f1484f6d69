"""Job input validation: pure Python, no torch, every message names the field and what is allowed.

Runpod's own validator skips range checks when a default of the same type exists, so the ranges
are checked here, against the serving family's rules.
"""

from __future__ import annotations

import math
import random
from typing import Any, Mapping

from pipelines.base import Defaults, GenerationRequest, SizeRules
from runtime.errors import JobInputError, sendable

ALLOWED_FIELDS = ("prompt", "num_inference_steps", "guidance_scale", "height", "width", "seed")
SEED_MAX = 2**32 - 1
PROMPT_MAX_CHARS = 10_000
SHOWN_UNKNOWN = 5  # unknown field names echoed in an error, at most
SHOWN_NAME_CHARS = 40
# An out-of-range integer this long is named, not echoed: no bound here has more than 10 digits,
# and the full number only makes the message long (and str() refuses ints over 4300 digits).
SHOWN_INT_DIGITS = 30


def validate(job_input: Any, defaults: Defaults, rules: SizeRules,
             limits: Mapping[str, tuple[float, float]]) -> GenerationRequest:
    """Turn a job's ``input`` into a complete request, or raise JobInputError."""
    if not isinstance(job_input, dict):
        raise JobInputError(f"input must be a JSON object, got {_json_type(job_input)}")
    unknown = sorted(set(job_input) - set(ALLOWED_FIELDS))
    if unknown:
        # Echoed back, so bounded: a few names, each short and on one line.
        shown = [_short(name) for name in unknown[:SHOWN_UNKNOWN]]
        more = f" and {len(unknown) - SHOWN_UNKNOWN} more" if len(unknown) > SHOWN_UNKNOWN else ""
        raise JobInputError(f"unknown field(s) in input: {', '.join(shown)}{more}; "
                            f"allowed: {', '.join(ALLOWED_FIELDS)}")

    prompt = job_input.get("prompt")
    if prompt is None:
        raise JobInputError("Missing or empty 'prompt' in input")
    if not isinstance(prompt, str):
        raise JobInputError(f"'prompt' must be a string, got {_json_type(prompt)}")
    if not prompt.strip():
        raise JobInputError("Missing or empty 'prompt' in input")
    if len(prompt) > PROMPT_MAX_CHARS:
        raise JobInputError(f"'prompt' is too long: {len(prompt)} characters, at most {PROMPT_MAX_CHARS}")
    try:
        prompt.encode("utf-8")  # JSON allows a lone surrogate ("\ud800"); tokenizers do not
    except UnicodeEncodeError:
        raise JobInputError("'prompt' must be valid Unicode text (it holds an unpaired surrogate)") from None

    lo, hi = limits["num_inference_steps"]
    steps = _integer(job_input, "num_inference_steps", defaults.steps, int(lo), int(hi))
    glo, ghi = limits["guidance_scale"]
    guidance = _number(job_input, "guidance_scale", defaults.guidance, glo, ghi)
    height = _side(job_input, "height", defaults.height, rules)
    width = _side(job_input, "width", defaults.width, rules)
    if height * width > rules.max_pixels:
        raise JobInputError(f"height x width = {height * width} pixels is over {rules.scope}'s limit of "
                            f"{rules.max_pixels} pixels; reduce height or width")
    if rules.shapes is not None and (height, width) not in rules.shapes:
        made = ", ".join(f"{h}x{w}" for h, w in sorted(rules.shapes))
        raise JobInputError(f"{rules.scope} makes only these sizes (height x width): {made}; "
                            f"got {height}x{width}")
    seed = _integer(job_input, "seed", None, 0, SEED_MAX)
    if seed is None:
        # Drawn here and returned in the response, so any image can be reproduced.
        seed = random.SystemRandom().randint(0, SEED_MAX)
    return GenerationRequest(prompt=prompt, steps=steps, guidance=guidance, height=height,
                             width=width, seed=seed)


def _short(name: Any) -> str:
    # one line, escaped before it is cut, so the bound holds for what is shown
    text = sendable(" ".join(str(name).split()))
    return text if len(text) <= SHOWN_NAME_CHARS else text[:SHOWN_NAME_CHARS] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _integer(data: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int) -> Any:
    value = data.get(name)
    if value is None:
        return default
    # bool is a subclass of int in Python, but true is not a step count.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JobInputError(f"'{name}' must be an integer from {lo} to {hi}, got {_json_type(value)}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise JobInputError(f"'{name}' must be an integer from {lo} to {hi}, got {_shown(value)}")
    if not lo <= value <= hi:
        raise JobInputError(f"'{name}' must be from {lo} to {hi}, got {_shown(value)}")
    return int(value)


def _number(data: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = data.get(name)
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JobInputError(f"'{name}' must be a number from {lo:g} to {hi:g}, got {_json_type(value)}")
    # Only floats can be NaN/inf; an int from JSON is exact but may be too large for a float.
    if isinstance(value, float) and not math.isfinite(value):
        raise JobInputError(f"'{name}' must be a finite number from {lo:g} to {hi:g}, got {value!r}")
    if not lo <= value <= hi:
        # Not :g, which rounds to 6 digits: 20.0000001 would read "got 20", as if the bound
        # itself were refused.
        raise JobInputError(f"'{name}' must be from {lo:g} to {hi:g}, got {_shown(value)}")
    return float(value)


def _shown(value: int | float) -> str:
    """A refused number as the client sent it: a float by its repr (1e+100, not the 101 digits
    int() would make of it), an int in full unless it is too long to be worth echoing."""
    if isinstance(value, int) and abs(value) >= 10 ** (SHOWN_INT_DIGITS - 1):
        return "a number too large" if value > 0 else "a number too small"
    return repr(value)


def _side(data: Mapping[str, Any], name: str, default: int, rules: SizeRules) -> int:
    value = _integer(data, name, default, rules.min_side, rules.max_side)
    if value % rules.factor:
        raise JobInputError(f"'{name}' must be a multiple of {rules.factor} for {rules.scope}, got {value}")
    return value


def check_shape(height: int, width: int, rules: SizeRules) -> None:
    """Validate a serving shape (warmup shapes) with the same rules as a job's."""
    validate({"prompt": "shape check", "height": height, "width": width, "seed": 0},
             Defaults(steps=1, guidance=0.0, height=height, width=width), rules,
             {"num_inference_steps": (1, 1), "guidance_scale": (0.0, 0.0)})
