"""Fetch stage: put the model's files on local (or volume) disk and return their directory.

Built-in tiny models are built into the cache; a local directory is used as it is; a hub id is
downloaded into the Hugging Face cache under ``VISGATE_CACHE_DIR``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.tiny import ensure_tiny, is_tiny
from runtime.errors import BootError
from runtime.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class FetchResult:
    model_dir: Path
    source: str  # "builtin", "local" or "hub"
    report: dict[str, Any] = field(default_factory=dict)


def hub_cache_dir(settings: Settings) -> Path:
    return settings.cache_dir / "hf" / "hub"


def fetch(settings: Settings) -> FetchResult:
    if is_tiny(settings.model_id):
        path = ensure_tiny(settings.model_id, settings.cache_dir / "builtin")
        return FetchResult(path, "builtin", {"cache": "built-in"})
    local = Path(settings.model_id).expanduser()
    if local.is_dir():
        return FetchResult(local.resolve(), "local", {"cache": "local directory"})
    return _fetch_from_hub(settings)


def _fetch_from_hub(settings: Settings) -> FetchResult:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        path = snapshot_download(settings.model_id, revision=settings.revision,
                                 token=settings.hf_token, cache_dir=hub_cache_dir(settings))
    except HfHubHTTPError as exc:
        raise BootError(f"could not download {settings.model_id}: {exc.__class__.__name__}",
                        stage="fetch") from exc
    return FetchResult(Path(path), "hub", {})
