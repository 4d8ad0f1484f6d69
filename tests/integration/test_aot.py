"""VISGATE_COMPILE=aot on CPU: torch.export + AOTInductor packages on the volume.

AOTInductor compiles C++ on a CPU exactly as it compiles Triton on a GPU: everything here is
the real thing. What must hold: a package is compiled once per input signature and loaded by the
next fresh process without tracing; the image agrees with eager; an unwarmed signature runs
eagerly; a corrupt package is recompiled; weights that move are rebound; a module that cannot
be exported falls back to torch.compile.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.test_optimize import (MAX_PIXEL_DIFF, MIN_PSNR_DB, ROOT, _boot_record, _loaded, _request, psnr,
                                              tiny_if)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _aot_status(log: str) -> dict[str, Any]:
    return _boot_record(log)["stages"]["warmup"]["compile_cache"]


def _results(status: dict[str, Any]) -> dict[str, str]:
    """module name -> what happened to its package (one package per module here)."""
    return {name.rsplit("-", 1)[0]: entry.get("result", "fallback")
            for name, entry in status["aot"].items()}


# ---- across fresh processes: the real worker, cold, warm, corrupt --------------------------------------
def test_packages_compile_once_and_a_fresh_process_loads_them_without_tracing(
        start_worker, built_tiny_repo, tmp_path, png_tools):
    volume = tmp_path / "volume"
    shutil.copytree(built_tiny_repo("visgate/tiny-flux").parent, volume / "builtin")
    job = {"prompt": "a red fox in the snow", "seed": 11}  # the default 1024x1024: the warmed shape

    def boot(local: str, compile_mode: str = "aot"):
        (tmp_path / local).mkdir()
        # TMPDIR: a new container's empty local disk; only the volume carries over.
        worker = start_worker("visgate/tiny-flux", VISGATE_COMPILE=compile_mode,
                              TMPDIR=str(tmp_path / local), VISGATE_CACHE_DIR=str(volume))
        log = worker.log_text()
        image = png_tools.decode_b64(worker.runsync(job)["output"]["image_base64"])
        worker.stop()
        return log, image

    _, eager = boot("local-eager", compile_mode="off")

    cold_log, cold = boot("local-1")
    cold_status = _aot_status(cold_log)
    assert _results(cold_status) == {"transformer": "compiled", "vae_decoder": "compiled"}, cold_status
    packages = sorted((volume / "compile").glob("*.pt2"))
    assert len(packages) == 2
    assert len(list((volume / "compile").glob("*.isa.json"))) == 1  # the CPU's probes, for the next boot
    # The weights stay out of the packages (the runner binds the module's own tensors).
    weights = sum(p.stat().st_size for p in (volume / "builtin").rglob("transformer/*.safetensors"))
    assert all(p.stat().st_size < 20 * weights for p in packages)
    assert np.abs(cold.astype(int) - eager.astype(int)).max() <= MAX_PIXEL_DIFF
    assert psnr(cold, eager) >= MIN_PSNR_DB

    warm_log, warm = boot("local-2")
    warm_status = _aot_status(warm_log)
    assert _results(warm_status) == {"transformer": "hit", "vae_decoder": "hit"}, warm_status
    assert "dynamo_total" not in warm_status["compile_seconds"]  # nothing traced at all
    for entry in warm_status["aot"].values():  # where a warm boot's seconds go, per package
        assert {"isa_probe_s", "load_s", "bind_s", "first_run_s"} <= entry.keys(), entry
        assert entry["seconds"] >= entry["isa_probe_s"] + entry["load_s"] + entry["bind_s"] - 0.003, entry
    assert np.array_equal(warm, cold)

    # A truncated package: the boot warns, compiles that one again, serves the same image, and
    # leaves a loadable package behind.
    transformer = next(p for p in packages if ".transformer-" in p.name)
    transformer.write_bytes(transformer.read_bytes()[: transformer.stat().st_size // 3])
    broken_log, broken = boot("local-3")
    broken_status = _aot_status(broken_log)
    assert _results(broken_status) == {"transformer": "compiled", "vae_decoder": "hit"}, broken_status
    assert re.search(r"aot package .*transformer.* unusable", broken_log)
    assert np.array_equal(broken, cold)
    again_log, _ = boot("local-4")
    assert _results(_aot_status(again_log))["transformer"] == "hit"


# ---- in one process: shapes, guidance, moved weights -------------------------------------------------
def _tuned_and_warmed(loaded: Any, settings: Any, volume: Path) -> tuple[Any, Any]:
    """The optimize stage with a package store in ``volume``, warmup at 256x256, then serving."""
    from runtime.aot import AotStore
    from runtime.optimize import optimize, serve_stance
    from runtime.warmup import warmup

    store = AotStore(volume, "testkey")
    report = optimize(loaded, settings, aot_store=store)
    warmup(loaded.family, loaded.pipe, [(256, 256)])
    serve_stance(report)
    return report, store


@pytest.fixture(scope="module")
def aot_tiny_sdxl(built_tiny_repo, tmp_path_factory):
    """A tiny SDXL (classifier-free guidance: a batch-2 UNet) with aot wrappers, warmed at 256x256."""
    loaded, settings = _loaded(built_tiny_repo("visgate/tiny-sdxl"), VISGATE_COMPILE="aot")
    eager = loaded.family.generate(loaded.pipe, _cfg_request())
    report, store = _tuned_and_warmed(loaded, settings, tmp_path_factory.mktemp("aot-volume"))
    assert "ahead of time" in report.applied["compile"]
    try:
        yield loaded, report, store, eager
    finally:
        import torch

        for wrapper in report.aot_modules:
            wrapper.uninstall()
        torch.compiler.set_stance("default")


def _cfg_request(**kw: Any) -> Any:
    from dataclasses import replace

    return replace(_request(**kw), guidance=5.0)


def test_aot_output_agrees_with_eager(aot_tiny_sdxl):
    loaded, report, store, eager = aot_tiny_sdxl
    assert {entry["result"] for entry in store.status.values()} == {"compiled"}
    image = loaded.family.generate(loaded.pipe, _cfg_request())
    assert np.abs(image.astype(int) - eager.astype(int)).max() <= MAX_PIXEL_DIFF
    assert psnr(image, eager) >= MIN_PSNR_DB


@pytest.mark.parametrize("request_kw, guidance", [({"height": 256, "width": 320}, 5.0),
                                                  ({}, 1.0)])  # no guidance: a batch-1 UNet
def test_a_signature_warmup_did_not_see_runs_eagerly_without_compiling(aot_tiny_sdxl, request_kw,
                                                                         guidance, caplog):
    import logging
    from dataclasses import replace

    caplog.set_level(logging.WARNING, logger="runtime.aot")

    loaded, report, store, _ = aot_tiny_sdxl
    packages = set(store.volume_dir.glob("*.pt2"))
    unet = next(w for w in report.aot_modules if w.name == "unet")
    before = unet.eager_calls
    request = replace(_request(**request_kw), guidance=guidance)
    served = loaded.family.generate(loaded.pipe, request)
    assert unet.eager_calls >= before + request.steps
    # said once per new signature, not at every step
    assert sum("unet called with inputs no package was compiled for" in r.getMessage()
               for r in caplog.records) == 1
    assert set(store.volume_dir.glob("*.pt2")) == packages  # nothing compiled after warmup
    for wrapper in report.aot_modules:
        wrapper.uninstall()
    try:
        eager = loaded.family.generate(loaded.pipe, request)
    finally:
        for wrapper in report.aot_modules:
            wrapper.module.forward = wrapper
    # (At the warmed size the VAE decoder's package still serves: equal up to rounding.)
    assert np.abs(served.astype(int) - eager.astype(int)).max() <= MAX_PIXEL_DIFF


def test_weights_given_new_storage_are_rebound(aot_tiny_sdxl):
    """The SDXL VAE is cast to fp32 and back around each fp16 decode: new storage each time. A
    package still reading the old storage would decode with stale (or freed) weights."""
    import torch

    loaded, report, store, _ = aot_tiny_sdxl
    decoder = loaded.pipe.vae.decoder
    original = {name: p.detach().clone() for name, p in decoder.named_parameters()}
    try:
        decoder.to(torch.float64)
        with torch.no_grad():
            decoder.conv_in.weight.mul_(1.5)
        decoder.to(torch.float32)
        image = loaded.family.generate(loaded.pipe, _cfg_request())
        wrapper = next(w for w in report.aot_modules if w.name == "vae_decoder")
        wrapper.uninstall()
        try:
            eager = loaded.family.generate(loaded.pipe, _cfg_request())
        finally:
            decoder.forward = wrapper
        assert np.abs(image.astype(int) - eager.astype(int)).max() <= MAX_PIXEL_DIFF
    finally:
        with torch.no_grad():
            for name, p in decoder.named_parameters():
                p.copy_(original[name])


def test_a_pipeline_without_a_vae_gets_a_package_for_its_denoiser_only(tiny_if, tmp_path):
    """DeepFloyd IF works in pixel space: no VAE decoder to wrap (the step raised AttributeError
    on pipe.vae and failed the boot)."""
    from runtime.aot import AotStore
    from runtime.optimize import optimize

    loaded, settings = _loaded(tiny_if, VISGATE_COMPILE="aot")
    report = optimize(loaded, settings, aot_store=AotStore(tmp_path, "testkey"))
    try:
        assert report.applied["compile"].startswith(
            "UNet2DConditionModel whole (no VAE decoder) ahead of time"), report.as_dict()
        assert [wrapper.name for wrapper in report.aot_modules] == ["unet"]
        assert loaded.pipe.unet.forward is report.aot_modules[0]
    finally:
        for wrapper in report.aot_modules:
            wrapper.uninstall()


# ---- a module export cannot capture: torch.compile instead, and the record says so -------------------
def test_a_module_that_cannot_be_exported_falls_back_to_torch_compile(tmp_path):
    import torch

    from runtime.aot import AotModule, AotStore

    class Branchy(torch.nn.Module):
        """Python control flow on a tensor's value: torch.export refuses it."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return x * self.scale
            return x - self.scale

    module = Branchy()
    store = AotStore(tmp_path, "k")
    fell_back = []

    def fallback() -> str:
        fell_back.append(1)
        module.compile()
        return "Branchy whole (torch.compile)"

    AotModule(module, "branchy", store, "cpu", fallback=fallback)
    try:
        x = torch.ones(3)
        assert torch.equal(module(x), torch.full((3,), 2.0))
        assert torch.equal(module(-x), torch.full((3,), -3.0))
        assert fell_back == [1]
        entry = store.status["branchy-fallback"]
        assert entry["instead"] == "Branchy whole (torch.compile)" and entry["reason"], entry
        assert "forward" not in module.__dict__  # the wrapper is gone
        assert not list(tmp_path.glob("*.pt2"))
    finally:
        torch._dynamo.reset()


