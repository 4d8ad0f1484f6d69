"""The optimize stage on CPU: each option's report, compiled vs eager agreement, unseen shapes,
and the compile cache across fresh processes (hit, corrupt archive -> recompile).

torch.compile works on CPU, so everything here is the real thing, only slower than on a GPU.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

# Compiled and eager CPU float32 kernels differ only in summation order: pixels may move by a
# rounding step, never more. PSNR above 40 dB is "the same image" for 8-bit output.
MAX_PIXEL_DIFF = 2
MIN_PSNR_DB = 40.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _loaded(model_dir: Path, **env: str) -> tuple[Any, Any]:
    from runtime.load import load
    from runtime.settings import Settings

    settings = Settings.from_env({"HF_MODEL_ID": str(model_dir), "DEVICE": "cpu", **env})
    return load(settings, model_dir), settings


def _request(height: int = 256, width: int = 256, seed: int = 5, steps: int = 2) -> Any:
    from pipelines.base import GenerationRequest

    return GenerationRequest(prompt="a lighthouse at dusk", steps=steps, guidance=0.0,
                             height=height, width=width, seed=seed)


# ---- each option reports applied or skipped, and the image still comes out ------------------------
@pytest.mark.parametrize("model, env, applied, skipped", [
    ("visgate/tiny-flux", {}, {"precision": "fp32", "fuse_qkv": "QKV fused"},
     {"quantize": "VISGATE_QUANTIZE=none", "attention": "auto on CPU", "channels_last": "only pays on a GPU",
      "compile": "VISGATE_COMPILE=off"}),
    ("visgate/tiny-flux", {"VISGATE_QUANTIZE": "fp8"}, {}, {"quantize": "fp8 needs a CUDA GPU"}),
    ("visgate/tiny-flux", {"VISGATE_QUANTIZE": "fp8-weight"}, {}, {"quantize": "fp8 needs a CUDA GPU"}),
    ("visgate/tiny-flux", {"VISGATE_QUANTIZE": "int8-weight"},
     {"quantize": "int8-weight (torchao) on linear layers of transformer; lossy"}, {}),
    ("visgate/tiny-flux", {"VISGATE_ATTENTION": "flash3"}, {}, {"attention": "flash3 unavailable"}),
    ("visgate/tiny-flux", {"VISGATE_ATTENTION": "sdpa"}, {"attention": "sdpa"}, {}),
    # accepted by diffusers, but no cuDNN attention on a CPU: it failed the boot at warmup
    ("visgate/tiny-flux", {"VISGATE_ATTENTION": "cudnn"}, {}, {"attention": "cudnn cannot run here"}),
    ("visgate/tiny-sdxl", {"VISGATE_ATTENTION": "flash"}, {"fuse_qkv": "UNet2DConditionModel QKV fused"},
     {"attention": "not dispatchable for UNet2DConditionModel"}),
    ("visgate/tiny-sdxl", {"VISGATE_PRECISION": "bf16"}, {"precision": "bf16"}, {}),
    # the UNet's xformers path is its attention processors (no xformers on this machine)
    ("visgate/tiny-sdxl", {"VISGATE_ATTENTION": "xformers"}, {}, {"attention": "xformers unavailable"}),
])
def test_each_option_reports_applied_or_skipped(built_tiny_repo, model, env, applied, skipped, caplog):
    from runtime.optimize import optimize

    loaded, settings = _loaded(built_tiny_repo(model), **env)
    with caplog.at_level(logging.INFO, logger="runtime.optimize"):
        report = optimize(loaded, settings)
    # an option the user set and does not get is a warning; a default skipped is information
    for record in caplog.records:
        if "skipped" in record.getMessage():
            step = record.args[0]
            asked = {"attention": "VISGATE_ATTENTION", "quantize": "VISGATE_QUANTIZE"}.get(step) in env
            assert record.levelno == (logging.WARNING if asked else logging.INFO), record.getMessage()
    for name, detail in applied.items():
        assert name in report.applied and detail in report.applied[name], report.as_dict()
    for name, reason in skipped.items():
        assert name in report.skipped and reason in report.skipped[name], report.as_dict()
    assert set(report.applied) | set(report.skipped) == set(report.seconds)
    _check_the_model_itself(loaded, report)
    image = loaded.family.generate(loaded.pipe, _request(seed=1, steps=1))
    assert image.shape == (256, 256, 3) and image.std() > 1.0


@pytest.fixture(scope="module")
def tiny_if(built_tiny_repo, tmp_path_factory) -> Path:
    """A DeepFloyd IF-shaped pipeline (served by the generic family): a pixel-space UNet whose
    attention is IF's SimpleCrossAttn blocks, with added KV projections (AttnAddedKVProcessor,
    as in Kandinsky 2.x's UNets too), no BasicTransformerBlock (the UNet's declared repeated
    block) and no VAE at all."""
    import torch
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, T5EncoderModel

    flux = built_tiny_repo("visgate/tiny-flux")  # its tiny T5 serves as IF's text encoder
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        # attention only at the lowest of four levels: 32x32 tokens for a 256x256 image
        sample_size=64, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16, 16, 32),
        down_block_types=("ResnetDownsampleBlock2D",) * 3 + ("SimpleCrossAttnDownBlock2D",),
        up_block_types=("SimpleCrossAttnUpBlock2D",) + ("ResnetUpsampleBlock2D",) * 3,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=8, cross_attention_dim=32,
        encoder_hid_dim=32, encoder_hid_dim_type="text_proj", addition_embed_type="text",
        addition_embed_type_num_heads=4, resnet_time_scale_shift="scale_shift", act_fn="gelu",
        norm_num_groups=8)
    dest = tmp_path_factory.mktemp("tiny-if") / "if"
    IFPipeline(tokenizer=AutoTokenizer.from_pretrained(flux / "tokenizer_2"),
               text_encoder=T5EncoderModel.from_pretrained(flux / "text_encoder_2"), unet=unet,
               scheduler=DDPMScheduler(variance_type="learned_range", beta_schedule="squaredcos_cap_v2"),
               safety_checker=None, feature_extractor=None, watermarker=None,
               requires_safety_checker=False).save_pretrained(dest, safe_serialization=True)
    return dest


def test_fuse_qkv_skips_a_unet_with_added_kv_projections(tiny_if):
    # diffusers raises ValueError for these: it failed every DeepFloyd IF / Kandinsky 2.x boot.
    from runtime.optimize import optimize

    loaded, settings = _loaded(tiny_if)
    assert (loaded.family.name, loaded.family.denoiser_attr) == ("generic", "unet")
    processors = {name: type(p) for name, p in loaded.pipe.unet.attn_processors.items()}
    report = optimize(loaded, settings)
    assert "added KV projections (AttnAddedKVProcessor2_0)" in report.skipped["fuse_qkv"], report.as_dict()
    # left as it was: no projection fused, no processor swapped
    assert {name: type(p) for name, p in loaded.pipe.unet.attn_processors.items()} == processors
    assert not any(getattr(m, "fused_projections", False) for m in loaded.pipe.unet.modules())
    image = loaded.family.generate(loaded.pipe, _request(seed=1, steps=1))
    assert image.shape == (256, 256, 3) and image.std() > 1.0


def _as_if_on_a_gpu(loaded: Any) -> Any:
    """The same pipeline (still on the CPU), as the optimize stage sees one served on a GPU: for
    steps that only decide by ``on_cuda`` and then work on the modules wherever they are."""
    from runtime.load import Loaded

    return Loaded(family=loaded.family, pipe=loaded.pipe, precision=loaded.precision, device="cuda")


def _channels_last_step(loaded: Any, settings: Any) -> str:
    from runtime.optimize import Context, OptimizationReport, channels_last

    return channels_last(Context(loaded=_as_if_on_a_gpu(loaded), settings=settings,
                                 report=OptimizationReport()))


def _convs_in_channels_last(module: Any) -> list[bool]:
    import torch

    return [m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
            for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]


def test_channels_last_without_a_vae_converts_the_unet_only(tiny_if):
    # DeepFloyd IF has no VAE: the step raised AttributeError on pipe.vae and failed the boot.
    loaded, settings = _loaded(tiny_if)
    assert getattr(loaded.pipe, "vae", None) is None
    assert _channels_last_step(loaded, settings) == "unet (no vae)"
    assert all(_convs_in_channels_last(loaded.pipe.unet))
    image = loaded.family.generate(loaded.pipe, _request(seed=1, steps=1))
    assert image.shape == (256, 256, 3) and image.std() > 1.0


@pytest.mark.parametrize("model, expected", [
    ("visgate/tiny-flux", None),  # nothing else to convert: the step is skipped
    ("visgate/tiny-sdxl", "unet (vae has 5-D (Conv3d) weights)"),
])
def test_channels_last_leaves_a_video_style_vae_alone(built_tiny_repo, model, expected):
    # channels_last exists for 4-D tensors only: a VAE with Conv3d weights (Wan's, Qwen-Image's)
    # made module.to(memory_format=torch.channels_last) raise, and the boot fail.
    import torch
    from diffusers import AutoencoderKLWan

    from runtime.optimize import Skip

    loaded, settings = _loaded(built_tiny_repo(model))
    torch.manual_seed(0)
    loaded.pipe.vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                       temperal_downsample=[False, True, True])
    assert any(p.dim() == 5 for p in loaded.pipe.vae.parameters())
    if expected is None:
        with pytest.raises(Skip, match=r"nothing to convert \(vae has 5-D \(Conv3d\) weights\)"):
            _channels_last_step(loaded, settings)
    else:
        assert _channels_last_step(loaded, settings) == expected
        assert all(_convs_in_channels_last(loaded.pipe.unet))
    assert all(p.is_contiguous() for p in loaded.pipe.vae.parameters())  # not half converted


def test_regional_compile_of_a_unet_without_its_repeated_blocks_compiles_it_whole(tiny_if):
    # UNet2DConditionModel declares BasicTransformerBlock as its repeated block; IF's UNet (and
    # Kandinsky 2.x's) has none, and diffusers' compile_repeated_blocks raised ValueError. IF has
    # no VAE decoder to compile either (AttributeError on pipe.vae).
    import torch
    from torch._dynamo.utils import counters

    from runtime.optimize import optimize

    loaded, settings = _loaded(tiny_if, VISGATE_COMPILE="regional")
    eager = loaded.family.generate(loaded.pipe, _request(seed=1, steps=1))
    report = optimize(loaded, settings)
    assert report.applied["compile"] == (
        "UNet2DConditionModel whole (no regional compile: none of its repeated blocks "
        "['BasicTransformerBlock'] is in it); no VAE decoder"), report.as_dict()
    before = sum(v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache_"))
    try:
        compiled = loaded.family.generate(loaded.pipe, _request(seed=1, steps=1))
        # the whole UNet really ran compiled (the first call compiles it)
        assert sum(v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache_")) > before
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()
    assert np.abs(compiled.astype(int) - eager.astype(int)).max() <= MAX_PIXEL_DIFF


def test_auto_attention_picks_flash3_only_when_diffusers_would_run_it(built_tiny_repo, tmp_path,
                                                                       monkeypatch):
    # A flash_attn_interface that imports but is not the "flash_attn_3" distribution diffusers
    # checks for: auto took it for FA3 on a Hopper GPU, and diffusers then refused the backend.
    # The module here is such a module; the GPU's capability is the one fact set by hand.
    import torch
    from diffusers.models import attention_dispatch

    from runtime.optimize import Context, OptimizationReport, _flash3_available, attention

    (tmp_path / "flash_attn_interface.py").write_text(
        "def flash_attn_func(*args, **kwargs):\n    raise RuntimeError('not FA3')\n\n"
        "flash_attn_varlen_func = flash_attn_func\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn_interface", raising=False)
    __import__("flash_attn_interface")  # importable ...
    assert not attention_dispatch._CAN_USE_FLASH_ATTN_3  # ... and refused by diffusers
    assert _flash3_available() is False

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    loaded, settings = _loaded(built_tiny_repo("visgate/tiny-flux"))
    ctx = Context(loaded=_as_if_on_a_gpu(loaded), settings=settings, report=OptimizationReport())
    assert attention(ctx).startswith("sdpa")  # applied, not "flash3 unavailable"


def _check_the_model_itself(loaded, report) -> None:
    """What an "applied" report claims, checked on the modules, not on its wording."""
    import torch

    denoiser = getattr(loaded.pipe, loaded.family.denoiser_attr)
    if "fuse_qkv" in report.applied:
        attentions = [m for m in denoiser.modules() if hasattr(m, "fuse_projections")]
        assert attentions and all(getattr(m, "fused_projections", False) for m in attentions)
    linears = [m for m in denoiser.modules() if isinstance(m, torch.nn.Linear)]
    plain = [m for m in linears if type(m.weight) in (torch.nn.Parameter, torch.Tensor)]
    if "quantize" in report.applied:  # every linear layer's weight is a torchao tensor now
        assert linears and not plain, [type(m.weight).__name__ for m in plain][:3]
    else:
        assert len(plain) == len(linears)


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((7, 0), "fp16"),
                                                    ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_is_bf16_only_where_the_gpu_runs_it_natively(built_tiny_repo, monkeypatch,
                                                                     capability, expected):
    # torch.cuda.is_bf16_supported() says True on a T4 (7.5) or V100 (7.0), which emulate bf16
    # slowly: the serving device's compute capability decides. Both are GPU facts a CPU cannot
    # have, so they are set here as such a GPU reports them.
    import torch

    from pipelines.registry import detect_family
    from runtime.load import choose_precision

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: asked.append(device) or capability)
    family = detect_family(built_tiny_repo("visgate/tiny-flux"))
    assert choose_precision("auto", family, "cuda:1") == expected
    assert asked == ["cuda:1"]  # the serving device's, not the current one's
    assert choose_precision("bf16", family, "cuda:1") == "bf16"  # an explicit setting is kept
    assert choose_precision("auto", family, "cpu") == "fp32"


def test_weight_only_modes_quantize_large_text_encoders_too(built_tiny_repo, monkeypatch):
    # T5-XXL (4.7 B parameters) is quantized beside the transformer so FLUX.1-dev fits 24 GB; the
    # tiny T5 is far below the threshold, so lower it here.
    import torch

    from runtime import optimize as optimize_module

    monkeypatch.setattr(optimize_module, "LARGE_ENCODER_PARAMS", 1000)
    loaded, settings = _loaded(built_tiny_repo("visgate/tiny-flux"), VISGATE_QUANTIZE="int8-weight")
    report = optimize_module.optimize(loaded, settings)
    assert "text_encoder_2" in report.applied["quantize"], report.as_dict()
    t5_linears = [m for m in loaded.pipe.text_encoder_2.modules() if isinstance(m, torch.nn.Linear)]
    assert t5_linears and all(type(m.weight) is not torch.nn.Parameter for m in t5_linears)
    image = loaded.family.generate(loaded.pipe, _request(seed=1, steps=1))
    assert image.shape == (256, 256, 3) and image.std() > 1.0


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_fp8_on_weights_that_are_not_bf16_is_skipped_naming_the_setting(built_tiny_repo, monkeypatch,
                                                                          precision):
    # torchao's row-wise fp8 asserts bf16 weights: SDXL (fp16 by its auto precision) failed its
    # boot. The check comes after the GPU ones, so this pipeline (on the CPU) is presented as
    # served on a Hopper GPU: the capability is the one fact a CPU cannot have.
    import torch

    from runtime.load import Loaded
    from runtime.optimize import Context, OptimizationReport, Skip, quantize

    cpu_loaded, settings = _loaded(built_tiny_repo("visgate/tiny-sdxl"), VISGATE_QUANTIZE="fp8",
                                   VISGATE_PRECISION=precision)
    assert cpu_loaded.pipe.unet.dtype == getattr(torch, {"fp16": "float16", "fp32": "float32"}[precision])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    loaded = Loaded(family=cpu_loaded.family, pipe=cpu_loaded.pipe, precision=precision, device="cuda")
    with pytest.raises(Skip, match=f"needs bf16 weights, not {precision}: set VISGATE_PRECISION=bf16"):
        quantize(Context(loaded=loaded, settings=settings, report=OptimizationReport()))
    linears = [m for m in loaded.pipe.unet.modules() if isinstance(m, torch.nn.Linear)]
    assert all(type(m.weight) is torch.nn.Parameter for m in linears)  # left as they were


def test_int8_weights_keep_a_bf16_layer_accurate():
    # What a GPU serves: bf16 weights of FLUX's scale (std 0.02). torchao 0.15 (the image's)
    # loses 11% of this output with its int8 version 2 and 0.9% with its default, version 1;
    # bench and GPU runs use bf16, while the CPU suite's pipelines are fp32, where both are fine.
    # scripts/test_image_torch.sh runs this on the image's torchao.
    import torch
    from torchao.quantization import quantize_

    from runtime.optimize import quantization_config

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3072, 3072, bias=False)).to(torch.bfloat16)
    torch.nn.init.normal_(model[0].weight, std=0.02)
    x = torch.randn(64, 3072, dtype=torch.bfloat16)
    with torch.no_grad():
        reference = model(x).float()
        quantize_(model, quantization_config("int8-weight"))
        assert type(model[0].weight) is not torch.nn.Parameter  # quantized, not left alone
        error = ((model(x).float() - reference).norm() / reference.norm()).item()
    assert error < 0.03, f"int8 weight-only loses {error:.1%} of a bf16 layer's output"


@pytest.mark.parametrize("name, value", [("VISGATE_COMPILE", "fast"), ("VISGATE_QUANTIZE", "int4"),
                                         ("VISGATE_PRECISION", "fp8"), ("VISGATE_ATTENTION", "sage")])
def test_invalid_option_fails_boot_before_loading(name, value, tmp_path):
    from warmup.local_worker import worker_env

    env = worker_env({"HF_MODEL_ID": "visgate/tiny-flux", "VISGATE_CACHE_DIR": str(tmp_path), name: value})
    proc = subprocess.run([sys.executable, "-m", "runtime", "--test_input", '{"input": {"prompt": "x"}}'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{name}={value!r} is not valid: use one of" in log
    assert "loading visgate/tiny-flux" not in log  # nothing was loaded
    assert not (tmp_path / "builtin").exists()  # nothing was fetched either


# ---- compiled code: agreement with eager, and unseen shapes -----------------------------------------
@pytest.fixture
def compiled_tiny_flux(built_tiny_repo, tmp_path, monkeypatch):
    """A tiny Flux compiled regionally and warmed at 256x256 in this process (cache in tmp)."""
    import torch

    from runtime import compile_cache
    from runtime.optimize import optimize, serve_stance
    from runtime.warmup import warmup

    loaded, settings = _loaded(built_tiny_repo("visgate/tiny-flux"), VISGATE_COMPILE="regional",
                               VISGATE_CACHE_DIR=str(tmp_path))
    cache = compile_cache.CompileCache(tmp_path / "compile", {"test": "compiled_tiny_flux"},
                                       local_root=tmp_path / "local")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cache.activate()
    report = optimize(loaded, settings)
    assert "compile" in report.applied
    graphs = compile_cache.inductor_cache_counters
    before = sum(v for k, v in graphs().items() if k.startswith("fxgraph_cache_"))
    warmup(loaded.family, loaded.pipe, [(256, 256)])
    # warmup really ran compiled graphs (else "compiled" output would trivially equal eager)
    assert sum(v for k, v in graphs().items() if k.startswith("fxgraph_cache_")) > before
    serve_stance(report)
    try:
        yield loaded
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()


def test_compiled_output_agrees_with_eager(compiled_tiny_flux):
    import torch

    loaded = compiled_tiny_flux
    compiled = loaded.family.generate(loaded.pipe, _request())
    with torch.compiler.set_stance("force_eager"):
        eager = loaded.family.generate(loaded.pipe, _request())
    diff = np.abs(compiled.astype(int) - eager.astype(int)).max()
    assert diff <= MAX_PIXEL_DIFF, f"max pixel difference {diff}"
    assert psnr(compiled, eager) >= MIN_PSNR_DB


def test_an_unwarmed_shape_is_served_eagerly_without_recompiling(compiled_tiny_flux):
    import torch
    from torch._dynamo.utils import counters

    loaded = compiled_tiny_flux

    def compiles() -> int:
        inductor = counters["inductor"]
        return inductor["fxgraph_cache_miss"] + inductor["fxgraph_cache_hit"] + inductor["fxgraph_cache_bypass"]

    before = compiles()
    unwarmed = loaded.family.generate(loaded.pipe, _request(height=256, width=320))
    assert compiles() == before, "a new shape triggered a compile after warmup"
    with torch.compiler.set_stance("force_eager"):
        eager = loaded.family.generate(loaded.pipe, _request(height=256, width=320))
    assert unwarmed.shape == (256, 320, 3)
    assert np.array_equal(unwarmed, eager)  # it really ran the eager code
    # ... and the warmed shape still runs compiled code (and agrees).
    again = loaded.family.generate(loaded.pipe, _request())
    assert compiles() == before and again.shape == (256, 256, 3)


def test_a_block_run_at_several_sizes_per_image_stays_compiled_at_every_warmed_shape():
    """An SD 1.x/2.x UNet runs one transformer block class at three resolutions per image: three
    graphs per warmed shape for one compiled function. The recompile limit allowed two per shape:
    warmed at three shapes, the fullgraph compile hit it (FailOnRecompileLimitHit), the compiled
    warmup failed and the worker served eagerly on every boot (tiny blocks here: the mechanism)."""
    import torch

    from runtime.optimize import OptimizationReport, configure_dynamo, serve_stance

    class Block(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.proj(x).relu()

    levels = [Block(width) for width in (8, 16, 32)]  # one class, three sizes, as in the UNet
    for block in levels:
        block.compile(fullgraph=True)

    def image(side: int) -> None:  # one denoising step: each level at its own resolution
        for level, block in enumerate(levels):
            block(torch.randn(2, (side >> level) ** 2, 8 << level))

    sides = [32, 40, 48]  # the default shape and two from VISGATE_WARMUP_SHAPES
    with torch._dynamo.config.patch(recompile_limit=8, automatic_dynamic_shapes=True), torch.no_grad():
        try:
            configure_dynamo(len(sides))
            for side in sides:  # warmup: two steps per shape
                image(side)
                image(side)
            serve_stance(OptimizationReport(applied={"compile": "Block"}))
            with torch.compiler.set_stance("fail_on_recompile"):  # raises where it would run eagerly
                for side in sides:
                    image(side)
        finally:
            torch.compiler.set_stance("default")
            torch._dynamo.reset()


# ---- the compile cache across fresh processes -----------------------------------------------------
def _boot_record(log: str) -> dict[str, Any]:
    lines = [line for line in log.splitlines() if "boot record {" in line]
    assert lines, log[-3000:]
    return json.loads(lines[-1].split("boot record ", 1)[1])


def _compiled_worker(start_worker, volume: Path, local: Path):
    local.mkdir(parents=True, exist_ok=True)
    # TMPDIR: a new container's empty local disk, so only the volume's archive carries over.
    return start_worker("visgate/tiny-flux", VISGATE_COMPILE="regional",
                        TMPDIR=str(local),
                        VISGATE_CACHE_DIR=str(volume))


def test_compile_cache_hit_in_a_fresh_process_and_recovery_from_corruption(
        start_worker, built_tiny_repo, tmp_path, png_tools):
    volume = tmp_path / "volume"
    shutil.copytree(built_tiny_repo("visgate/tiny-flux").parent, volume / "builtin")
    job = {"prompt": "a red fox in the snow", "seed": 11}  # the default 1024x1024: the warmed shape

    cold = _compiled_worker(start_worker, volume, tmp_path / "local-1")
    cold_status = _boot_record(cold.log_text())["stages"]["warmup"]["compile_cache"]
    reference = png_tools.decode_b64(cold.runsync(job)["output"]["image_base64"])
    cold.stop()
    assert cold_status["restored"] == "miss" and cold_status["saved_bytes"] > 0, cold_status
    archive = Path(cold_status["archive"])
    assert archive.is_file() and archive.parent == volume / "compile"

    warm = _compiled_worker(start_worker, volume, tmp_path / "local-2")
    warm_status = _boot_record(warm.log_text())["stages"]["warmup"]["compile_cache"]
    image = png_tools.decode_b64(warm.runsync(job)["output"]["image_base64"])
    warm.stop()
    assert warm_status["restored"] == "hit", warm_status
    assert warm_status["counters"].get("fxgraph_cache_hit", 0) > 0, warm_status
    assert not warm_status["counters"].get("fxgraph_cache_miss"), warm_status
    assert np.array_equal(image, reference)
    # the record says where compile time went: a hit still traces, but builds no code anew
    assert 0 < warm_status["compile_seconds"]["dynamo_total"] < cold_status["compile_seconds"]["dynamo_total"]

    # Corrupt the archive in place: the next boot warns, compiles again, serves the same image,
    # and leaves a valid archive behind.
    data = bytearray(archive.read_bytes())
    data[: len(data) // 2] = b"\0garbage" * (len(data) // 16)
    archive.write_bytes(bytes(data[: len(data) // 2]))
    broken = _compiled_worker(start_worker, volume, tmp_path / "local-3")
    log = broken.log_text()
    broken_status = _boot_record(log)["stages"]["warmup"]["compile_cache"]
    image = png_tools.decode_b64(broken.runsync(job)["output"]["image_base64"])
    broken.stop()
    assert broken_status["restored"] == "corrupt", broken_status
    assert re.search(r"compile cache .* unusable", log)
    assert broken_status["saved_bytes"] > 0
    assert np.array_equal(image, reference)
    with tarfile.open(archive) as tar:
        assert json.load(tar.extractfile("meta.json"))["key"] == archive.stem

    # Damage inside an intact tar (tar checksums cover headers only): the restore succeeds, the
    # compiled code fails. The archive used to stay, and every later boot served eagerly; now
    # the boot discards it, compiles from scratch, serves compiled and writes it anew.
    assert _damage_shared_libraries(archive) > 0
    damaged = _compiled_worker(start_worker, volume, tmp_path / "local-4")
    log = damaged.log_text()
    record = _boot_record(log)
    image = png_tools.decode_b64(damaged.runsync(job)["output"]["image_base64"])
    damaged.stop()
    status = record["stages"]["warmup"]["compile_cache"]
    assert status["restored"] == "discarded" and status["saved_bytes"] > 0, status
    assert "discarded it, compiling from scratch" in log
    assert "compile" in record["stages"]["optimize"]["applied"]  # still compiled, not eager
    diff = int(np.abs(image.astype(int) - reference.astype(int)).max())
    assert diff <= MAX_PIXEL_DIFF and psnr(image, reference) >= MIN_PSNR_DB, diff
    with tarfile.open(archive) as tar:
        assert all(tar.extractfile(m).read(5) != b"\x7fELF\0" for m in tar.getmembers() if m.name.endswith(".so"))


def test_a_worker_that_ends_up_eager_still_records_what_became_of_its_archive(
        start_worker, built_tiny_repo, tmp_path):
    """Compiled warmup failing for good (here the C++ compiler itself is broken): the worker
    serves eagerly, and the warmup stage's compile_cache entry still says what happened to the
    archive. It used to be left out, so the record said only "restored: hit" (the optimize
    stage's view), while the archive had been discarded: removed from the shared volume."""
    volume = tmp_path / "volume"
    shutil.copytree(built_tiny_repo("visgate/tiny-flux").parent, volume / "builtin")

    def boot(local: str) -> dict[str, Any]:
        (tmp_path / local).mkdir()
        worker = start_worker("visgate/tiny-flux", VISGATE_COMPILE="regional", TMPDIR=str(tmp_path / local),
                              VISGATE_CACHE_DIR=str(volume), CXX="/bin/false")
        record = _boot_record(worker.log_text())
        worker.stop()
        assert "compile" in record["stages"]["optimize"]["skipped"], record["stages"]["optimize"]
        return record["stages"]

    cold = boot("local-1")["warmup"]["compile_cache"]
    assert cold["restored"] == "miss" and "saved_bytes" not in cold, cold
    # An archive for this key, as another worker left it: restored, then its code fails.
    archive = Path(cold["archive"])
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:
        for name, data in {"meta.json": json.dumps({"key": archive.stem}).encode(), "mega-cache.bin": b""}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stages = boot("local-2")
    assert stages["optimize"]["compile_cache"]["restored"] == "hit"
    assert stages["warmup"]["compile_cache"]["restored"] == "discarded", stages["warmup"]
    assert not archive.exists()


def _damage_shared_libraries(archive: Path) -> int:
    """Rewrite ``archive`` with every compiled .so inside replaced by garbage; return how many."""
    entries = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            entries.append((member, tar.extractfile(member).read() if member.isfile() else None))
    damaged = 0
    with tarfile.open(archive, "w") as tar:
        for member, data in entries:
            if data is not None and member.name.endswith(".so"):
                data, damaged = b"\x7fELF\0" + bytes(100), damaged + 1
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return damaged


def test_a_baked_directory_with_only_fp16_files_loads_its_variant(built_tiny_repo, tmp_path):
    from runtime.fetch import fetch
    from runtime.load import load
    from runtime.settings import Settings

    baked = tmp_path / "baked-sdxl"
    shutil.copytree(built_tiny_repo("visgate/tiny-sdxl"), baked)
    for weights in baked.rglob("*.safetensors"):
        weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    settings = Settings.from_env({"HF_MODEL_ID": str(baked), "DEVICE": "cpu"})
    fetched = fetch(settings)
    assert fetched.source == "local" and fetched.variant == "fp16"
    loaded = load(settings, fetched.model_dir, variant=fetched.variant)
    image = loaded.family.generate(loaded.pipe, _request(seed=2, steps=1))
    assert image.shape == (256, 256, 3)


@pytest.mark.parametrize("model", ["visgate/tiny-flux", "visgate/tiny-sdxl"])
def test_weights_load_straight_onto_the_device_without_hooks(built_tiny_repo, model):
    # device_map=<device>: no staging copy in host memory; and no accelerate hook may wrap a
    # module (a hook per forward would cost every step and get in torch.compile's way).
    loaded, _ = _loaded(built_tiny_repo(model))
    assert loaded.pipe.hf_device_map == "cpu"
    hooked = [name for name, module in loaded.pipe.components.items() if hasattr(module, "_hf_hook")]
    assert hooked == []
    params = [p for m in loaded.pipe.components.values() if hasattr(m, "parameters") for p in m.parameters()]
    assert params and {p.device.type for p in params} == {"cpu"}


# ---- a compiled warmup that fails: serve eagerly, and say so -------------------------------------------
def test_a_compiled_warmup_failure_falls_back_to_eager_and_says_so():
    import torch
    from torch._dynamo.utils import counters

    from runtime.optimize import OptimizationReport, warm_with_fallback

    report = OptimizationReport(applied={"compile": "FluxTransformer2DModel repeated blocks"})
    calls = []

    def run() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("InductorError: C++ compile error\nlong detail")
        return "warm"

    try:
        assert warm_with_fallback(run, report) == "warm"
        assert len(calls) == 2
        assert "compile" not in report.applied
        assert report.skipped["compile"] == "failed at warmup (RuntimeError); serving eagerly"
        compiled = torch.compile(lambda x: x * 2 + 1)
        before = sum(counters["inductor"].values())
        assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 3.0))
        assert sum(counters["inductor"].values()) == before  # force_eager: nothing compiled
    finally:
        torch.compiler.set_stance("default")


