"""The pipeline registry: family and variant detected from the repository files, with each variant's
defaults; anything that is not a text-to-image pipeline is refused with the supported list."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from pipelines import registry
from pipelines.base import Defaults, GenerationRequest, PipelineFamily, SizeRules
from pipelines.flux import FluxFamily
from pipelines.generic import GenericFamily
from pipelines.registry import detect_family, family_class_for
from pipelines.sdxl import SDXLFamily
from runtime.errors import BootError, UnsupportedModelError
from runtime.validate import validate

pytestmark = pytest.mark.timeout(120)

TINY_FLUX, TINY_FLUX_DEV = "visgate/tiny-flux", "visgate/tiny-flux-dev"
TINY_SDXL, TINY_SDXL_TURBO = "visgate/tiny-sdxl", "visgate/tiny-sdxl-turbo"


def write_repo(root: Path, model_index: dict[str, Any] | None,
               configs: dict[str, dict[str, Any]] | None = None) -> Path:
    """A repository in the Hugging Face layout with only the JSON files detection reads."""
    root.mkdir(parents=True, exist_ok=True)
    if model_index is not None:
        (root / "model_index.json").write_text(json.dumps(model_index))
    for relpath, config in (configs or {}).items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_text(json.dumps(config))
    return root


# ---- the built tiny repositories --------------------------------------------------------------------
TINY = [
    pytest.param(TINY_FLUX, FluxFamily, "schnell", Defaults(4, 0.0, 1024, 1024), 16, id="flux-schnell"),
    pytest.param(TINY_FLUX_DEV, FluxFamily, "dev", Defaults(28, 3.5, 1024, 1024), 16, id="flux-dev"),
    pytest.param(TINY_SDXL, SDXLFamily, "base", Defaults(30, 5.0, 1024, 1024), 8, id="sdxl-base"),
    pytest.param(TINY_SDXL_TURBO, SDXLFamily, "turbo", Defaults(1, 0.0, 512, 512), 8, id="sdxl-turbo"),
]


@pytest.mark.parametrize("model_id, family_cls, variant, defaults, factor", TINY)
def test_tiny_repo_detection(built_tiny_repo: Callable[[str], Path], model_id: str,
                             family_cls: type, variant: str, defaults: Defaults, factor: int) -> None:
    family = detect_family(built_tiny_repo(model_id))
    assert type(family) is family_cls
    assert family.variant == variant
    assert family.defaults == defaults
    assert family.size_rules.factor == factor
    # The pixel limit binds below the side limit: 2048x1152 is allowed, 2048x2048 is not.
    rules = family.size_rules
    assert 2048 * 1152 <= rules.max_pixels < rules.max_side ** 2
    assert rules == SizeRules(factor=factor, min_side=256, max_side=2048, max_pixels=1536 * 1536)
    assert family.describe()["defaults"] == {
        "num_inference_steps": defaults.steps, "guidance_scale": defaults.guidance,
        "height": defaults.height, "width": defaults.width}


@pytest.mark.parametrize("model_id, tokens", [(TINY_FLUX, 256), (TINY_FLUX_DEV, 512)])
def test_flux_text_tokens(built_tiny_repo: Callable[[str], Path], model_id: str, tokens: int) -> None:
    family = detect_family(built_tiny_repo(model_id))
    assert family.max_sequence_length == tokens
    request = GenerationRequest(prompt="p", steps=1, guidance=0.0, height=256, width=256, seed=0)
    assert family.call_kwargs(request) == {"max_sequence_length": tokens}


# ---- variants from configuration alone (shapes of the real repositories) ----------------------------
FLUX_INDEX = {"_class_name": "FluxPipeline", "_diffusers_version": "0.30.0"}
SDXL_INDEX = {"_class_name": "StableDiffusionXLPipeline"}
VAE8 = {"vae/config.json": {"block_out_channels": [128, 256, 512, 512]}}


@pytest.mark.parametrize("guidance_embeds, variant, steps, guidance", [
    (False, "schnell", 4, 0.0), (True, "dev", 28, 3.5)])
def test_flux_variant_from_transformer_config(tmp_path: Path, guidance_embeds: bool, variant: str,
                                              steps: int, guidance: float) -> None:
    repo = write_repo(tmp_path, FLUX_INDEX, {
        **VAE8, "transformer/config.json": {"guidance_embeds": guidance_embeds, "in_channels": 64}})
    family = detect_family(repo)
    assert (family.variant, family.defaults.steps, family.defaults.guidance) == (variant, steps, guidance)
    assert (family.defaults.height, family.defaults.width) == (1024, 1024)


@pytest.mark.parametrize("spacing, sample_size, variant, defaults", [
    ("trailing", 64, "turbo", Defaults(1, 0.0, 512, 512)),
    ("leading", 128, "base", Defaults(30, 5.0, 1024, 1024)),
    ("trailing", 128, "base", Defaults(30, 5.0, 1024, 1024)),  # e.g. a trailing-spaced fine-tune
])
def test_sdxl_variant_from_scheduler_and_unet(tmp_path: Path, spacing: str, sample_size: int,
                                              variant: str, defaults: Defaults) -> None:
    repo = write_repo(tmp_path, SDXL_INDEX, {
        **VAE8, "unet/config.json": {"sample_size": sample_size},
        "scheduler/scheduler_config.json": {"timestep_spacing": spacing}})
    family = detect_family(repo)
    assert (family.variant, family.defaults) == (variant, defaults)


def test_generic_family_for_a_stable_diffusion_repo(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, {"_class_name": "StableDiffusionPipeline"}, {
        **VAE8, "unet/config.json": {"sample_size": 64}})
    family = detect_family(repo)
    assert type(family) is GenericFamily
    assert family.variant == "StableDiffusionPipeline"
    # The pipeline's own call defaults (50 steps, guidance 7.5) and 64 latents x 8 = 512 px.
    assert family.defaults == Defaults(steps=50, guidance=7.5, height=512, width=512)
    assert family.size_rules.factor == 8
    assert family.denoiser_attr == "unet"


def test_generic_default_size_stays_within_the_pixel_limit(tmp_path: Path) -> None:
    # A 2K-native repo (sample_size 256 -> 2048 px) must not default to a size every job is refused.
    from runtime.warmup import serving_shapes

    repo = write_repo(tmp_path, {"_class_name": "PixArtSigmaPipeline",
                                 "transformer": ["diffusers", "PixArtTransformer2DModel"]},
                      {"transformer/config.json": {"sample_size": 256, "patch_size": 2},
                       "vae/config.json": {"block_out_channels": [128, 256, 512, 512]}})
    family = detect_family(repo)
    d, rules = family.defaults, family.size_rules
    assert d.height * d.width <= rules.max_pixels and d.height % rules.factor == 0
    assert serving_shapes(family, ()) == [(d.height, d.width)]


def test_generic_family_for_a_patchified_transformer(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, {"_class_name": "StableDiffusion3Pipeline"}, {
        **VAE8, "transformer/config.json": {"sample_size": 128, "patch_size": 2}})
    family = detect_family(repo)
    assert type(family) is GenericFamily
    assert family.size_rules.factor == 16
    assert family.denoiser_attr == "transformer"
    assert (family.defaults.height, family.defaults.width) == (1024, 1024)


# ---- refusals ----------------------------------------------------------------------------------------
def assert_lists_supported(message: str) -> None:
    assert "Supported: flux (FluxPipeline), sdxl (StableDiffusionXLPipeline)" in message
    assert "through the generic family any of:" in message
    assert "StableDiffusionPipeline" in message and "StableDiffusion3Pipeline" in message


@pytest.mark.parametrize("index", [
    {"_class_name": "StableVideoDiffusionPipeline"},
    {"_class_name": "StableDiffusionXLImg2ImgPipeline"},
    {"_class_name": "AudioLDM2Pipeline"},
    {"_diffusers_version": "0.30.0"},
    {"_class_name": "FluxControlPipeline"},  # in diffusers' text-to-image map, but needs an image
    {"_class_name": "StableDiffusionXLControlNetPipeline"},
], ids=["video", "img2img", "audio", "no-class-name", "flux-control", "sdxl-controlnet"])
def test_not_text_to_image_is_refused_with_the_supported_list(tmp_path: Path, index: dict) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        detect_family(write_repo(tmp_path, index))
    message = str(info.value)
    assert f"{index.get('_class_name', 'no _class_name')} is not a supported text-to-image pipeline" \
        in message
    assert_lists_supported(message)
    # A boot error: the worker reports it, with the stage the boot record saw raise it (fetch
    # when choosing files, load when loading), and exits non-zero.
    assert isinstance(info.value, BootError)
    from runtime.boot import failure_message
    assert failure_message(info.value, (), "fetch")[0] == "fetch"
    assert failure_message(info.value, (), "load")[0] == "load"


def test_transformers_model_dir_is_refused(tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "bert-base-uncased", None, {
        "config.json": {"architectures": ["BertForMaskedLM"], "model_type": "bert"}})
    with pytest.raises(UnsupportedModelError) as info:
        detect_family(repo)
    assert "bert-base-uncased has no model_index.json: it is not a diffusers pipeline repository" \
        in str(info.value)
    assert_lists_supported(str(info.value))


@pytest.mark.parametrize("content, message", [
    ("{not json", "model_index.json could not be read (JSONDecodeError)"),
    ('["FluxPipeline"]', "model_index.json is not a JSON object"),
])
def test_broken_model_index_is_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "model_index.json").write_text(content)
    with pytest.raises(UnsupportedModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        detect_family(tmp_path)


# ---- adding a family = one class + one registry line ------------------------------------------------
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_adding_a_family() -> tuple[str, type[PipelineFamily], tuple[type[PipelineFamily], ...]]:
    """The README's "Adding a family", run as written (a contributor will copy it): its text, its
    class, and the registry its one line makes."""
    section = README.read_text().split("### Adding a family")[1].split("\n## ")[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    namespace: dict[str, Any] = {"__name__": "pipelines.readme_example"}
    exec(code, namespace)  # noqa: S102 - our own README
    [family] = [value for value in namespace.values() if isinstance(value, type)
                and issubclass(value, PipelineFamily) and value.__module__ == namespace["__name__"]]
    [line] = re.findall(r"`(FAMILIES = \(.*?\))`", section)
    scope = {**vars(registry), family.__name__: family}
    exec(line, scope)  # noqa: S102 - our own README
    return section, family, scope["FAMILIES"]


def test_adding_a_family_is_one_class_and_one_registry_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section, new_family, families = readme_adding_a_family()
    [class_name] = new_family.pipeline_classes
    repo = write_repo(tmp_path, {"_class_name": class_name})
    # Before: the generic fallback serves it (AutoPipelineForText2Image knows the class).
    assert type(detect_family(repo)) is GenericFamily
    # The one line: today's registry, the new family placed before the generic fallback.
    assert families == (*registry.FAMILIES[:-1], new_family, registry.FAMILIES[-1])
    monkeypatch.setattr(registry, "FAMILIES", families)
    family = detect_family(repo)
    assert type(family) is new_family
    assert family.describe()["family"] == new_family.name
    assert f"{new_family.name} ({class_name})" in registry.supported_summary()
    # Its facts hold: the limits every family shares (the job contract's pixel limit), its own
    # factor; defaults a job can take; a denoiser the diffusers class really has.
    assert family.size_rules == SizeRules.with_factor(family.size_rules.factor)
    request = validate({"prompt": "a cat"}, family.defaults, family.size_rules, family.limits)
    assert (request.height, request.width) == (family.defaults.height, family.defaults.width)
    pipeline = family.pipeline_class()
    assert pipeline.__name__ == class_name
    assert new_family.denoiser_attr in inspect.signature(pipeline.__init__).parameters
    # The optional overrides it names are the base class's.
    overrides = re.findall(r"`(\w+)`", re.search(r"Optional overrides:(.*?)\.\n", section, re.DOTALL)[1])
    assert overrides and [name for name in overrides if not hasattr(PipelineFamily, name)] == []
    # The others are unaffected.
    assert family_class_for(FLUX_INDEX) is FluxFamily
    assert family_class_for(SDXL_INDEX) is SDXLFamily


def test_registry_order_specific_before_generic(monkeypatch: pytest.MonkeyPatch) -> None:
    """FluxPipeline is also in diffusers' text2image mapping: order is what makes it Flux."""
    assert GenericFamily.matches(FLUX_INDEX) and GenericFamily.matches(SDXL_INDEX)
    assert registry.FAMILIES[-1] is GenericFamily
    assert family_class_for(FLUX_INDEX) is FluxFamily
    monkeypatch.setattr(registry, "FAMILIES", (GenericFamily, FluxFamily))
    assert family_class_for(FLUX_INDEX) is GenericFamily


