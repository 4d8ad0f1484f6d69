"""Popular pipelines the generic family serves, run end to end: Stable Diffusion 3, PixArt-Sigma,
Sana, Chroma and FLUX.2 [klein] (distilled and base), each built tiny (random weights, real tokenizers built offline) in the Hugging Face
layout, through the project's own load, optimize, warmup and job path, compiled, and through a
real worker process.

Before these, only their configs had been read (tests/unit/test_registry.py). Running them found:
PixArt-Sigma's guidance switch (a local of its call, not a property) was missing from its warm
key, so a job that switched classifier-free guidance off ran eagerly with no warning; SD3.5's
transformers (qk norms, and Medium's image-only second attention) were broken by fused QKV, whose
diffusers processor skips the norms (images differed) and needs text projections in every
attention (every generation failed); Sana's default size was its signature's 1024 whatever the
checkpoint's resolution, so a 512 px one upscaled every default image from 512²; PixArt's and
Sana's jobs were keyed by their size, not the bucket they denoise at, so a size sharing a warmed
bucket was said to run eagerly; and an attention backend (cudnn, flash, flash3) was reported
applied to SD3, PixArt and Sana, whose processors never call diffusers' dispatch. Chroma and
FLUX.2 [klein] base run classifier-free guidance as a second call of the transformer at the same
shapes, yet their jobs were keyed by guidance: one that switched it was said to run eagerly while
the warmed graphs served it. FLUX.2 [dev] is not here: its tokenizer is a PixtralProcessor, which
transformers builds only with torchvision (not in this project's CPU environment).
"""

from __future__ import annotations

import json
import logging
import re
import string
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from pipelines.base import GenerationRequest
from tests.integration.test_optimize import MAX_PIXEL_DIFF, MIN_PSNR_DB, _loaded, psnr

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONTRACT_KEYS = {"image_base64", "model_id", "seed", "height", "width"}

# Two lengths other than warmup's prompt: each text encoder here pads to a fixed length, which
# the compiled graphs must show (no recompile for either).
PROMPTS = ("a red fox", "a lighthouse at dusk on a rocky coast, long exposure, stars over the sea")


# ---- tiny pipelines ------------------------------------------------------------------------------
def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _build_sd3(dest: Path, qk_norm: str | None = None, dual_attention_layers: tuple[int, ...] = ()) -> None:
    """SD3's layout: MMDiT transformer (patch 2), two CLIP encoders with projections and T5, a
    16-channel VAE. ``qk_norm``/``dual_attention_layers``: SD3.5's transformers (Large: qk
    norms; Medium: also a second, image-only attention in the listed blocks)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from pipelines.tiny import _clip_config, _clip_tokenizer, _t5_tokenizer, _vae

    _seeded(0)
    # sample_size 32 latents x 8: a 256² default, the smallest side jobs may ask for. The text
    # width (joint_attention_dim) is T5's, which the two CLIP widths (32 + 32) are padded to;
    # the pooled width is both CLIP projections side by side.
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=64, qk_norm=qk_norm, dual_attention_layers=dual_attention_layers)
    _seeded(1)
    clip = CLIPTextModelWithProjection(_clip_config(projection=True))
    _seeded(2)
    clip_2 = CLIPTextModelWithProjection(_clip_config(projection=True))
    _seeded(3)
    t5 = T5EncoderModel(T5Config(d_model=64, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
                                 vocab_size=len(_t5_tokenizer()), decoder_start_token_id=0))
    _seeded(4)
    StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(latent_channels=16, flux=True), text_encoder=clip, tokenizer=_clip_tokenizer(),
        text_encoder_2=clip_2, tokenizer_2=_clip_tokenizer(), text_encoder_3=t5,
        tokenizer_3=_t5_tokenizer()).save_pretrained(dest, safe_serialization=True)


def _build_pixart_sigma(dest: Path) -> None:
    """PixArt-Sigma's layout: a DiT with cross-attention to T5 (padded to 300 tokens), learned
    sigma (twice the latent channels out), the SD VAE. sample_size 32 is one its resolution
    binning knows (the 256 px buckets)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from pipelines.tiny import _t5_tokenizer, _vae

    _seeded(0)
    transformer = PixArtTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=8, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, cross_attention_dim=32, caption_channels=32, norm_num_groups=8)
    _seeded(1)
    t5 = T5EncoderModel(T5Config(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
                                 vocab_size=len(_t5_tokenizer()), decoder_start_token_id=0))
    _seeded(2)
    PixArtSigmaPipeline(tokenizer=_t5_tokenizer(), text_encoder=t5, vae=_vae(latent_channels=4, flux=False),
                        transformer=transformer,
                        scheduler=DPMSolverMultistepScheduler()).save_pretrained(dest, safe_serialization=True)


