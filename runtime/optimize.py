"""Optimize stage: named optimizations, applied in a fixed order, each reporting what it did.

Order matters: fuse QKV first (fusion swaps attention processors and the fused matrix is then
quantized whole), quantize before compile (compile must trace the quantized kernels), memory
layout before compile (compiled graphs specialise on strides), compile last.

Each step returns a short "applied" detail or raises ``Skip(reason)``. A step that is valid but
unavailable here (no GPU feature, library not installed) is skipped with its reason and boot
goes on; invalid option *values* never get this far (settings rejects them before loading).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from runtime.errors import brief, is_fatal_device_error, is_no_space, is_out_of_memory
from runtime.load import Loaded
from runtime.settings import Settings

if TYPE_CHECKING:
    from runtime.aot import AotModule, AotStore

log = logging.getLogger(__name__)


class Skip(Exception):
    """An optimization that does not apply here; the message says why."""


@dataclass
class Context:
    loaded: Loaded
    settings: Settings
    report: "OptimizationReport"
    aot_store: "AotStore | None" = None

    @property
    def pipe(self) -> Any:
        return self.loaded.pipe

    @property
    def denoiser(self) -> Any:
        return getattr(self.pipe, self.loaded.family.denoiser_attr)

    @property
    def on_cuda(self) -> bool:
        return self.loaded.device.startswith("cuda")


@dataclass
class OptimizationReport:
    applied: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # VISGATE_COMPILE=aot: the wrappers to freeze after warmup (or remove, to serve eagerly).
    aot_modules: list["AotModule"] = field(default_factory=list)

    @property
    def compiled(self) -> bool:
        return "compile" in self.applied

    def as_dict(self) -> dict[str, Any]:
        # "step_seconds": the stage entry this lands in has its own "seconds" (the stage total).
        return {"applied": self.applied, "skipped": self.skipped, "step_seconds": self.seconds}


def _capability(ctx: Context) -> tuple[int, int]:
    import torch

    return torch.cuda.get_device_capability(ctx.loaded.device)


# ---- the steps ----------------------------------------------------------------------------------

def precision(ctx: Context) -> str:
    # Applied at load time (weights are loaded straight into the dtype); reported here.
    return ctx.loaded.precision


# Text encoders above this size are quantized too in weight-only modes (T5-XXL: 4.7 B), so
# FLUX.1-dev fits a 24 GB GPU: transformer 12 GB + T5 4.7 GB in int8, instead of 33 GB in bf16.
LARGE_ENCODER_PARAMS = 1_000_000_000


def quantize(ctx: Context) -> str:
    try:
        return _quantize(ctx)
    finally:
        # Staged in CPU memory for quantization (runtime/load.py): whatever happened, the
        # pipeline leaves this step on its serving device.
        if ctx.loaded.placed_on != ctx.loaded.device:
            ctx.pipe.to(ctx.loaded.device)
            ctx.loaded.placed_on = ctx.loaded.device


def _quantize(ctx: Context) -> str:
    mode = ctx.settings.quantize
    if mode == "none":
        raise Skip("VISGATE_QUANTIZE=none")
    if mode in ("fp8", "fp8-weight"):
        if not ctx.on_cuda:
            raise Skip("fp8 needs a CUDA GPU")
        if _capability(ctx) < (8, 9):
            raise Skip(f"fp8 needs compute capability 8.9 or higher (this GPU: "
                       f"{'.'.join(map(str, _capability(ctx)))})")
    if mode == "fp8" and ctx.loaded.precision != "bf16":
        # torchao's row-wise fp8 (PerRow) asserts bf16 weights: SDXL, fp16 by its auto
        # precision, failed its boot here.
        raise Skip(f"fp8 (row-wise scales) needs bf16 weights, not {ctx.loaded.precision}: "
                   "set VISGATE_PRECISION=bf16")
    quantize_ = _torchao().quantize_
    # device=: torchao moves each linear layer to the GPU just before quantizing it.
    quantize_(ctx.denoiser, quantization_config(mode), device=ctx.loaded.device)
    done = [ctx.loaded.family.denoiser_attr]
    if mode != "fp8":  # dynamic-activation fp8 only pays where the compute is: the denoiser
        for name, module in _large_encoders(ctx.pipe):
            quantize_(module, quantization_config(mode), device=ctx.loaded.device)
            done.append(name)
    return f"{mode} (torchao) on linear layers of {'+'.join(done)}; lossy"


def quantization_config(mode: str) -> Any:
    """torchao's config for a VISGATE_QUANTIZE mode (a fresh one per quantize_ call)."""
    ao = _torchao()
    if mode == "fp8":
        # Row-wise scales: the accuracy/speed point diffusers-torchao and flux-fast use.
        return ao.Float8DynamicActivationFloat8WeightConfig(granularity=ao.PerRow())
    if mode == "fp8-weight":
        return ao.Float8WeightOnlyConfig()
    if mode == "int8-weight":
        # Each torchao's own default version, never a pinned one: the image's 0.15 defaults to
        # version 1 (deprecated there, with a warning), whose bf16 weights keep their precision,
        # while its version 2 floors the scale at bf16's resolution and loses ~11% of a FLUX-like
        # layer's output; 0.18 has only version 2, fixed (tests/integration/test_optimize.py).
        return ao.Int8WeightOnlyConfig()
    raise ValueError(f"no quantization config for {mode!r}")