def test_weights_cast_inside_a_job_are_compiled_not_fallen_back(tmp_path):
    """diffusers upcasts the fp16 SDXL VAE to fp32 inside each job, under inference_mode: its
    weights are then inference tensors, which export refused ("Setting requires_grad=True on
    inference tensor outside InferenceMode"), so on the H200 the VAE decoder fell back to
    torch.compile and re-traced it at every boot (17 s of a warm-cache boot)."""
    import torch

    from runtime.aot import AotModule, AotStore

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(),
                                 torch.nn.Conv2d(8, 3, 3, padding=1)).to(torch.float64)
    store = AotStore(tmp_path, "k")
    wrapper = AotModule(module, "vae_decoder", store, "cpu", fallback=lambda: "torch.compile")
    x = torch.randn(1, 4, 8, 8)
    try:
        with torch.inference_mode():
            module.to(torch.float32)  # as the pipeline's upcast does, inside the job
            assert module[0].weight.is_inference()
            out = module(x)
            module.to(torch.float64)  # and back after the decode
        assert [entry.get("result") for entry in store.status.values()] == ["compiled"], store.status
        wrapper.frozen = True
        with torch.inference_mode():  # the next job: new inference-tensor storage, rebound
            module.to(torch.float32)
            again = module(x)
        wrapper.uninstall()
        with torch.inference_mode():
            eager = module(x)
        assert torch.allclose(out, eager, atol=1e-5) and torch.allclose(again, eager, atol=1e-5)
        assert wrapper.eager_calls == 0
    finally:
        wrapper.uninstall()


