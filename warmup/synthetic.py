"""Synthetic models: the real pipeline classes at full size with random weights.

For GPU machines with no hub: speed is measured honestly (same architectures, same kernels)
without downloading 30 GB. A synthetic "repository" holds only configs and tokenizers, so the
pipeline family is detected by the real registry from the real files; only the weights are made
up, directly on the device in the serving dtype (seconds, not minutes).

Architectures: FLUX.1-dev/schnell transformer and VAEs from ``warmup/configs`` (copied from the
project's reference configs); text encoders from the published model configs (CLIP-L,
OpenCLIP-bigG, T5-XXL). Tokenizers are the tiny ones: they only produce ids, and prompts are
padded to the real lengths (77, 256/512), so the compute is the real one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parent / "configs"
SYNTHETIC = ("flux-dev", "flux-schnell", "sdxl")

# VISGATE_SYNTHETIC_SCALE=small: the same classes, layout and code paths with every architecture
# shrunk to a few MB, so that a GPU command can be rehearsed end to end on a CPU in minutes before
# it spends scarce device time. Never for figures: results say "synthetic-small".
SCALE_ENV = "VISGATE_SYNTHETIC_SCALE"
SCALES = ("full", "small")
_SMALL_CLIP = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
                   projection_dim=32)
_SMALL_VAE = dict(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8)
_SMALL: dict[str, dict[str, Any]] = {
    "flux-dev-transformer.json": dict(attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                      num_layers=1, num_single_layers=1, pooled_projection_dim=32,
                                      axes_dims_rope=[4, 6, 6]),
    # pipelines/tiny.py's SDXL UNet: attention only at the lowest resolution, keeping 1024² cheap
    "sdxl-unet.json": dict(block_out_channels=[16, 32, 32], layers_per_block=1, norm_num_groups=8,
                           down_block_types=["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
                           up_block_types=["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                           attention_head_dim=[2, 2, 4], transformer_layers_per_block=[1, 1, 1],
                           cross_attention_dim=64, addition_time_embed_dim=8,
                           projection_class_embeddings_input_dim=6 * 8 + 32),
    "CLIP_L": _SMALL_CLIP, "CLIP_BIGG": _SMALL_CLIP,
    "T5_XXL": dict(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=1),
}

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              vocab_size=49408, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                 num_hidden_layers=32, vocab_size=49408, max_position_embeddings=77,
                 projection_dim=1280, hidden_act="gelu")
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False, decoder_start_token_id=0)


def scale() -> str:
    value = os.environ.get(SCALE_ENV, "full").strip().lower() or "full"
    if value not in SCALES:
        raise ValueError(f"{SCALE_ENV}={value!r}: valid values are {', '.join(SCALES)}")
    return value


def record_mode(mode: str) -> str:
    """The mode a benchmark records: a rehearsal at small scale never passes for the real one."""
    return "synthetic-small" if mode == "synthetic" and scale() == "small" else mode


def _sized(name: str, config: dict[str, Any]) -> dict[str, Any]:
    if scale() == "full":
        return config
    if name == "vae.json":
        return {kind: {**vae, **_SMALL_VAE} for kind, vae in config.items()}
    return {**config, **_SMALL.get(name, {})}


def _load(name: str) -> dict[str, Any]:
    config = {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}
    return _sized(name, config)


def _encoder(name: str) -> dict[str, Any]:
    return _sized(name, {"CLIP_L": CLIP_L, "CLIP_BIGG": CLIP_BIGG, "T5_XXL": T5_XXL}[name])


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def make_repo(kind: str, dest: Path) -> Path:
    """Write configs and tokenizers (no weights) in the Hugging Face layout."""
    from pipelines.tiny import _clip_tokenizer, _t5_tokenizer

    dest = Path(dest)
    vae = _load("vae.json")
    if kind.startswith("flux"):
        transformer = _load("flux-dev-transformer.json")
        transformer["guidance_embeds"] = kind == "flux-dev"
        _write(dest / "transformer" / "config.json", {"_class_name": "FluxTransformer2DModel", **transformer})
        _write(dest / "vae" / "config.json", {"_class_name": "AutoencoderKL", **vae["flux"],
                                              "scaling_factor": 0.3611, "shift_factor": 0.1159})
        dev = kind == "flux-dev"
        _write(dest / "scheduler" / "scheduler_config.json", {
            "_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0 if dev else 1.0,
            "use_dynamic_shifting": dev, "base_shift": 0.5, "max_shift": 1.15,
            "base_image_seq_len": 256, "max_image_seq_len": 4096})
        _write(dest / "model_index.json", {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]})
        _clip_tokenizer().save_pretrained(dest / "tokenizer")
        _t5_tokenizer().save_pretrained(dest / "tokenizer_2")
    elif kind == "sdxl":
        _write(dest / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **_load("sdxl-unet.json")})
        _write(dest / "vae" / "config.json", {"_class_name": "AutoencoderKL", **vae["sdxl"],
                                              "scaling_factor": 0.13025, "force_upcast": True})
        _write(dest / "scheduler" / "scheduler_config.json", {
            "_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading", "steps_offset": 1,
            "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"})
        _write(dest / "model_index.json", {"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"]})
        _clip_tokenizer().save_pretrained(dest / "tokenizer")
        _clip_tokenizer().save_pretrained(dest / "tokenizer_2")
    else:
        raise ValueError(f"unknown synthetic model {kind!r}; known: {', '.join(SYNTHETIC)}")
    return dest


def build_pipeline(repo: Path, dtype: Any, device: str) -> Any:
    """Instantiate the real pipeline class from the repo's configs with random weights."""
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                           FluxPipeline, FluxTransformer2DModel, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                              CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast)

    repo = Path(repo)
    index = json.loads((repo / "model_index.json").read_text())
    # Schedulers keep numpy-bound tensors: build them outside the device context.
    scheduler_cls = FlowMatchEulerDiscreteScheduler if index["_class_name"] == "FluxPipeline" else EulerDiscreteScheduler
    scheduler = scheduler_cls.from_config(scheduler_cls.load_config(repo / "scheduler"))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # weights are created in the serving dtype, on the device
    try:
        with torch.device(device):
            torch.manual_seed(0)
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(repo / "vae"))
            if index["_class_name"] == "FluxPipeline":
                transformer = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(repo / "transformer"))
                pipe = FluxPipeline(
                    transformer=transformer, vae=vae,
                    text_encoder=CLIPTextModel(CLIPTextConfig(**_encoder("CLIP_L"))),
                    text_encoder_2=T5EncoderModel(T5Config(**_encoder("T5_XXL"))),
                    tokenizer=CLIPTokenizer.from_pretrained(repo / "tokenizer"),
                    tokenizer_2=T5TokenizerFast.from_pretrained(repo / "tokenizer_2"),
                    scheduler=scheduler)
            else:
                unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(repo / "unet"))
                pipe = StableDiffusionXLPipeline(
                    unet=unet, vae=vae,
                    text_encoder=CLIPTextModel(CLIPTextConfig(**_encoder("CLIP_L"))),
                    text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_encoder("CLIP_BIGG"))),
                    tokenizer=CLIPTokenizer.from_pretrained(repo / "tokenizer"),
                    tokenizer_2=CLIPTokenizer.from_pretrained(repo / "tokenizer_2"),
                    scheduler=scheduler)
    finally:
        torch.set_default_dtype(previous)
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def saved_repo(kind: str, dest: Path, device: str = "cuda") -> Path:
    """The synthetic pipeline with its random weights written in the diffusers layout, once.

    For the cold-start benchmark, which boots the worker on a local directory: the weights are
    built on ``device`` in the family's serving dtype (bf16 FLUX, fp16 SDXL; about 34 GB and
    7 GB) and saved as safetensors. A ``.complete`` marker makes a half-written folder rebuild.
    """
    import torch

    from pipelines.registry import detect_family
    from runtime.load import DTYPE_NAMES, choose_precision

    dest = Path(dest)
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    configs = make_repo(kind, dest.with_name(dest.name + ".configs"))
    family = detect_family(configs)
    dtype = getattr(torch, DTYPE_NAMES[choose_precision("auto", family, device)])
    pipe = build_pipeline(configs, dtype, device)
    pipe.save_pretrained(dest, safe_serialization=True)
    del pipe
    shutil.rmtree(configs, ignore_errors=True)
    marker.write_text(kind + "\n")
    return dest


def main(argv: list[str]) -> int:
    """``python -m warmup.synthetic save KIND DEST [DEVICE]``: write the weights (saved_repo)."""
    if len(argv) not in (3, 4) or argv[0] != "save":
        print("usage: python -m warmup.synthetic save {flux-dev,flux-schnell,sdxl} DEST [DEVICE]",
              file=sys.stderr)
        return 2
    print(saved_repo(argv[1], Path(argv[2]), argv[3] if len(argv) == 4 else "cuda"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
