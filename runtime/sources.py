"""Where the model's files are when they are not in our own hub cache: a local directory (a
baked image, a mounted folder) or Runpod's model cache, each used as it is and checked first, so
that a wrong path or an incomplete copy fails the fetch stage clearly instead of the load stage,
or every boot. Also what both and the hub path share: the fetch's result and the file plan (the
family of model_index.json picks the files load will read, at the precision it will use).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pipelines.files import (MODEL_INDEX, FileSelection, RepoFile, components_without_config,
                            components_without_weights)
from pipelines.registry import family_class_for, read_model_index
from runtime.errors import BootError
from runtime.hub.runpod import find_snapshot
from runtime.settings import Settings

log = logging.getLogger("runtime.fetch")  # the fetch stage's log, as before this module split


@dataclass
class FetchResult:
    model_dir: Path
    source: str  # "builtin", "local", "runpod-cache" or "hub"
    report: dict[str, Any] = field(default_factory=dict)
    # The weight variant to load (diffusers ``from_pretrained(variant=...)``); None: plain files.
    variant: str | None = None


def check_hub_id(model_id: str, local: Path) -> None:
    """A model id that names a file, or can only be a path (``/runpod-volume/models/flux``, ``./m``,
    ``~/m``), stops here: sent to the hub as a repository id, it came back as "not found, or
    gated: set HF_TOKEN", or offline as "unset HF_HUB_OFFLINE to fill the cache", neither of which
    helps with a path that is wrong or a network volume that is not attached."""
    if local.is_file():
        raise BootError(f"HF_MODEL_ID={model_id} is a file: single-file checkpoints are not "
                        "supported; set HF_MODEL_ID to a diffusers model directory (the folder "
                        "with model_index.json) or a Hugging Face model id", stage="fetch")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise BootError(f"HF_MODEL_ID={model_id} is not a directory on this worker (no such path) "
                        "nor a Hugging Face model id (org/name): check the path, and that the "
                        "network volume holding it is attached to the endpoint", stage="fetch") from None


def fetch_precision(settings: Settings, family_cls: type, model_dir: Path,
                    index: dict[str, Any]) -> str:
    """The precision load will use, as far as files go.

    Mirrors ``runtime.load.choose_precision``; its bf16 -> fp16 fallback on pre-Ampere GPUs needs
    torch and does not change the files (both are half precision), so it is left out here.
    """
    if settings.precision != "auto":
        return settings.precision
    return str(family_cls(model_dir, index).preferred_dtype(settings.device))


def plan(settings: Settings, root: Path, files: list[RepoFile]
          ) -> tuple[dict[str, Any], str, FileSelection]:
    """(model_index, precision, selection): the family named by ``root``'s model_index.json picks,
    among ``files``, what load will read at the precision it will use."""
    index = read_model_index(root)
    family_cls = family_class_for(index)
    precision = fetch_precision(settings, family_cls, root, index)
    return index, precision, family_cls.select_files(index, files, precision)


def from_local(settings: Settings, model_dir: Path) -> FetchResult:
    """A model directory baked into the image: used as it is, with the variant its files hold
    (a baked SDXL holds only ``*.fp16.safetensors``, which load needs ``variant="fp16"`` for)."""
    variant = None
    if (model_dir / "snapshots").is_dir() and not (model_dir / MODEL_INDEX).is_file():
        # Runpod's documentation shows its cached models' folders: one is easily taken for a model.
        raise BootError(f"HF_MODEL_ID={settings.model_id} is a Hugging Face cache folder, not a "
                        "model directory: set HF_MODEL_ID to the model's hub id (a copy in Runpod's "
                        "model cache is found by it) or to one of the folders under its snapshots/",
                        stage="fetch")
    if (model_dir / "model_index.json").is_file():  # else the load stage says what is wrong
        files = [RepoFile(p.relative_to(model_dir).as_posix(), p.stat().st_size)
                 for p in model_dir.rglob("*") if p.is_file()]
        selection = plan(settings, model_dir, files)[2]
        _refuse_lfs_pointers(settings, model_dir, files, selection.paths)
        variant = selection.variant
    return FetchResult(model_dir, "local", {"cache": "local directory", "variant": variant}, variant)


LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _refuse_lfs_pointers(settings: Settings, model_dir: Path, files: list[RepoFile],
                         chosen: tuple[str, ...]) -> None:
    """A repository cloned without git-lfs holds ~130-byte pointer files where its weights should
    be; loading one fails with safetensors' "header too large", which names neither the file
    nor the cause. Only files under 1 KB are opened: no real weight file is that small."""
    sizes = {f.path: f.size for f in files}
    pointers = []
    for path in chosen:
        if sizes[path] < 1024 and path.endswith((".safetensors", ".bin")):
            with open(model_dir / path, "rb") as fh:
                if fh.read(len(LFS_POINTER)) == LFS_POINTER:
                    pointers.append(path)
    if pointers:
        raise BootError(f"{settings.model_id} holds Git LFS pointer files, not weights "
                        f"({', '.join(pointers[:3])}{', ...' if len(pointers) > 3 else ''}): it was "
                        "cloned without git-lfs; run `git lfs pull` in it, or set HF_MODEL_ID to "
                        "the hub id", stage="fetch")


# ---- Runpod's model cache ------------------------------------------------------------------------
def shard_maps(root: Path, paths: Iterable[str]) -> dict[str, set[str] | None]:
    """Each sharded-weights index among ``paths`` and the shards its weight_map names, as paths
    beside it (None: the index is unreadable)."""
    maps: dict[str, set[str] | None] = {}
    for path in paths:
        if not path.endswith(".index.json") and ".index." not in path:
            continue
        folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        try:
            shards = json.loads((root / path).read_text()).get("weight_map", {}).values()
            maps[path] = {folder + shard for shard in shards}
        except (OSError, ValueError, AttributeError, TypeError):
            maps[path] = None
    return maps


def missing_shards(root: Path, paths: tuple[str, ...]) -> tuple[str, ...]:
    """Components whose sharded weights' index names a shard the cache does not hold: a partly
    cached model that would only fail later, at load, with no fallback."""
    chosen = set(paths)
    return tuple(path.split("/", 1)[0] for path, shards in shard_maps(root, paths).items()
                 if shards is None or not shards <= chosen)


def from_runpod_cache(settings: Settings) -> FetchResult | None:
    snap = find_snapshot(settings.runpod_model_cache, settings.model_id, settings.revision)
    if snap is None:
        return None
    index, precision, selection = plan(settings, snap.path,
                                        [RepoFile(p, s) for p, s in snap.files.items()])
    # A partial snapshot (a download cut short, files left out) would fail at load or at the
    # first prompt, on every boot, with no fallback: our own cache is the better source then.
    lacking = dict.fromkeys(components_without_config(index, selection.paths)
                            + components_without_weights(index, selection.paths)
                            + missing_shards(snap.path, selection.paths))
    if lacking:
        log.warning("Runpod's model cache holds an incomplete copy of %s (nothing usable for %s): "
                    "using our cache", settings.model_id, ", ".join(lacking))
        return None
    size = sum(snap.files[p] for p in selection.paths)
    log.info("using Runpod's model cache for %s (%s, %s): %s", settings.model_id, snap.commit[:12],
             precision, snap.path)
    report = {"cache": "runpod", "commit": snap.commit, "precision": precision,
              "variant": selection.variant, "files": len(selection.paths), "bytes_needed": size,
              "bytes_downloaded": 0, "hub_requests": 0}
    return FetchResult(snap.path, "runpod-cache", report, selection.variant)
