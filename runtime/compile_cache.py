"""Compiled artifacts kept on the volume, so the next cold start does not compile again.

One archive per key under ``<VISGATE_CACHE_DIR>/compile/``. The key hashes everything that
invalidates compiled code: model id, revision and snapshot, family and variant, torch / triton /
CUDA / diffusers versions, GPU name, every optimization option, and the warmup shapes.

The archive holds both mechanisms PyTorch offers, because each wins somewhere:
- the "mega-cache" blob from ``torch.compiler.save_cache_artifacts()`` (portable, small; on the
  H200 it cut FLUX's first compiled call from 18.4 s to 5.2 s), and
- inductor's own cache directory (``TORCHINDUCTOR_CACHE_DIR``), which also keeps compiled C++
  and Triton binaries (on CPU it cut tiny-Flux's first compiled call from 30 s to 4.5 s, where
  the mega-cache alone gave 22 s).
Inductor works in a local directory (many small files: slow on a network volume); the volume only
sees one tar, written to a temporary name and renamed, so concurrent workers never tear it.
A missing, stale or corrupt archive means "compile again and overwrite", never a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

from runtime.boot_report import cpu_isa, package_version
from runtime.errors import brief, is_no_space

log = logging.getLogger(__name__)

MEGA_CACHE_NAME = "mega-cache.bin"
INDUCTOR_DIR_NAME = "inductor"
META_NAME = "meta.json"
FORMAT = 1


def environment_key_parts(device: str) -> dict[str, Any]:
    """Software and hardware facts compiled code depends on."""
    import torch

    parts: dict[str, Any] = {
        "format": FORMAT, "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "triton": package_version("triton"),
        "diffusers": package_version("diffusers"), "torchao": package_version("torchao"),
        "machine": platform.machine(),
        # The attention kernels compiled in: VISGATE_ATTENTION=auto picks FlashAttention 3 where
        # it is installed, so the same options name different code with and without it.
        "attention_libraries": {name: package_version(name) for name in ("flash_attn_3", "flash_attn", "xformers")},
    }
    if settings := inductor_env():  # only when set: the keys of existing archives stay as they were
        parts["inductor_env"] = settings
    if device.startswith("cuda") and torch.cuda.is_available():
        parts["gpu"] = torch.cuda.get_device_name(device)
        parts["capability"] = list(torch.cuda.get_device_capability(device))
    else:
        # CPU code is compiled for this CPU's instruction set.
        parts["cpu"] = cpu_isa()
    return parts


def inductor_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``TORCHINDUCTOR_*`` settings the image or endpoint sets (MAX_AUTOTUNE, FREEZING, ...):
    inductor's own caches key by them, but an AOTInductor package is found by our key alone, so
    without them a worker given ``TORCHINDUCTOR_MAX_AUTOTUNE=1`` kept loading the untuned package.
    Directories are left out: where files go changes no code (and activate() sets the cache's)."""
    env = os.environ if env is None else env
    return {name: value for name, value in sorted(env.items())
            if name.startswith("TORCHINDUCTOR_") and not name.endswith("_DIR")}