def _torchao() -> Any:
    """``torchao.quantization``, or a Skip: torchao is optional (the image installs it)."""
    try:
        import torchao.quantization
    except ImportError as exc:
        raise Skip(f"torchao is not installed ({exc.__class__.__name__})") from exc
    return torchao.quantization


def _large_encoders(pipe: Any) -> list[tuple[str, Any]]:
    found = []
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None and sum(p.numel() for p in module.parameters()) > LARGE_ENCODER_PARAMS:
            found.append((name, module))
    return found


def fuse_qkv(ctx: Context) -> str:
    # Before quantization, so the fused projection is quantized as one matrix (as flux-fast does).
    target = ctx.denoiser
    fuse = getattr(target, "fuse_qkv_projections", None)
    if fuse is None:
        raise Skip(f"{type(target).__name__} has no fused QKV projections")
    # diffusers refuses (ValueError) to fuse a model whose attention processors take added KV
    # projections (DeepFloyd IF's and Kandinsky 2.x's UNets: the text tokens are projected into
    # each attention's keys and values): that failed every boot of them, on a CPU too. Its own
    # test, by the processors' class names, so the model is left untouched.
    added = sorted({type(p).__name__ for p in getattr(target, "attn_processors", {}).values()
                    if "Added" in type(p).__name__})
    if added:
        raise Skip(f"{type(target).__name__} has added KV projections ({', '.join(added)}), "
                   "which diffusers cannot fuse")
    originals = dict(getattr(target, "attn_processors", {}))
    fuse()
    if ctx.loaded.family.denoiser_attr == "unet":
        from diffusers.models.attention_processor import FusedAttnProcessor2_0

        target.set_attn_processor(FusedAttnProcessor2_0())
    dropped = _dropped_by_fusion(target, originals)
    if dropped:
        _unfuse(target, originals)
        raise Skip(f"{type(target).__name__}: diffusers' fused processor {dropped}; left unfused")
    return f"{type(target).__name__} QKV fused"


# What an attention module may hold besides its projections: a normalization of queries and keys
# (SD3.5, FLUX, ...), which the processor must apply itself.
_QK_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


def _dropped_by_fusion(target: Any, originals: dict[str, Any]) -> str:
    """What the processors fusion swapped in cannot do for the modules they now serve, from
    what each one's code reads (empty: nothing). Older diffusers models fuse by setting one fused
    processor on every attention module, whatever it holds: SD3's FusedJointAttnProcessor2_0
    applies no qk norm (SD3.5's transformers have them: every image differed from the unfused
    model's) and reads the text's projections in every module (SD3.5 Medium's second,
    image-only attention has none: every generation failed, and with it the boot). Models
    whose own processors read their fused projections keep their processor class: not checked."""
    import inspect

    norms: set[str] = set()
    no_text: list[str] = []
    names: set[str] = set()
    for key, processor in getattr(target, "attn_processors", {}).items():
        if type(originals.get(key)) is type(processor):
            continue
        try:
            source = inspect.getsource(type(processor).__call__)
        except (OSError, TypeError):  # no source to read: trusted, as before this check
            continue
        module = target.get_submodule(key.rsplit(".", 1)[0])
        missing = {n for n in _QK_NORMS if getattr(module, n, None) is not None and n not in source}
        lacks_text = "to_added_qkv" in source and getattr(module, "to_added_qkv", None) is None
        if missing or lacks_text:
            names.add(type(processor).__name__)
            norms |= missing
            if lacks_text:
                no_text.append(key.rsplit(".", 1)[0])
    parts = []
    if norms:
        parts.append(f"leaves out the attention's qk norms ({', '.join(sorted(norms))}), so images "
                     "would differ")
    if no_text:
        parts.append(f"fails on attention without text projections ({len(no_text)} of them, "
                     f"such as {no_text[0]}): every generation would fail")
    return f"{'/'.join(sorted(names))} " + " and ".join(parts) if parts else ""


