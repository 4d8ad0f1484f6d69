"""A disk that fills up during the fetch: one clear boot error, wherever the first write fails.

The cache is a real tmpfs of a few blocks or a few inodes (tests/support/small_disk.py), so the
kernel answers ENOSPC at whichever write comes first: a directory, a lock, a partial download,
a stamp, a snapshot link, a ref, the complete-set marker. The fetch's own free-space check is told
the disk is large (``disk_free``) and its inode check that it does not count inodes
(``inodes_free``), so the writes themselves find it full, unless a test asks for the inode check.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest

from tests.support.hub_fixtures import *  # noqa: F403 - fixtures
from tests.support.hub_fixtures import SDXL
from tests.support.hub_server import HubServer
from tests.support.small_disk import require_small_disk, run_on_small_disk
from warmup.local_worker import worker_env

# One fetch in the child; one JSON line: its outcome, and what it left that nobody would remove.
FETCH = """
import json, os, sys
from runtime.errors import BootError
from runtime.fetch import FetchOptions, fetch
from runtime.settings import Settings
settings = Settings.from_env(os.environ)
options = FetchOptions(disk_free=lambda path: 1 << 40, inodes_free=lambda path: None)
if "count-inodes" in sys.argv:
    options = FetchOptions(disk_free=lambda path: 1 << 40)
try:
    fetch(settings, options)
    outcome = {"fetched": True}
except BootError as exc:
    outcome = {"error": str(exc), "stage": exc.stage}
hf = settings.cache_dir / "hf"
outcome["litter"] = sorted(str(p.relative_to(hf)) for p in [*hf.rglob("*.lock"), *hf.rglob(".*.tmp")])
print(json.dumps(outcome))
"""


def fetch_on_small_disk(hub: HubServer, cache: Path, disk: str, *args: str) -> dict:
    env = worker_env({"HF_MODEL_ID": SDXL, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
                      "VISGATE_CACHE_DIR": str(cache)})
    done = run_on_small_disk(cache, disk, [sys.executable, "-c", FETCH, *args], env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_disk_full(outcome: dict, cache: Path) -> None:
    assert outcome.get("stage") == "fetch", outcome
    assert outcome["error"].startswith(f"disk full while fetching {SDXL} into {cache / 'hf'} ("), outcome
    assert "set VISGATE_CACHE_DIR to a larger disk" in outcome["error"]
    assert outcome["litter"] == [], "a failed write left a lock or a temp file behind"


def test_blocks_running_out_mid_download_is_one_clear_error(hub: HubServer, tmp_path: Path):
    require_small_disk()
    cache = tmp_path / "cache"
    assert_disk_full(fetch_on_small_disk(hub, cache, "size=1m"), cache)  # the model needs 2 MB


def test_inodes_running_out_at_any_write_is_one_clear_error(hub: HubServer, tmp_path: Path):
    """Each inode budget stops the fetch at another write; the last one is enough for it all."""
    require_small_disk()
    outcomes = {}
    for inodes in [*range(2, 62, 4), 200]:
        cache = tmp_path / f"inodes-{inodes}"
        outcomes[inodes] = fetch_on_small_disk(hub, cache, f"size=400m,nr_inodes={inodes}")
        if not outcomes[inodes].get("fetched"):
            assert_disk_full(outcomes[inodes], cache)
    assert outcomes[2].get("error") and outcomes[200].get("fetched"), outcomes


def test_a_volume_out_of_inodes_is_refused_before_the_weights_are_downloaded(hub: HubServer,
                                                                            tmp_path: Path):
    """Blocks to spare, inodes not: the writes failed only at the stamps and links, after every
    weight was downloaded, with an error that named no inodes (``df -h`` shows free space)."""
    require_small_disk()
    cache = tmp_path / "few-inodes"
    outcome = fetch_on_small_disk(hub, cache, "size=400m,nr_inodes=50", "count-inodes")
    assert_disk_full(outcome, cache)
    assert "(out of inodes: acme/tiny-sdxl needs " in outcome["error"], outcome
    weights = [r.path for r in hub.downloads() if r.path.endswith(".safetensors")]
    assert weights == [], f"weights downloaded before the fetch found it could not finish: {weights}"
    roomy = tmp_path / "inodes-to-spare"
    assert fetch_on_small_disk(hub, roomy, "size=400m,nr_inodes=200", "count-inodes").get("fetched")



# A stamp (or ref, or marker) written on a full disk: its temp file is created, not written.
WRITE_ON_A_FULL_DISK = """
import json, sys
from pathlib import Path
from runtime.hub.layout import write_atomic
from tests.support.small_disk import fill
disk = Path(sys.argv[1])
(disk / "verified").mkdir()
fill(disk)
try:
    write_atomic(disk / "verified" / "blob.json", json.dumps({"size": 1, "mtime_ns": 2}))
