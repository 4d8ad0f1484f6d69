"""Our state files on the volume (a blob's "verified" stamp, the complete-set marker) read back
as JSON of another shape: a torn or hand-edited file, a tool that wrote its own. Each counts as
missing (the blob is rehashed, the cache checked again), never as a crash of the fetch."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from runtime.hub.integrity import stamp_valid, trusted, write_stamp
from runtime.hub.layout import RemoteFile, RepoCache
from runtime.hub.manifest import Manifest

COMMIT = "c" * 40
CONTENT = b"abc"
CONFIG = RemoteFile("unet/config.json", 3, blob_id=hashlib.sha1(b"blob 3\0" + CONTENT).hexdigest())


@pytest.fixture
def cache(tmp_path: Path) -> RepoCache:
    cache = RepoCache(tmp_path / "hub", tmp_path / "state", "org/model")
    cache.blobs.mkdir(parents=True)
    cache.blob(CONFIG).write_bytes(CONTENT)
    return cache


NOT_STAMPS = ["[1, 2]", "3", '"stamp"', "null", "true", "{}", '{"size": 3}',
              '{"size": "3", "mtime_ns": 1}', '{"size": 3.0, "mtime_ns": 1}', '{"size": true, "mtime_ns": 1}']


@pytest.mark.parametrize("text", NOT_STAMPS)
def test_a_stamp_of_another_shape_is_no_stamp(cache: RepoCache, text: str):
    stamp = cache.stamp_path(CONFIG)
    stamp.parent.mkdir(parents=True)
    stamp.write_text(text)
    assert not stamp_valid(stamp, cache.blob(CONFIG), CONFIG)
    assert not trusted(cache.blob(CONFIG), stamp, CONFIG, rehash=False)


def test_a_stamp_of_another_shape_is_replaced_after_a_rehash(cache: RepoCache):
    stamp = cache.stamp_path(CONFIG)
    stamp.parent.mkdir(parents=True)
    stamp.write_text("[1, 2]")
    assert trusted(cache.blob(CONFIG), stamp, CONFIG, rehash=True)  # its hash matches: restamped
    assert stamp_valid(stamp, cache.blob(CONFIG), CONFIG)


def good_manifest() -> dict[str, Any]:
    return {"version": 1, "repo_id": "org/model", "commit": COMMIT, "precision": "fp32",
            "variant": None, "totals": {"files_skipped": 2, "bytes_skipped": 10},
            "files": [{"path": CONFIG.path, "size": 3, "blob_id": CONFIG.blob_id, "sha256": None}]}


def entry(**change: Any) -> dict[str, Any]:
    return {**good_manifest()["files"][0], **change}


NOT_MANIFESTS: dict[str, Any] = {
    "a list": [good_manifest()],
    "a number": 7,
    "a string": "manifest",
    "null": None,
    "no files": {k: v for k, v in good_manifest().items() if k != "files"},
    "files not a list": {"files": {CONFIG.path: 3}},
    "an empty set": {"files": []},
    "a file not an object": {"files": [CONFIG.path]},
    "a file without its size": {"files": [{"path": CONFIG.path}]},
    "a file with an unknown key": {"files": [entry(mode=644)]},
    "a path not a string": {"files": [entry(path=7)]},
    "a size not a count": {"files": [entry(size="3")]},
    "a negative size": {"files": [entry(size=-1)]},
    "a size that is a boolean": {"files": [entry(size=True)]},
    "a hash not a string": {"files": [entry(sha256=12)]},
    "totals not an object": {"totals": [1, 2]},
    "totals not counts": {"totals": {"files_skipped": "2"}},
    "a variant not a string": {"variant": 16},
    "no commit": {"commit": None},
    "another commit": {"commit": "d" * 40},
    "another precision": {"precision": "fp16"},
}


@pytest.mark.parametrize("shape", NOT_MANIFESTS)
def test_a_manifest_of_another_shape_is_no_manifest(cache: RepoCache, shape: str,
                                                    caplog: pytest.LogCaptureFixture):
    value = NOT_MANIFESTS[shape]
    if isinstance(value, dict) and "version" not in value:
        value = {**good_manifest(), **value}
    path = cache.manifest_path(COMMIT, "fp32")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(value))
    with caplog.at_level(logging.WARNING):
        assert Manifest.load(cache, COMMIT, "fp32") is None
    assert "not a valid manifest" in caplog.text


def test_a_manifest_as_written_loads(cache: RepoCache):
    path = cache.manifest_path(COMMIT, "fp32")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(good_manifest()))
    manifest = Manifest.load(cache, COMMIT, "fp32")
    assert manifest is not None and manifest.files == [CONFIG] and manifest.totals["bytes_skipped"] == 10
    write_stamp(cache.stamp_path(CONFIG), cache.blob(CONFIG))
    manifest.save(cache)
    assert Manifest.load(cache, COMMIT, "fp32") == manifest
