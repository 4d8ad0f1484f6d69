"""File selection per family: what a worker downloads from real repositories' listings.

The listings are those of the real hub repositories (names and rough sizes), so the tests show
what a boot of SDXL base or FLUX.1-dev downloads and what it leaves on the hub.
"""

from __future__ import annotations

from pipelines.files import RepoFile, components_without_config, components_without_weights, select_files
from pipelines.flux import FluxFamily
from pipelines.sdxl import SDXLFamily

GB = 1_000_000_000

SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True, "add_watermarker": None,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    "image_encoder": [None, None], "feature_extractor": [None, None],
}

# stabilityai/stable-diffusion-xl-base-1.0 (sizes rounded).
SDXL_FILES = {
    ".gitattributes": 1_500, "01.png": 4_600_000, "LICENSE.md": 14_000, "README.md": 8_000,
    "comparison.png": 130_000, "pipeline.png": 80_000, "model_index.json": 609,
    "sd_xl_base_1.0.safetensors": 6_940_000_000, "sd_xl_base_1.0_0.9vae.safetensors": 6_940_000_000,
    "sd_xl_offset_example-lora_1.0.safetensors": 49_600_000,
    "scheduler/scheduler_config.json": 479,
    "text_encoder/config.json": 565, "text_encoder/flax_model.msgpack": 492_000_000,
    "text_encoder/model.fp16.safetensors": 246_000_000, "text_encoder/model.onnx": 492_000_000,
    "text_encoder/model.safetensors": 492_000_000, "text_encoder/openvino_model.bin": 492_000_000,
    "text_encoder/openvino_model.xml": 1_000_000,
    "text_encoder_2/config.json": 575, "text_encoder_2/flax_model.msgpack": 2_780_000_000,
    "text_encoder_2/model.fp16.safetensors": 1_390_000_000, "text_encoder_2/model.onnx": 1_000_000,
    "text_encoder_2/model.onnx_data": 2_780_000_000, "text_encoder_2/model.safetensors": 2_780_000_000,
    "text_encoder_2/openvino_model.bin": 2_780_000_000, "text_encoder_2/openvino_model.xml": 2_000_000,
    "tokenizer/merges.txt": 525_000, "tokenizer/special_tokens_map.json": 472,
    "tokenizer/tokenizer_config.json": 737, "tokenizer/vocab.json": 1_060_000,
    "tokenizer_2/merges.txt": 525_000, "tokenizer_2/special_tokens_map.json": 460,
    "tokenizer_2/tokenizer_config.json": 725, "tokenizer_2/vocab.json": 1_060_000,
    "unet/config.json": 1_680, "unet/diffusion_flax_model.msgpack": 10_270_000_000,
    "unet/diffusion_pytorch_model.fp16.safetensors": 5_140_000_000,
    "unet/diffusion_pytorch_model.safetensors": 10_270_000_000, "unet/model.onnx": 7_000_000,
    "unet/model.onnx_data": 10_270_000_000, "unet/openvino_model.bin": 10_270_000_000,
    "unet/openvino_model.xml": 25_000_000,
    "vae/config.json": 642, "vae/diffusion_flax_model.msgpack": 335_000_000,
    "vae/diffusion_pytorch_model.fp16.safetensors": 167_000_000,
    "vae/diffusion_pytorch_model.safetensors": 335_000_000,
    "vae_1_0/config.json": 607, "vae_1_0/diffusion_pytorch_model.fp16.safetensors": 167_000_000,
    "vae_1_0/diffusion_pytorch_model.safetensors": 335_000_000,
    "vae_decoder/config.json": 607, "vae_decoder/model.onnx": 198_000_000,
    "vae_decoder/openvino_model.bin": 198_000_000, "vae_decoder/openvino_model.xml": 1_000_000,
    "vae_encoder/config.json": 607, "vae_encoder/model.onnx": 137_000_000,
}

SDXL_CONFIGS = {
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder_2/config.json", "unet/config.json", "vae/config.json",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json", "tokenizer_2/vocab.json",
}

FLUX_INDEX = {
    "_class_name": "FluxPipeline", "_diffusers_version": "0.30.0.dev0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
}