def test_serving_shapes_put_the_default_first_and_warm_each_shape_once(
        built_tiny_repo: Callable[[str], Path]) -> None:
    from runtime.warmup import serving_shapes

    family = detect_family(built_tiny_repo("visgate/tiny-flux"))
    # the default (1024x1024) listed again is not warmed twice (a compile at a shape costs minutes)
    assert serving_shapes(family, ((768, 1344), (1024, 1024), (768, 1344))) == [(1024, 1024), (768, 1344)]


def test_sdxl_guidance_on_or_off_is_another_compiled_shape(built_tiny_repo: Callable[[str], Path]) -> None:
    # Classifier-free guidance doubles the UNet batch: a job switching it is not a warmed graph.
    family = detect_family(built_tiny_repo("visgate/tiny-sdxl"))

    def key(guidance: float) -> tuple[Any, ...]:
        return family.warm_key(GenerationRequest(prompt="x", steps=1, guidance=guidance, height=1024,
                                                 width=1024, seed=0))

    assert key(5.0) == key(7.5) != key(1.0) == key(0.0)
    flux = detect_family(built_tiny_repo("visgate/tiny-flux-dev"))  # guidance is an input there
    assert flux.warm_key(GenerationRequest(prompt="x", steps=1, guidance=3.5, height=1024, width=1024,
                                           seed=0)) == (1024, 1024)