def _gemma_tokenizer() -> Any:
    """Gemma's tokenizer (BPE with byte fallback) with a tiny vocabulary: letters, digits and the
    word marker, every other character as its UTF-8 bytes; no merges needed."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({f"<0x{b:02X}>": 5 + b for b in range(256)})
    for ch in ["▁", *string.ascii_letters, *string.digits]:
        vocab[ch] = len(vocab)
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=8192)


def _build_sana(dest: Path) -> None:
    """Sana's layout: a linear-attention DiT (patch 1) with cross-attention to Gemma 2, and the
    32x deep-compression AutoencoderDC (6 levels, as the real one). sample_size 16: a 512 px
    checkpoint (Sana_1600M_512px), which bins every size to the 512 px buckets."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = _gemma_tokenizer()
    _seeded(0)
    encoder = Gemma2Model(Gemma2Config(hidden_size=16, head_dim=8, intermediate_size=32, num_attention_heads=2,
                                       num_key_value_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer),
                                       max_position_embeddings=2048, pad_token_id=0, bos_token_id=2,
                                       eos_token_id=1))
    _seeded(1)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2, attention_head_dim=8,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
        sample_size=16)
    _seeded(2)
    levels = 6
    blocks = ("ResBlock",) * (levels - 1) + ("EfficientViTBlock",)
    scales = ((),) * (levels - 1) + ((5,),)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=4, encoder_block_types=blocks,
                        decoder_block_types=blocks, encoder_block_out_channels=(8,) * levels,
                        decoder_block_out_channels=(8,) * levels, encoder_layers_per_block=(1,) * levels,
                        decoder_layers_per_block=(1,) * levels, encoder_qkv_multiscales=scales,
                        decoder_qkv_multiscales=scales, scaling_factor=0.41407)
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    SanaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, transformer=transformer,
                 scheduler=scheduler).save_pretrained(dest, safe_serialization=True)



def _with_sample_size(dest: Path, sample_size: int) -> None:
    """The generic family's default size is the denoiser's sample size in latents x the VAE's
    factor, else 128 (the pipelines' own 1024²): Chroma's and FLUX.2's transformers have no
    sample_size, so this writes one (diffusers ignores the key) to default to a tiny image."""
    config = dest / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "sample_size": sample_size}))


