"""The complete-set marker: what a warm boot needs to start with no hub request at all.

Written once every selected file of (model, commit, precision) is verified and linked, it records
each file's size and hashes (so a damaged file can be refetched without listing the repository
again) and the fetch's accounting. A warm boot checks each file with a ``stat`` and its stamp;
anything that moved is rehashed, and only what fails is fetched again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from runtime.hub.integrity import trusted
from runtime.hub.layout import RemoteFile, RepoCache, write_atomic

log = logging.getLogger(__name__)

VERSION = 1


@dataclass
class Manifest:
    repo_id: str
    commit: str
    precision: str
    variant: str | None
    files: list[RemoteFile]
    totals: dict[str, int] = field(default_factory=dict)  # bytes/files skipped, repo size

    def save(self, cache: RepoCache) -> None:
        data = {"version": VERSION, "repo_id": self.repo_id, "commit": self.commit,
                "precision": self.precision, "variant": self.variant, "totals": self.totals,
                "files": [asdict(f) for f in self.files]}
        write_atomic(cache.manifest_path(self.commit, self.precision), json.dumps(data, indent=1))

    @classmethod
    def load(cls, cache: RepoCache, commit: str, precision: str) -> "Manifest | None":
        path = cache.manifest_path(commit, precision)
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            if data.get("version") != VERSION or data.get("repo_id") != cache.repo_id:
                return None
            return cls(repo_id=data["repo_id"], commit=data["commit"], precision=data["precision"],
                       variant=data.get("variant"), totals=dict(data.get("totals") or {}),
                       files=[RemoteFile(**f) for f in data["files"]])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable cache manifest %s (%s)", path.name, exc.__class__.__name__)
            return None

    def damaged(self, cache: RepoCache) -> list[RemoteFile]:
        """Files whose blob is missing or fails its check; relinks blobs that are fine."""
        bad = []
        for f in self.files:
            if not trusted(cache.blob(f), cache.stamp_path(f), f, rehash=True):
                bad.append(f)
            elif not cache.linked(self.commit, f):
                cache.link(self.commit, f)
        return bad

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def unique_size(self) -> int:
        """Bytes on disk: identical files (two tokenizers) share one blob."""
        return sum({f.blob_name: f.size for f in self.files}.values())