def _unfuse(target: Any, originals: dict[str, Any]) -> None:
    """Back to the processors the model had, without the fused copies of its projections (they
    would stay in memory, unused)."""
    import torch

    target.set_attn_processor(originals)
    for module in target.modules():
        for name in ("to_qkv", "to_kv", "to_added_qkv"):
            if isinstance(getattr(module, name, None), torch.nn.Module):
                delattr(module, name)
        if getattr(module, "fused_projections", False):
            module.fused_projections = False


_BACKENDS = {"sdpa": "native", "native": "native", "cudnn": "_native_cudnn", "flash": "flash",
             "flash3": "_flash_3", "xformers": "xformers"}


def _flash3_available() -> bool:
    """Whether diffusers itself will run its ``_flash_3`` backend: its own flag, not an import
    of ours. diffusers (0.42) wants a ``flash_attn_3`` distribution installed *and*
    ``flash_attn_interface`` importing; a ``flash_attn_interface`` alone (another distribution
    name, a copied module) imports fine, and ``auto`` then picked a backend diffusers refuses.
    Unknown (the private flag renamed): False, and ``auto`` keeps PyTorch SDPA."""
    try:
        from diffusers.models import attention_dispatch
    except ImportError:
        return False
    return bool(getattr(attention_dispatch, "_CAN_USE_FLASH_ATTN_3", False))


def attention(ctx: Context) -> str:
    choice = ctx.settings.attention
    target = ctx.denoiser
    dispatched, processors = _dispatched(target)
    if choice == "auto":
        if not ctx.on_cuda:
            raise Skip("auto on CPU: PyTorch SDPA as loaded")
        # FA3 is the fastest on Hopper when installed; else PyTorch SDPA (flash/cuDNN kernels).
        fa3 = _capability(ctx)[0] == 9 and _flash3_available() and dispatched > 0
        choice = "flash3" if fa3 else "sdpa"
    if choice in ("sdpa", "native"):
        return "sdpa (PyTorch picks flash/cuDNN/efficient kernels)"
    # A UNet's attention runs through attention processors, which diffusers' backend dispatch
    # does not reach (it has set_attention_backend, but it changes nothing there). So do the
    # transformers whose processors call PyTorch SDPA themselves (SD3, PixArt, Sana in diffusers
    # 0.42): set_attention_backend passed over every one of them, and the step said "applied".
    if (ctx.loaded.family.denoiser_attr == "unet" or not hasattr(target, "set_attention_backend")
            or not dispatched):
        if choice != "xformers":
            raise Skip(f"{choice} is not dispatchable for {type(target).__name__} (its attention "
                       "processors call PyTorch SDPA themselves); using PyTorch SDPA")
        fused = any(type(p).__name__.startswith("Fused")
                    for p in getattr(target, "attn_processors", {}).values())
        try:
            ctx.pipe.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # ImportError or a version mismatch with torch
            raise Skip(f"xformers unavailable: {brief(exc, 120)}") from exc
        return "xformers processors" + ("; they replace the fused-QKV processors" if fused else "")
    try:
        target.set_attention_backend(_BACKENDS[choice])
    except Exception as exc:  # backend library missing or unsupported on this GPU
        raise Skip(f"{choice} unavailable: {brief(exc, 120)}; "
                   "using PyTorch SDPA") from exc
    try:
        _probe_attention(target, _BACKENDS[choice])
    except Exception as exc:
        # Accepted but cannot run here (cuDNN attention on a CPU or with fp32, FlashAttention
        # with fp32, ...): it would fail the warmup, and with it the boot.
        # Not reset_attention_backend(): it leaves diffusers' process-wide active backend set.
        target.set_attention_backend(_BACKENDS["sdpa"])
        raise Skip(f"{choice} cannot run here ({brief(exc, 120)}); using PyTorch SDPA") from exc
    if dispatched < processors:
        return f"{choice} ({dispatched} of {processors} attention processors; the others call PyTorch SDPA)"
    return choice