def _build_chroma(dest: Path) -> None:
    """Chroma's layout: FLUX.1's MMDiT without CLIP or a guidance embedding (its modulation from a
    small approximator network), T5 alone (padded to 512 tokens, masked), the FLUX VAE."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    from pipelines.tiny import _t5_tokenizer, _vae

    _seeded(0)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6), approximator_num_channels=16,
        approximator_hidden_dim=32, approximator_layers=1)
    _seeded(1)
    t5 = T5EncoderModel(T5Config(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
                                 vocab_size=len(_t5_tokenizer()), decoder_start_token_id=0))
    _seeded(2)
    ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(latent_channels=16, flux=True),
                   text_encoder=t5, tokenizer=_t5_tokenizer(),
                   transformer=transformer).save_pretrained(dest, safe_serialization=True)
    _with_sample_size(dest, 32)


def _build_flux2_klein(dest: Path, distilled: bool = True) -> None:
    """FLUX.2 [klein]'s layout: the FLUX.2 transformer (no guidance embedding) reading three
    hidden layers (9, 18, 27) of a Qwen3 causal LM, stacked (hence 28 layers, tiny ones), its
    prompt in a chat template padded to 512 tokens; the FLUX.2 VAE, whose latents the pipeline
    patchifies 2x2 (4 latent channels -> 16 in). ``distilled``: the 4B/9B few-step checkpoints
    (``is_distilled``, no classifier-free guidance); otherwise the base ones."""
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline,
                           Flux2Transformer2DModel)
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # Byte-level, no merges: one token per byte; the chat template Qwen3's has, in short.
    tokenizer = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(bytes_to_unicode().values())}, merges=[],
                               pad_token="<|endoftext|>")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                               "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                               "{% endif %}")
    _seeded(0)
    encoder = Qwen3ForCausalLM(Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=28,
                                           num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                           vocab_size=len(tokenizer)))
    _seeded(1)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * 16, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)
    _seeded(2)
    vae = AutoencoderKLFlux2(block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4,
                             norm_num_groups=8)
    Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=encoder,
                       tokenizer=tokenizer, transformer=transformer,
                       is_distilled=distilled).save_pretrained(dest, safe_serialization=True)
    _with_sample_size(dest, 32)

# For a pipeline that bins sizes: a size other than the default that falls in the default's
# bucket (the tiny PixArt's 256 px buckets, the tiny Sana's 512 px ones), so it is denoised at the
# warmed size and resized.
SAME_BUCKET = {"pixart-sigma": (512, 512), "sana": (256, 256)}
BUILDERS: dict[str, Callable[[Path], None]] = {
    "sd3": _build_sd3,
    "pixart-sigma": _build_pixart_sigma,
    "sana": _build_sana,
    "sd3.5-large-shaped": lambda d: _build_sd3(d, qk_norm="rms_norm"),
    "sd3.5-medium-shaped": lambda d: _build_sd3(d, qk_norm="rms_norm", dual_attention_layers=(0,)),
    "chroma": _build_chroma,
    "flux2-klein": _build_flux2_klein,
    "flux2-klein-base": lambda d: _build_flux2_klein(d, distilled=False),
}
FAMILIES = ("sd3", "pixart-sigma", "sana", "chroma", "flux2-klein", "flux2-klein-base")
# What a job with guidance off (guidance_scale 0) runs: "batch" - classifier-free guidance is the
# denoiser's batch of 2, so off is a batch of 1, another graph; "second call" - guidance is a
# second call of the denoiser at the same shapes (the negative prompt padded as the prompt), so the
# warmed graphs serve it either way; "none" - a distilled FLUX.2 [klein] runs no guidance at all.
GUIDANCE_OFF = {"sd3": "batch", "pixart-sigma": "batch", "sana": "batch", "chroma": "second call",
                "flux2-klein": "none", "flux2-klein-base": "second call"}
# What each is, as the generic family reads it from the repository: (pipeline class, steps,
# guidance, default side, size factor). Steps and guidance are the pipelines' own call defaults;
# the side is the denoiser's sample size in latents x the VAE's factor (8; Sana's 32); the size factor
# is that VAE factor x the patch (2 for SD3 and PixArt).
EXPECTED = {
    "sd3": ("StableDiffusion3Pipeline", 28, 7.0, 256, 16),
    "pixart-sigma": ("PixArtSigmaPipeline", 20, 4.5, 256, 16),
    "sana": ("SanaPipeline", 20, 4.5, 512, 32),
    "chroma": ("ChromaPipeline", 35, 5.0, 256, 16),
    "flux2-klein": ("Flux2KleinPipeline", 4, 1.0, 256, 16),
    "flux2-klein-base": ("Flux2KleinPipeline", 50, 4.0, 256, 16),
}


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_repo("sd3")`` -> the tiny pipeline's directory, built once per module (1.6 MB at
    most, a few seconds)."""
    root = tmp_path_factory.mktemp("more-families")
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in built:
            BUILDERS[name](root / name)
            built[name] = root / name
        return built[name]

    return build


@pytest.fixture(autouse=True)
def _dynamo_as_found():
    """Each test compiles its own pipeline: none of its graphs or stance reach the next test."""
    yield
    import torch

    torch.compiler.set_stance("default")
    torch._dynamo.reset()


def _request(family: Any, prompt: str, guidance: float | None = None, steps: int = 2) -> GenerationRequest:
    d = family.serving_defaults
    return GenerationRequest(prompt=prompt, steps=steps, guidance=d.guidance if guidance is None else guidance,
                             height=d.height, width=d.width, seed=3)


def _predictions(family: Any, pipe: Any, request: GenerationRequest) -> Any:
    """The transformer's outputs (every call of every step) for ``request``."""
    import torch

    outputs: list[Any] = []
    hook = pipe.transformer.register_forward_hook(lambda m, a, out: outputs.append(out[0].clone()))
    try:
        family.generate(pipe, request)
    finally:
        hook.remove()
    return torch.stack(outputs)


