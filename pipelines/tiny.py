"""Built-in tiny models: Flux-, SDXL-, SD- and Qwen-Image-shaped pipelines with random weights.

They exist so that the demo and the tests run the real load and job path on a CPU with no hub.
Each is built deterministically (fixed seeds, fixed vocabularies) into the Hugging Face repository
layout, so the bytes are the same on every machine, and a hub test server can serve them too.

Shapes follow the real models where it matters for cost and correctness: the VAE keeps the real
x8 downsampling (4 levels; 16 latent channels for Flux), and each tokenizer keeps its real
``model_max_length`` (CLIP 77, T5 512) so padding behaves as in production.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any, Callable

TINY_PREFIX = "visgate/"
_CHARS = list(string.ascii_lowercase) + list(string.digits) + list(".,!?'-")


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    # Character-level BPE: every character alone and as a word end; no merges needed.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in _CHARS:
            vocab[ch + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, unk_token="<|endoftext|>",
                         bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>")


def _t5_tokenizer() -> Any:
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(ch, -3.0) for ch in _CHARS + list(string.ascii_uppercase)]
    pieces += [("▁" + ch, -2.5) for ch in string.ascii_lowercase]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_config(projection: bool) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, vocab_size=len(_CHARS) * 2 + 2,
                          max_position_embeddings=77, projection_dim=32 if projection else 512,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _vae(latent_channels: int, flux: bool) -> Any:
    from diffusers import AutoencoderKL

    kwargs: dict[str, Any] = dict(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=1024)
    if flux:
        kwargs.update(use_quant_conv=False, use_post_quant_conv=False,
                      scaling_factor=0.3611, shift_factor=0.1159)
    else:
        kwargs.update(scaling_factor=0.13025)
    return AutoencoderKL(**kwargs)


def build_flux(dest: Path, dev: bool) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    _seeded(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=dev, axes_dims_rope=(4, 6, 6))
    _seeded(1)
    text_encoder = CLIPTextModel(_clip_config(projection=False))
    _seeded(2)
    t5 = T5EncoderModel(T5Config(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
                                 vocab_size=len(_t5_tokenizer()), decoder_start_token_id=0))
    _seeded(3)
    vae = _vae(latent_channels=16, flux=True)
    # schnell: fixed shift 1.0; dev: resolution-dependent shift, as in the real scheduler configs.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0 if dev else 1.0, use_dynamic_shifting=dev, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    FluxPipeline(transformer=transformer, text_encoder=text_encoder, text_encoder_2=t5,
                 tokenizer=_clip_tokenizer(), tokenizer_2=_t5_tokenizer(), vae=vae,
                 scheduler=scheduler).save_pretrained(dest, safe_serialization=True)


def build_sdxl(dest: Path, turbo: bool) -> None:
    from diffusers import (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    _seeded(0)
    unet = UNet2DConditionModel(
        # Three levels with attention only at the lowest resolution, as in SDXL itself: keeps a
        # 1024 px tiny image cheap on a CPU (self-attention over 32x32 latents, not 128x128).
        sample_size=64 if turbo else 128, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=(2, 2, 4),
        transformer_layers_per_block=(1, 1, 1), cross_attention_dim=64, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=8)
    _seeded(1)
    text_encoder = CLIPTextModel(_clip_config(projection=False))
    _seeded(2)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(projection=True))
    _seeded(3)
    vae = _vae(latent_channels=4, flux=False)
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  num_train_timesteps=1000, prediction_type="epsilon")
    if turbo:
        scheduler = EulerAncestralDiscreteScheduler(timestep_spacing="trailing", **common)
    else:
        scheduler = EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1, **common)
    StableDiffusionXLPipeline(
        unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=_clip_tokenizer(), tokenizer_2=_clip_tokenizer(), vae=vae, scheduler=scheduler,
        force_zeros_for_empty_prompt=True).save_pretrained(dest, safe_serialization=True)


def build_sd(dest: Path) -> None:
    """A Stable Diffusion 1.x-shaped pipeline: no family of its own, so the generic family
    (AutoPipelineForText2Image) serves it; its defaults come from the pipeline and configs."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    _seeded(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
        cross_attention_dim=32, norm_num_groups=8)
    _seeded(1)
    text_encoder = CLIPTextModel(_clip_config(projection=False))
    _seeded(3)
    vae = _vae(latent_channels=4, flux=False)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, prediction_type="epsilon",
                                       timestep_spacing="leading", steps_offset=1)
    StableDiffusionPipeline(unet=unet, text_encoder=text_encoder, tokenizer=_clip_tokenizer(), vae=vae,
                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(dest, safe_serialization=True)


def build_qwen_image(dest: Path) -> None:
    """A Qwen-Image-shaped pipeline (Qwen2.5-VL text encoder, 3-D VAE): its text embeddings
    vary in length with the prompt, which the qwen-image family pads for compilation. The
    tokenizer is byte-level with no merges: one token per byte of the prompt."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokenizer = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(bytes_to_unicode().values())}, merges=[])
    vocab = len(tokenizer)
    _seeded(0)
    text = {"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": vocab, "bos_token_id": None, "eos_token_id": None,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}}
    encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=text, vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16,
                                         "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=vocab, vision_start_token_id=vocab - 2, vision_end_token_id=vocab - 1,
        vision_token_id=vocab - 3))
    _seeded(1)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=3,
                                              joint_attention_dim=16, guidance_embeds=False,
                                              axes_dims_rope=(8, 4, 4))
    _seeded(2)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4,
                                 latents_std=[1.0] * 4)
    QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=encoder,
                      tokenizer=tokenizer, transformer=transformer).save_pretrained(dest, safe_serialization=True)


TINY_MODELS: dict[str, Callable[[Path], None]] = {
    TINY_PREFIX + "tiny-flux": lambda d: build_flux(d, dev=False),
    TINY_PREFIX + "tiny-flux-dev": lambda d: build_flux(d, dev=True),
    TINY_PREFIX + "tiny-sdxl": lambda d: build_sdxl(d, turbo=False),
    TINY_PREFIX + "tiny-sdxl-turbo": lambda d: build_sdxl(d, turbo=True),
    TINY_PREFIX + "tiny-sd": build_sd,
    TINY_PREFIX + "tiny-qwen-image": build_qwen_image,
}

_COMPLETE = ".complete"


def is_tiny(model_id: str) -> bool:
    return model_id in TINY_MODELS


def ensure_tiny(model_id: str, root: Path) -> Path:
    """Build the named tiny model under ``root`` once; return its directory.

    The build goes to a temporary directory that is renamed into place, so a crash mid-build
    never leaves a half-written model that a later boot would take as complete.
    """
    dest = Path(root) / model_id.replace("/", "--")
    if (dest / _COMPLETE).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        TINY_MODELS[model_id](tmp)
        (tmp / _COMPLETE).write_text(model_id + "\n")
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process finished first (dest exists and is complete): use theirs.
            if not (dest / _COMPLETE).is_file():
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def build_to(model_id: str, dest: Path) -> Path:
    """Write a tiny model's repository files into ``dest`` (for hub test servers, benchmarks)."""
    TINY_MODELS[model_id](Path(dest))
    return Path(dest)
