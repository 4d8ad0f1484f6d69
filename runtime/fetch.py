"""Fetch stage: put the model's files on local (or volume) disk and return their directory.

Where the files come from, in order:

1. a built-in tiny model (built into the cache) or a local directory (used as it is, after the
   checks in ``runtime.sources``);
2. Runpod's model cache, read-only, when it holds a complete copy of the model
   (``runtime.sources``, ``runtime.hub.runpod``);
3. our Hugging Face cache under ``VISGATE_CACHE_DIR``, when a complete-set marker says it holds
   every needed file: no hub request at all, so a warm boot works with the hub unreachable;
4. the hub: one listing request, then only the files the pipeline family selects (right variant,
   safetensors, no ONNX/Flax/root checkpoints), each downloaded once across all workers sharing
   the volume, resumable, and verified by size and hash (``runtime.hub.transfer``).

The result names the weight ``variant`` that load must pass to ``from_pretrained``, and its
``report`` (cache hit/miss, bytes, hub requests) goes into the boot record.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from pipelines.files import MODEL_INDEX, FileSelection, RepoFile, components_without_weights
from pipelines.registry import family_class_for, read_model_index
from pipelines.tiny import ensure_tiny, is_tiny
from runtime.errors import BootError
from runtime.hub.api import HubClient, HubOptions, Listing, RevisionNotFound, TransientHubError
from runtime.hub.integrity import stamp_valid
from runtime.hub.layout import NO_ROOM, RemoteFile, RepoCache
from runtime.hub.manifest import Manifest
from runtime.hub.progress import Progress, human_bytes
from runtime.hub.transfer import Transfer, TransferOptions, disk_free, part_size
from runtime.settings import Settings
from runtime.sources import (FetchResult, check_hub_id, fetch_precision, from_local, from_runpod_cache,
                             plan, shard_maps)
from runtime.warmup import serving_plan

log = logging.getLogger(__name__)


def _inodes_free(path: Path) -> int | None:
    """How many more files ``path``'s filesystem lets us create; None where it does not count
    them (btrfs, some network and FUSE filesystems report no inodes at all)."""
    st = os.statvfs(path)
    return st.f_favail if st.f_files else None


@dataclass(frozen=True)
class FetchOptions:
    """Knobs with production defaults; tests shorten the waits."""

    workers: int = 8  # files downloaded in parallel
    progress_interval_s: float = 10.0
    disk_reserve_bytes: int = 256 << 20  # left free after the download, for logs and temp files
    hub: HubOptions = HubOptions()
    transfer: TransferOptions = TransferOptions()
    disk_free: Callable[[Path], int] = disk_free
    inodes_free: Callable[[Path], int | None] = _inodes_free


def hub_cache_dir(settings: Settings) -> Path:
    return settings.cache_dir / "hf" / "hub"


def state_dir(settings: Settings) -> Path:
    """Our locks, stamps and markers: beside the hub cache, not inside it."""
    return settings.cache_dir / "hf" / "visgate"


def fetch(settings: Settings, options: FetchOptions | None = None) -> FetchResult:
    """The model's files on disk; a BootError (stage "fetch") says clearly why not."""
    if is_tiny(settings.model_id):
        path = ensure_tiny(settings.model_id, settings.cache_dir / "builtin")
        return FetchResult(path, "builtin", {"cache": "built-in"})
    local = Path(settings.model_id).expanduser()
    if local.is_dir():
        return from_local(settings, local.resolve())
    check_hub_id(settings.model_id, local)
    options = options or FetchOptions()
    started = time.perf_counter()
    found = from_runpod_cache(settings)
    if found is not None:
        found.report["seconds"] = round(time.perf_counter() - started, 3)
        return found
    with _disk_full_reported(settings):
        return _from_hub(settings, options, started)