# ---- detection and defaults ----------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_the_generic_family_serves_it_with_the_pipelines_own_defaults(tiny_repo, name):
    from pipelines.base import Defaults
    from pipelines.generic import GenericFamily
    from pipelines.registry import detect_family

    family = detect_family(tiny_repo(name))
    variant, steps, guidance, side, factor = EXPECTED[name]
    assert type(family) is GenericFamily and family.variant == variant
    assert family.defaults == Defaults(steps=steps, guidance=guidance, height=side, width=side)
    assert family.size_rules.factor == factor
    assert family.denoiser_attr == "transformer"


def test_a_pipeline_that_bins_sizes_defaults_to_its_own_resolution(tiny_repo):
    """Sana bins every size to the buckets of its checkpoint's resolution and resizes the image
    to the size asked. Its signature says 1024 for every checkpoint: a 512 px one (this tiny
    one) then denoised at 512² and upscaled each default image 2x. The default is the size it
    denoises at, which the VAE decoder's input shows (32x per latent)."""
    loaded, _ = _loaded(tiny_repo("sana"))
    family, pipe = loaded.family, loaded.pipe
    seen: list[tuple[int, ...]] = []
    hook = pipe.vae.decoder.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        image = family.generate(pipe, _request(family, PROMPTS[0], steps=1))
    finally:
        hook.remove()
    d = family.defaults
    assert image.shape == (d.height, d.width, 3)
    assert [(h * 32, w * 32) for *_, h, w in seen] == [(d.height, d.width)]


@pytest.mark.parametrize("pipeline", ["PixArtSigmaPipeline", "PixArtAlphaPipeline", "AuraFlowPipeline",
                                      "IFPipeline"])
def test_a_guidance_switch_in_the_call_is_part_of_the_warm_key(tmp_path, pipeline):
    """These pipelines switch classifier-free guidance (the denoiser's batch of 2) with a local
    of their call, not a property: a job across the switch needs another graph, and its key says
    so (the compiled test below shows the graph and the warning for PixArt-Sigma)."""
    from pipelines.registry import detect_family

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    family = detect_family(tmp_path)

    def key(guidance: float) -> tuple[Any, ...]:
        return family.warm_key(GenerationRequest(prompt="x", steps=2, guidance=guidance, height=512,
                                                 width=512, seed=0))

    assert key(0.0) == key(1.0) != key(1.5) == key(7.0)