except OSError as exc:
    print(json.dumps({"errno": exc.errno, "left": sorted(p.name for p in (disk / "verified").iterdir())}))
"""


def test_a_file_that_cannot_be_written_leaves_no_temp_file(tmp_path: Path):
    """Temp files have random names: one left on a shared volume is never removed by anyone."""
    require_small_disk()
    disk = tmp_path / "disk"
    done = run_on_small_disk(disk, "size=64k", [sys.executable, "-c", WRITE_ON_A_FULL_DISK, str(disk)])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"errno": errno.ENOSPC, "left": []}


# A snapshot link on a filesystem without symlinks or hard links (some network and FUSE volumes:
# os.symlink and os.link are made to refuse, as such a filesystem does) falls back to a copy of
# the blob; here the disk has no room for that copy, or (ENOSPC from the link itself) no inode.
LINK_ON_A_FULL_DISK = """
import errno, json, os, shutil, sys
from pathlib import Path
from runtime.hub.layout import RemoteFile, RepoCache
from tests.support.small_disk import fill
disk, refusal = Path(sys.argv[1]), int(sys.argv[2])
cache = RepoCache(disk / "hub", disk / "state", "org/model")
f = RemoteFile(path="unet/weights.bin", size=32768, sha256="ab" * 32)
cache.blob(f).parent.mkdir(parents=True)
cache.blob(f).write_bytes(bytes(f.size))
copies = []
real_copy = shutil.copyfile
def refuse(*args, **kwargs):
    raise OSError(refusal, os.strerror(refusal))
def copy(src, dst, **kwargs):
    copies.append(str(dst))
    return real_copy(src, dst, **kwargs)
os.symlink, os.link, shutil.copyfile = refuse, refuse, copy
(cache.snapshot("c" * 40) / "unet").mkdir(parents=True)
fill(disk)
try:
    cache.link("c" * 40, f)
except OSError as exc:
    left = [p.name for p in (cache.snapshot("c" * 40) / "unet").iterdir()]
    print(json.dumps({"errno": exc.errno, "copies": len(copies), "left": left}))
"""


@pytest.mark.parametrize("refusal, copies", [(errno.EPERM, 1), (errno.ENOSPC, 0)])
def test_a_link_that_cannot_be_made_on_a_full_disk_leaves_no_temp_file(tmp_path: Path, refusal: int,
                                                                       copies: int):
    """The copy fallback's temp file was left behind when the copy failed (a random name that
    nothing removes), and a link refused for want of room was retried as a full copy of the blob."""
    require_small_disk()
    disk = tmp_path / "disk"
    done = run_on_small_disk(disk, "size=256k", [sys.executable, "-c", LINK_ON_A_FULL_DISK, str(disk),
                                                 str(refusal)])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"errno": errno.ENOSPC, "copies": copies, "left": []}


# A previous owner (a killed worker) left most of the UNet as a partial file on a disk with room
# for the rest of the model but not for a second copy of that partial. Two boots, one after the
# other; for each, its outcome and the partial files it left.
TAKE_OVER_ON_A_TIGHT_DISK = """
import json, os, sys
from pathlib import Path
from runtime.errors import BootError
from runtime.fetch import FetchOptions, fetch
from runtime.hub.layout import repo_folder
from runtime.settings import Settings
settings = Settings.from_env(os.environ)
source, blob, kept = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
options = FetchOptions(disk_reserve_bytes=0)
if sys.argv[4] == "large":
    # One download at a time: the copy attempted here fills the disk until it fails, and a
    # download running beside it would meet that full disk first (and fail the boot) on a busy CPU.
    options = FetchOptions(disk_reserve_bytes=0, disk_free=lambda path: 1 << 40, workers=1)