def make_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass
class CompileCache:
    """The archive for one key: restore before compiling, save after warmup."""

    volume_dir: Path  # <cache_dir>/compile
    parts: dict[str, Any]
    local_root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "visgate-inductor")
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return make_key(self.parts)

    @property
    def archive(self) -> Path:
        return self.volume_dir / f"{self.key}.tar"

    @property
    def local_dir(self) -> Path:
        return self.local_root / self.key

    def activate(self) -> dict[str, Any]:
        """Point inductor at a local dir and fill it from the volume archive when there is one.

        Must run before the first compiled call. Returns what happened, for the boot record.
        """
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.local_dir / INDUCTOR_DIR_NAME)
        self.status = {"key": self.key, "archive": str(self.archive)}
        try:
            self.local_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if not is_no_space(exc):
                raise
            # A disk out of inodes (or of the blocks a user may take) refuses even a directory:
            # as when the restore meets it, compile from scratch and keep the archive (finish).
            log.warning("compile cache %s not restored: no space left in %s; compiling from "
                        "scratch, the archive is kept", self.archive.name, self.local_root)
            self.status["restored"] = "no local space"
            return self.status
        if not self.archive.is_file():
            self.status["restored"] = "miss"
            return self.status
        # Marked used before it is read: a worker saving its own archive meanwhile prunes those
        # unused for two weeks, and would take this one from under the restore (see finish).
        mark_used(self.archive)
        try:
            self._restore()
            self.status["restored"] = "hit"
        except Exception as exc:  # corrupt or foreign archive: compile again, overwrite later
            shutil.rmtree(self.local_dir / INDUCTOR_DIR_NAME, ignore_errors=True)
            if is_no_space(exc):
                # This container's disk is full, not the archive broken: overwritten with what
                # compiles here (into the same full disk), a good archive would be lost to the
                # workers that can restore it. finish() leaves it alone.
                log.warning("compile cache %s not restored: no space left in %s; compiling from "
                            "scratch, the archive is kept", self.archive.name, self.local_root)
                self.status["restored"] = "no local space"
            else:
                log.warning("compile cache %s unusable (%s); compiling from scratch",
                            self.archive.name, brief(exc))
                self.status["restored"] = "corrupt"
        return self.status

    def discard(self) -> bool:
        """Throw away what ``activate`` restored, here and on the volume, because its compiled
        code failed (runtime/optimize.warm_with_fallback). Returns whether there was any: the
        archive is then rewritten after warmup (``finish``), or, if compiling fails again, the
        next boot compiles from nothing instead of failing the same way."""
        if self.status.get("restored") != "hit":
            return False
        shutil.rmtree(self.local_dir / INDUCTOR_DIR_NAME, ignore_errors=True)
        try:
            self.archive.unlink(missing_ok=True)
        except OSError as exc:  # a read-only volume: nothing better to do than keep serving
            log.warning("compile cache %s could not be removed (%s)", self.archive.name, brief(exc))
        self.status["restored"] = "discarded"
        return True

    def _restore(self) -> None:
        import torch

        with tarfile.open(self.archive, "r") as tar:
            meta = json.load(tar.extractfile(META_NAME))  # type: ignore[arg-type]
            if meta.get("key") != self.key:
                raise ValueError("archive key does not match")
            mega = tar.extractfile(MEGA_CACHE_NAME)
            blob = mega.read() if mega else b""
            members = [m for m in tar.getmembers()
                       if m.name.startswith(INDUCTOR_DIR_NAME + "/") and (m.isfile() or m.isdir())]
            # filter="data" refuses absolute paths, links out of the tree and device files.
            tar.extractall(self.local_dir, members=members, filter="data")
        if blob:
            info = torch.compiler.load_cache_artifacts(blob)
            if info is None:
                raise ValueError("mega-cache blob was rejected by torch")
        self.status["bytes"] = self.archive.stat().st_size

    def save(self) -> dict[str, Any]:
        """Write the archive after warmup (write to a temp name, then rename)."""
        import torch

        result = torch.compiler.save_cache_artifacts()
        blob = result[0] if result else b""
        self.volume_dir.mkdir(parents=True, exist_ok=True)
        prune(self.volume_dir, keep=self.archive)
        with atomic_file(self.archive) as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            meta = json.dumps({"key": self.key, "parts": self.parts}, default=str).encode()
            _add_bytes(tar, META_NAME, meta)
            _add_bytes(tar, MEGA_CACHE_NAME, blob)
            inductor = self.local_dir / INDUCTOR_DIR_NAME
            if inductor.is_dir():
                builds = _aot_build_dirs(inductor)
                tar.add(inductor, arcname=INDUCTOR_DIR_NAME,
                        filter=lambda m: None if _under(m.name, builds) else m)
        size = self.archive.stat().st_size
        log.info("compile cache saved: %s (%.1f MB, mega-cache %.1f MB)", self.archive,
                 size / 1e6, len(blob) / 1e6)
        return {"saved_bytes": size, "mega_cache_bytes": len(blob)}