def configs_only(root: Path, pipeline: str, transformer: dict[str, Any] | None = None) -> Path:
    """A repository of configs alone (no weights): the family's rules are read from them. A
    patch of 2, 128 latent pixels, a VAE of 8x."""
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    for component, config in (("transformer", {"patch_size": 2, "sample_size": 128, **(transformer or {})}),
                              ("vae", {"_class_name": "AutoencoderKL",
                                       "block_out_channels": [128, 256, 512, 512]})):
        (root / component).mkdir()
        (root / component / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize("pipeline, transformer, table", [
    ("AuraFlowPipeline", "AuraFlowTransformer2DModel", 9216),  # 96 x 96 patches, flattened
    ("StableDiffusion3Pipeline", "SD3Transformer2DModel", 96),  # 96 patches along a side
])
def test_a_side_past_the_denoisers_position_table_is_an_input_error(tmp_path, pipeline, transformer,
                                                                     table):
    """AuraFlow's positions cover 96 x 96 patches of 16 px: a 1552 px side indexed past them
    (an IndexError; on a GPU a device-side assert, which has the worker replaced), and SD3's
    patch embedding refuses sides past its table. Both within the 2048 px every model allows."""
    from pipelines.registry import detect_family
    from runtime.errors import JobInputError
    from runtime.validate import validate

    family = detect_family(configs_only(tmp_path, pipeline, {"_class_name": transformer,
                                                              "pos_embed_max_size": table}))
    assert family.size_rules.max_side == 1536
    ok = validate({"prompt": "x", "height": 1536, "width": 1024}, family.serving_defaults,
                  family.size_rules, family.limits)
    assert (ok.height, ok.width) == (1536, 1024)
    with pytest.raises(JobInputError, match="'height' must be from 256 to 1536, got 1552"):
        validate({"prompt": "x", "height": 1552, "width": 1024}, family.serving_defaults,
                 family.size_rules, family.limits)


def test_sides_are_multiples_of_what_the_pipelines_own_check_asks(tmp_path):
    """GLM-Image's check_inputs asks for multiples of the VAE's factor x the patch x 2 (32): the
    patched latents' 16 let 272x256 through, refused inside diffusers."""
    from pipelines.registry import detect_family
    from runtime.errors import JobInputError
    from runtime.validate import validate

    family = detect_family(configs_only(tmp_path, "GlmImagePipeline"))
    assert family.size_rules.factor == 32
    with pytest.raises(JobInputError, match="'height' must be a multiple of 32"):
        validate({"prompt": "x", "height": 272, "width": 256}, family.serving_defaults,
                 family.size_rules, family.limits)


def test_a_model_that_makes_only_listed_sizes_refuses_the_others_up_front(tmp_path):
    """HunyuanDiT makes only the sizes of its SUPPORTED_SHAPE list, generating any other at the
    nearest of them: a 512x512 job ran all its steps at 1024x1024, then the worker refused the
    image as the wrong size. Refused before generating now, with the sizes it makes."""
    from pipelines.base import GenerationRequest
    from pipelines.registry import detect_family
    from runtime.errors import JobInputError
    from runtime.validate import check_shape, validate

    family = detect_family(configs_only(tmp_path, "HunyuanDiTPipeline"))
    rules = family.size_rules
    assert (1024, 1024) in rules.shapes and (864, 1152) in rules.shapes and len(rules.shapes) == 10
    job = validate({"prompt": "x"}, family.serving_defaults, rules, family.limits)
    assert isinstance(job, GenerationRequest) and (job.height, job.width) == (1024, 1024)
    validate({"prompt": "x", "height": 864, "width": 1152}, family.serving_defaults, rules, family.limits)
    with pytest.raises(JobInputError, match=r"makes only these sizes \(height x width\): 768x1024, "
                                            r".*; got 512x512"):
        validate({"prompt": "x", "height": 512, "width": 512}, family.serving_defaults, rules,
                 family.limits)
    with pytest.raises(JobInputError, match="got 1152x1152"):
        check_shape(1152, 1152, rules)  # a warmup shape, as VISGATE_WARMUP_SHAPES gives it
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    assert detect_family(sd3).size_rules.shapes is None  # any size within the rules


def test_guidance_below_what_the_pipeline_accepts_is_an_input_error(tmp_path):
    """PRX's check_inputs refuses guidance below 1: a job with 0.5 passed validation and failed
    inside diffusers, and VISGATE_DEFAULT_GUIDANCE=0.5 failed the boot at warmup."""
    from pipelines.registry import detect_family
    from runtime.errors import JobInputError
    from runtime.validate import validate

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PRXPipeline"}))
    family = detect_family(tmp_path)
    assert family.limits["guidance_scale"] == (1.0, 20.0)
    with pytest.raises(JobInputError, match="'guidance_scale' must be from 1 to 20, got 0.5"):
        validate({"prompt": "x", "guidance_scale": 0.5}, family.serving_defaults, family.size_rules,
                 family.limits)
    with pytest.raises(ValueError, match="VISGATE_DEFAULT_GUIDANCE=0.5 is outside"):
        family.use_defaults(guidance=0.5)
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    assert detect_family(sd3).limits["guidance_scale"] == (0.0, 20.0)  # no such check: as before


def test_a_per_step_guidance_schedule_is_kept_at_the_defaults_and_replaced_by_a_jobs_guidance(tmp_path):
    """Ideogram 4's call defaults to a per-step guidance schedule (7 for 45 steps, 3 for its 3
    last), its guidance_scale to None, and refuses both at once; the worker passed the job's
    guidance_scale always, so every job (and the boot's warmup) failed in its check_inputs."""
    import diffusers

    from pipelines.base import GenerationRequest
    from pipelines.registry import detect_family

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Ideogram4Pipeline"}))
    family = detect_family(tmp_path)
    defaults = family.defaults
    assert (defaults.steps, defaults.guidance) == (48, 7.0)

    def checked(steps: int, guidance: float) -> dict[str, Any]:
        request = GenerationRequest(prompt="x", steps=steps, guidance=guidance, height=1024,
                                    width=1024, seed=0)
        kwargs = {"guidance_scale": guidance, "guidance_schedule": (7.0,) * 45 + (3.0,) * 3,
                  **family.call_kwargs(request)}  # the job's, then the family's, as _run passes them
        pipe = object.__new__(diffusers.Ideogram4Pipeline)
        pipe.vae_scale_factor, pipe.patch_size = 8, 2
        pipe.check_inputs(prompt="x", height=1024, width=1024, num_inference_steps=steps,
                          guidance_scale=kwargs["guidance_scale"],
                          guidance_schedule=kwargs["guidance_schedule"])
        return family.call_kwargs(request)

    assert checked(48, 7.0) == {"guidance_scale": None}  # the authors' schedule
    assert checked(48, 4.0) == checked(20, 7.0) == {"guidance_schedule": None}  # a constant


@pytest.mark.parametrize("pipeline", ["ChromaPipeline", "Flux2KleinPipeline", "Krea2Pipeline",
                                      "OvisImagePipeline"])
def test_guidance_run_as_a_second_call_is_not_part_of_the_warm_key(tmp_path, pipeline):
    """These run the negative prompt's prediction as a second denoiser call, its embeddings
    padded to the prompt's fixed length: guidance on or off runs the same graphs (Chroma and
    [klein] are run compiled below). Ovis-Image's switch, a local of its call, was read as a
    batch of 2, and Krea 2's keyed above 0: guidance-off jobs were told they ran eagerly."""
    from pipelines.registry import detect_family

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    family = detect_family(tmp_path)

    def key(guidance: float) -> tuple[Any, ...]:
        return family.warm_key(GenerationRequest(prompt="x", steps=2, guidance=guidance, height=512,
                                                 width=512, seed=0))

    assert key(0.0) == key(0.5) == key(1.0) == key(1.5) == key(7.0)


# ---- compiled serving: the job path, other prompt lengths, guidance on and off -------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_compiled_serving_matches_eager_for_every_prompt_length(tiny_repo, tmp_path, name, caplog,
                                                                 png_tools):
    """The boot's optimize, warmup and prompt-length steps on one compiled pipeline, then jobs
    through the handler's job path: at the default guidance (warmed) under ``fail_on_recompile``
    (a recompile raises), each prompt length's image as eager's, and for a pipeline that bins
    sizes another size of the warmed bucket too, without a warning; with guidance off (a batch
    of 1, another graph) served eagerly, with the warning that says so, and still eager's image."""
    import torch

    from runtime.encode import PngEncoder
    from runtime.handler import Service, generate_png
    from runtime.optimize import optimize, serve_stance
    from runtime.warmup import fit_prompt_lengths, warmup, warmup_requests

    loaded, settings = _loaded(tiny_repo(name), VISGATE_COMPILE="regional", VISGATE_CACHE_DIR=str(tmp_path))
    family, pipe = loaded.family, loaded.pipe
    jobs = [_request(family, p) for p in PROMPTS] + [_request(family, PROMPTS[0], guidance=0.0)]
    if name in SAME_BUCKET:
        height, width = SAME_BUCKET[name]
        jobs.append(replace(jobs[0], height=height, width=width))
    eager = [family.generate(pipe, job) for job in jobs]
    if GUIDANCE_OFF[name] == "none":  # no classifier-free guidance at any guidance
        assert np.array_equal(eager[2], eager[0])
    elif GUIDANCE_OFF[name] == "second call":
        # Two denoiser calls a step with guidance, one without; the images differ (the tiny
        # FLUX.2 [klein]'s by little: its prompt barely moves a random-weight transformer).
        assert [len(_predictions(family, pipe, j)) for j in (jobs[0], jobs[2])] == [4, 2]
        assert not np.array_equal(eager[2], eager[0])
    else:  # guidance does something: the unguided image is another one
        assert psnr(eager[2], eager[0]) < MIN_PSNR_DB

    report = optimize(loaded, settings)
    denoiser = type(pipe.transformer).__name__
    assert report.applied["fuse_qkv"] == f"{denoiser} QKV fused"
    assert report.skipped["attention"] == "auto on CPU: PyTorch SDPA as loaded"
    # None of the three declares repeated blocks (diffusers 0.42): compiled whole, and said so.
    assert report.applied["compile"].startswith(f"{denoiser} ") and "vae.decoder" in report.applied["compile"]
    shape = (family.serving_defaults.height, family.serving_defaults.width)
    runs = warmup(family, pipe, [shape])
    assert [r.get("rejected") for r in runs] == [None]
    # Every text encoder here pads to a fixed length (CLIP 77 and T5 256; T5 300; Gemma 300
    # after Sana's instruction; Chroma's T5 and FLUX.2's Qwen3 512): other lengths run the warmed
    # graphs, no second pass needed.
    assert fit_prompt_lengths(family, pipe, [shape], []) == "compiled"
    serve_stance(report)
    service = Service(model_id=str(tiny_repo(name)), family=family, pipe=pipe, encoder=PngEncoder(),
                      compiled=True, warm_keys=frozenset(family.warm_key(r) for r in warmup_requests(family, [shape])))

    def job(request: GenerationRequest) -> np.ndarray:
        # As the worker runs a job: a stop check after each step (a callback outside the graphs).
        out = generate_png(service, {"prompt": request.prompt, "num_inference_steps": request.steps,
                                     "guidance_scale": request.guidance, "seed": request.seed,
                                     "height": request.height, "width": request.width},
                           should_stop=lambda: False)
        assert set(out) == CONTRACT_KEYS
        assert (out["height"], out["width"], out["seed"]) == (request.height, request.width, request.seed)
        image = png_tools.decode_b64(out["image_base64"])
        assert image.shape == (request.height, request.width, 3)
        return image

    caplog.set_level(logging.WARNING)
    with torch.compiler.set_stance("fail_on_recompile"):
        # Another size of the warmed bucket (when there is one) is served by the warmed graphs:
        # keyed by the job's size, it was told it ran eagerly, and to warm a size that adds none.
        for request, image in [*zip(jobs[:2], eager[:2]), *zip(jobs[3:], eager[3:])]:
            served = job(request)
            assert np.abs(served.astype(int) - image.astype(int)).max() <= MAX_PIXEL_DIFF
            assert psnr(served, image) >= MIN_PSNR_DB
        if GUIDANCE_OFF[name] == "batch":
            # Guidance off is another graph (checked here, where a recompile raises)...
            with pytest.raises(RuntimeError, match="fail_on_recompile"):
                family.generate(pipe, jobs[2])
        else:
            # ... or, as a second call of the denoiser (or no guidance), the warmed graphs: keyed
            # by guidance, Chroma's and FLUX.2 [klein] base's such job was said to run eagerly.
            served = job(jobs[2])
            assert psnr(served, eager[2]) >= MIN_PSNR_DB
    assert not [r for r in caplog.records if "eagerly" in r.getMessage()]
    if GUIDANCE_OFF[name] != "batch":
        return
    # ... so the job path says it is served eagerly (PixArt's switch is a local of its call: its
    # key left guidance out, and such a job ran eagerly without a word), and serves eager's image.
    served = job(jobs[2])
    said = [r.getMessage() for r in caplog.records if "eagerly" in r.getMessage()]
    assert len(said) == 1 and "guidance_scale 0 was not warmed up" in said[0], said
    assert psnr(served, eager[2]) >= MIN_PSNR_DB


