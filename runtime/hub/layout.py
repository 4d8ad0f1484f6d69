"""Where a repository's files live: the Hugging Face cache layout, and our state beside it.

    <hub>/models--org--name/blobs/<sha256 or git oid>        complete, verified files
    <hub>/models--org--name/blobs/<blob>.<token>.part        a download in progress (resumable)
    <hub>/models--org--name/snapshots/<commit>/<path>        relative symlinks to ../../blobs/<blob>
    <hub>/models--org--name/refs/<revision>                  the commit a branch or tag pointed to
    <state>/locks/models--org--name/<blob>.lock              one lock per blob (see lock.py)
    <state>/verified/models--org--name/<blob>.json           size + mtime when the hash last matched
    <state>/manifests/models--org--name/<commit>.<precision>.json   the complete-set marker
    <state>/refs/models--org--name/<precision>/<revision>    the commit that set is of

The hub part is what ``huggingface_hub`` writes itself, so ``hf cache`` tools and
``from_pretrained(cache_dir=...)`` understand it. Our state lives outside it so the hub's cache
scanner never trips over files it does not know.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# A commit's short form, as the hub's pages show it (7 characters) and its API accepts.
SHORT_COMMIT_RE = re.compile(r"^[0-9a-f]{7,39}$")


@dataclass(frozen=True)
class RemoteFile:
    """A repository file as the hub describes it; ``sha256`` only for LFS files."""

    path: str
    size: int
    blob_id: str | None = None  # git object id (sha1 of "blob <size>\\0<content>")
    sha256: str | None = None

    @property
    def blob_name(self) -> str:
        # The hub's own naming: LFS files by their sha256, others by their git object id.
        return self.sha256 or self.blob_id or f"size-{self.size}-{self.path.replace('/', '--')}"


# A volume out of blocks or quota (inodes too answer ENOSPC).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def repo_dir(hub_root: Path, repo_id: str) -> Path:
    """The repository's folder in a hub cache, matched as the hub matches ids: whatever their
    case. huggingface_hub names the folder as the id was spelt, so the same repository asked for
    as ``black-forest-labs/flux.1-dev`` (an HF_MODEL_ID edited, Runpod's "model" setting written
    otherwise) would otherwise get a second folder and a second download of every weight."""
    exact = Path(hub_root) / repo_folder(repo_id)
    if exact.is_dir():
        return exact
    try:
        found = [p for p in Path(hub_root).iterdir()
                 if p.name.lower() == exact.name.lower() and p.is_dir()]
    except OSError:
        return exact
    return found[0] if len(found) == 1 else exact


def write_atomic(path: Path, text: str) -> None:
    """Readers (other workers) see the old content or the new one, never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)  # a full disk: no temp file left that nothing would remove
        raise


def _remove(tmp: Path) -> None:
    """Remove a temp file after a failure, never raising over the error being handled."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def resolve_ref(folder: Path, revision: str) -> str | None:
    """The commit a cached repository folder's ``refs/`` names for ``revision`` (a commit itself
    resolves to itself, a short commit to the one snapshot it begins); None when the cache does
    not know it."""
    if COMMIT_RE.match(revision):
        return revision
    try:
        commit = (folder / "refs" / revision).read_text().strip()
    except OSError:
        return _snapshot_by_prefix(folder, revision)
    return commit if COMMIT_RE.match(commit) else None


def _snapshot_by_prefix(folder: Path, revision: str) -> str | None:
    """The cached commit that a short commit names. No ``refs/`` entry is written for one except
    by a fetch that asked the hub with it: a Runpod cache, or ours filled under another revision,
    holds it as a snapshot only."""
    if not SHORT_COMMIT_RE.match(revision):
        return None
    try:
        found = [p.name for p in (folder / "snapshots").iterdir()
                 if COMMIT_RE.match(p.name) and p.name.startswith(revision)]
    except OSError:
        return None
    return found[0] if len(found) == 1 else None  # two that begin alike: ask the hub


class RepoCache:
    """One repository in the hub cache at ``hub_root``, with our state under ``state_root``."""

    def __init__(self, hub_root: Path, state_root: Path, repo_id: str) -> None:
        self.repo_id = repo_id
        self.folder = repo_dir(Path(hub_root), repo_id)
        self.blobs = self.folder / "blobs"
        self.state = Path(state_root)
        self._name = self.folder.name  # locks and stamps follow the folder, whatever the spelling

    def blob(self, f: RemoteFile) -> Path:
        return self.blobs / f.blob_name

    def snapshot(self, commit: str) -> Path:
        return self.folder / "snapshots" / commit

    def lock_path(self, f: RemoteFile) -> Path:
        return self.state / "locks" / self._name / f"{f.blob_name}.lock"

    def stamp_path(self, f: RemoteFile) -> Path:
        return self.state / "verified" / self._name / f"{f.blob_name}.json"

    def manifest_path(self, commit: str, precision: str) -> Path:
        return self.state / "manifests" / self._name / f"{commit}.{precision}.json"

    # ---- refs ------------------------------------------------------------------------------
    def resolve(self, revision: str) -> str | None:
        """The commit for ``revision`` known to this cache, without asking the hub."""
        return resolve_ref(self.folder, revision)

    def write_ref(self, revision: str, commit: str) -> None:
        if revision != commit:
            write_atomic(self.folder / "refs" / revision, commit)

    def precision_ref(self, revision: str, precision: str) -> Path:
        """Where the commit of the complete set a precision last fetched for ``revision`` is
        named: the hub's ``refs/`` is one per revision, and a worker of another precision that
        fetched the branch after it moved left this one's complete set unnamed (its next boot
        went to the hub, and failed offline)."""
        return self.state / "refs" / self._name / precision / revision

    def resolve_precision(self, revision: str, precision: str) -> str | None:
        try:
            commit = self.precision_ref(revision, precision).read_text().strip()
        except OSError:
            return None
        return commit if COMMIT_RE.match(commit) else None

    def write_precision_ref(self, revision: str, precision: str, commit: str) -> None:
        if revision != commit:
            write_atomic(self.precision_ref(revision, precision), commit)

    # ---- snapshot links ------------------------------------------------------------------
    def link(self, commit: str, f: RemoteFile) -> Path:
        """Point ``snapshots/<commit>/<path>`` at the blob; atomic, safe when workers race."""
        target = self.snapshot(commit) / f.path
        blob = self.blob(f)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() and os.path.realpath(target) == os.path.realpath(blob):
            return target
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            try:
                os.symlink(os.path.relpath(blob, target.parent), tmp)
            except OSError as exc:
                # Filesystems without symlinks: a hard link, else a copy (what huggingface_hub
                # does). Not on a full volume: a copy of the blob would need its size again.
                if exc.errno in NO_ROOM:
                    raise
                try:
                    os.link(blob, tmp)
                except OSError as exc:
                    if exc.errno in NO_ROOM:
                        raise
                    shutil.copyfile(blob, tmp)
            os.replace(tmp, target)
        except BaseException:
            _remove(tmp)  # a random name: nothing else would ever remove it
            raise
        return target

    def linked(self, commit: str, f: RemoteFile) -> bool:
        target = self.snapshot(commit) / f.path
        try:
            return target.stat().st_size == f.size
        except OSError:
            return False
