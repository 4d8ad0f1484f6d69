"""The compile-cache archive without compiling anything: keys, restore, corruption, atomic saves.

(Real compiled artifacts across fresh processes: tests/integration/test_optimize.py.)
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import pytest

from runtime import compile_cache
from runtime.compile_cache import CompileCache, for_boot, make_key
from tests.support.small_disk import require_small_disk, run_on_small_disk


@pytest.fixture(autouse=True)
def _restore_inductor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # activate() points TORCHINDUCTOR_CACHE_DIR at its local dir; keep that out of other tests.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset-by-test")


def _cache(tmp_path: Path, local: str = "local", **parts: object) -> CompileCache:
    return CompileCache(volume_dir=tmp_path / "volume" / "compile",
                        parts={"model": "m", "shapes": [[1024, 1024]], **parts},
                        local_root=tmp_path / local)


def _boot_parts(**overrides: object) -> dict:
    args = dict(cache_dir=Path("/v"), model_id="black-forest-labs/FLUX.1-dev", model_dir=Path("/x/abc123"),
                revision="main", family="flux", variant="dev", device="cpu",
                options={"compile": "regional", "quantize": "none"}, shapes=[(1024, 1024)])
    args.update(overrides)
    return for_boot(**args).parts  # type: ignore[arg-type]


def test_key_covers_what_invalidates_compiled_code() -> None:
    base = _boot_parts()
    assert make_key(base) == make_key(_boot_parts())  # deterministic
    assert {"model", "revision", "snapshot", "family", "variant", "options", "shapes", "torch",
            "python", "diffusers", "machine", "cpu"} <= set(base)
    assert base["snapshot"] == "abc123"
    for changed in (_boot_parts(shapes=[(1024, 1024), (768, 1344)]), _boot_parts(revision="v2"),
                    _boot_parts(options={"compile": "full", "quantize": "none"}),
                    _boot_parts(model_dir=Path("/x/def456")), _boot_parts(variant="schnell")):
        assert make_key(changed) != make_key(base)
    assert make_key({**base, "torch": "9.9.9"}) != make_key(base)
    # "auto" attention resolves to FlashAttention 3 where it is installed: other kernels
    assert base["attention_libraries"].keys() == {"flash_attn_3", "flash_attn", "xformers"}
    with_fa3 = {**base, "attention_libraries": {**base["attention_libraries"], "flash_attn_3": "3.0.0"}}
    assert make_key(with_fa3) != make_key(base)



def test_inductor_settings_from_the_environment_are_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # An AOTInductor package is found by this key alone: without them a worker given
    # TORCHINDUCTOR_MAX_AUTOTUNE=1 loaded the package compiled without autotuning, every boot.
    for name in [n for n in os.environ if n.startswith("TORCHINDUCTOR_")]:
        monkeypatch.delenv(name)
    assert "inductor_env" not in _boot_parts()  # the keys of archives saved before stay the same
    base = make_key(_boot_parts())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")  # where files go: no new code
    assert make_key(_boot_parts()) == base
    monkeypatch.setenv("TORCHINDUCTOR_MAX_AUTOTUNE", "1")
    tuned = _boot_parts()
    assert tuned["inductor_env"] == {"TORCHINDUCTOR_MAX_AUTOTUNE": "1"}
    assert make_key(tuned) != base
    monkeypatch.setenv("TORCHINDUCTOR_FREEZING", "1")
    assert make_key(_boot_parts()) not in (base, make_key(tuned))


def test_missing_archive_is_a_miss_and_points_inductor_at_a_local_dir(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    status = cache.activate()
    assert status["restored"] == "miss"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "local" / cache.key / "inductor")


def test_a_volume_that_refuses_file_modes_still_takes_the_archive(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Some FUSE and CIFS mounts refuse chmod (EPERM): every save failed there, each leaving its
    # file descriptor open. (No such mount here: the refusal is the kernel's answer, injected.)
    def refused(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    cache = _cache(tmp_path)
    cache.activate()
    open_before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fchmod", refused)
    saved = cache.save()
    assert saved["saved_bytes"] == cache.archive.stat().st_size > 0
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_saved_archive_restores_in_a_new_container(tmp_path: Path) -> None:
    first = _cache(tmp_path, local="container-1")
    first.activate()
    kernel = first.local_dir / "inductor" / "fxgraph" / "ab" / "entry"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"compiled graph")
    saved = first.save()
    assert saved["saved_bytes"] == first.archive.stat().st_size
    assert [p.name for p in first.archive.parent.iterdir()] == [first.archive.name]  # no temp left
    assert first.archive.stat().st_mode & 0o777 == 0o644  # other users' workers read it too

    second = _cache(tmp_path, local="container-2")
    assert second.key == first.key
    assert second.activate()["restored"] == "hit"
    restored = second.local_dir / "inductor" / "fxgraph" / "ab" / "entry"
    assert restored.read_bytes() == b"compiled graph"


def test_aot_build_directories_stay_out_of_the_archive(tmp_path: Path) -> None:
    """With VISGATE_COMPILE=aot the packages live beside the archive; inductor's build copies of
    them would double what every boot extracts. The CPU-ISA probes it keeps are what aot needs."""
    cache = _cache(tmp_path)
    cache.activate()
    inductor = cache.local_dir / "inductor"
    for name, data in {"c4icgo/cfab.wrapper.so": b"so" * 1000, "c4icgo/cfab.wrapper.cpp": b"cpp",
                       "c4icgo/cc6i.kernel.cpp": b"kernels", "th/cthd.so": b"isa probe",
                       "fxgraph/ab/entry": b"compiled graph"}.items():
        (inductor / name).parent.mkdir(parents=True, exist_ok=True)
        (inductor / name).write_bytes(data)
    cache.save()
    with tarfile.open(cache.archive) as tar:
        files = {m.name for m in tar.getmembers() if m.isfile()}
    assert files == {"meta.json", "mega-cache.bin", "inductor/th/cthd.so", "inductor/fxgraph/ab/entry"}


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("members", [
    None,  # garbage bytes
    {"meta.json": b'{"key": "someone-else"}', "mega-cache.bin": b""},  # another key's archive
    {"mega-cache.bin": b""},  # no meta
    {"meta.json": b"{KEY}", "mega-cache.bin": b"not a torch cache blob"},  # blob torch rejects
    {"meta.json": b"{KEY}", "mega-cache.bin": b"", "inductor/../../escaped": b"x"},  # path traversal
], ids=["garbage", "other-key", "no-meta", "bad-blob", "traversal"])
def test_unusable_archive_means_compile_again_never_a_crash(tmp_path: Path, members: dict | None,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cache = _cache(tmp_path)
    if members is None:
        cache.archive.parent.mkdir(parents=True)
        cache.archive.write_bytes(b"\0garbage" * 100)
    else:
        meta = json.dumps({"key": cache.key}).encode()
        _write_tar(cache.archive, {k: (meta if v == b"{KEY}" else v) for k, v in members.items()})
    status = cache.activate()
    assert status["restored"] == "corrupt"
    assert "compiling from scratch" in caplog.text
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "local" / "escaped").exists()
    # and the next save overwrites it with a good archive
    cache.save()
    assert _cache(tmp_path, local="other").activate()["restored"] == "hit"



# The child process's boot up to finish(), on a full disk; FILL_INODES first takes every inode.
FULL_DISK_BOOT = """
import json, sys
from pathlib import Path
from runtime import compile_cache
import torch._dynamo  # as in the worker: imported by its load stage (diffusers)
disk = Path(sys.argv[3])
n = 0
while sys.argv[4] == "fill-inodes":
    try:
        (disk / f"f{n}").touch()
        n += 1
    except OSError:
        break