# ---- fused QKV where diffusers' fused processor cannot serve the model ----------------------------
@pytest.mark.parametrize("name, fused", [
    ("sd3", True),
    # qk norms (SD3.5 Large, Medium): FusedJointAttnProcessor2_0 skipped them, the predictions
    # (so the images) differed from the model's.
    ("sd3.5-large-shaped", False),
    # An image-only second attention (SD3.5 Medium): the fused processor reads text projections
    # it has none of, and every generation failed (on a CPU the boot, at warmup).
    ("sd3.5-medium-shaped", False),
    # FLUX.1's attention (qk norms in diffusers' own processor, which reads fused projections):
    # Chroma's, and FLUX.2's own (its fused to_qkv_mlp_proj in the single blocks already).
    ("chroma", True),
    ("flux2-klein", True),
])
def test_fused_qkv_never_changes_what_the_transformer_predicts(tiny_repo, name, fused):
    import torch

    from runtime.optimize import optimize

    loaded, settings = _loaded(tiny_repo(name))
    family, pipe = loaded.family, loaded.pipe
    request = _request(family, PROMPTS[0])
    before = _predictions(family, pipe, request)
    report = optimize(loaded, settings)
    torch.testing.assert_close(_predictions(family, pipe, request), before, rtol=1e-5, atol=1e-6)
    if fused:
        assert report.applied["fuse_qkv"] == f"{type(pipe.transformer).__name__} QKV fused"
    else:
        assert "fuse_qkv" not in report.applied
        assert report.skipped["fuse_qkv"].startswith(
            "SD3Transformer2DModel: diffusers' fused processor FusedJointAttnProcessor2_0 leaves out "
            "the attention's qk norms (norm_added_k, norm_added_q, norm_k, norm_q)")
        assert ("fails on attention without text projections" in report.skipped["fuse_qkv"]) is \
            (name == "sd3.5-medium-shaped")
        # Left as it was: its own processors, no fused copy of the projections kept in memory.
        assert not any(hasattr(m, "to_qkv") or hasattr(m, "to_added_qkv") for m in pipe.transformer.modules())


