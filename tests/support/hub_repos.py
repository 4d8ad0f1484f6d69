"""Tiny hub repositories with the clutter real ones carry, for the hub server.

``build_repo("visgate/tiny-sdxl", dest)`` writes the built-in tiny model in the Hugging Face layout
(``pipelines.tiny.build_to``), adds a real ``fp16`` variant of every weight file, and then the
decoys a worker must not download, shaped after stabilityai/stable-diffusion-xl-base-1.0 and
black-forest-labs/FLUX.1-dev:

- a root single-file checkpoint (``tiny-sdxl.safetensors``) and a root VAE (``ae.safetensors``);
- ``.bin`` pickles beside the safetensors; ONNX, Flax and OpenVINO copies;
- a ``non_ema`` variant; a folder the pipeline does not name (``vae_decoder/``);
- README, .gitattributes and a preview image.

``expected_files(dest, precision)`` is the set a worker needs, computed independently of
``pipelines.files`` (by construction of the repository), so the tests check the selection
rather than restate it.
"""

from __future__ import annotations

import random
from pathlib import Path

from pipelines.tiny import build_to

_DECOY_SEED = 1234


def _junk(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(size))


def _fp16_copy(src: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v)
               for k, v in load_file(str(src)).items()}
    dest = src.with_name(src.name.replace(".safetensors", ".fp16.safetensors"))
    save_file(tensors, str(dest), metadata={"format": "pt"})
    return dest


def build_repo(model_id: str, dest: Path, decoys: bool = True) -> Path:
    dest = Path(dest)
    build_to(model_id, dest)
    weights = sorted(p for p in dest.rglob("*.safetensors") if p.parent != dest)
    for w in weights:
        _fp16_copy(w)
    if not decoys:
        return dest
    rng = random.Random(_DECOY_SEED)
    total = sum(w.stat().st_size for w in weights)
    name = model_id.split("/")[-1]
    _junk(dest / f"{name}.safetensors", total, rng)  # root single-file checkpoint
    _junk(dest / "ae.safetensors", (dest / "vae" / "diffusion_pytorch_model.safetensors").stat().st_size, rng)
    for w in weights:
        component = w.parent
        size = w.stat().st_size
        pickle = "diffusion_pytorch_model.bin" if w.name.startswith("diffusion") else "pytorch_model.bin"
        _junk(component / pickle, size, rng)
        flax = "diffusion_flax_model.msgpack" if w.name.startswith("diffusion") else "flax_model.msgpack"
        _junk(component / flax, size, rng)
        _junk(component / "model.onnx", size // 4, rng)
        _junk(component / "model.onnx_data", size, rng)
    text_encoder = dest / "text_encoder"
    _junk(text_encoder / "openvino_model.bin", (text_encoder / "model.safetensors").stat().st_size, rng)
    (text_encoder / "openvino_model.xml").write_text("<net name='decoy'/>\n")
    denoiser = dest / ("unet" if (dest / "unet").is_dir() else "transformer")
    plain = denoiser / "diffusion_pytorch_model.safetensors"
    _junk(denoiser / "diffusion_pytorch_model.non_ema.safetensors", plain.stat().st_size, rng)
    (dest / "vae_decoder").mkdir()
    (dest / "vae_decoder" / "config.json").write_text('{"decoy": true}\n')
    _junk(dest / "vae_decoder" / "model.onnx", 50_000, rng)
    (dest / "README.md").write_text(f"# {model_id}\n\nA tiny test repository with decoys.\n")
    (dest / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    _junk(dest / "preview.png", 120_000, rng)
    return dest


def expected_files(repo: Path, precision: str) -> set[str]:
    """model_index.json, each component's configs and tokenizer files, and its weights in the
    variant that ``precision`` loads (fp16 files for fp16/bf16, plain files for fp32)."""
    components = {"scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae",
                  "unet" if (repo / "unet").is_dir() else "transformer"}
    suffix = ".fp16.safetensors" if precision in ("fp16", "bf16") else ".safetensors"
    wanted = {"model_index.json"}
    for component in components:
        for path in (repo / component).iterdir():
            name = path.name
            if name.endswith(".json") or name.endswith(".txt"):
                wanted.add(f"{component}/{name}")
            elif name in (f"model{suffix}", f"diffusion_pytorch_model{suffix}"):
                wanted.add(f"{component}/{name}")
    return wanted