@pytest.mark.parametrize("second_try_works", [True, False])
def test_a_failure_with_a_restored_cache_discards_it_and_compiles_once_more(second_try_works):
    from runtime.optimize import OptimizationReport, warm_with_fallback

    report = OptimizationReport(applied={"compile": "FluxTransformer2DModel repeated blocks"})
    calls, discarded = [], []

    def run() -> str:
        calls.append(1)
        if len(calls) == 1 or (len(calls) == 2 and not second_try_works):
            raise RuntimeError("InductorError: bad shared library")
        return "warm"

    try:
        assert warm_with_fallback(run, report, discard_restored=lambda: discarded.append(1) or True) == "warm"
        assert discarded == [1]
        if second_try_works:  # compiled from scratch: still compiled
            assert len(calls) == 2 and "compile" in report.applied
        else:  # then eager, as without a cache
            assert len(calls) == 3 and "compile" not in report.applied
    finally:
        import torch

        torch.compiler.set_stance("default")


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA error: an illegal memory access was encountered"),
                                   # inductor writing its code into a full container disk
                                   RuntimeError("InductorError: OSError: [Errno 28] No space left on device"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_a_device_failure_at_warmup_keeps_the_shared_compile_cache(error):
    """Out of memory, a poisoned GPU, a full local disk: this worker's trouble, not the archive
    other workers use."""
    from runtime.optimize import OptimizationReport, warm_with_fallback

    report = OptimizationReport(applied={"compile": "FluxTransformer2DModel repeated blocks"})
    calls, discarded = [], []

    def run() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return "warm"

    try:
        assert warm_with_fallback(run, report, discard_restored=lambda: discarded.append(1) or True) == "warm"
        assert discarded == [] and len(calls) == 2 and "compile" not in report.applied  # eager
    finally:
        import torch

        torch.compiler.set_stance("default")


def test_without_compile_a_warmup_failure_is_a_boot_failure():
    from runtime.optimize import OptimizationReport, warm_with_fallback

    def run() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        warm_with_fallback(run, OptimizationReport(skipped={"compile": "VISGATE_COMPILE=off"}))