# A worker writes its archive in seconds; a temp file this old belongs to a worker that was killed
# mid-save and would otherwise sit on the volume forever.
ABANDONED_TEMP_S = 3600
# Archives are keyed by options, versions and GPU, so a volume shared by endpoints, or one that
# outlived an upgrade of torch, collects archives no worker will read again (hundreds of MB each
# for FLUX). Each boot that restores an archive marks it used (its mtime), and a worker that writes
# a new archive removes those unused this long: an endpoint idle for two weeks compiles once more.
STALE_ARCHIVE_S = 14 * 24 * 3600


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[BinaryIO]:
    """``final`` written whole or not at all: the bytes go to a temporary name beside it, reach
    the disk (fsync, after the caller's writer is closed), then are renamed over it. Workers
    sharing the volume see the old file or the new one, never a torn one."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            # mkstemp makes it 0600: readable by this user alone, where the volume's other files
            # (the hub cache, our locks) are 0644 and workers of an image with another USER
            # share it too. A volume that refuses modes (some FUSE and CIFS mounts) keeps its
            # own: refused, this failed every save (and left the descriptor open).
            with contextlib.suppress(OSError):
                os.fchmod(out.fileno(), 0o644)
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def mark_used(archive: Path) -> None:
    try:
        os.utime(archive)
    except OSError:  # a read-only volume: the archive then ages, and may be pruned and rewritten
        pass


def prune(volume_dir: Path, keep: Path | None = None) -> None:
    """What the compile cache's folder holds and no boot uses any more: temporary files
    abandoned by a writer that died, and archives, ahead-of-time packages and their CPU probes
    untouched for STALE_ARCHIVE_S (each boot that uses one marks it: ``mark_used``). Run by
    every writer of either kind: an endpoint that left ``aot`` for ``regional`` (or changed
    torch) writes no package again, and left its old ones on the volume for good."""
    remove_older_than(volume_dir, ".*.tmp", ABANDONED_TEMP_S)
    for pattern in ("*.tar", "*.pt2", "*.isa.json"):
        remove_older_than(volume_dir, pattern, STALE_ARCHIVE_S, keep=keep)


def remove_older_than(volume_dir: Path, pattern: str, max_age_s: float, keep: Path | None = None,
                       now: float | None = None) -> None:
    """Remove the files matching ``pattern`` not modified for ``max_age_s`` (except ``keep``)."""
    now = time.time() if now is None else now
    for path in volume_dir.glob(pattern):
        try:
            if path != keep and now - path.stat().st_mtime > max_age_s:
                path.unlink()
                log.info("compile cache: removed %s, untouched for %d s", path.name, max_age_s)
        except OSError:  # another worker removed it first
            continue


def _aot_build_dirs(inductor: Path) -> set[str]:
    """Archive names of AOTInductor build directories (VISGATE_COMPILE=aot): each is a copy of a
    package already on the volume (runtime/aot.py), megabytes that every boot would extract."""
    return {f"{INDUCTOR_DIR_NAME}/{wrapper.parent.relative_to(inductor).as_posix()}"
            for pattern in ("*.wrapper.so", "*.wrapper.cpp") for wrapper in inductor.rglob(pattern)}


def _under(name: str, dirs: set[str]) -> bool:
    return any(name == d or name.startswith(d + "/") for d in dirs)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def inductor_cache_counters() -> dict[str, int]:
    """FX-graph cache hits and misses so far: the honest "did the cache work" numbers."""
    from torch._dynamo.utils import counters

    inductor = counters.get("inductor", {})
    return {k: int(v) for k, v in inductor.items() if k.startswith(("fxgraph_cache", "aot_autograd"))}


# Where the first compiled calls spent their time, from torch's own timers (summed over graphs):
# on a cache hit what is left is tracing and loading code, and this says which of the two.
COMPILE_PHASES = {"dynamo_total": "_compile.compile_inner", "tracing": "bytecode_tracing",
                  "backend": "OutputGraph.call_user_compiler",
                  "code_load": "PyCodeCache.load_by_key_path", "host_compile": "compile_file"}


def compile_seconds(every_timer: bool = False, minimum: float = 0.0) -> dict[str, float]:
    """Seconds per compile phase so far (COMPILE_PHASES), or per timer torch kept, above ``minimum``."""
    from torch._dynamo.utils import compilation_time_metrics

    names = {k: k for k in compilation_time_metrics} if every_timer else COMPILE_PHASES
    totals = {name: round(sum(compilation_time_metrics.get(key, ())), 3) for name, key in names.items()}
    return {name: seconds for name, seconds in totals.items() if seconds > minimum}


def for_boot(cache_dir: Path, model_id: str, model_dir: Path, revision: str, family: str,
             variant: str, device: str, options: dict[str, Any],
             shapes: list[tuple[int, int]]) -> CompileCache:
    if model_id.startswith(("/", ".", "~")):  # a local directory: "/m/flux/" is "/m/flux"
        model_id = os.path.normpath(model_id)
    parts = {
        "model": model_id, "revision": revision,
        # A hub snapshot directory is named by its commit: a new commit means new weights.
        "snapshot": Path(model_dir).name, "family": family, "variant": variant,
        "options": options, "shapes": [list(s) for s in shapes],
        **environment_key_parts(device),
    }
    if options.get("compile") == "aot":
        # An AOTInductor package holds host code compiled for this CPU (-march=native): on a host
        # whose CPU lacks an instruction it uses, loading it dies of SIGILL, which no fallback
        # can catch, at every boot. Workers on other CPUs get packages of their own.
        parts.setdefault("cpu", cpu_isa())
    return CompileCache(volume_dir=Path(cache_dir) / "compile", parts=parts)


def finish(cache: CompileCache) -> dict[str, Any]:
    """After warmup: record hits/misses; save the archive unless it was fully reused.

    With VISGATE_COMPILE=aot the packages are kept by runtime/aot.py, but the archive still pays:
    loading a package checks the CPU's vector ISA, which compiles half a dozen probe programs
    (6 s here) unless inductor's directory already holds them."""
    counters = inductor_cache_counters()
    cache.status["counters"] = counters
    cache.status["compile_seconds"] = compile_seconds()
    if (cache.status.get("restored") == "hit" and not counters.get("fxgraph_cache_miss")
            and cache.archive.is_file()):  # else removed since (pruned, discarded): write it again
        return cache.status
    if cache.status.get("restored") == "no local space":  # the archive is sound; this disk is not
        return cache.status
    try:
        cache.status.update(cache.save())
    except Exception as exc:  # a full volume, a torch or tar error: costs the next boot time, not this one
        log.warning("compile cache not saved (%s: %s)", exc.__class__.__name__, exc)
        cache.status["save_error"] = exc.__class__.__name__
    return cache.status