# black-forest-labs/FLUX.1-dev (sizes rounded).
FLUX_FILES = {
    ".gitattributes": 1_600, "LICENSE.md": 18_000, "README.md": 5_000, "dev_grid.jpg": 1_200_000,
    "ae.safetensors": 335_000_000, "flux1-dev.safetensors": 23_800_000_000, "model_index.json": 536,
    "scheduler/scheduler_config.json": 273,
    "text_encoder/config.json": 613, "text_encoder/model.safetensors": 246_000_000,
    "text_encoder_2/config.json": 782, "text_encoder_2/model-00001-of-00002.safetensors": 4_990_000_000,
    "text_encoder_2/model-00002-of-00002.safetensors": 4_530_000_000,
    "text_encoder_2/model.safetensors.index.json": 19_900,
    "tokenizer/merges.txt": 525_000, "tokenizer/special_tokens_map.json": 588,
    "tokenizer/tokenizer_config.json": 705, "tokenizer/vocab.json": 1_060_000,
    "tokenizer_2/special_tokens_map.json": 2_540, "tokenizer_2/spiece.model": 792_000,
    "tokenizer_2/tokenizer.json": 2_420_000, "tokenizer_2/tokenizer_config.json": 20_800,
    "transformer/config.json": 378,
    "transformer/diffusion_pytorch_model-00001-of-00003.safetensors": 9_980_000_000,
    "transformer/diffusion_pytorch_model-00002-of-00003.safetensors": 9_950_000_000,
    "transformer/diffusion_pytorch_model-00003-of-00003.safetensors": 3_870_000_000,
    "transformer/diffusion_pytorch_model.safetensors.index.json": 121_000,
    "vae/config.json": 820, "vae/diffusion_pytorch_model.safetensors": 168_000_000,
}


def listing(files: dict[str, int]) -> list[RepoFile]:
    return [RepoFile(path, size) for path, size in files.items()]


def total(files: dict[str, int], paths: tuple[str, ...] | set[str]) -> int:
    return sum(files[p] for p in paths)


def test_sdxl_half_precision_takes_the_fp16_variant_and_nothing_else():
    selection = SDXLFamily.select_files(SDXL_INDEX, listing(SDXL_FILES), "fp16")
    assert selection.variant == "fp16"
    assert set(selection.paths) == SDXL_CONFIGS | {
        "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"}
    # About 6.9 GB of the repository's ~77 GB.
    assert 6.9 * GB < total(SDXL_FILES, selection.paths) < 7.0 * GB
    assert sum(SDXL_FILES.values()) > 75 * GB


def test_sdxl_fp32_takes_the_plain_files():
    selection = SDXLFamily.select_files(SDXL_INDEX, listing(SDXL_FILES), "fp32")
    assert selection.variant is None
    weights = {p for p in selection.paths if p.endswith(".safetensors")}
    assert weights == {"text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
                       "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"}


def test_never_onnx_flax_openvino_pickles_root_checkpoints_or_unnamed_folders():
    for precision in ("fp16", "bf16", "fp32"):
        paths = SDXLFamily.select_files(SDXL_INDEX, listing(SDXL_FILES), precision).paths
        assert "/" in "".join(paths)
        for path in paths:
            assert not path.endswith((".onnx", ".onnx_data", ".msgpack", ".bin", ".xml", ".png", ".md"))
            assert path == "model_index.json" or "/" in path, path
            assert path.split("/")[0] not in ("vae_1_0", "vae_decoder", "vae_encoder")


def test_flux_dev_bf16_takes_the_sharded_diffusers_weights_not_the_root_checkpoint():
    selection = FluxFamily.select_files(FLUX_INDEX, listing(FLUX_FILES), "bf16")
    assert selection.variant is None  # FLUX.1-dev ships no variants: its plain files are bf16
    paths = set(selection.paths)
    assert "flux1-dev.safetensors" not in paths and "ae.safetensors" not in paths
    assert {"transformer/diffusion_pytorch_model.safetensors.index.json",
            "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
            "text_encoder_2/model.safetensors.index.json", "tokenizer_2/spiece.model",
            "text_encoder_2/model-00002-of-00002.safetensors"} <= paths
    skipped = set(FLUX_FILES) - paths
    assert skipped == {".gitattributes", "LICENSE.md", "README.md", "dev_grid.jpg", "ae.safetensors",
                       "flux1-dev.safetensors"}
    # The 23.8 GB single-file checkpoint and the root VAE stay on the hub.
    assert total(FLUX_FILES, skipped) > 24 * GB


