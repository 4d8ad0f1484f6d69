"""Which files of a diffusers repository a worker needs, decided from names and sizes alone.

The fetch stage calls this (through ``PipelineFamily.select_files``) with the hub's file list
before downloading anything. The rules follow what ``DiffusionPipeline.from_pretrained`` reads
from a local folder, so the selection is exactly the set it will open:

- ``model_index.json`` and, for each component it names, that folder's configs and tokenizer files;
- the component's safetensors weights (a ``.bin`` pickle only where a component has no safetensors);
- one weight variant for the whole repository: ``fp16`` (``bf16`` first, for bf16) where a
  component has it and a half precision is used, else the plain files. diffusers loads the
  variant for the components that have it and the plain files for the others, and so do we;
- never ONNX, Flax, OpenVINO, TensorFlow or GGUF copies, folders the pipeline does not name
  (``vae_decoder/``, ``vae_1_0/``), or root single-file checkpoints (``flux1-dev.safetensors``).

Pure functions with no heavy imports: unit-testable from a listing of a real repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

MODEL_INDEX = "model_index.json"

# Small files a component folder needs besides weights: configs, tokenizers, processors.
_CONFIG_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
# Pickled weights diffusers/transformers load when a component has no safetensors. Other .bin
# files (openvino_model.bin, training_args.bin) are not weights they read.
_PICKLE_BASES = ("diffusion_pytorch_model", "pytorch_model")

# <base>[.<variant>][-00001-of-00002].<ext>, or the legacy <base>-00001-of-00002.<variant>.<ext>
_WEIGHT_RE = re.compile(
    r"^(?P<base>[^.]+?)(?:\.(?P<variant>[^.\-]+))?(?:-(?P<shard>\d{5}-of-\d{5}))?"
    r"(?:\.(?P<legacy>[^.]+))?\.(?P<ext>safetensors|bin)$")
# <base>.<ext>.index[.<variant>].json, or the legacy <base>.<ext>.<variant>.index.json
_INDEX_RE = re.compile(
    r"^(?P<base>[^.]+)\.(?P<ext>[a-z0-9_]+)(?:\.(?P<legacy>[^.]+))?\.index(?:\.(?P<variant>[^.]+))?\.json$")

# Variants worth their bytes, per precision, in order; the plain files come after them.
VARIANT_PREFERENCE: dict[str, tuple[str, ...]] = {
    "fp16": ("fp16",),
    "bf16": ("bf16", "fp16"),
    "fp32": (),
}


@dataclass(frozen=True)
class RepoFile:
    """One file of a repository as the hub lists it."""

    path: str
    size: int


@dataclass(frozen=True)
class FileSelection:
    """What to download, and the ``variant`` to pass to ``from_pretrained`` (None: plain files)."""

    paths: tuple[str, ...]
    variant: str | None


@dataclass(frozen=True)
class _Weight:
    path: str
    fmt: str  # "safetensors" or "bin"
    variant: str | None


def pipeline_components(model_index: Mapping[str, Any]) -> tuple[str, ...]:
    """Component folders the pipeline loads: entries like ``"vae": ["diffusers", "AutoencoderKL"]``.

    ``[null, null]`` entries (an optional component left out, e.g. SDXL's image_encoder) have no
    folder to fetch.
    """
    names = []
    for key, value in model_index.items():
        if key.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        if value[1] is None:
            continue
        names.append(key)
    return tuple(sorted(names))


def _classify(name: str) -> tuple[str, str | None, str | None]:
    """('config' | 'weight' | 'drop', format, variant) for a file name inside a component."""
    index = _INDEX_RE.match(name)
    if index:
        if index["ext"] not in ("safetensors", "bin"):
            return "drop", None, None  # flax_model.msgpack.index.json and the like
        return "weight", index["ext"], index["variant"] or index["legacy"]
    weight = _WEIGHT_RE.match(name)
    if weight:
        if weight["ext"] == "bin" and weight["base"] not in _PICKLE_BASES:
            return "drop", None, None
        return "weight", weight["ext"], weight["variant"] or weight["legacy"]
    if name.endswith(_CONFIG_SUFFIXES) and not name.startswith(("openvino", "flax")):
        return "config", None, None
    return "drop", None, None


def _choose_variant(weights: Mapping[str, list[_Weight]], precision: str) -> str | None:
    present = {w.variant for ws in weights.values() for w in ws}
    for variant in VARIANT_PREFERENCE.get(precision, ()):
        if variant in present:
            return variant
    # A component that ships only variant files (no plain ones) cannot load without a variant.
    for ws in weights.values():
        variants = {w.variant for w in ws}
        if None not in variants and variants:
            return "fp16" if "fp16" in variants else sorted(v for v in variants if v)[0]
    return None


def select_files(model_index: Mapping[str, Any], files: Iterable[RepoFile],
                 precision: str) -> FileSelection:
    """The files ``from_pretrained(folder, variant=...)`` reads, for ``precision`` (bf16/fp16/fp32)."""
    components = set(pipeline_components(model_index))
    chosen: list[str] = []
    weights: dict[str, list[_Weight]] = {}
    for f in files:
        if f.path == MODEL_INDEX:
            chosen.append(f.path)
            continue
        component, _, rest = f.path.partition("/")
        if not rest or component not in components:
            continue  # root checkpoints, README, images, folders the pipeline does not name
        kind, fmt, variant = _classify(rest.rsplit("/", 1)[-1])
        if kind == "config":
            chosen.append(f.path)
        elif kind == "weight" and fmt:
            weights.setdefault(component, []).append(_Weight(f.path, fmt, variant))
    # Never a pickle where the component has safetensors.
    for component, ws in weights.items():
        if any(w.fmt == "safetensors" for w in ws):
            weights[component] = [w for w in ws if w.fmt == "safetensors"]
    variant = _choose_variant(weights, precision)
    for ws in weights.values():
        have = {w.variant for w in ws}
        pick = variant if variant in have else (None if None in have else sorted(have, key=str)[0])
        chosen.extend(w.path for w in ws if w.variant == pick)
    return FileSelection(paths=tuple(sorted(set(chosen))), variant=variant)


def components_without_weights(model_index: Mapping[str, Any], paths: Iterable[str]) -> tuple[str, ...]:
    """Model components (a folder with ``config.json``) for which ``paths`` holds no weights.

    Such a selection cannot load: e.g. a repository that ships only ONNX or Flax weights for a
    component, or a cache that holds only part of a repository.
    """
    chosen = set(paths)
    lacking = []
    for component in pipeline_components(model_index):
        if f"{component}/config.json" not in chosen:
            continue
        names = [p.split("/")[-1] for p in chosen if p.startswith(component + "/")]
        if not any(_classify(n)[0] == "weight" for n in names):
            lacking.append(component)
    return tuple(lacking)


def components_without_config(model_index: Mapping[str, Any], paths: Iterable[str]) -> tuple[str, ...]:
    """Components ``model_index`` names for which ``paths`` holds no configuration: a folder a
    partial download never reached (a text encoder, a tokenizer), or a model's weights without
    the ``config.json`` that says how to build it.

    ``components_without_weights`` cannot see these: it judges only folders that have their
    ``config.json``. diffusers fails on the first at load, and builds a tokenizer that breaks at
    the first prompt from the second.
    """
    chosen = set(paths)
    lacking = []
    for component in pipeline_components(model_index):
        kinds = {_classify(p.rsplit("/", 1)[-1])[0] for p in chosen if p.startswith(component + "/")}
        if "config" not in kinds or ("weight" in kinds and f"{component}/config.json" not in chosen):
            lacking.append(component)
    return tuple(lacking)