blobs = settings.cache_dir / "hf" / "hub" / repo_folder(settings.model_id) / "blobs"
blobs.mkdir(parents=True)
(blobs / f"{blob}.previous.part").write_bytes(source.read_bytes()[:kept])
boots = []
for _ in range(2):
    try:
        fetch(settings, options)
        outcome = {"fetched": True}
    except BootError as exc:
        outcome = {"error": str(exc)}
    outcome["parts"] = sorted(p.stat().st_size for p in blobs.glob("*.part"))
    boots.append(outcome)
print(json.dumps(boots))
"""


def take_over_on_small_disk(hub: HubServer, tmp_path: Path, kept_fraction: float, disk: str,
                            disk_says: str, code: str = TAKE_OVER_ON_A_TIGHT_DISK) -> tuple[list, int]:
    """Run ``code`` (two boots after a killed owner left ``kept_fraction`` of the UNet as a
    partial file) on a tmpfs of ``disk``; its boots' outcomes, and the bytes the partial kept."""
    require_small_disk()
    entry = hub.repos[SDXL].entries[UNET]
    kept = int(entry.size * kept_fraction)
    cache = tmp_path / "cache"
    env = worker_env({"HF_MODEL_ID": SDXL, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
                      "VISGATE_CACHE_DIR": str(cache)})
    done = run_on_small_disk(cache, disk, [sys.executable, "-c", code, str(entry.file), entry.sha256,
                                           str(kept), disk_says], env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), kept


UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize("disk_says", ["its free space", "large"])
def test_a_partial_download_too_large_to_copy_is_still_taken_over(hub: HubServer, tmp_path: Path,
                                                                  disk_says: str):
    """Resuming a previous owner's partial file copies it; on a disk without room for the copy
    the copy failed halfway, unnoticed: both files stayed, the download then hit a full disk, and
    every later boot did the same, though the disk had room for the model."""
    # The model needs about 2.1 MB; the partial holds 1.4 MB of it.
    boots, kept = take_over_on_small_disk(hub, tmp_path, 0.9, "size=2600k",
                                          "large" if disk_says == "large" else "real")
    assert boots[0] == {"fetched": True, "parts": []}, boots
    assert boots[1] == {"fetched": True, "parts": []}, boots
    ranges = [r.range for r in hub.requests(kind="cdn") if r.path == UNET]
    assert ranges == [f"bytes={kept}-"], "the partial file was not resumed"


# As TAKE_OVER_ON_A_TIGHT_DISK, with the copy taking a while as it does on a network volume
# (gigabytes at 200-400 MB/s): the other files download meanwhile, eight at a time.
SLOW_COPY = """
import shutil, time
import runtime.hub.transfer as transfer
copy = shutil.copyfile
def slow_copy(src, dst, **kwargs):
    done = copy(src, dst, **kwargs)
    time.sleep(1.0)
    return done
transfer.shutil.copyfile = slow_copy
"""


def test_a_takeover_copy_leaves_room_for_the_downloads_beside_it(hub: HubServer, tmp_path: Path):
    """The copy was made whenever the disk had room for it alone: on a disk with room for the
    model, the other files' downloads then met a full disk while it lasted, and the boot failed."""
    code = SLOW_COPY + TAKE_OVER_ON_A_TIGHT_DISK.replace("options = FetchOptions(disk_reserve_bytes=0)\n",
                                                         "options = FetchOptions(disk_reserve_bytes=0, workers=8)\n")
    # The model needs about 2.1 MB; the partial holds 0.9 MB of the UNet.
    boots, kept = take_over_on_small_disk(hub, tmp_path, 0.6, "size=2300k", "real", code)
    assert boots[0] == {"fetched": True, "parts": []}, boots
    ranges = [r.range for r in hub.requests(kind="cdn") if r.path == UNET]
    assert ranges == [f"bytes={kept}-"], "the partial file was not resumed"