# ---- attention backends ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ("sd3", "pixart-sigma", "sana", "chroma", "flux2-klein"))
def test_an_attention_backend_these_processors_never_call_is_reported_skipped(tiny_repo, name):
    """SD3's, PixArt's and Sana's attention processors call PyTorch SDPA themselves: diffusers'
    ``set_attention_backend`` reaches none of them (it sets only processors that dispatch). The
    step said "applied" for such a backend on a GPU (cudnn, flash, flash3, and FA3 for ``auto``
    on Hopper) while every job ran SDPA; on this CPU it blamed the device instead. Now it says
    why, before trying. Evidence that the backend is not reached: PyTorch's flash-only kernel
    refuses an attention mask (a dispatching model fails with it, see test_prompt_lengths.py),
    yet PixArt's and Sana's masked cross-attention run on, unchanged, once it is set. Chroma's
    and FLUX.2's processors do dispatch (as FLUX.1's): there the backend is tried."""
    from runtime.optimize import optimize

    loaded, settings = _loaded(tiny_repo(name), VISGATE_ATTENTION="cudnn")
    family, pipe = loaded.family, loaded.pipe
    report = optimize(loaded, settings)
    denoiser = type(pipe.transformer).__name__
    if name in ("chroma", "flux2-klein"):
        # These do dispatch (as FLUX.1): the backend is tried, and on this CPU it cannot run.
        assert report.skipped["attention"].startswith("cudnn cannot run here (")
        return
    assert report.skipped["attention"] == (f"cudnn is not dispatchable for {denoiser} (its attention "
                                           "processors call PyTorch SDPA themselves); using PyTorch SDPA")
    if name == "sd3":  # no mask in SD3's joint attention: nothing for the kernel to refuse
        return
    request = _request(family, PROMPTS[0], steps=1)
    image = family.generate(pipe, request)
    try:
        pipe.transformer.set_attention_backend("_native_flash")
        assert np.array_equal(family.generate(pipe, request), image)
    finally:
        # set_attention_backend also sets diffusers' process-wide backend: back to SDPA.
        pipe.transformer.set_attention_backend("native")


