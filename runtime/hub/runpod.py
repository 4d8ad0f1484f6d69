"""Runpod's model cache: ``/runpod-volume/huggingface-cache/hub``, read, never written.

When an endpoint's "model" setting names the model, Runpod downloads it onto the host's own disk
before the worker starts (faster than the network volume, and not billed). It is laid out as a
Hugging Face cache; Runpod may not write ``refs/``, so for ``main`` a lone snapshot is taken.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from runtime.hub.layout import COMMIT_RE, repo_dir, resolve_ref

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunpodSnapshot:
    path: Path
    commit: str
    files: dict[str, int]  # path in the repository -> size, for files that resolve


def find_snapshot(root: Path, repo_id: str, revision: str) -> RunpodSnapshot | None:
    folder = repo_dir(Path(root), repo_id)  # named after the endpoint's "model" setting
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return None
    commit = _commit_for(folder, revision)
    if commit is None:
        return None
    path = snapshots / commit
    if not (path / "model_index.json").is_file():
        return None
    return RunpodSnapshot(path=path, commit=commit, files=_listing(path))


def _commit_for(folder: Path, revision: str) -> str | None:
    commit = resolve_ref(folder, revision)
    if commit is not None:
        return commit
    if revision == "main":
        found = [p.name for p in (folder / "snapshots").iterdir() if COMMIT_RE.match(p.name)]
        if len(found) == 1:
            return found[0]
        if found:
            log.info("Runpod's model cache holds %d snapshots of %s and no refs/main: not using it "
                     "(pin HF_MODEL_REVISION to one of them)", len(found), folder.name)
    return None


def _listing(snapshot: Path) -> dict[str, int]:
    files: dict[str, int] = {}
    for dirpath, _, names in os.walk(snapshot, followlinks=True):
        for name in names:
            full = Path(dirpath) / name
            try:
                size = full.stat().st_size  # follows the symlink; a dangling one is skipped
            except OSError:
                continue
            files[full.relative_to(snapshot).as_posix()] = size
    return files