def test_sharded_variant_files_and_their_index():
    files = {"model_index.json": 100, "unet/config.json": 10,
             "unet/diffusion_pytorch_model.safetensors.index.json": 5,
             "unet/diffusion_pytorch_model-00001-of-00002.safetensors": 100,
             "unet/diffusion_pytorch_model-00002-of-00002.safetensors": 100,
             "unet/diffusion_pytorch_model.safetensors.index.fp16.json": 5,
             "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors": 50,
             "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors": 50}
    index = {"_class_name": "X", "unet": ["diffusers", "UNet2DConditionModel"]}
    half = select_files(index, listing(files), "fp16")
    assert half.variant == "fp16"
    assert set(half.paths) == {"model_index.json", "unet/config.json",
                               "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
                               "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                               "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors"}
    full = select_files(index, listing(files), "fp32")
    assert full.variant is None
    assert "unet/diffusion_pytorch_model.safetensors.index.json" in full.paths
    assert not any("fp16" in p for p in full.paths)


def test_a_pickle_only_where_a_component_has_no_safetensors():
    files = {"model_index.json": 1, "unet/config.json": 1, "unet/diffusion_pytorch_model.bin": 9,
             "vae/config.json": 1, "vae/diffusion_pytorch_model.bin": 9,
             "vae/diffusion_pytorch_model.safetensors": 9}
    index = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    paths = set(select_files(index, listing(files), "fp32").paths)
    assert "unet/diffusion_pytorch_model.bin" in paths
    assert "vae/diffusion_pytorch_model.bin" not in paths
    assert "vae/diffusion_pytorch_model.safetensors" in paths


def test_components_mix_variant_and_plain_files_as_diffusers_does():
    # diffusers loads the variant for components that have it and plain files for the others.
    files = {"model_index.json": 1, "unet/config.json": 1,
             "unet/diffusion_pytorch_model.fp16.safetensors": 5,
             "unet/diffusion_pytorch_model.safetensors": 10,
             "vae/config.json": 1, "vae/diffusion_pytorch_model.safetensors": 10}
    index = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    selection = select_files(index, listing(files), "bf16")
    assert selection.variant == "fp16"
    assert {"unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.safetensors"} <= set(selection.paths)
    assert "unet/diffusion_pytorch_model.safetensors" not in selection.paths


def test_bf16_prefers_a_bf16_variant_and_fp32_falls_back_to_the_only_variant():
    files = {"model_index.json": 1, "transformer/config.json": 1,
             "transformer/diffusion_pytorch_model.bf16.safetensors": 5,
             "transformer/diffusion_pytorch_model.fp16.safetensors": 5}
    index = {"transformer": ["diffusers", "FluxTransformer2DModel"]}
    assert select_files(index, listing(files), "bf16").variant == "bf16"
    assert select_files(index, listing(files), "fp16").variant == "fp16"
    # No plain files: fp32 cannot load without a variant, so it takes one (cast at load).
    only = select_files(index, listing(files), "fp32")
    assert only.variant == "fp16"
    assert "transformer/diffusion_pytorch_model.fp16.safetensors" in only.paths


def test_components_without_weights_are_reported():
    files = {"model_index.json": 1, "unet/config.json": 1, "unet/model.onnx": 9,
             "scheduler/scheduler_config.json": 1}
    index = {"unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "X"]}
    selection = select_files(index, listing(files), "fp16")
    assert components_without_weights(index, selection.paths) == ("unet",)
    ok = SDXLFamily.select_files(SDXL_INDEX, listing(SDXL_FILES), "fp16")
    assert components_without_weights(SDXL_INDEX, ok.paths) == ()


def test_components_without_config_are_reported():
    """What a partial copy lacks that components_without_weights cannot see: a whole folder, or a
    model's config.json beside its weights."""
    complete = SDXLFamily.select_files(SDXL_INDEX, listing(SDXL_FILES), "fp16")
    assert components_without_config(SDXL_INDEX, complete.paths) == ()
    partial = {p: s for p, s in SDXL_FILES.items()
               if not p.startswith(("tokenizer_2/", "text_encoder/")) and p != "unet/config.json"}
    selection = SDXLFamily.select_files(SDXL_INDEX, listing(partial), "fp16")
    assert components_without_config(SDXL_INDEX, selection.paths) == ("text_encoder", "tokenizer_2", "unet")
    assert components_without_weights(SDXL_INDEX, selection.paths) == ()  # blind to all three
