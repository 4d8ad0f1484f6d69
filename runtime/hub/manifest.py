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

from runtime.errors import brief
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
        """The marker of a complete set; None when there is none, or none this version wrote for
        this repository, commit and precision. One that is not a valid marker (any JSON of another
        shape: a list, a number, keys missing or of the wrong type) counts as none: the cold path
        then checks what is cached and fetches the rest, where trusting it would fail later."""
        path = cache.manifest_path(commit, precision)
        try:
            data: Any = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("version") != VERSION or str(data.get("repo_id")).lower() != cache.repo_id.lower():
                return None  # written by another version, or for another repository (the hub's
                # ids match whatever their case: so does the folder, RepoCache's)
            if (data.get("commit"), data.get("precision")) != (commit, precision):
                raise ValueError("commit or precision differ from its name")
            return cls(repo_id=cache.repo_id, commit=commit, precision=precision,
                       variant=_optional_str(data.get("variant")), totals=_totals(data.get("totals")),
                       files=_files(data.get("files")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring cache manifest %s: not a valid manifest (%s)", path.name, brief(exc))
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


# ---- what load accepts: exactly what save writes -------------------------------------------------
def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0  # not True, not 1.0


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _totals(value: Any) -> dict[str, int]:
    totals = value or {}
    if not isinstance(totals, dict) or not all(_is_count(n) for n in totals.values()):
        raise TypeError("totals are not counts")
    return dict(totals)


def _files(value: Any) -> list[RemoteFile]:
    """The complete set: never empty (a marker with no files would serve an empty snapshot)."""
    if not isinstance(value, list) or not value:
        raise TypeError("files is not a non-empty list")
    return [_file(item) for item in value]


def _file(item: Any) -> RemoteFile:
    if not isinstance(item, dict):
        raise TypeError(f"file entry {item!r:.40} is not an object")
    f = RemoteFile(**item)  # TypeError: a key missing or unknown
    if not (isinstance(f.path, str) and f.path and _is_count(f.size)):
        raise TypeError(f"file entry {item!r:.60} lacks a valid path or size")
    _optional_str(f.blob_id)
    _optional_str(f.sha256)
    return f