cache = compile_cache.CompileCache(volume_dir=Path(sys.argv[1]), parts=json.loads(sys.argv[2]),
                                   local_root=disk / "visgate-inductor")
cache.activate()
compile_cache.inductor_cache_counters = lambda: {"fxgraph_cache_miss": 1}  # compiled here
print(json.dumps(compile_cache.finish(cache)))
"""


@pytest.mark.parametrize("disk_options, fill", [("size=128k", "no"), ("nr_inodes=16", "fill-inodes")],
                         ids=["no room for the restore", "no room for its directory"])
def test_a_full_local_disk_leaves_the_archive_on_the_volume_as_it_was(
        tmp_path: Path, disk_options: str, fill: str) -> None:
    # The archive is restored into the container's disk (/tmp). Full, the restore failed as if
    # the archive were "corrupt", and the worker then overwrote the volume's good archive with
    # what it could compile on that full disk: every other worker lost the cache. Out of inodes
    # (or of the blocks a user may take), the disk refuses even the local directory: activate()
    # raised there, and the boot failed.
    require_small_disk()
    cache = _cache(tmp_path)
    cache.activate()
    kernel = cache.local_dir / "inductor" / "fxgraph" / "ab" / "entry"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(os.urandom(512 * 1024))
    cache.save()
    archive = cache.archive.read_bytes()
    disk = tmp_path / "small-tmp"
    child = run_on_small_disk(disk, disk_options, [sys.executable, "-c", FULL_DISK_BOOT,
                                                   str(cache.volume_dir), json.dumps(cache.parts),
                                                   str(disk), fill])
    assert child.returncode == 0, child.stderr[-2000:]
    status = json.loads(child.stdout.splitlines()[-1])
    assert status["restored"] == "no local space" and "saved_bytes" not in status
    assert "no space left in" in child.stderr and "the archive is kept" in child.stderr
    assert cache.archive.read_bytes() == archive


def test_finish_keeps_a_clean_hit_and_saves_anything_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache(tmp_path)
    cache.activate()
    monkeypatch.setattr(compile_cache, "inductor_cache_counters", lambda: {"fxgraph_cache_miss": 3})
    assert compile_cache.finish(cache)["saved_bytes"] > 0  # a miss: compiled, so saved
    written = cache.archive.stat()

    again = _cache(tmp_path, local="next")
    again.activate()
    monkeypatch.setattr(compile_cache, "inductor_cache_counters", lambda: {"fxgraph_cache_hit": 3})
    status = compile_cache.finish(again)
    assert status["restored"] == "hit" and "saved_bytes" not in status
    now = cache.archive.stat()
    assert (now.st_ino, now.st_size) == (written.st_ino, written.st_size)  # not rewritten


def test_a_volume_that_cannot_be_written_costs_the_next_boot_not_this_one(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache(tmp_path)
    cache.activate()
    cache.volume_dir.parent.mkdir(parents=True)
    cache.volume_dir.write_text("a file where the directory should be")
    monkeypatch.setattr(compile_cache, "inductor_cache_counters", lambda: {"fxgraph_cache_miss": 1})
    status = compile_cache.finish(cache)
    assert "save_error" in status


def test_a_killed_workers_temp_file_is_removed_but_a_fresh_one_is_not(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.activate()
    cache.volume_dir.mkdir(parents=True)
    abandoned = cache.volume_dir / ".otherkey.abc.tmp"
    in_progress = cache.volume_dir / ".otherkey.def.tmp"
    abandoned.write_bytes(b"half an archive")
    in_progress.write_bytes(b"being written right now")
    old = abandoned.stat().st_mtime - compile_cache.ABANDONED_TEMP_S - 60
    os.utime(abandoned, (old, old))
    cache.save()
    assert not abandoned.exists() and in_progress.exists() and cache.archive.is_file()


def test_archives_unused_for_two_weeks_are_removed_when_a_new_one_is_written(tmp_path: Path) -> None:
    # Another endpoint's archive, used by its last boot long ago, and one restored at boot
    # (marked used then, however old its file): only the first goes.
    cache = _cache(tmp_path)
    cache.volume_dir.mkdir(parents=True)
    stale = cache.volume_dir / ("a" * 24 + ".tar")
    in_use = _cache(tmp_path, local="in-use", options={"compile": "max-autotune"})
    in_use.activate()
    in_use.save()
    long_ago = time.time() - compile_cache.STALE_ARCHIVE_S - 3600
    stale.write_bytes(b"an old endpoint's archive")
    for archive in (stale, in_use.archive):
        os.utime(archive, (long_ago, long_ago))
    reboot = _cache(tmp_path, local="reboot", options={"compile": "max-autotune"})
    assert reboot.activate()["restored"] == "hit"  # marks it used

    cache.activate()
    cache.save()
    assert not stale.exists()
    assert in_use.archive.is_file() and cache.archive.is_file()


def test_an_archive_save_prunes_ahead_of_time_packages_no_boot_uses_any_more(tmp_path: Path) -> None:
    # An endpoint that left VISGATE_COMPILE=aot (or changed torch) writes no package again:
    # only a package's writer pruned packages, so its old ones stayed on the volume for good.
    cache = _cache(tmp_path)
    cache.volume_dir.mkdir(parents=True)
    long_ago = time.time() - compile_cache.STALE_ARCHIVE_S - 3600
    old = [cache.volume_dir / f"{'b' * 24}.{name}" for name in ("transformer-abc.pt2", "isa.json")]
    used = cache.volume_dir / f"{'c' * 24}.transformer-def.pt2"
    for path in (*old, used):
        path.write_bytes(b"a package")
        os.utime(path, (long_ago, long_ago))
    compile_cache.mark_used(used)  # loaded by a boot of another endpoint
    cache.activate()
    cache.save()
    assert not any(path.exists() for path in old) and used.is_file()



def test_an_old_archive_being_restored_is_not_pruned_and_one_pruned_anyway_is_written_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers of two endpoints share a volume; one restores an archive last used 15 days ago
    # while the other saves its own, which prunes archives unused for two weeks. The restoring
    # worker marked the archive used only once it was read: the other took it from under the
    # restore. And an archive removed after a clean hit was not written again: every boot after
    # compiled from nothing, none saving what it compiled.
    first = _cache(tmp_path, local="first")
    first.activate()
    first.save()
    long_ago = time.time() - compile_cache.STALE_ARCHIVE_S - 3600
    os.utime(first.archive, (long_ago, long_ago))
    other_endpoint = _cache(tmp_path, local="other", model="another model")
    other_endpoint.activate()

    class RestoredWhileAnotherSaves(CompileCache):
        def _restore(self) -> None:
            other_endpoint.save()  # prunes what is unused for two weeks
            super()._restore()

    reboot = RestoredWhileAnotherSaves(volume_dir=first.volume_dir, parts=first.parts,
                                       local_root=tmp_path / "reboot")
    assert reboot.activate()["restored"] == "hit"
    assert first.archive.is_file() and other_endpoint.archive.is_file()

    first.archive.unlink()  # pruned or discarded by another worker after all
    monkeypatch.setattr(compile_cache, "inductor_cache_counters", lambda: {"fxgraph_cache_hit": 3})
    status = compile_cache.finish(reboot)
    assert status["restored"] == "hit" and status["saved_bytes"] == first.archive.stat().st_size


def test_every_boot_option_that_changes_compiled_code_changes_the_key(tmp_path: Path) -> None:
    # boot.compile_cache_for: what the worker actually keys its archive by.
    from runtime.boot import compile_cache_for
    from runtime.load import Loaded
    from runtime.settings import Settings

    class Family:
        name, variant = "flux", "dev"

    def key(precision: str = "bf16", device: str = "cpu", model: str = "black-forest-labs/FLUX.1-dev",
            shapes: tuple = ((1024, 1024),), **env: str) -> str:
        settings = Settings.from_env({"HF_MODEL_ID": model, "DEVICE": device,
                                      "VISGATE_CACHE_DIR": str(tmp_path), "VISGATE_COMPILE": "regional",
                                      **env})
        loaded = Loaded(family=Family(), pipe=None, precision=precision, device=device)  # type: ignore[arg-type]
        cache = compile_cache_for(settings, Path("/x/abc123"), loaded, list(shapes))
        assert cache is not None and cache.volume_dir == tmp_path / "compile"
        return cache.key

    base = key()
    assert key() == base
    changed = [key(precision="fp16"), key(model="other/model"), key(shapes=((768, 1344),)),
               key(VISGATE_ATTENTION="cudnn"), key(VISGATE_QUANTIZE="fp8"),
               key(VISGATE_COMPILE="max-autotune"), key(HF_MODEL_REVISION="v2"),
               # warmup compiles the default guidance's graph (classifier-free guidance on or off)
               key(VISGATE_DEFAULT_GUIDANCE="0")]
    assert len({base, *changed}) == len(changed) + 1
    assert key(VISGATE_DEFAULT_STEPS="4") == base  # steps change no graph
    # A local directory's path as written: a trailing slash made a second archive, compiled again
    assert key(model="/models/flux/") == key(model="/models/flux") != key(model="/models/flux2")
    assert key(model="./models//flux/") == key(model="./models/flux")
    settings = Settings.from_env({"HF_MODEL_ID": "m", "DEVICE": "cpu", "VISGATE_COMPILE": "off"})
    assert compile_cache_for(settings, Path("/x"), None, []) is None  # type: ignore[arg-type]


def test_aot_packages_are_keyed_by_the_cpu_on_a_gpu_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Their host code is compiled for the CPU it was built on (-march=native): a package from an
    # AVX-512 host would kill a worker on a host without it (SIGILL), at every boot.
    from runtime import compile_cache as cc

    def gpu_parts(device: str) -> dict:  # what a CUDA machine's facts hold: no CPU
        return {"torch": "2.x", "gpu": "NVIDIA H100 80GB HBM3", "capability": [9, 0]}

    def parts(compile_mode: str, cpu: str) -> dict:
        monkeypatch.setattr(cc, "cpu_isa", lambda: cpu)
        return cc.for_boot(Path("/c"), "m", Path("/x/abc"), "main", "sdxl", "base", "cuda",
                           {"compile": compile_mode}, [(1024, 1024)]).parts

    monkeypatch.setattr(cc, "environment_key_parts", gpu_parts)
    assert parts("aot", "AMD EPYC 9654") != parts("aot", "Intel Xeon Platinum 8480+")
    # torch.compile's kernels on a GPU are Triton code for the GPU: shared across host CPUs
    assert parts("regional", "AMD EPYC 9654") == parts("regional", "Intel Xeon Platinum 8480+")