def test_compiling_a_package_leaves_later_compiles_cache_keys_alone(tmp_path):
    """AOTInductor wrote the package's device facts into the global config's metadata, which
    every later torch.compile hashes into its cache key: a priming boot's fallback compiles
    (a module export refused) were keyed apart from every later boot's, which load packages
    and compile none, so the first warm boot compiled them again (15.6 s on the H200)."""
    import torch

    store = _compiled_linear(tmp_path)
    assert [entry.get("result") for entry in store.status.values()] == ["compiled"], store.status
    assert torch._inductor.config.aot_inductor.metadata == {}
    package = torch._inductor.aoti_load_package(str(next(tmp_path.glob("*.pt2"))))
    assert package.get_metadata()["AOTI_DEVICE_KEY"] == "cpu"  # the package still has its own


def test_another_model_under_the_same_key_gets_its_own_package_not_the_first_ones(tmp_path):
    """A local model directory's key holds its name, not its contents: a model changed in place
    (another width, the same tensor names and inputs) got the first model's package, bound to
    its own tensors, read at the first one's shapes: no error, wrong images (max |aot - eager|
    0.49 here, a FLUX with one more block 16 levels off). Each model's tensors are in the key."""
    import torch

    from runtime.aot import AotModule, AotStore

    def model(width: int) -> Any:
        torch.manual_seed(width)
        return torch.nn.Sequential(torch.nn.Linear(8, width, bias=False), torch.nn.GELU(),
                                   torch.nn.Linear(width, 8, bias=False)).eval()

    x = torch.randn(4, 8)
    results = []
    for width in (16, 32):
        module = model(width)
        store = AotStore(tmp_path, "a local model's key")
        wrapper = AotModule(module, "transformer", store, "cpu", fallback=lambda: "eager")
        try:
            with torch.inference_mode():
                served, eager = module(x), wrapper.eager(x)
        finally:
            wrapper.uninstall()
        results.append([entry.get("result") for entry in store.status.values()])
        torch.testing.assert_close(served, eager, rtol=1e-4, atol=1e-5)
    assert results == [["compiled"], ["compiled"]]
    assert len(list(tmp_path.glob("*.pt2"))) == 2