# ---- the real worker -----------------------------------------------------------------------------
# One boot compiled (SD3; 50 s on this project's 2-thread CPU), the others eager (CPU's default):
# compiled serving of all three is the test above, in process.
@pytest.mark.parametrize("name, compile_mode", [("sd3", "regional"), ("pixart-sigma", "off"), ("sana", "off"),
                                                ("chroma", "off"), ("flux2-klein", "off")])
def test_a_worker_serves_it_from_a_local_directory(tiny_repo, start_worker, tmp_path, png_tools, name,
                                                   compile_mode):
    """``python -m runtime --rp_serve_api`` with HF_MODEL_ID the directory: the boot record names
    the generic family and the defaults, warmup ran at the default size (compiled: and the boot's
    own check found other prompt lengths compiled), and a job that leaves the size out gets an
    image of that size with the contract's fields."""
    repo = tiny_repo(name)
    variant, _, _, side, _ = EXPECTED[name]
    worker = start_worker(str(repo), VISGATE_DEFAULT_STEPS="2", VISGATE_COMPILE=compile_mode,
                          TMPDIR=str(tmp_path))
    try:
        result = worker.runsync({"prompt": "a red fox", "seed": 11})
        log = worker.log_text()
    finally:
        worker.stop()
    assert result.get("status") == "COMPLETED", result
    output = result["output"]
    assert set(output) == CONTRACT_KEYS
    assert (output["model_id"], output["seed"], output["height"], output["width"]) == (str(repo), 11, side, side)
    assert png_tools.decode_b64(output["image_base64"]).shape == (side, side, 3)
    record = json.loads(re.search(r"boot record (\{.*\})\n", log)[1])
    load = record["stages"]["load"]
    assert (load["family"], load["variant"]) == ("generic", variant)
    assert load["defaults"]["num_inference_steps"] == 2
    warmed = record["stages"]["warmup"]
    assert [(r["height"], r["width"]) for r in warmed["runs"]] == [(side, side)]
    applied = record["stages"]["optimize"]["applied"]
    assert applied["fuse_qkv"].endswith("QKV fused"), applied
    if compile_mode != "off":
        assert warmed["other_prompt_lengths"] == "compiled", warmed
        assert "compile" in applied and "served eagerly" not in log and "compiled warmup failed" not in log
