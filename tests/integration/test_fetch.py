"""The fetch stage against a local Hugging Face-compatible hub, in this process.

Each test starts a hub serving the tiny repositories with their decoys (root checkpoint, .bin,
ONNX, Flax, OpenVINO, non_ema, unnamed folders) and reads the hub's request log to check what
was asked for. Multi-process behaviour (several workers, a killed worker) is in
``test_fetch_processes.py``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from runtime.errors import BootError
from runtime.fetch import FetchOptions, fetch, hub_cache_dir
from runtime.hub.layout import repo_folder
from runtime.settings import Settings
from tests.support.hub_fixtures import *  # noqa: F403 - fixtures
from tests.support.hub_fixtures import FAST, FLUX, GATED, OTHER_TOKEN, SDXL, TOKEN, hub_settings
from tests.support.hub_repos import expected_files
from tests.support.hub_server import Fault, HubServer


def blobs_of(hub: HubServer, repo_id: str, paths: set[str]) -> set[str]:
    return {hub.blob_of(repo_id, p) for p in paths}


def repo_blobs(cache: Path, repo_id: str) -> Path:
    return cache / "hf" / "hub" / repo_folder(repo_id) / "blobs"


# ---- selection ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_id, repo, precision, variant", [
    (SDXL, "sdxl", "fp32", None), (SDXL, "sdxl", "fp16", "fp16"), (FLUX, "flux", "bf16", "fp16")])
def test_only_the_needed_files_are_requested(hub: HubServer, hub_repo_dirs: dict[str, Path],
                                             tmp_path: Path, model_id: str, repo: str,
                                             precision: str, variant: str | None):
    settings = hub_settings(hub, tmp_path, model_id, VISGATE_PRECISION=precision)
    result = fetch(settings, FAST)
    wanted = expected_files(hub_repo_dirs[repo], precision)
    sent = Counter(r.blob for r in hub.downloads())
    assert set(sent) == blobs_of(hub, model_id, wanted)
    assert max(sent.values()) == 1, f"a file was sent twice: {sent}"
    assert result.variant == variant
    report = result.report
    repo_size = sum(e.size for e in hub.repos[model_id].entries.values())
    assert report["cache"] == "miss" and report["bytes_downloaded"] <= report["bytes_needed"]
    assert report["bytes_needed"] + report["bytes_skipped"] == repo_size
    assert report["bytes_skipped"] > 3 * report["bytes_needed"]  # the decoys stayed on the hub
    assert report["hub_requests"] >= 1 and report["files"] == len(wanted)
    # The snapshot is a Hugging Face cache snapshot holding exactly the selection.
    on_disk = {p.relative_to(result.model_dir).as_posix()
               for p in result.model_dir.rglob("*") if p.is_file()}
    assert on_disk == wanted
    assert result.model_dir.parent.parent == hub_cache_dir(settings) / repo_folder(model_id)


def test_a_cold_fetch_makes_one_listing_request(hub: HubServer, tmp_path: Path):
    fetch(hub_settings(hub, tmp_path), FAST)
    assert len(hub.requests(kind="api")) == 1
    assert not hub.requests(method="HEAD") and not hub.requests(kind="tree")


# ---- warm boots ---------------------------------------------------------------------------------------
def test_a_warm_boot_makes_no_request_and_works_with_the_hub_gone(hub: HubServer, tmp_path: Path):
    settings = hub_settings(hub, tmp_path)
    cold = fetch(settings, FAST)
    hub.clear()
    warm = fetch(settings, FAST)
    assert hub.log == []
    assert warm.report["cache"] == "hit" and warm.report["hub_requests"] == 0
    assert warm.report["bytes_downloaded"] == 0
    assert warm.model_dir == cold.model_dir
    hub.stop()
    offline = fetch(settings, FAST)
    assert offline.report["cache"] == "hit" and offline.model_dir == cold.model_dir


def test_a_pinned_revision_is_used_and_warm_boots_stay_offline(hub: HubServer, tmp_path: Path):
    commit = hub.repos[SDXL].commit
    settings = hub_settings(hub, tmp_path, HF_MODEL_REVISION=commit)
    result = fetch(settings, FAST)
    assert result.model_dir.name == commit and result.report["commit"] == commit
    assert not (tmp_path / "hf" / "hub" / repo_folder(SDXL) / "refs" / commit).exists()
    hub.stop()
    assert fetch(settings, FAST).report["cache"] == "hit"


def test_a_short_commit_finds_the_snapshot_it_begins(hub: HubServer, tmp_path: Path):
    """HF_MODEL_REVISION as the hub's pages show a commit (7 characters): a cache filled under
    another revision serves it with the hub gone, and a prefix two snapshots share serves none."""
    commit = hub.repos[SDXL].commit
    fetch(hub_settings(hub, tmp_path), FAST)  # main
    short = hub_settings(hub, tmp_path, HF_MODEL_REVISION=commit[:7], HF_HUB_OFFLINE="1")
    hub.stop()
    warm = fetch(short, FAST)
    assert warm.report["cache"] == "hit" and warm.model_dir.name == commit
    snapshots = tmp_path / "hf" / "hub" / repo_folder(SDXL) / "snapshots"
    (snapshots / (commit[:7] + "0" * 33)).mkdir()
    assert "HF_HUB_OFFLINE is set and no complete copy" in fetch_error(short)


@pytest.mark.parametrize("offline", ["0", "1"])
def test_a_model_id_spelt_in_another_case_shares_the_cached_copy(hub: HubServer, tmp_path: Path,
                                                                offline: str):
    """The hub takes ids whatever their case: an HF_MODEL_ID edited to another spelling boots
    warm from the same folder, not from a second download of every weight into another."""
    cold = fetch(hub_settings(hub, tmp_path), FAST)
    hub.clear()
    warm = fetch(hub_settings(hub, tmp_path, SDXL.upper(), HF_HUB_OFFLINE=offline), FAST)
    assert warm.report["cache"] == "hit" and warm.model_dir == cold.model_dir and hub.log == []
    assert [p.name for p in (tmp_path / "hf" / "hub").iterdir()] == [repo_folder(SDXL)]


def test_another_precision_fetches_its_own_variant_into_the_same_snapshot(hub: HubServer,
                                                                          tmp_path: Path):
    full = fetch(hub_settings(hub, tmp_path, VISGATE_PRECISION="fp32"), FAST)
    half = fetch(hub_settings(hub, tmp_path, VISGATE_PRECISION="fp16"), FAST)
    assert half.model_dir == full.model_dir and half.variant == "fp16"
    assert half.report["cache"] == "partial"  # configs and tokenizers were already there
    assert half.report["bytes_reused"] > 0


def test_a_worker_of_another_precision_moving_the_branch_leaves_this_ones_commit_to_it(
        hub: HubServer, hub_repo_dirs: dict[str, Path], tmp_path: Path):
    """Two endpoints of one model share a volume, fp16 and fp32. The branch moves on the hub;
    the fp32 worker, fetching it for the first time, caches the new commit and moves the
    branch's ref. The fp16 worker's complete set, of the commit it first cached, was then
    unnamed: it went to the hub (and moved on) and, offline, failed to boot."""
    first = fetch(hub_settings(hub, tmp_path, VISGATE_PRECISION="fp16"), FAST)
    moved = rewrite_history(hub, hub_repo_dirs["sdxl"], tmp_path)
    other = fetch(hub_settings(hub, tmp_path, VISGATE_PRECISION="fp32"), FAST)
    assert other.model_dir.name == moved != first.model_dir.name
    hub.clear()
    for offline in ("1", "0"):
        again = fetch(hub_settings(hub, tmp_path, VISGATE_PRECISION="fp16", HF_HUB_OFFLINE=offline), FAST)
        assert again.report["cache"] == "hit" and again.model_dir == first.model_dir
    assert hub.log == []


# ---- damage and recovery ------------------------------------------------------------------------------
def test_a_connection_cut_mid_file_is_resumed(hub: HubServer, tmp_path: Path):
    target = "unet/diffusion_pytorch_model.safetensors"
    size = hub.repos[SDXL].entries[target].size
    hub.inject(Fault(kind="cdn", match=target, cut_after=size // 3))
    result = fetch(hub_settings(hub, tmp_path), FAST)
    tries = [r for r in hub.requests(kind="cdn") if r.path == target]
    assert len(tries) == 2 and tries[0].range is None and tries[1].status == 206
    resumed_at = int(tries[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= size // 3  # whole chunks that arrived before the cut are kept
    assert (result.model_dir / target).read_bytes() == hub.repos[SDXL].entries[target].file.read_bytes()


def rewrite_history(hub: HubServer, repo_dir: Path, tmp_path: Path) -> str:
    """A force-push to main: a new commit, and the old one gone from the hub."""
    rewritten = tmp_path / "rewritten"
    shutil.copytree(repo_dir, rewritten)
    (rewritten / "README.md").write_text("rewritten history\n")
    return hub.add_repo(SDXL, rewritten).commit


def damage(model_dir: Path, rel: str) -> None:
    """Same size, different bytes."""
    with open(os.path.realpath(model_dir / rel), "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 64)


def test_a_corrupted_or_truncated_cached_file_is_detected_and_replaced(hub: HubServer, tmp_path: Path):
    settings = hub_settings(hub, tmp_path)
    result = fetch(settings, FAST)
    vae = result.model_dir / "vae/diffusion_pytorch_model.safetensors"
    damage(result.model_dir, "unet/diffusion_pytorch_model.safetensors")
    os.truncate(os.path.realpath(vae), 1000)
    (result.model_dir / "vae/config.json").unlink()  # a lost link: relinked, nothing downloaded
    hub.clear()
    repaired = fetch(settings, FAST)
    assert repaired.report["cache"] == "repaired"
    assert sorted(r.path for r in hub.downloads()) == ["unet/diffusion_pytorch_model.safetensors",
                                                       "vae/diffusion_pytorch_model.safetensors"]
    assert not hub.requests(kind="api"), "a repair needs no listing: the manifest has the hashes"
    for rel in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "vae/config.json"):
        assert (repaired.model_dir / rel).read_bytes() == hub.repos[SDXL].entries[rel].file.read_bytes()
    hub.clear()
    assert fetch(settings, FAST).report["cache"] == "hit" and hub.log == []


def test_state_files_of_another_shape_mean_check_again_not_a_crash(hub: HubServer, tmp_path: Path):
    """A marker and stamps that parse as JSON but are not ours (a list, a number): the cache is
    listed and rehashed again, nothing is downloaded again, and the state is written anew."""
    settings = hub_settings(hub, tmp_path)
    cold = fetch(settings, FAST)
    state = tmp_path / "hf" / "visgate"
    [marker] = (state / "manifests").rglob("*.json")
    marker.write_text(json.dumps([cold.report["commit"]]))
    stamps = sorted((state / "verified").rglob("*.json"))
    for stamp in stamps:
        stamp.write_text("3")
    hub.clear()
    again = fetch(settings, FAST)
    assert again.model_dir == cold.model_dir and again.report["bytes_downloaded"] == 0
    assert not hub.downloads() and len(hub.requests(kind="api")) == 1
    assert all(isinstance(json.loads(stamp.read_text()), dict) for stamp in stamps)
    hub.clear()
    assert fetch(settings, FAST).report["cache"] == "hit" and hub.log == []


def test_a_damaged_file_of_a_commit_gone_from_its_branch_is_fetched_from_the_branch_again(
        hub: HubServer, hub_repo_dirs: dict[str, Path], tmp_path: Path):
    settings = hub_settings(hub, tmp_path)  # HF_MODEL_REVISION: main
    old = fetch(settings, FAST)
    new_commit = rewrite_history(hub, hub_repo_dirs["sdxl"], tmp_path)
    damage(old.model_dir, "unet/diffusion_pytorch_model.safetensors")
    result = fetch(settings, FAST)
    assert result.report["commit"] == new_commit and result.report["cache"] == "partial"
    assert result.model_dir.name == new_commit
    hub.clear()
    assert fetch(settings, FAST).report["cache"] == "hit" and hub.log == []


def test_a_pinned_commit_gone_from_the_hub_is_named_as_such(hub: HubServer,
                                                           hub_repo_dirs: dict[str, Path],
                                                           tmp_path: Path):
    commit = hub.repos[SDXL].commit
    settings = hub_settings(hub, tmp_path, HF_MODEL_REVISION=commit)
    cached = fetch(settings, FAST)
    rewrite_history(hub, hub_repo_dirs["sdxl"], tmp_path)
    damage(cached.model_dir, "unet/diffusion_pytorch_model.safetensors")
    message = fetch_error(settings)
    assert f"commit {commit[:12]} of {SDXL} is no longer on the hub" in message


def test_a_partial_download_left_by_a_dead_worker_is_resumed(hub: HubServer, tmp_path: Path):
    target = "unet/diffusion_pytorch_model.safetensors"
    entry = hub.repos[SDXL].entries[target]
    blobs = repo_blobs(tmp_path, SDXL)
    blobs.mkdir(parents=True)
    half = entry.size // 2
    (blobs / f"{entry.sha256}.deadworker.part").write_bytes(entry.file.read_bytes()[:half])
    # The dead worker's lock: another host, no heartbeat any more.
    locks = tmp_path / "hf" / "visgate" / "locks" / repo_folder(SDXL)
    locks.mkdir(parents=True)
    (locks / f"{entry.sha256}.lock").write_text(json.dumps({"host": "gone", "pid": 7, "token": "t"}))
    result = fetch(hub_settings(hub, tmp_path), FAST)
    assert [r.range for r in hub.requests(kind="cdn") if r.path == target] == [f"bytes={half}-"]
    assert (result.model_dir / target).read_bytes() == entry.file.read_bytes()
    assert not list(blobs.glob("*.part"))


def test_a_stale_owner_still_writing_cannot_spoil_the_download_that_resumed_its_partial(
        hub: HubServer, tmp_path: Path):
    """A worker judged stale may be alive (stalled, or its PIDs not ours to see) with its partial
    file open: what it writes after the takeover must not reach our download."""
    target = "unet/diffusion_pytorch_model.safetensors"
    entry = hub.repos[SDXL].entries[target]
    blobs = repo_blobs(tmp_path, SDXL)
    blobs.mkdir(parents=True)
    half = entry.size // 2
    theirs = blobs / f"{entry.sha256}.stalled.part"
    theirs.write_bytes(entry.file.read_bytes()[:half])
    locks = tmp_path / "hf" / "visgate" / "locks" / repo_folder(SDXL)
    locks.mkdir(parents=True)
    (locks / f"{entry.sha256}.lock").write_text(json.dumps({"host": "gone", "pid": 7, "token": "t"}))
    hub.rate = 1_000_000  # the rest takes a while: the stalled owner wakes up meanwhile
    stalled = open(theirs, "ab")

    def wake_up_and_write() -> None:  # the moment its file is taken, it writes one more chunk
        while theirs.exists():
            time.sleep(0.001)
        stalled.write(b"\xee" * 4096)
        stalled.flush()

    writer = threading.Thread(target=wake_up_and_write)
    writer.start()
    result = fetch(hub_settings(hub, tmp_path), FAST)
    writer.join(5)
    stalled.close()
    assert (result.model_dir / target).read_bytes() == entry.file.read_bytes()
    assert [r.range for r in hub.requests(kind="cdn") if r.path == target] == [f"bytes={half}-"]


def test_an_owner_stalled_after_its_last_chunk_waits_for_the_worker_that_took_over(
        hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Worker A has every byte when it stalls (a frozen process: no heartbeat) past the stale
    timeout; worker B takes the lock over, adopts A's partial file and publishes the blob. A,
    resuming, found its partial gone at its size check: a bare FileNotFoundError failed its
    boot. It must wait for B instead, as it does when the takeover lands mid-download."""
    import runtime.hub.transfer as transfer
    from runtime.hub.api import HubClient
    from runtime.hub.layout import RepoCache
    from runtime.hub.lock import BlobLock
    from runtime.hub.progress import Progress

    cache = RepoCache(tmp_path / "hf" / "hub", tmp_path / "hf" / "visgate", SDXL)
    listing = HubClient(hub.url, SDXL, None).listing("main")
    f = listing.files["unet/diffusion_pytorch_model.safetensors"]
    options = transfer.TransferOptions(heartbeat_s=0.1, stale_after_s=1.0, backoff_s=0.05)
    stalled, resume = threading.Event(), threading.Event()

    class FrozenLock(BlobLock):
        def _start_heartbeat(self) -> None:  # a frozen process beats no more
            pass

    class StallingTransfer(transfer.Transfer):
        def _fill(self, *args, **kwargs) -> int:
            received = super()._fill(*args, **kwargs)
            stalled.set()  # every byte written, not yet published: frozen here
            resume.wait(30)
            return received

    def worker(kind: type, name: str) -> transfer.Transfer:
        return kind(cache, HubClient(hub.url, SDXL, None), listing.commit, Progress(name, f.size), options)

    outcome: dict[str, object] = {}

    def run_a() -> None:
        try:
            outcome["a"] = worker(StallingTransfer, "a").ensure(f)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["a"] = exc

    monkeypatch.setattr(transfer, "BlobLock", FrozenLock)
    a = threading.Thread(target=run_a)
    a.start()
    assert stalled.wait(30)
    monkeypatch.setattr(transfer, "BlobLock", BlobLock)
    assert worker(transfer.Transfer, "b").ensure(f) == 0  # took over, resumed A's bytes, published
    resume.set()
    a.join(30)
    assert outcome["a"] == 0, outcome["a"]  # waited for B, which had published it
    assert cache.blob(f).read_bytes() == hub.repos[SDXL].entries[f.path].file.read_bytes()