def _dispatched(denoiser: Any) -> tuple[int, int]:
    """(how many of the denoiser's attention processors run diffusers' attention dispatch, how
    many it has): what ``set_attention_backend`` reaches, which is only processors holding an
    ``_attention_backend``."""
    processors = list(getattr(denoiser, "attn_processors", {}).values())
    return sum(hasattr(p, "_attention_backend") for p in processors), len(processors)


def _probe_attention(denoiser: Any, backend: str, masked: bool = False) -> None:
    """One small attention call through diffusers' dispatcher, on the denoiser's device and
    dtype at its head size: what the backend's checks and kernels would meet at warmup.
    ``masked``: with a key padding mask, as a padded prompt's attention has."""
    import torch
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    weight = next(denoiser.parameters())
    head_dim = denoiser.config.get("attention_head_dim", 64)
    head_dim = head_dim if isinstance(head_dim, int) else 64
    q = torch.randn(1, 16, 2, head_dim, device=weight.device,
                    dtype=weight.dtype if weight.is_floating_point() else torch.bfloat16)
    mask = None
    if masked:
        mask = torch.ones(1, 1, 1, 16, dtype=torch.bool, device=weight.device)
        mask[..., -4:] = False
    with torch.no_grad():
        dispatch_attention_fn(q, q, q, attn_mask=mask, backend=AttentionBackendName(backend))


def _active_backend(denoiser: Any) -> str:
    """The diffusers attention backend the denoiser's attention runs: its own (set by the
    attention step) or, where none is set, diffusers' process-wide one."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    for module in denoiser.modules():
        backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
        if backend is not None:
            return str(getattr(backend, "value", backend))
    backend = _AttentionBackendRegistry.get_active_backend()[0]
    return str(getattr(backend, "value", backend))


def attention_takes_masks(denoiser: Any) -> bool:
    """Whether the denoiser's attention accepts an attention mask: FlashAttention 2/3 and
    PyTorch's flash-only backend refuse one (a ValueError at every call)."""
    try:
        _probe_attention(denoiser, _active_backend(denoiser), masked=True)
    except Exception:  # noqa: BLE001 - refused, or a backend this probe cannot name: no masks
        return False
    return True


def _vae(pipe: Any) -> Any:
    """The pipeline's VAE, or None: DeepFloyd IF works in pixel space and has none (Kandinsky's
    is its ``movq``)."""
    return getattr(pipe, "vae", None)


def _vae_decoder(pipe: Any) -> Any:
    return getattr(_vae(pipe), "decoder", None)


def _five_d(module: Any) -> bool:
    """Whether ``module`` holds 5-D tensors (Conv3d weights: Wan's and Qwen-Image's video-style
    VAEs): ``to(memory_format=torch.channels_last)`` raises on those, after converting part of
    the module's 4-D ones."""
    import itertools

    return any(t.dim() == 5 for t in itertools.chain(module.parameters(), module.buffers()))


def channels_last(ctx: Context) -> str:
    import torch

    if not ctx.on_cuda:
        raise Skip("channels_last only pays on a GPU")
    targets = [("vae", _vae(ctx.pipe))]
    if ctx.loaded.family.denoiser_attr == "unet":
        targets.append(("unet", ctx.denoiser))
    done, not_done = [], []
    for name, module in targets:
        if module is None:
            not_done.append(f"no {name}")
        elif _five_d(module):
            not_done.append(f"{name} has 5-D (Conv3d) weights")
        else:
            module.to(memory_format=torch.channels_last)
            done.append(name)
    if not done:
        raise Skip(f"nothing to convert ({'; '.join(not_done)})")
    return "+".join(done) + (f" ({'; '.join(not_done)})" if not_done else "")


def compile_models(ctx: Context) -> str:
    mode = ctx.settings.compile
    if mode == "off":
        raise Skip("VISGATE_COMPILE=off")
    configure_dynamo(len(ctx.settings.warmup_shapes) + 1)
    if mode == "aot":
        compiled = [_compile_ahead_of_time(ctx)]
    else:
        decoder = _vae_decoder(ctx.pipe)
        compiled = [_compile_denoiser(ctx.denoiser, mode),
                    _compile_decoder(decoder) if decoder is not None else "no VAE decoder"]
    # Compilation happens lazily at the first call (the warmup stage pays for it), so input
    # shapes fixed now are the ones compiled.
    # The attention probe only for a family that pads (a call on the GPU at every boot otherwise).
    fixed = ctx.loaded.family.fix_input_shapes(ctx.pipe, masks=lambda: attention_takes_masks(ctx.denoiser))
    return "; ".join(compiled + ([fixed] if fixed else []))


