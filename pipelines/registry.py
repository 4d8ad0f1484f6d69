"""The explicit registry of pipeline families.

Detection reads the repository's ``model_index.json``: the first family whose ``matches`` says
yes serves it. Order matters: specific families first, the generic fallback last.
Adding a family = one class in its own module + one line in ``FAMILIES``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.base import PipelineFamily
from pipelines.flux import FluxFamily
from pipelines.generic import GenericFamily, text2image_class_names
from pipelines.qwenimage import QwenImageFamily
from pipelines.sdxl import SDXLFamily
from runtime.errors import UnsupportedModelError

FAMILIES: tuple[type[PipelineFamily], ...] = (
    FluxFamily,
    SDXLFamily,
    QwenImageFamily,
    GenericFamily,  # last: anything AutoPipelineForText2Image can build
)


def read_model_index(model_dir: Path) -> dict[str, Any]:
    model_dir = Path(model_dir)
    path = model_dir / "model_index.json"
    if not path.is_file():
        raise UnsupportedModelError(
            f"{model_dir.name} has no model_index.json: it is not a diffusers pipeline repository. "
            + supported_summary())
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"model_index.json could not be read ({exc.__class__.__name__})") from exc
    if not isinstance(index, dict):
        raise UnsupportedModelError("model_index.json is not a JSON object")
    return index


def family_class_for(model_index: dict[str, Any]) -> type[PipelineFamily]:
    for family in FAMILIES:
        if family.matches(model_index):
            return family
    found = model_index.get("_class_name", "no _class_name")
    raise UnsupportedModelError(f"{found} is not a supported text-to-image pipeline. " + supported_summary())


def detect_family(model_dir: Path) -> PipelineFamily:
    """Bind the right family to a model directory in the Hugging Face layout."""
    index = read_model_index(model_dir)
    return family_class_for(index)(Path(model_dir), index)


def supported_summary() -> str:
    specific = ", ".join(f"{f.name} ({', '.join(f.pipeline_classes)})" for f in FAMILIES if f.pipeline_classes)
    return (f"Supported: {specific}, and through the generic family any of: "
            f"{', '.join(text2image_class_names())}.")