def _compiled_linear(volume: Path) -> Any:
    """One small package compiled into ``volume`` in this process; returns its store."""
    import torch

    from runtime.aot import AotModule, AotStore

    module = torch.nn.Linear(4, 3)
    store = AotStore(volume, "k")
    wrapper = AotModule(module, "linear", store, "cpu", fallback=lambda: "eager")
    try:
        with torch.no_grad():
            module(torch.randn(2, 4))
    finally:
        wrapper.uninstall()
    return store


# ---- the CPU's vector-ISA probes that loading any package runs first ---------------------------------
PROBE_CHILD = """
import json, sys
from pathlib import Path
from torch._inductor import cpu_vec_isa
from runtime.isa_probes import remember_probes
memo = remember_probes(Path(sys.argv[1]))
print(json.dumps({"isa": str(cpu_vec_isa.pick_vec_isa()), "asked": memo.asked}))
"""


def _probe_in_a_new_process(memo: Path) -> dict[str, Any]:
    """What a fresh boot does first when it loads a package: pick the CPU's vector ISA."""
    done = subprocess.run([sys.executable, "-c", PROBE_CHILD, str(memo)], cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cpu_probes_a_boot_ran_are_not_run_again_by_the_next(tmp_path):
    """Inductor probes the CPU in child processes in every new process before loading a package
    (ten on this CPU; each imported torch before torch 2.13: 33 s of the H200's warm boot). The
    answers are on the volume after the first boot; the next asks none and picks the same ISA;
    a torn memo is probed again and rewritten, never an error."""
    memo = tmp_path / "key.isa.json"
    first = _probe_in_a_new_process(memo)
    assert first["asked"] > 0 and memo.is_file()
    second = _probe_in_a_new_process(memo)
    assert second == {"isa": first["isa"], "asked": 0}
    memo.write_text('["half a key')
    third = _probe_in_a_new_process(memo)
    assert third == first
    assert _probe_in_a_new_process(memo) == second


def test_a_package_is_written_whole_or_not_at_all(tmp_path):
    """Workers sharing a volume: a reader sees the old file or the new one, never a torn one."""
    from runtime.aot import AotStore

    store = AotStore(tmp_path / "compile", "k")
    local = tmp_path / "package.pt2"
    local.write_bytes(b"x" * 1000)
    final = store.path("transformer", "abc")
    store.put(local, final)
    assert final.read_bytes() == b"x" * 1000
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no temporary left behind
    json.dumps(store.status)  # the status is boot-record material


# ---- quantized weights (torchao tensor subclasses) ------------------------------------------------
def test_quantized_weights_are_bound_to_the_package(built_tiny_repo, tmp_path):
    """torchao's weights are tensor subclasses: a package holds their plain inner tensors, which
    the runner must find inside the module's quantized parameters (int8 here; fp8 on a GPU)."""
    loaded, settings = _loaded(built_tiny_repo("visgate/tiny-flux"), VISGATE_COMPILE="aot",
                               VISGATE_QUANTIZE="int8-weight")
    report, store = _tuned_and_warmed(loaded, settings, tmp_path)
    assert "int8-weight" in report.applied["quantize"]
    try:
        assert {entry.get("result") for entry in store.status.values()} == {"compiled"}, store.status
        # the package reads the quantized parts, not a dequantized copy of the weights
        assert any(".parametrizations." in name for name in quantized_constants(report)), \
            quantized_constants(report)[:5]
        served = loaded.family.generate(loaded.pipe, _request())
    finally:
        for wrapper in report.aot_modules:
            wrapper.uninstall()
    eager = loaded.family.generate(loaded.pipe, _request())  # the same int8 weights, eagerly
    assert np.abs(served.astype(int) - eager.astype(int)).max() <= MAX_PIXEL_DIFF
    assert psnr(served, eager) >= MIN_PSNR_DB


def quantized_constants(report) -> list[str]:
    """The constants the denoiser's packages were bound to."""
    return [name for wrapper in report.aot_modules if wrapper.name in ("transformer", "unet")
            for runner in wrapper.runners.values() for name in runner.names]


def test_a_package_that_failed_is_removed_so_the_next_boot_compiles_it(tmp_path):
    """A package that does not load, or loads but fails at its first run, would fail every boot
    the same way: it is removed, and only that signature's."""
    import torch

    from runtime.aot import AotModule, AotStore

    store = AotStore(tmp_path, "k")
    wrapper = AotModule(torch.nn.Linear(2, 2), "linear", store, "cpu", fallback=lambda: "eager")
    for sig in ("bad", "other"):
        store.path("linear", sig).write_bytes(b"package")
        store.status[f"linear-{sig}"] = {"result": "hit"}
    wrapper._discard("bad")
    assert not store.path("linear", "bad").exists() and store.path("linear", "other").exists()
    assert set(store.status) == {"linear-other"}
    wrapper._discard("never-compiled")  # an export that failed: nothing on the volume, no error
    # Out of memory, as the allocator says it or as a package run reports it (a RuntimeError),
    # or a GPU that failed: this worker's trouble, not the shared package's, which stays for
    # the others.
    for ours in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                 RuntimeError("run_func_(...) API call failed: CUDA error: out of memory"),
                 RuntimeError("CUDA error: an illegal memory access was encountered")):
        wrapper._discard("other", ours)
        assert store.path("linear", "other").exists()
    wrapper.uninstall()