def test_default_overrides_are_what_jobs_get_and_what_warmup_compiles(tmp_path: Path) -> None:
    """VISGATE_DEFAULT_STEPS/GUIDANCE for a distilled SDXL (Lightning-style: the base model's
    configs): a job leaving them out gets them, and warmup's key is the guidance-off graph that
    such jobs need, not the base model's guidance-on one (every job would then run uncompiled)."""
    from runtime.settings import Settings
    from runtime.warmup import serving_plan, warmup_requests

    repo = write_repo(tmp_path, SDXL_INDEX, {**VAE8, "unet/config.json": {"sample_size": 128}})
    family = detect_family(repo)
    served_as_base = family.warm_key(warmup_requests(family, [(1024, 1024)])[0])
    settings = Settings.from_env({"HF_MODEL_ID": "m", "VISGATE_DEFAULT_STEPS": "4",
                                  "VISGATE_DEFAULT_GUIDANCE": "0"})
    assert serving_plan(family, settings) == [(1024, 1024)]
    assert family.defaults == Defaults(30, 5.0, 1024, 1024)  # the model's own, still
    assert family.serving_defaults == Defaults(4, 0.0, 1024, 1024)
    assert family.describe()["defaults"]["num_inference_steps"] == 4
    [warm] = warmup_requests(family, [(1024, 1024)])
    job = validate({"prompt": "a fox"}, family.serving_defaults, family.size_rules, family.limits)
    assert (job.steps, job.guidance) == (4, 0.0)
    assert family.warm_key(warm) == family.warm_key(job) != served_as_base


