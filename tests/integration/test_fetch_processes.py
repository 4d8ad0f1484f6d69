"""Workers as real processes on one cache: shared downloads, a killed worker, a warm boot of
the real entry point with the hub gone.

The hub throttles its bodies here so that downloads overlap (or can be interrupted) for real.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from runtime import announce
from runtime.fetch import FetchOptions, fetch
from runtime.hub.layout import repo_folder
from runtime.hub.transfer import TransferOptions
from tests.support.hub_fixtures import *  # noqa: F403 - fixtures
from tests.support.hub_fixtures import FAST, GATED, SDXL, TOKEN, hub_settings
from tests.support.hub_repos import expected_files
from tests.support.hub_server import HubServer
from tests.support.receiver import WebhookReceiver
from warmup.local_worker import ROOT, worker_env

pytestmark = pytest.mark.slow


def process_env(hub: HubServer, cache: Path, model_id: str = SDXL, **extra: str) -> dict[str, str]:
    return worker_env({"HF_MODEL_ID": model_id, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
                       "VISGATE_CACHE_DIR": str(cache), "TEST_PROGRESS_INTERVAL": "0.5", **extra})


def start_fetch(env: dict[str, str], load: bool = False) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tests.support.fetch_and_load"] + (["--load"] if load else [])
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_three_workers_on_one_cache_download_each_file_once_and_all_load(
        hub: HubServer, hub_repo_dirs: dict[str, Path], tmp_path: Path):
    hub.rate = 400_000  # bytes/s per response: the largest file takes ~4 s, so the boots overlap
    procs = [start_fetch(process_env(hub, tmp_path), load=True) for _ in range(3)]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
        outcomes.append((json.loads(out.decode().strip().splitlines()[-1]), err.decode()))
    wanted = {hub.blob_of(SDXL, p) for p in expected_files(hub_repo_dirs["sdxl"], "fp32")}
    sent = Counter(r.blob for r in hub.downloads())
    assert set(sent) == wanted
    assert all(n == 1 for n in sent.values()), f"files sent more than once: {sent}"
    reports = [result["report"] for result, _ in outcomes]
    sizes = {e.sha256 or e.oid: e.size for e in hub.repos[SDXL].entries.values()}
    unique_bytes = sum(sizes[blob] for blob in wanted)
    assert sum(r["bytes_downloaded"] for r in reports) == unique_bytes
    for report in reports:  # each worker's bytes: its own, the cache's, the others'
        assert (report["bytes_downloaded"] + report["bytes_reused"]
                + report["bytes_from_other_workers"]) == unique_bytes
    assert {result["pipeline"] for result, _ in outcomes} == {"StableDiffusionXLPipeline"}
    assert len({result["model_dir"] for result, _ in outcomes}) == 1
    assert any("waiting for" in log for _, log in outcomes), "no worker ever waited for another"


def test_a_killed_worker_leaves_no_complete_file_and_the_next_boot_resumes(hub: HubServer,
                                                                           tmp_path: Path):
    target = "unet/diffusion_pytorch_model.safetensors"
    entry = hub.repos[SDXL].entries[target]
    blobs = tmp_path / "hf" / "hub" / repo_folder(SDXL) / "blobs"
    hub.rate = 200_000
    proc = start_fetch(process_env(hub, tmp_path))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = list(blobs.glob(f"{entry.sha256}.*.part")) if blobs.is_dir() else []
        if parts and parts[0].stat().st_size >= 300_000:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the worker never started downloading the UNet")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (blobs / entry.sha256).exists(), "a killed download must not look complete"
    assert not list((tmp_path / "hf" / "visgate").rglob("manifests/*/*.json"))
    hub.rate = None
    hub.clear()
    # Its lock is still there; the owner is a dead process on this host, so no stale wait.
    options = FetchOptions(hub=FAST.hub, transfer=TransferOptions(stale_after_s=120, backoff_s=0.05))
    t0 = time.monotonic()
    result = fetch(hub_settings(hub, tmp_path), options)
    assert time.monotonic() - t0 < 30
    resumed = [r.range for r in hub.requests(kind="cdn") if r.path == target]
    assert len(resumed) == 1 and resumed[0] and int(resumed[0][6:-1]) >= 262_144
    assert (result.model_dir / target).read_bytes() == entry.file.read_bytes()


def _partials_over(folder: Path, size: int) -> list[Path]:
    """Partial downloads holding more than ``size`` bytes (one may be renamed at any moment)."""
    found = []
    for part in folder.rglob("*.part"):
        try:
            if part.stat().st_size > size:
                found.append(part)
        except FileNotFoundError:
            continue
    return found


def test_sigterm_mid_download_releases_the_locks_announces_failed_and_exits_143(hub: HubServer,
                                                                               tmp_path: Path):
    """Runpod scales workers down with SIGTERM. Its default action ended the worker where it
    stood: no log line, no failed event, and every blob lock left on the volume, which the next
    worker (another container: the dead PID means nothing there) waited 60 s to take over."""
    hub.rate = 200_000
    with WebhookReceiver() as hook:
        env = process_env(hub, tmp_path, VISGATE_WEBHOOK=hook.url)
        proc = subprocess.Popen([sys.executable, "-m", "runtime", "--rp_serve_api"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        # Mid-way through one of the larger files (343 KB to 1.5 MB at 200 KB/s: 0.7 s or more
        # still to come): a small file's partial, seen just before it completes, may be renamed
        # before the signal lands, and then none is left to find (seen once in CI).
        while not list(tmp_path.rglob("*.lock")) or not _partials_over(tmp_path, 200_000):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"the worker never started downloading: {proc.communicate()[0][-3000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=60)[0].decode(errors="replace")
        received = hook.wait_for(1, timeout=5)
    assert proc.returncode == 143, log[-3000:]
    assert not list(tmp_path.rglob("*.lock")), "locks left for the next worker to wait out"
    assert list(tmp_path.rglob("*.part")), "the partial files stay, for the next boot to resume"
    assert "boot failed at fetch: stopped by SIGTERM" in log and "Traceback" not in log
    [failed] = received
    body = failed.json()
    assert failed.header(announce.EVENT_HEADER) == "failed"
    assert (body["stage"], body["error"]) == ("fetch", "stopped by SIGTERM before the worker was ready")


def test_the_worker_boots_warm_with_the_hub_stopped_and_never_logs_the_token(hub: HubServer,
                                                                             tmp_path: Path):
    env = process_env(hub, tmp_path, GATED, HF_TOKEN=TOKEN)
    job = json.dumps({"input": {"prompt": "a red cube", "height": 256, "width": 256,
                                "num_inference_steps": 1}})
    runs = []
    for _ in ("cold", "warm"):
        proc = subprocess.run([sys.executable, "-m", "runtime", "--test_input", job], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        log = proc.stdout.decode(errors="replace")
        assert proc.returncode == 0, log[-4000:]
        runs.append(log)
        hub.stop()  # the second boot finds no hub at all
    cold, warm = runs
    assert '"cache": "miss"' in cold
    assert '"cache": "hit"' in warm and '"hub_requests": 0' in warm
    for log in runs:
        assert TOKEN not in log
        assert "image_base64" in log or '"status": "COMPLETED"' in log or "COMPLETED" in log


def test_a_verified_cache_on_a_read_only_volume_boots(hub: HubServer, tmp_path: Path):
    """Stamps that no longer hold (a copied or restored volume moves mtimes) make the boot rehash
    every file; on a volume mounted read-only it cannot record that, and must still boot."""
    bind_ro = f"mount --bind -o ro {shlex.quote(str(tmp_path))} {shlex.quote(str(tmp_path))}"
    if subprocess.run(["unshare", "--mount", "sh", "-c", bind_ro], capture_output=True).returncode:
        pytest.skip("needs a mount namespace (root or user namespaces) for a read-only mount")
    fetch(hub_settings(hub, tmp_path), FAST)
    for blob in (tmp_path / "hf" / "hub" / repo_folder(SDXL) / "blobs").iterdir():
        os.utime(blob)
    env = process_env(hub, tmp_path, HF_HUB_OFFLINE="1")
    hub.stop()
    boot = f"{bind_ro} && exec {shlex.quote(sys.executable)} -m tests.support.fetch_and_load"
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", boot], cwd=ROOT, env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()[-3000:]
    assert json.loads(proc.stdout.decode().splitlines()[-1])["report"]["cache"] == "hit"
    assert "Read-only file system" in proc.stderr.decode()
