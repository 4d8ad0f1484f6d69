"""Partial states the fetch stage must notice: a Runpod cache holding only some shards of a
sharded component, and a download whose partial file another worker has adopted."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.sources import missing_shards
from runtime.hub.transfer import LockLost, _part_size

INDEX = "transformer/diffusion_pytorch_model.safetensors.index.json"
SHARDS = ["diffusion_pytorch_model-00001-of-00002.safetensors",
          "diffusion_pytorch_model-00002-of-00002.safetensors"]


def _snapshot(root: Path) -> Path:
    (root / "transformer").mkdir(parents=True)
    weight_map = {"a.weight": SHARDS[0], "b.weight": SHARDS[1], "c.weight": SHARDS[1]}
    (root / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


def test_a_component_missing_a_shard_is_reported(tmp_path: Path) -> None:
    root = _snapshot(tmp_path)
    complete = (INDEX, "transformer/config.json", *(f"transformer/{s}" for s in SHARDS))
    assert missing_shards(root, complete) == ()
    assert missing_shards(root, complete[:-1]) == ("transformer",)


def test_an_unreadable_index_counts_as_incomplete(tmp_path: Path) -> None:
    root = _snapshot(tmp_path)
    (root / INDEX).write_text("{not json")
    assert missing_shards(root, (INDEX,)) == ("transformer",)


def test_an_adopted_partial_means_lock_lost_not_a_failed_boot(tmp_path: Path) -> None:
    part = tmp_path / "blob.part"
    part.write_bytes(b"12345")
    held = SimpleNamespace(lost=False)
    assert _part_size(part, held) == 5  # type: ignore[arg-type]
    part.rename(tmp_path / "blob.adopted.part")  # what the worker taking over does
    with pytest.raises(LockLost):
        _part_size(part, held)  # type: ignore[arg-type]
    part.write_bytes(b"")
    with pytest.raises(LockLost):
        _part_size(part, SimpleNamespace(lost=True))  # type: ignore[arg-type]


def test_the_disk_check_ignores_a_partial_file_another_worker_just_moved(tmp_path: Path) -> None:
    """Between listing the partial files and reading their sizes, another worker may publish or
    adopt one (a rename): a dangling link stands for it here. The boot must not fail on it."""
    from runtime.fetch import FetchOptions, _check_disk
    from runtime.hub.layout import RemoteFile, RepoCache

    cache = RepoCache(tmp_path / "hub", tmp_path / "state", "org/model")
    weights = RemoteFile(path="unet/w.safetensors", size=1000, sha256="ab" * 32)
    cache.blobs.mkdir(parents=True)
    (cache.blobs / f"{weights.blob_name}.live.part").write_bytes(b"x" * 400)
    (cache.blobs / f"{weights.blob_name}.gone.part").symlink_to(tmp_path / "renamed-away")
    _check_disk(cache, [weights], FetchOptions(disk_reserve_bytes=0, disk_free=lambda path: 10**9))
    with pytest.raises(Exception, match="not enough disk space.*600 B more"):
        _check_disk(cache, [weights], FetchOptions(disk_reserve_bytes=0, disk_free=lambda path: 599))


def test_the_disk_check_counts_a_blob_of_the_right_size_without_a_stamp_as_there(tmp_path: Path) -> None:
    """A cache filled by another tool (or copied without its times) has every blob but none of
    our stamps: they are rehashed under their locks, not downloaded. Counted as missing, they
    made a disk with less free space than the model refuse a complete cache."""
    from runtime.fetch import FetchOptions, _check_disk
    from runtime.hub.layout import RemoteFile, RepoCache

    cache = RepoCache(tmp_path / "hub", tmp_path / "state", "org/model")
    there = RemoteFile(path="unet/w.safetensors", size=1000, sha256="ab" * 32)
    short = RemoteFile(path="vae/w.safetensors", size=300, sha256="cd" * 32)
    cache.blobs.mkdir(parents=True)
    cache.blob(there).write_bytes(b"x" * 1000)  # no stamp
    cache.blob(short).write_bytes(b"x" * 100)  # cut short: downloaded again, whole
    _check_disk(cache, [there, short], FetchOptions(disk_reserve_bytes=0, disk_free=lambda path: 300))
    with pytest.raises(Exception, match=r"not enough disk space.*300 B more \(1 files\)"):
        _check_disk(cache, [there, short], FetchOptions(disk_reserve_bytes=0, disk_free=lambda path: 299))