def _compile_denoiser(target: Any, mode: str) -> str:
    name = type(target).__name__
    if mode == "regional":
        # diffusers' compile_repeated_blocks raises ValueError when the model declares no repeated
        # block, or when none of the declared classes is in it: UNet2DConditionModel declares
        # BasicTransformerBlock, which DeepFloyd IF's and Kandinsky 2.x's UNets (SimpleCrossAttn
        # blocks) do not have. Its own test, so such a denoiser is compiled whole instead.
        blocks = list(getattr(target, "_repeated_blocks", None) or [])
        if (blocks and hasattr(target, "compile_repeated_blocks")
                and any(type(m).__name__ in blocks for m in target.modules())):
            target.compile_repeated_blocks(fullgraph=True)
            return f"{name} repeated blocks {blocks}"
        why = f"none of its repeated blocks {blocks} is in it" if blocks else "it declares no repeated blocks"
        target.compile(fullgraph=False)
        return f"{name} whole (no regional compile: {why})"
    options = {"mode": "max-autotune"} if mode == "max-autotune" else {}
    target.compile(fullgraph=True, **options)
    return f"{name} whole ({mode})"


def _compile_decoder(decoder: Any) -> str:
    decoder.compile(fullgraph=True)
    return "vae.decoder"


def _compile_ahead_of_time(ctx: Context) -> str:
    """Denoiser and VAE decoder exported and compiled whole per input signature at warmup, or
    loaded from the volume (runtime/aot.py); either falls back to torch.compile if it cannot be
    exported (the denoiser regionally, as VISGATE_COMPILE=regional would)."""
    from runtime.aot import AotModule
    from runtime.isa_probes import remember_probes

    if ctx.aot_store is None:
        raise Skip("no compile cache directory for ahead-of-time packages")
    # Loading a package probes the CPU first, in child processes: tens of seconds a boot on
    # torch before 2.13, unless an earlier boot's answers are on the volume.
    remember_probes(ctx.aot_store.probes_path())
    denoiser, decoder = ctx.denoiser, _vae_decoder(ctx.pipe)
    wrappers = [
        # CUDA graphs for the denoiser only: it runs at every step, while the VAE decoder runs
        # once per image and SDXL's moves to new fp32 storage each time (a capture per job).
        AotModule(denoiser, ctx.loaded.family.denoiser_attr, ctx.aot_store, ctx.loaded.device,
                  fallback=lambda: _compile_denoiser(denoiser, "regional"), cuda_graphs=ctx.on_cuda),
    ]
    if decoder is not None:  # none in a pixel-space pipeline (DeepFloyd IF)
        wrappers.append(AotModule(decoder, "vae_decoder", ctx.aot_store, ctx.loaded.device,
                                  fallback=lambda: _compile_decoder(decoder)))
    ctx.report.aot_modules.extend(wrappers)
    graphs = " + CUDA graphs for the denoiser" if ctx.on_cuda else ""
    parts = " + vae.decoder" if decoder is not None else " (no VAE decoder)"
    return (f"{type(denoiser).__name__} whole{parts} ahead of time (torch.export + "
            f"AOTInductor{graphs}), per warmed input signature")


GRAPHS_PER_SHAPE = 8  # per compiled block class: see configure_dynamo


def configure_dynamo(static_shapes: int) -> None:
    """Static graphs per warmed shape; unseen shapes are served eagerly (see serve_stance).

    Why not dynamic shapes: static graphs give the fastest kernels and allow CUDA graphs, and the
    serving shapes are known ahead (VISGATE_WARMUP_SHAPES). Why not recompile on demand: a new
    shape would stall its job for the whole compile (seconds to minutes on a GPU).
    """
    import torch._dynamo

    torch._dynamo.config.automatic_dynamic_shapes = False
    # Graphs per warmed shape, per compiled block class: one per size the class is called at in
    # one image (an SD 1.x/2.x UNet runs the same transformer block at three resolutions), each
    # maybe twice (the first call of a block can see other strides than the next ones). Past the
    # limit a fullgraph compile fails outright: with two per shape, an SD 1.x model warmed at
    # three shapes failed its compiled warmup and served eagerly on every boot. The limit bounds
    # warmup alone (serving never compiles, see serve_stance), whose calls are finite: be generous.
    torch._dynamo.config.recompile_limit = GRAPHS_PER_SHAPE * static_shapes + 2