@contextlib.contextmanager
def _disk_full_reported(settings: Settings) -> Iterator[None]:
    """Out of space or quota anywhere in our cache (a download, a resumed partial file, a lock, a
    stamp, a snapshot link, the marker): one BootError that says where and what to do, not a
    traceback from whichever write happened to come first."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        raise BootError(f"disk full while fetching {settings.model_id} into "
                        f"{settings.cache_dir / 'hf'} ({exc.strerror or os.strerror(exc.errno)}): "
                        "free space there or set VISGATE_CACHE_DIR to a larger disk",
                        stage="fetch") from None


# ---- our cache, then the hub ---------------------------------------------------------------------
def _from_hub(settings: Settings, options: FetchOptions, started: float) -> FetchResult:
    cache = RepoCache(hub_cache_dir(settings), state_dir(settings), settings.model_id)
    client = HubClient(settings.hub_endpoint, settings.model_id, settings.hf_token, options.hub)
    manifest = _cached_manifest(settings, cache)
    if manifest is not None:
        return _from_cache(settings, cache, client, manifest, options, started)
    _require_online(settings, cache, "no complete copy is cached")
    return _cold(settings, cache, client, options, started)


def _from_cache(settings: Settings, cache: RepoCache, client: HubClient, manifest: Manifest,
                options: FetchOptions, started: float) -> FetchResult:
    """A complete set was cached: check it (no hub), refetch only what fails the check."""
    damaged = manifest.damaged(cache)
    if not damaged:
        return _result(settings, cache, manifest, client, started, "hit", 0, manifest.unique_size)
    _require_online(settings, cache, f"{len(damaged)} cached files failed their check")
    log.warning("%d cached files of %s failed their check: fetching them again",
                len(damaged), settings.model_id)
    # The manifest holds their sizes and hashes: no listing request is needed.
    reused = _cached_bytes(cache, manifest.files)
    try:
        downloaded = _download(cache, client, manifest.commit, damaged, options)
    except RevisionNotFound:
        if settings.revision == manifest.commit:
            raise  # the user pinned that very commit: nothing else to fetch
        # A branch (or tag) whose history was rewritten: the cached commit is gone from the
        # hub, the branch itself is not. List it again, as a cold boot does.
        log.warning("cached commit %s of %s is no longer on the hub: fetching %s again",
                    manifest.commit[:12], settings.model_id, settings.revision)
        return _cold(settings, cache, client, options, started)
    for f in damaged:
        cache.link(manifest.commit, f)
    return _result(settings, cache, manifest, client, started, "repaired", downloaded, reused)


def _cold(settings: Settings, cache: RepoCache, client: HubClient, options: FetchOptions,
          started: float) -> FetchResult:
    """List the repository, read model_index.json, let the family choose, download that."""
    listing = _listing(settings, cache, client)
    index_file = listing.files.get(MODEL_INDEX)
    if index_file is None:
        raise BootError(f"{settings.model_id} has no {MODEL_INDEX}: it is not a diffusers pipeline "
                        "repository (single-file checkpoints are not supported)", stage="fetch")
    downloaded = _download(cache, client, listing.commit, [index_file], options)
    snapshot = cache.link(listing.commit, index_file).parent
    precision, selection, files = _select(settings, snapshot, listing)
    _check_disk(cache, files, options, snapshot)
    reused = _cached_bytes(cache, files) - downloaded  # what was there before this boot's own bytes
    # The configurations first (a few MB at most): with them the family knows its size rules,
    # and a warmup shape it refuses (1000x1000 for FLUX, whose sides are multiples of 16) stops
    # the boot now, not after gigabytes of weights.
    configs = [f for f in files if f.path.endswith(".json")]
    downloaded += _download(cache, client, listing.commit, configs, options)
    for f in configs:
        cache.link(listing.commit, f)
    _check_serving_shapes(settings, snapshot)
    shards = _shards_left_out(settings, snapshot, listing, files)
    if shards:
        files += shards
        _check_disk(cache, files, options, snapshot)
    downloaded += _download(cache, client, listing.commit, files, options)
    for f in files:
        cache.link(listing.commit, f)
    cache.write_ref(settings.revision, listing.commit)
    chosen = {f.path for f in files}
    skipped = [f for p, f in listing.files.items() if p not in chosen]
    manifest = Manifest(settings.model_id, listing.commit, precision, selection.variant, files,
                        totals={"files_skipped": len(skipped),
                                "bytes_skipped": sum(f.size for f in skipped)})
    manifest.save(cache)  # last: only a complete, verified, linked set gets a marker
    cache.write_precision_ref(settings.revision, precision, listing.commit)
    state = "partial" if reused > 0 else "miss"
    return _result(settings, cache, manifest, client, started, state, downloaded, reused)


def _select(settings: Settings, snapshot: Path, listing: Listing
            ) -> tuple[str, FileSelection, list[RemoteFile]]:
    """The family of model_index.json decides which files, for the precision load will use."""
    index, precision, selection = plan(settings, snapshot,
                                        [RepoFile(f.path, f.size) for f in listing.files.values()])
    files = _checked_files(settings, listing, index, selection)
    _log_plan(settings, listing, files, selection, precision)
    return precision, selection, files


def _shards_left_out(settings: Settings, snapshot: Path, listing: Listing,
                     files: list[RemoteFile]) -> list[RemoteFile]:
    """The shards that the chosen (already fetched) indexes name and the selection left out.

    A BootError when an index names a file the repository does not have, or cannot be read:
    the weights would be marked complete and every boot would fail at load instead.
    """
    chosen = {f.path for f in files}
    maps = shard_maps(snapshot, sorted(chosen))
    unreadable = [index for index, shards in maps.items() if shards is None]
    named = {p for shards in maps.values() for p in shards or ()}
    absent = sorted(named - listing.files.keys())
    if unreadable or absent:
        what = [f"unreadable index {p}" for p in unreadable] + [f"missing shard {p}" for p in absent]
        raise BootError(f"{settings.model_id} at {listing.commit[:12]} has incomplete sharded "
                        f"weights ({', '.join(what)}): load would fail", stage="fetch")
    return [listing.files[p] for p in sorted(named - chosen)]


def _check_serving_shapes(settings: Settings, snapshot: Path) -> None:
    """The warmup shapes and default overrides against the family's own size rules and limits:
    the settings stage can only check what every model shares (a BootError, stage "settings",
    when one is refused)."""
    index = read_model_index(snapshot)
    serving_plan(family_class_for(index)(snapshot, index), settings)


def _cached_manifest(settings: Settings, cache: RepoCache) -> Manifest | None:
    commit = cache.resolve(settings.revision)
    if commit is None:
        return None
    snapshot = cache.snapshot(commit)
    if not (snapshot / MODEL_INDEX).is_file():
        return None
    try:
        index = read_model_index(snapshot)
    except BootError:
        return None  # a damaged model_index.json: the cold path fetches it again
    precision = fetch_precision(settings, family_class_for(index), snapshot, index)
    manifest = Manifest.load(cache, commit, precision)
    if manifest is None:
        # The branch moved under a worker of another precision (one volume, two endpoints):
        # this precision's complete set is of the commit it fetched before.
        earlier = cache.resolve_precision(settings.revision, precision)
        if earlier is not None and earlier != commit:
            manifest = Manifest.load(cache, earlier, precision)
    return manifest


def _require_online(settings: Settings, cache: RepoCache, why: str) -> None:
    if settings.hub_offline:
        raise BootError(f"HF_HUB_OFFLINE is set and {why} of {settings.model_id} at revision "
                        f"{settings.revision!r} in {cache.folder}: unset HF_HUB_OFFLINE for one "
                        "boot to fill the cache", stage="fetch")


def _listing(settings: Settings, cache: RepoCache, client: HubClient) -> Listing:
    try:
        return client.listing(settings.revision)
    except TransientHubError as exc:
        raise BootError(f"the hub is unavailable ({exc}) and {cache.folder} holds no complete copy "
                        f"of {settings.model_id} at revision {settings.revision!r}: retry when "
                        "the hub is reachable", stage="fetch") from None


def _checked_files(settings: Settings, listing: Listing, index: dict[str, Any],
                   selection: FileSelection) -> list[RemoteFile]:
    lacking = components_without_weights(index, selection.paths)
    if lacking:
        raise BootError(f"{settings.model_id} has no safetensors or PyTorch weights for "
                        f"{', '.join(lacking)} (ONNX, Flax and single-file checkpoints are not "
                        "loaded)", stage="fetch")
    return [listing.files[p] for p in selection.paths]


def _check_disk(cache: RepoCache, files: list[RemoteFile], options: FetchOptions,
                snapshot: Path | None = None) -> None:
    """Fail before downloading rather than with a full disk halfway through (``snapshot``: the
    folder the files will be linked into)."""
    cache.blobs.mkdir(parents=True, exist_ok=True)
    missing = {f.blob_name: f for f in _unique(files)
               if not stamp_valid(cache.stamp_path(f), cache.blob(f), f)}
    # A blob of the right size without our stamp (a cache filled by another tool, or copied
    # without its times) is rehashed under its lock, not downloaded, unless its bytes are wrong:
    # counted as missing, a disk with less free space than the model refused a complete cache.
    absent = {name: f for name, f in missing.items() if part_size(cache.blob(f)) != f.size}
    parts = {name: list(cache.blobs.glob(f"{name}.*.part")) for name in absent}
    # Other workers rename and remove partial files at any moment: one gone counts for nothing.
    partial = sum(max(0, part_size(p)) for found in parts.values() for p in found)
    need = max(0, sum(f.size for f in absent.values()) - partial)
    free = options.disk_free(cache.blobs)
    if need and need + options.disk_reserve_bytes > free:
        raise BootError(f"not enough disk space in {cache.blobs}: {cache.repo_id} needs "
                        f"{human_bytes(need)} more ({len(absent)} files) plus "
                        f"{human_bytes(options.disk_reserve_bytes)} headroom, and "
                        f"{human_bytes(free)} is free: free space there or set VISGATE_CACHE_DIR "
                        "to a larger disk", stage="fetch")
    # A volume out of inodes answers ENOSPC too, with bytes to spare, and may do so only at the
    # stamps and links, after the weights were downloaded. Counted here is no more than the
    # fetch will create: a file for each missing blob (unless a partial one is there to take
    # over) and its stamp, a snapshot link for each of its paths, the snapshot's folders not
    # made yet, one lock at a time and the marker.
    inodes = options.inodes_free(cache.blobs)
    if not missing or inodes is None:
        return
    folders = {Path(f.path).parents[i] for f in files for i in range(len(Path(f.path).parents) - 1)}
    creates = (sum(1 if parts.get(name) or name not in absent else 2 for name in missing)
               + sum(1 for f in files if f.blob_name in missing)
               + (sum(not (snapshot / d).is_dir() for d in folders) if snapshot else 0) + 2)
    if creates > inodes:
        raise OSError(errno.ENOSPC, f"out of inodes: {cache.repo_id} needs {creates} more files "
                      f"({len(missing)} to download) and {inodes} can be created")


def _log_plan(settings: Settings, listing: Listing, files: list[RemoteFile],
              selection: FileSelection, precision: str) -> None:
    chosen = {f.path for f in files}
    skipped = [f for p, f in listing.files.items() if p not in chosen]
    log.info("fetching %s at %s (%s, %s, variant %s): %d files, %s; skipping %d files, %s",
             settings.model_id, listing.commit[:12], settings.revision, precision,
             selection.variant or "none", len(files), human_bytes(sum(f.size for f in files)),
             len(skipped), human_bytes(sum(f.size for f in skipped)))


def _unique(files: list[RemoteFile]) -> list[RemoteFile]:
    """One entry per blob: identical files (two tokenizers) are downloaded once."""
    return list({f.blob_name: f for f in files}.values())


def _cached_bytes(cache: RepoCache, files: list[RemoteFile]) -> int:
    return sum(f.size for f in _unique(files)
               if stamp_valid(cache.stamp_path(f), cache.blob(f), f))


def _download(cache: RepoCache, client: HubClient, commit: str, files: list[RemoteFile],
              options: FetchOptions) -> int:
    """Ensure every blob, several at a time; return the bytes this process downloaded.

    First the blobs no other worker is downloading (largest first), then, waiting, the rest: so
    workers that boot together split the download between them instead of queueing on it.
    """
    unique = sorted(_unique(files), key=lambda f: -f.size)
    pending = sum(f.size for f in unique) - _cached_bytes(cache, unique)
    progress = Progress(cache.repo_id, pending, options.progress_interval_s)
    abort = threading.Event()
    transfer = Transfer(cache, client, commit, progress, options.transfer, abort, options.disk_free,
                        options.disk_reserve_bytes)
    workers = max(1, min(options.workers, len(unique)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        try:
            first = _all(pool, lambda f: transfer.ensure(f, wait=False), unique)
            busy = [f for f, got in zip(unique, first) if got is None]
            rest = _all(pool, transfer.ensure, busy)
        except BaseException:
            abort.set()  # the other threads stop at their next chunk; their locks are released
            raise
    return sum(n or 0 for n in first) + sum(n or 0 for n in rest)


def _all(pool: ThreadPoolExecutor, fn: Callable[[RemoteFile], int | None],
         files: list[RemoteFile]) -> list[int | None]:
    """``fn`` over ``files`` in the pool, results in order; the first error cancels the rest."""
    futures = [pool.submit(fn, f) for f in files]
    try:
        for future in as_completed(futures):
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return [future.result() for future in futures]


def _result(settings: Settings, cache: RepoCache, manifest: Manifest, client: HubClient,
            started: float, state: str, downloaded: int, reused: int) -> FetchResult:
    """The boot record's fetch entry. Bytes count each distinct file once: ``downloaded`` by
    this worker, ``reused`` from the cache as it was, ``from_other_workers`` while it waited."""
    seconds = time.perf_counter() - started
    others = max(0, manifest.unique_size - reused - downloaded)
    report: dict[str, Any] = {
        "cache": state, "revision": settings.revision, "commit": manifest.commit,
        "precision": manifest.precision, "variant": manifest.variant,
        "files": len(manifest.files), "bytes_needed": manifest.size,
        "bytes_downloaded": downloaded, "bytes_reused": reused, "bytes_from_other_workers": others,
        **manifest.totals, "hub_requests": client.requests, "seconds": round(seconds, 3)}
    if downloaded:
        report["download_mb_per_s"] = round(downloaded / 1e6 / max(seconds, 1e-6), 1)
        log.info("fetched %s: %s downloaded in %.1fs, %s reused", settings.model_id,
                 human_bytes(downloaded), seconds, human_bytes(report["bytes_reused"]))
    else:
        log.info("%s: cache %s, %d files, no download (%d hub requests)", settings.model_id, state,
                 len(manifest.files), client.requests)
    return FetchResult(cache.snapshot(manifest.commit), "hub", report, manifest.variant)
