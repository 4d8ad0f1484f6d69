"""The issues' targets in one place, printed by every benchmark beside its figures. They hold
on an H100/H200 (issues 4 and 6); CPU runs have none."""

from __future__ import annotations

# Seconds per image: (model, size, steps) -> seconds.
LATENCY = {("flux-dev", 1024, 28): 2.4, ("sdxl", 1024, 30): 1.1}
# Container start to the ready webhook with warm caches (weights on local disk): model -> seconds.
COLDSTART = {"flux-dev": 20.0, "sdxl": 8.0}
# A compile with a cache hit, as a share of the cold compile.
CACHE_HIT_RATIO = 0.25
# The real repositories the synthetic names stand for (the real mode's model ids).
HUB_IDS = {"black-forest-labs/FLUX.1-dev": "flux-dev", "stabilityai/stable-diffusion-xl-base-1.0": "sdxl"}


def coldstart_target(model: str) -> float | None:
    return COLDSTART.get(HUB_IDS.get(model, model))


def job_target(model: str) -> float | None:
    """Seconds per image for a job at the model's defaults (1024², its default steps): the
    latency target whose size and steps are those defaults."""
    name = HUB_IDS.get(model, model)
    return next((seconds for (m, size, _), seconds in LATENCY.items() if m == name and size == 1024),
                None)