def test_a_volume_that_takes_no_package_still_serves_it_compiled(tmp_path):
    """A read-only or full volume, or a file where the folder should be: the package compiled
    for minutes is run from a local copy (it used to be thrown away, and the module fell back
    to eager through a second error raised while discarding it)."""
    import torch

    from runtime.aot import AotModule, AotStore

    (tmp_path / "compile").write_text("not a folder")  # every write under it fails
    store = AotStore(tmp_path / "compile" / "aot", "k")
    module = torch.nn.Linear(4, 3)
    fell_back = []
    wrapper = AotModule(module, "linear", store, "cpu", fallback=lambda: fell_back.append(1) or "eager")
    x = torch.randn(2, 4)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, module.weight, module.bias)
        out = module(x)
    try:
        assert fell_back == [] and torch.allclose(out, expected, atol=1e-5)
        (entry,) = store.status.values()
        assert entry["result"] == "compiled" and entry["volume"].startswith("not written"), entry
        assert len(wrapper.runners) == 1
        # the volume entry is still unusable, so discarding it must not raise either
        wrapper._discard(next(iter(wrapper.runners)))
    finally:
        wrapper.uninstall()


def test_the_local_copy_of_a_package_is_removed_when_the_process_ends(tmp_path):
    """The local copy a full or read-only volume leaves the boot running lives as long as the
    process, not longer: each boot on a long-lived host used to leave one behind for good."""
    import os
    import subprocess
    import sys

    local_tmp = tmp_path / "tmp"
    local_tmp.mkdir()
    script = (
        "import torch\n"
        "from pathlib import Path\n"
        "from runtime.aot import AotModule, AotStore\n"
        f"blocked = Path({str(tmp_path / 'compile')!r}); blocked.write_text('not a folder')\n"
        "store = AotStore(blocked / 'aot', 'k')\n"
        "module = torch.nn.Linear(4, 3)\n"
        "wrapper = AotModule(module, 'linear', store, 'cpu', fallback=lambda: 'eager')\n"
        "with torch.no_grad():\n"
        "    module(torch.randn(2, 4))\n"
        "(entry,) = store.status.values()\n"
        "assert entry['result'] == 'compiled' and entry['volume'].startswith('not written'), entry\n"
        "import tempfile\n"
        "print('LIVE', len(list(Path(tempfile.gettempdir()).glob('visgate-aot-*'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2],
                          env={**os.environ, "TMPDIR": str(local_tmp)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LIVE 1" in done.stdout, done.stdout  # the copy served while the process lived
    assert list(local_tmp.glob("visgate-aot-*")) == []


def test_a_full_container_disk_leaves_the_shared_package_on_the_volume(tmp_path):
    """A package is extracted, and compiled when it will not load, into the container's own
    temporary directory. With that full, both failed, and the failure removed the package from
    the volume as if it were broken: every worker sharing the volume then compiled it again."""
    import os
    import sys

    import torch

    from runtime.aot import AotModule, AotStore
    from tests.support.small_disk import require_small_disk, run_on_small_disk

    require_small_disk()
    volume = tmp_path / "compile"
    script = (
        "import json, sys, torch\n"
        "from runtime.aot import AotModule, AotStore\n"
        "store = AotStore(__import__('pathlib').Path(sys.argv[1]), 'k')\n"
        "module = torch.nn.Linear(4, 3)\n"
        "AotModule(module, 'linear', store, 'cpu', fallback=lambda: 'eager')\n"
        "x = torch.randn(2, 4)\n"
        "with torch.no_grad():\n"
        "    assert torch.allclose(module(x), torch.nn.functional.linear(x, module.weight, module.bias))\n"
        "print(json.dumps(store.status))\n")
    _compiled_linear(volume)
    [package] = volume.glob("*.pt2")
    sound = package.read_bytes()

    disk = tmp_path / "small-tmp"
    child = run_on_small_disk(disk, "size=256k", [sys.executable, "-c", script, str(volume)],
                              env={**os.environ, "TMPDIR": str(disk),
                                   "TORCHINDUCTOR_CACHE_DIR": str(disk / "inductor")}, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    status = json.loads(child.stdout.splitlines()[-1])
    assert "No space left on device" in status["linear-fallback"]["reason"], status  # served eagerly
    assert package.read_bytes() == sound  # kept for the workers whose disk has room

    again = AotStore(volume, "k")
    wrapper = AotModule(torch.nn.Linear(4, 3), "linear", again, "cpu", fallback=lambda: "eager")
    try:
        with torch.no_grad():
            wrapper.module(torch.randn(2, 4))
    finally:
        wrapper.uninstall()
    assert [entry["result"] for entry in again.status.values()] == ["hit"]