def test_a_partial_file_with_wrong_bytes_is_downloaded_again(hub: HubServer, tmp_path: Path):
    target = "unet/diffusion_pytorch_model.safetensors"
    entry = hub.repos[SDXL].entries[target]
    blobs = repo_blobs(tmp_path, SDXL)
    blobs.mkdir(parents=True)
    (blobs / f"{entry.sha256}.deadworker.part").write_bytes(b"\xff" * (entry.size // 2))
    result = fetch(hub_settings(hub, tmp_path), FAST)
    assert (result.model_dir / target).read_bytes() == entry.file.read_bytes()
    assert [r.range for r in hub.requests(kind="cdn") if r.path == target] == [
        f"bytes={entry.size // 2}-", None]


# ---- errors -----------------------------------------------------------------------------------------
def fetch_error(settings, options: FetchOptions = FAST) -> str:
    with pytest.raises(BootError) as info:
        fetch(settings, options)
    assert info.value.stage == "fetch"
    return str(info.value)


@pytest.mark.parametrize("offline", ["0", "1"])
def test_a_model_path_that_is_no_directory_is_never_sent_to_the_hub(hub: HubServer, tmp_path: Path,
                                                                    offline: str):
    """A mistyped path or a network volume not attached: said as such, not answered with the hub's
    "not found, or gated: set HF_TOKEN" or offline's "unset HF_HUB_OFFLINE to fill the cache"."""
    checkpoint = tmp_path / "flux1-dev.safetensors"
    checkpoint.write_bytes(b"\0" * 8)
    missing = [str(tmp_path / "volume" / "models" / "flux"), "./models/flux", "~/models/flux",
               str(tmp_path / "volume" / "models" / "flux") + "/"]
    for model_id in missing:
        message = fetch_error(hub_settings(hub, tmp_path / "cache", model_id, HF_HUB_OFFLINE=offline))
        assert message.startswith(f"HF_MODEL_ID={model_id} is not a directory on this worker")
        assert "network volume" in message and "HF_TOKEN" not in message
    message = fetch_error(hub_settings(hub, tmp_path / "cache", str(checkpoint), HF_HUB_OFFLINE=offline))
    assert "is a file: single-file checkpoints are not supported" in message
    assert hub.log == [] and not (tmp_path / "cache" / "hf").exists()


def test_gated_model_without_token(hub: HubServer, tmp_path: Path):
    message = fetch_error(hub_settings(hub, tmp_path, GATED))
    assert "gated" in message and "HF_TOKEN is not set" in message


def test_gated_model_with_an_invalid_or_unauthorized_token(hub: HubServer, tmp_path: Path):
    invalid = fetch_error(hub_settings(hub, tmp_path, GATED, HF_TOKEN="hf_not_a_real_token"))
    assert "rejected HF_TOKEN" in invalid and "hf_not_a_real_token" not in invalid
    other = fetch_error(hub_settings(hub, tmp_path, GATED, HF_TOKEN=OTHER_TOKEN))
    assert "has no access" in other and OTHER_TOKEN not in other


def test_gated_model_with_its_token(hub: HubServer, tmp_path: Path):
    result = fetch(hub_settings(hub, tmp_path, GATED, HF_TOKEN=TOKEN), FAST)
    assert result.report["cache"] == "miss"
    # The token goes to the hub, never to the CDN host that LFS files redirect to.
    assert all(r.authorized for r in hub.requests() if r.kind != "cdn")
    assert hub.requests(kind="cdn") and not any(r.authorized for r in hub.requests(kind="cdn"))


def test_hf_token_is_what_the_hub_gets_beside_credentials_in_the_endpoint_url(
        hub: HubServer, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # requests puts Basic credentials it finds itself (the URL's user-info) in place of a
    # default Authorization header: the gated repository then answered "no access" for a token
    # that has it. HF_TOKEN is sent, the URL's credentials are not, and the log says so.
    endpoint = hub.url.replace("http://", "http://mirror:pw_MirrorSecret@")
    result = fetch(hub_settings(hub, tmp_path, GATED, HF_TOKEN=TOKEN, HF_ENDPOINT=endpoint), FAST)
    assert result.report["cache"] == "miss"
    assert all(r.authorized for r in hub.requests() if r.kind != "cdn")
    assert not any(r.authorized for r in hub.requests(kind="cdn"))
    assert "HF_TOKEN is sent to the hub" in caplog.text and "pw_MirrorSecret" not in caplog.text
    # Without HF_TOKEN, the URL's credentials are what a mirror behind Basic auth gets.
    hub.clear()
    fetch(hub_settings(hub, tmp_path / "basic", SDXL, HF_ENDPOINT=endpoint), FAST)
    assert all(r.authorized for r in hub.requests() if r.kind != "cdn")


def test_hf_token_is_what_the_hub_gets_beside_a_netrc_entry_for_it(
        hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A .netrc entry for the hub's host (a base image's, another tool's) replaced HF_TOKEN too.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password pw_NetrcSecret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    result = fetch(hub_settings(hub, tmp_path / "cache", GATED, HF_TOKEN=TOKEN), FAST)
    assert result.report["cache"] == "miss"


@pytest.mark.parametrize("model_id, token", [(SDXL, None), (GATED, TOKEN)])
def test_a_403_from_the_host_a_download_is_redirected_to_is_not_called_gated(
        hub: HubServer, tmp_path: Path, model_id: str, token: str | None):
    # An expired signed link, or a proxy refusing the CDN's host: the hub itself granted access
    # by redirecting, so the message names the host that refused, not a gated repository nor
    # a token to set (with a token, a 403 from anywhere used to read "is gated ... no access").
    hub.inject(Fault(kind="cdn", status=403, times=None))  # every LFS file
    env = {"HF_TOKEN": token} if token else {}
    message = fetch_error(hub_settings(hub, tmp_path, model_id, **env))
    cdn = hub.url.replace("127.0.0.1", "localhost")
    assert f"{cdn}, where the hub sent the download of " in message and "answered 403" in message
    assert "expired download link" in message
    assert "is gated" not in message and "set HF_TOKEN" not in message
    assert (TOKEN not in message) and "/cdn/" not in message  # the link itself may be signed


def test_a_403_from_the_hub_is_gated_only_when_the_hub_says_so(hub: HubServer, tmp_path: Path):
    # A 403 with no GatedRepo code (a fine-grained token without this repository) is a refusal
    # of the token, not a gated model whose license to accept.
    hub.inject(Fault(kind="api", status=403, times=None))
    message = fetch_error(hub_settings(hub, tmp_path, SDXL, HF_TOKEN=TOKEN))
    assert "refused HF_TOKEN access to acme/tiny-sdxl (403)" in message and "gated" not in message
    hub.clear()
    hub.inject(Fault(kind="api", status=403, error_code="GatedRepo", times=None))
    message = fetch_error(hub_settings(hub, tmp_path / "gated", SDXL, HF_TOKEN=TOKEN))
    assert "is gated and the account of HF_TOKEN has no access" in message


def test_unknown_model_and_revision(hub: HubServer, tmp_path: Path):
    message = fetch_error(hub_settings(hub, tmp_path, "acme/no-such-model"))
    assert "acme/no-such-model was not found" in message and "HF_MODEL_ID" in message
    message = fetch_error(hub_settings(hub, tmp_path, HF_MODEL_REVISION="v9"))
    assert "'v9'" in message and "HF_MODEL_REVISION" in message


def test_hub_errors_without_a_cache(hub: HubServer, tmp_path: Path):
    hub.inject(Fault(kind="api", status=500, times=None))
    message = fetch_error(hub_settings(hub, tmp_path))
    assert "answered 500" in message and "no complete copy" in message
    assert len(hub.requests(kind="api")) == 2  # one retry (FAST), then the clear error


def test_a_listing_that_is_not_the_hubs_json_is_retried_then_clear(hub: HubServer, tmp_path: Path):
    # A proxy's or captive portal's page, answered 200: retried like a 5xx, not a crash.
    page = b"<html><body>Please log in to the network</body></html>"
    hub.inject(Fault(kind="api", status=200, body=page))
    assert fetch(hub_settings(hub, tmp_path), FAST).report["cache"] == "miss"
    hub.inject(Fault(kind="api", status=200, body=page, times=None))
    message = fetch_error(hub_settings(hub, tmp_path / "again"))
    assert "not the hub's JSON" in message and "no complete copy" in message


def test_hub_unreachable_without_a_cache(hub: HubServer, tmp_path: Path):
    settings = hub_settings(hub, tmp_path)
    hub.stop()
    message = fetch_error(settings)
    assert "unreachable" in message and "no complete copy" in message and SDXL in message


def test_offline_setting_without_a_cache(hub: HubServer, tmp_path: Path):
    message = fetch_error(hub_settings(hub, tmp_path, HF_HUB_OFFLINE="1"))
    assert "HF_HUB_OFFLINE" in message
    assert hub.log == []


def test_disk_full_is_reported_before_downloading(hub: HubServer, tmp_path: Path):
    options = FetchOptions(hub=FAST.hub, transfer=FAST.transfer, disk_free=lambda path: 500_000)
    message = fetch_error(hub_settings(hub, tmp_path), options)
    assert "not enough disk space" in message and str(repo_blobs(tmp_path, SDXL)) in message
    assert "MB more" in message and "VISGATE_CACHE_DIR" in message
    assert len(hub.downloads()) == 1  # model_index.json only, read to choose the files


def test_a_warmup_shape_the_family_refuses_stops_before_any_weight(hub: HubServer, tmp_path: Path):
    # 1032 is a multiple of 8 (every model's rule, checked with the settings) but not of 16
    # (FLUX's own rule, known only from the repository's configs).
    settings = hub_settings(hub, tmp_path, FLUX, VISGATE_WARMUP_SHAPES="1024x1024,1032x1024")
    with pytest.raises(BootError) as info:
        fetch(settings, FAST)
    assert info.value.stage == "settings"
    assert str(info.value).startswith("VISGATE_WARMUP_SHAPES 1032x1024 is not valid for this "
                                      "model: 'height' must be a multiple of 16")
    fetched = {r.path for r in hub.downloads()}
    assert "vae/config.json" in fetched and "model_index.json" in fetched
    assert fetched and all(p.endswith(".json") for p in fetched), fetched
    # Fixed, the same volume completes the download without fetching the configs again.
    hub.clear()
    result = fetch(hub_settings(hub, tmp_path, FLUX, VISGATE_WARMUP_SHAPES="1024x1024,1024x1040"), FAST)
    again = [r.path for r in hub.downloads()]
    assert any(p.endswith(".safetensors") for p in again)
    assert not [p for p in again if p.endswith(".json")], again
    assert result.report["cache"] == "partial"


def test_a_sharded_index_naming_a_shard_the_hub_lacks_fails_before_the_weights(
        hub: HubServer, hub_repo_dirs: dict[str, Path], tmp_path: Path):
    """Else the set would be marked complete and every boot would fail at load."""
    repo = tmp_path / "repo"
    shutil.copytree(hub_repo_dirs["sdxl"], repo)
    unet = repo / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(
        unet / "diffusion_pytorch_model-00001-of-00002.safetensors")
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({
        "metadata": {}, "weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                                       "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}))
    hub.add_repo(SDXL, repo)
    message = fetch_error(hub_settings(hub, tmp_path / "cache", VISGATE_PRECISION="fp32"))
    assert "missing shard unet/diffusion_pytorch_model-00002-of-00002.safetensors" in message
    assert not [r for r in hub.downloads() if r.path.endswith(".safetensors")]
    assert not list((tmp_path / "cache").rglob("manifests/**/*.json"))


def test_a_file_that_never_arrives_fails_the_boot_clearly(hub: HubServer, tmp_path: Path):
    hub.inject(Fault(kind="cdn", match="unet/*", status=503, times=None))
    message = fetch_error(hub_settings(hub, tmp_path))
    assert "unet/diffusion_pytorch_model.safetensors" in message and "503" in message


# ---- rate limits ------------------------------------------------------------------------------------
# What the hub sends with a 429 (its IETF-draft headers): no request left, the window resets in 1 s.
EXHAUSTED = {"RateLimit": '"api";r=0;t=1', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'}


def _gap(requests: list) -> float:
    return requests[1].at - requests[0].at


def test_a_rate_limited_listing_waits_for_the_reset_the_hub_names(hub: HubServer, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture):
    hub.inject(Fault(kind="api", status=429, headers=EXHAUSTED))
    caplog.set_level(logging.WARNING)
    assert fetch(hub_settings(hub, tmp_path), FAST).report["cache"] == "miss"
    listings = hub.requests(kind="api")
    # 1 s and one more (the header counts whole seconds), where FAST's own backoff is 0.05 s
    assert [r.status for r in listings] == [429, 200] and _gap(listings) >= 1.9
    (warning,) = [r.getMessage() for r in caplog.records if "hub listing failed" in r.getMessage()]
    assert "answered 429 (rate limited, resets in 2s)" in warning
    assert re.search(r"retrying in (2\.\d|3\.0)s", warning), warning  # up to 1 s of jitter
    assert "set HF_TOKEN" in warning  # anonymous: the lowest limits


def test_a_download_waits_as_long_as_retry_after_asks(hub: HubServer, tmp_path: Path):
    hub.inject(Fault(kind="cdn", match="unet/*", status=503, headers={"Retry-After": "1"}))
    fetch(hub_settings(hub, tmp_path), FAST)
    unet = [r for r in hub.requests(kind="cdn") if r.path.startswith("unet/")]
    assert [r.status for r in unet] == [503, 200] and _gap(unet) >= 0.95


def test_a_reset_beyond_the_cap_waits_only_the_cap(hub: HubServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    pauses: list[float] = []
    monkeypatch.setattr("runtime.hub.api.time.sleep", pauses.append)  # record, do not wait
    hub.inject(Fault(kind="api", status=429, headers={"RateLimit": '"api";r=0;t=3600'}))
    options = replace(FAST, hub=replace(FAST.hub, max_wait_s=0.5))
    fetch(hub_settings(hub, tmp_path), options)
    assert [r.status for r in hub.requests(kind="api")] == [429, 200]
    assert pauses == [0.5]


def test_a_failed_file_stops_the_others_waiting_out_a_rate_limit(hub: HubServer, tmp_path: Path):
    # One file waits for a 31 s reset while another fails for good: the boot fails now, and the
    # waiting download asks the hub nothing more.
    hub.inject(Fault(kind="cdn", match="unet/*", status=429, headers={"Retry-After": "31"}))
    hub.inject(Fault(kind="cdn", match="vae/*", status=403, times=None))
    started = time.monotonic()
    message = fetch_error(hub_settings(hub, tmp_path))
    assert "403" in message and time.monotonic() - started < 20
    assert len([r for r in hub.requests(kind="cdn") if r.path.startswith("unet/")]) <= 1


def test_a_rate_limit_that_outlasts_the_retries_fails_clearly(hub: HubServer, tmp_path: Path):
    hub.inject(Fault(kind="api", status=429, headers={"RateLimit": '"api";r=0;t=0'}, times=None))
    anonymous = fetch_error(hub_settings(hub, tmp_path))
    assert "answered 429 (rate limited, resets in 1s)" in anonymous and "no complete copy" in anonymous
    assert "set HF_TOKEN" in anonymous
    with_token = fetch_error(hub_settings(hub, tmp_path / "token", GATED, HF_TOKEN=TOKEN))
    assert "rate limited" in with_token and "set HF_TOKEN" not in with_token
    assert TOKEN not in with_token


# ---- logs -------------------------------------------------------------------------------------------
def test_progress_is_logged_and_the_token_never_is(hub: HubServer, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture):
    hub.rate = 4_000_000  # bytes/s: a download long enough to report on
    caplog.set_level(logging.DEBUG)
    fetch(hub_settings(hub, tmp_path, GATED, HF_TOKEN=TOKEN), FAST)
    with pytest.raises(BootError):
        fetch(hub_settings(hub, tmp_path / "other", GATED, HF_TOKEN=TOKEN[:-1] + "X"), FAST)
    lines = [r.getMessage() for r in caplog.records]
    progress = [line for line in lines if line.startswith("downloading acme/gated-flux")]
    assert progress and all("/s" in line and "left" in line for line in progress)
    assert not [line for line in lines if TOKEN in line or TOKEN[:-1] + "X" in line]


# ---- a baked image -----------------------------------------------------------------------------------
def test_a_variant_repository_bakes_and_boots_offline(hub: HubServer, tmp_path: Path,
                                                      restore_logging: None):
    """The Dockerfile's bake step (no GPU, DEVICE unset: the files a GPU worker loads), then the
    baked image's worker: SDXL's fp16 files only, loaded as that variant, with no hub."""
    from runtime.prefetch import main

    link = tmp_path / "opt" / "models" / SDXL
    argv = ["--model", SDXL, "--cache-dir", str(tmp_path / "baked"), "--link", str(link)]
    assert main(argv, environ={"HF_ENDPOINT": hub.url}) == 0
    hub.stop()
    worker = Settings.from_env({"HF_MODEL_ID": str(link), "HF_HUB_OFFLINE": "1"},
                               volume_root=tmp_path / "no-volume")
    baked = fetch(worker, FAST)
    assert baked.source == "local" and baked.variant == "fp16"
    weights = {p.name for p in baked.model_dir.rglob("*.safetensors")}
    assert weights and all(".fp16." in name for name in weights)


def test_a_directory_cloned_without_git_lfs_is_named_as_such(hub_repo_dirs: dict[str, Path],
                                                             tmp_path: Path):
    """Its weights are pointer files: load would fail with safetensors' "header too large"."""
    clone = tmp_path / "clone"
    shutil.copytree(hub_repo_dirs["sdxl"], clone)
    for weights in clone.rglob("*.safetensors"):
        weights.write_text("version https://git-lfs.github.com/spec/v1\n"
                           f"oid sha256:{'0' * 64}\nsize {weights.stat().st_size}\n")
    message = fetch_error(Settings.from_env({"HF_MODEL_ID": str(clone), "DEVICE": "cpu"}))
    assert message.startswith(f"{clone} holds Git LFS pointer files, not weights (")
    assert "text_encoder/model.safetensors" in message and "git lfs pull" in message


# ---- Runpod's model cache -------------------------------------------------------------------------
def runpod_volume_with(hub: HubServer, volume: Path, **patterns: list[str]) -> Path:
    """What Runpod does before the worker starts: the real hub client downloads the repository
    into ``/runpod-volume/huggingface-cache/hub`` (here under ``volume``)."""
    from huggingface_hub import snapshot_download

    root = volume / "huggingface-cache" / "hub"
    snapshot_download(SDXL, cache_dir=str(root), endpoint=hub.url, **patterns)
    return root


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.lstat().st_mtime_ns, p.lstat().st_size)
            for p in root.rglob("*")}


def test_runpod_model_cache_is_used_read_only_with_no_hub(hub: HubServer, tmp_path: Path):
    root = runpod_volume_with(hub, tmp_path / "volume")
    for ref in (root / repo_folder(SDXL) / "refs").iterdir():
        ref.unlink()  # Runpod may not write refs: a lone snapshot serves "main"
    before = tree_state(root)
    settings = Settings.from_env(
        {"HF_MODEL_ID": SDXL, "DEVICE": "cpu", "VISGATE_CACHE_DIR": str(tmp_path / "cache"),
         "HF_ENDPOINT": hub.url, "VISGATE_PRECISION": "fp16"}, volume_root=tmp_path / "volume")
    hub.stop()
    result = fetch(settings, FAST)
    assert result.source == "runpod-cache" and result.report["cache"] == "runpod"
    assert result.variant == "fp16" and result.report["hub_requests"] == 0
    assert result.model_dir.parent.parent == root / repo_folder(SDXL)
    assert tree_state(root) == before, "Runpod's cache must not be written to"
    assert not (tmp_path / "cache" / "hf").exists()


def test_a_runpod_cache_without_the_weights_falls_back_to_ours(hub: HubServer, tmp_path: Path):
    runpod_volume_with(hub, tmp_path / "volume", ignore_patterns=["unet/diffusion*"])  # ONNX only
    hub.clear()
    settings = Settings.from_env(
        {"HF_MODEL_ID": SDXL, "DEVICE": "cpu", "VISGATE_CACHE_DIR": str(tmp_path / "cache"),
         "HF_ENDPOINT": hub.url}, volume_root=tmp_path / "volume")
    result = fetch(settings, FAST)
    assert result.source == "hub" and result.report["cache"] == "miss"
    assert (result.model_dir / "unet/diffusion_pytorch_model.safetensors").is_file()


def test_a_runpod_cache_serves_a_short_commit_of_its_snapshot(hub: HubServer, tmp_path: Path):
    root = runpod_volume_with(hub, tmp_path / "volume")
    commit = hub.repos[SDXL].commit
    settings = Settings.from_env(
        {"HF_MODEL_ID": SDXL, "DEVICE": "cpu", "VISGATE_CACHE_DIR": str(tmp_path / "cache"),
         "HF_ENDPOINT": hub.url, "HF_MODEL_REVISION": commit[:7]}, volume_root=tmp_path / "volume")
    hub.stop()
    result = fetch(settings, FAST)
    assert result.source == "runpod-cache" and result.model_dir == root / repo_folder(SDXL) / "snapshots" / commit


def test_a_runpod_cache_serves_a_model_id_spelt_in_another_case(hub: HubServer, tmp_path: Path):
    """The hub takes ids whatever their case; Runpod names the folder as the endpoint's model
    setting spells the id, which HF_MODEL_ID may spell otherwise."""
    root = runpod_volume_with(hub, tmp_path / "volume")
    settings = Settings.from_env(
        {"HF_MODEL_ID": SDXL.upper(), "DEVICE": "cpu", "VISGATE_CACHE_DIR": str(tmp_path / "cache"),
         "HF_ENDPOINT": hub.url}, volume_root=tmp_path / "volume")
    hub.stop()
    result = fetch(settings, FAST)
    assert result.source == "runpod-cache" and result.model_dir.parent.parent == root / repo_folder(SDXL)


def test_a_runpod_cache_folder_given_as_the_model_says_what_to_set(hub: HubServer, tmp_path: Path):
    """Not "has no model_index.json: it is not a diffusers pipeline repository" from the load stage."""
    root = runpod_volume_with(hub, tmp_path / "volume")
    message = fetch_error(hub_settings(hub, tmp_path / "cache", str(root / repo_folder(SDXL))))
    assert "is a Hugging Face cache folder, not a model directory: set HF_MODEL_ID to the model's " \
           "hub id" in message and "snapshots/" in message


@pytest.mark.parametrize("left_out, needed", [
    ("text_encoder_2/*", "text_encoder_2/model.safetensors"),  # load: "no file named model.safetensors"
    ("tokenizer/*", "tokenizer/tokenizer.json"),  # loads, then the first prompt fails
    ("unet/config.json", "unet/config.json"),  # load: "no file named config.json"
])
def test_a_partial_runpod_snapshot_falls_back_to_ours(hub: HubServer, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture,
                                                      left_out: str, needed: str):
    """A snapshot missing a whole component, or a component's config, is not served from:
    every boot would fail at load or at warmup, never reaching the complete copy on the hub."""
    runpod_volume_with(hub, tmp_path / "volume", ignore_patterns=[left_out])
    settings = Settings.from_env(
        {"HF_MODEL_ID": SDXL, "DEVICE": "cpu", "VISGATE_CACHE_DIR": str(tmp_path / "cache"),
         "HF_ENDPOINT": hub.url}, volume_root=tmp_path / "volume")
    result = fetch(settings, FAST)
    assert result.source == "hub" and (result.model_dir / needed).is_file()
    assert f"incomplete copy of {SDXL} (nothing usable for {left_out.split('/')[0]})" in caplog.text


def test_a_request_error_names_its_kind_not_the_url(tmp_path: Path):
    # requests' own messages quote the whole URL (a mirror's credentials with it): a server that
    # redirects to itself forever ends in TooManyRedirects, reported by class and host only.
    import http.server
    import threading

    class Loop(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Loop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://mirror:pw_MirrorSecret@127.0.0.1:{server.server_port}"
        settings = Settings.from_env({"HF_MODEL_ID": SDXL, "HF_ENDPOINT": endpoint, "DEVICE": "cpu",
                                      "VISGATE_CACHE_DIR": str(tmp_path / "cache")})
        message = fetch_error(settings)
    finally:
        server.shutdown()
    assert f"request to http://127.0.0.1:{server.server_port} failed (TooManyRedirects)" in message
    assert "pw_MirrorSecret" not in message and "/api/models" not in message