@contextlib.contextmanager
def dynamic_lengths(static_shapes: int) -> Iterator[None]:
    """While a second warmup pass runs prompts of another length: a graph whose input sizes
    changed is compiled again with those sizes symbolic (Dynamo's automatic dynamic shapes), so
    that one graph serves every prompt length. For models whose text embeddings follow the
    prompt's length (runtime/warmup.py, fit_prompt_lengths); room for the new graphs in the
    recompile limit."""
    import torch._dynamo

    config = torch._dynamo.config
    saved = config.automatic_dynamic_shapes, config.recompile_limit
    config.automatic_dynamic_shapes = True
    config.recompile_limit = saved[1] + GRAPHS_PER_SHAPE * static_shapes
    try:
        yield
    finally:
        config.automatic_dynamic_shapes, config.recompile_limit = saved


def serve_stance(report: OptimizationReport) -> None:
    """After warmup: use compiled code where it is valid, run eagerly instead of recompiling."""
    if not report.compiled:
        return
    import torch

    torch.compiler.set_stance("eager_on_recompile")
    for wrapper in report.aot_modules:
        wrapper.frozen = True


def warm_with_fallback(run: Callable[[], Any], report: OptimizationReport,
                       discard_restored: Callable[[], bool] | None = None) -> Any:
    """Run warmup; if compiled code fails there, serve eagerly rather than not at all.

    ``discard_restored``: drops the compile cache this boot restored, if it did (returns whether
    it had). Compiled code that fails after a restore is most likely the archive's: a damaged
    shared library or source inside an intact tar passes the restore, and the archive would then
    make every later boot fail the same way and serve eagerly for good. So it is thrown away and
    warmup compiles once more from scratch, which rewrites it."""
    try:
        return run()
    except Exception as exc:
        if not report.compiled:
            raise
        import torch

        # Not after running out of memory, losing the GPU or filling this container's disk
        # (inductor writes its code there): those say nothing about the archive, which other
        # workers share, and a second compile would meet them again.
        if (discard_restored is not None and not is_out_of_memory(exc)
                and not is_fatal_device_error(exc) and not is_no_space(exc) and discard_restored()):
            log.warning("compiled warmup failed with the restored compile cache (%s); discarded "
                        "it, compiling from scratch", brief(exc))
            torch._dynamo.reset()
            try:
                return run()
            except Exception as again:
                exc = again
        log.warning("compiled warmup failed (%s); serving eagerly", brief(exc))
        torch.compiler.set_stance("force_eager")
        for wrapper in report.aot_modules:
            wrapper.uninstall()
        report.skipped["compile"] = f"failed at warmup ({exc.__class__.__name__}); serving eagerly"
        del report.applied["compile"]
        return run()


STEPS: tuple[tuple[str, Callable[[Context], str]], ...] = (
    ("precision", precision),
    ("fuse_qkv", fuse_qkv),
    ("quantize", quantize),
    ("attention", attention),
    ("channels_last", channels_last),
    ("compile", compile_models),
)


def _asked_for(step: str, settings: Settings) -> bool:
    """Whether ``step`` runs because a setting asked for it rather than by default."""
    return {"attention": settings.attention != "auto", "quantize": settings.quantize != "none",
            "compile": settings.compile != "off"}.get(step, False)


def optimize(loaded: Loaded, settings: Settings, aot_store: "AotStore | None" = None) -> OptimizationReport:
    report = OptimizationReport()
    ctx = Context(loaded=loaded, settings=settings, report=report, aot_store=aot_store)
    for name, step in STEPS:
        t0 = time.perf_counter()
        try:
            report.applied[name] = step(ctx)
            log.info("optimization %s: %s", name, report.applied[name])
        except Skip as skip:
            report.skipped[name] = str(skip)
            # What the user set and does not get is a warning; a default that does not apply
            # here (fp8 unset, attention "auto" on a CPU) is only information.
            level = logging.WARNING if _asked_for(name, settings) else logging.INFO
            log.log(level, "optimization %s skipped: %s", name, skip)
        report.seconds[name] = round(time.perf_counter() - t0, 3)
    return report