# ---- the generic family reads what each pipeline computes ------------------------------------------
def test_generic_sizes_follow_the_pipelines_own_rules(tmp_path: Path) -> None:
    # Sana: AutoencoderDC compresses 32x (encoder_block_out_channels), and its call defaults to 1024.
    sana = detect_family(write_repo(tmp_path / "sana", {"_class_name": "SanaPipeline"}, {
        "vae/config.json": {"encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024]},
        "transformer/config.json": {"sample_size": 32, "patch_size": 1}}))
    assert sana.size_rules.factor == 32
    assert (sana.defaults.height, sana.defaults.width) == (1024, 1024)
    # Chroma packs 2x2 latents like FLUX: a side that is not a multiple of 16 would be rounded
    # down by the pipeline, and the image would not have the size the response states.
    chroma = detect_family(write_repo(tmp_path / "chroma", {"_class_name": "ChromaPipeline"}, {
        **VAE8, "transformer/config.json": {"patch_size": 1}}))
    assert chroma.size_rules.factor == 16
    # Qwen-Image's VAE states its depth as temporal downsampling flags: 8x, then packed: 16.
    qwen = detect_family(write_repo(tmp_path / "qwen", {"_class_name": "QwenImagePipeline"}, {
        "vae/config.json": {"temperal_downsample": [False, True, True]},
        "transformer/config.json": {"patch_size": 2}}))
    assert (qwen.vae_scale_factor, qwen.size_rules.factor) == (8, 16)
    # Kandinsky 3 rounds each side up to a multiple of 64 (its MoVQ, 8x, on 8-latent cells).
    kandinsky = detect_family(write_repo(tmp_path / "k3", {"_class_name": "Kandinsky3Pipeline"}, {
        "movq/config.json": {"block_out_channels": [128, 256, 256, 512]}}))
    assert kandinsky.size_rules.factor == 64 and kandinsky.defaults.height == 1024
    # Z-Image states its patch as all_patch_size, a list.
    z_image = detect_family(write_repo(tmp_path / "z", {"_class_name": "ZImagePipeline"}, {
        **VAE8, "transformer/config.json": {"all_patch_size": [2]}}))
    assert z_image.size_rules.factor == 16


@pytest.mark.parametrize("class_name", ["StableCascadeCombinedPipeline", "QwenImage21Pipeline",
                                        "HeliosPyramidPipeline", "HeliosPipeline",
                                        "WuerstchenCombinedPipeline"])
def test_a_pipeline_whose_call_cannot_take_a_job_is_refused_at_boot(tmp_path: Path, class_name: str) -> None:
    # No guidance_scale (Stable Cascade's combined pipeline, Qwen-Image 2.1; Wuerstchen's takes
    # it in **kwargs, then passes it to its decoder beside its own: a TypeError), no
    # num_inference_steps (Helios' pyramid), or video frames instead of images (Helios): every
    # call with the job's arguments would fail.
    from pipelines.generic import text2image_class_names

    assert class_name not in text2image_class_names()
    with pytest.raises(BootError) as info:
        detect_family(write_repo(tmp_path, {"_class_name": class_name}, VAE8))
    assert_lists_supported(str(info.value))


@pytest.mark.parametrize("class_name, base, distilled", [
    ("Flux2KleinPipeline", (50, 4.0), (4, 1.0)),  # FLUX.2 [klein] 4B/9B: 4 steps, no CFG
    ("Krea2Pipeline", (28, 4.5), (8, 0.0)),  # Krea 2 turbo, as its pipeline's docstring says
])
def test_a_distilled_checkpoint_gets_its_few_step_defaults(tmp_path: Path, class_name: str,
                                                           base: tuple, distilled: tuple) -> None:
    """These pipelines keep the base checkpoint's call defaults for the distilled one, which says
    so only in model_index.json (written here by diffusers itself): served with 50 (28) steps and
    guidance 4.0 (4.5, classifier-free), a job without those fields ran 6-12 times the steps the
    model needs."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    for is_distilled, (steps, guidance) in ((False, base), (True, distilled)):
        repo = tmp_path / str(is_distilled)
        getattr(diffusers, class_name)(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                                       tokenizer=None, transformer=None,
                                       is_distilled=is_distilled).save_pretrained(repo)
        assert json.loads((repo / "model_index.json").read_text())["is_distilled"] is is_distilled
        family = detect_family(repo)
        assert (type(family), family.variant) == (GenericFamily, class_name)
        assert (family.defaults.steps, family.defaults.guidance) == (steps, guidance)
        # Guidance needs no other compiled graph: FLUX.2 [klein] runs none once distilled, and
        # its base's, as Krea 2's (distilled or not), is a second transformer call at the same
        # shapes (test_more_families.py runs [klein] compiled): no key, no needless "not warmed up".
        def key(guidance: float) -> tuple:
            return family.warm_key(GenerationRequest(prompt="x", steps=4, guidance=guidance,
                                                     height=1024, width=1024, seed=0))

        assert key(0.0) == key(0.5) == key(1.0) == key(4.0)
