"""The prompt's length under compilation: one graph per image size serves prompts of any length.

Compiled graphs are static and serving never recompiles, so a model whose text embeddings
follow the prompt's length served almost every job eagerly, silently. Qwen-Image (its own
family) pads them to a fixed length under a mask: the padded image must be the unpadded one, and
after warmup no prompt up to that length may need another graph (``fail_on_recompile`` raises
where it would). Any other model is checked at boot, and where the lengths change the shapes
(Qwen-Image served as the generic family, Z-Image) a second warmup pass compiles graphs dynamic
in the sizes that changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pipelines.base import GenerationRequest
from pipelines.qwenimage import TEXT_TOKENS, padded_encoder
from tests.integration.test_optimize import MAX_PIXEL_DIFF, MIN_PSNR_DB, _loaded, psnr
from warmup.local_worker import ROOT, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Other lengths than warmup's prompt ("a photo of a cat sitting on a wooden table, warm light").
PROMPTS = ("a red fox", "a lighthouse at dusk on a rocky coast, long exposure")


@pytest.fixture(autouse=True)
def _dynamo_as_found():
    """Each test compiles its own pipeline: none of its graphs or stance reach the next test."""
    yield
    import torch

    torch.compiler.set_stance("default")
    torch._dynamo.reset()


def _request(prompt: str, guidance: float = 4.0) -> GenerationRequest:
    # 4.0 > 1: true classifier-free guidance, so the negative prompt's pass is served too.
    return GenerationRequest(prompt=prompt, steps=2, guidance=guidance, height=256, width=256, seed=3)


def test_the_family_serves_qwen_image(built_tiny_repo):
    from pipelines.registry import detect_family

    family = detect_family(built_tiny_repo("visgate/tiny-qwen-image"))
    assert (family.name, family.variant) == ("qwen-image", "QwenImagePipeline")
    assert family.defaults.guidance == 4.0  # true_cfg_scale, as the generic family reads it


def _predictions(family: Any, pipe: Any, prompt: str) -> tuple[np.ndarray, Any]:
    """The image and the transformer's outputs (every pass of every step) for ``prompt``."""
    import torch

    outputs: list[Any] = []
    hook = pipe.transformer.register_forward_hook(lambda m, a, out: outputs.append(out[0].clone()))
    try:
        image = family.generate(pipe, _request(prompt))
    finally:
        hook.remove()
    return image, torch.stack(outputs)


def test_padding_under_the_mask_gives_the_unpadded_image(built_tiny_repo):
    """Padding is lossless: the mask hides the padded tokens from every attention and the text
    positions start at 0 whatever the length. The same padding without the mask changes the
    transformer's predictions (so this test can tell)."""
    import torch

    loaded, _ = _loaded(built_tiny_repo("visgate/tiny-qwen-image"))
    family, pipe = loaded.family, loaded.pipe
    own = pipe.encode_prompt
    plain = {p: _predictions(family, pipe, p) for p in PROMPTS}

    def unmasked(*args: Any, **kwargs: Any) -> Any:
        embeds, _ = padded_encoder(own, TEXT_TOKENS)(*args, **kwargs)
        return embeds, None

    try:
        pipe.encode_prompt = padded_encoder(own, TEXT_TOKENS)
        for prompt, (image, predictions) in plain.items():
            padded_image, padded = _predictions(family, pipe, prompt)
            torch.testing.assert_close(padded, predictions, rtol=1e-4, atol=1e-5)
            assert np.abs(padded_image.astype(int) - image.astype(int)).max() <= MAX_PIXEL_DIFF
            assert psnr(padded_image, image) >= MIN_PSNR_DB
        pipe.encode_prompt = unmasked
        _, wrong = _predictions(family, pipe, PROMPTS[0])
        assert (wrong - plain[PROMPTS[0]][1]).abs().max() > 1e-3
    finally:
        pipe.encode_prompt = own


@pytest.mark.parametrize("compile_mode", ["regional", "aot"])
def test_compiled_graphs_serve_prompts_of_every_length(built_tiny_repo, tmp_path, compile_mode, caplog):
    import torch

    from runtime.aot import AotStore
    from runtime.optimize import optimize, serve_stance
    from runtime.warmup import warmup

    loaded, settings = _loaded(built_tiny_repo("visgate/tiny-qwen-image"), VISGATE_COMPILE=compile_mode,
                               VISGATE_CACHE_DIR=str(tmp_path))
    family, pipe = loaded.family, loaded.pipe
    eager = {p: family.generate(pipe, _request(p)) for p in PROMPTS}
    report = optimize(loaded, settings, aot_store=AotStore(tmp_path / "aot", "testkey"))
    assert f"prompt embeddings padded to {TEXT_TOKENS} tokens" in report.applied["compile"]
    warmup(family, pipe, [(256, 256)])
    serve_stance(report)
    caplog.set_level(logging.WARNING)
    # A recompile (torch.compile) raises here; an unseen aot signature would run eagerly
    # with a warning.
    with torch.compiler.set_stance("fail_on_recompile"):
        for prompt, image in eager.items():
            for guidance in (4.0, 1.0):  # with and without the negative prompt's pass
                served = family.generate(pipe, _request(prompt, guidance))
                if guidance == 4.0:
                    assert psnr(served, image) >= MIN_PSNR_DB
    assert not [r for r in caplog.records if "eagerly" in r.getMessage()]
    for wrapper in report.aot_modules:
        assert wrapper.eager_calls == 0

    # A prompt past the padded length keeps its own (the pipeline's limit is 512 tokens) and
    # is served eagerly, with a warning that says why.
    long = family.generate(pipe, _request("a fox " * 60))
    assert long.shape == (256, 256, 3)
    assert any(f"longer than the {TEXT_TOKENS} the compiled graphs take" in r.getMessage()
               for r in caplog.records)


def test_no_padding_where_nothing_is_compiled(built_tiny_repo):
    """Uncompiled, padding would only cost time (a longer sequence at every step)."""
    from runtime.optimize import optimize

    loaded, settings = _loaded(built_tiny_repo("visgate/tiny-qwen-image"), VISGATE_COMPILE="off")
    optimize(loaded, settings)
    assert not hasattr(loaded.pipe.encode_prompt, "text_tokens")


# ---- any other model: a compiled warmup checks whether other prompt lengths stay compiled ----------
def _loaded_generic(repo: Any, **env: str) -> tuple[Any, Any]:
    """``_loaded``, with the generic family serving ``repo`` (a Qwen-Image repository as served
    before its own family)."""
    from pipelines.generic import GenericFamily
    from pipelines.registry import read_model_index
    from runtime.load import load
    from runtime.settings import Settings

    settings = Settings.from_env({"HF_MODEL_ID": str(repo), "DEVICE": "cpu", **env})
    return load(settings, repo, family=GenericFamily(repo, read_model_index(repo))), settings


@pytest.mark.parametrize("model, as_generic, expected", [
    ("visgate/tiny-qwen-image", True, "served eagerly"),  # embeddings cut to each prompt's length
    ("visgate/tiny-qwen-image", False, "compiled"),  # padded by its family
    ("visgate/tiny-sd", False, "compiled"),  # generic, CLIP pads to 77 tokens
    # The families that skip the check at boot (fixed_prompt_shapes): it holds for them.
    ("visgate/tiny-flux-dev", False, "compiled"),
    ("visgate/tiny-sdxl", False, "compiled"),
])
def test_a_compiled_warmup_finds_whether_other_prompt_lengths_stay_compiled(
        built_tiny_repo, tmp_path, monkeypatch, model, as_generic, expected):
    if model == "visgate/tiny-qwen-image":
        # The tiny tokenizer has no merges: one token per byte, and ~150 of its template's are
        # left after the pipeline drops the 34 a real Qwen tokenizer makes of it. The probe
        # prompt (~30 real tokens) would pass the padded length here; this one is as short.
        monkeypatch.setattr("runtime.warmup.PROBE_PROMPT", "a red fox at dawn")

    from runtime.optimize import optimize, serve_stance
    from runtime.warmup import check_prompt_lengths, warmup

    loaded, settings = (_loaded_generic if as_generic else _loaded)(
        built_tiny_repo(model), VISGATE_COMPILE="regional", VISGATE_CACHE_DIR=str(tmp_path))
    report = optimize(loaded, settings)
    assert loaded.family.fixed_prompt_shapes is (model != "visgate/tiny-sd" and not as_generic)
    warmup(loaded.family, loaded.pipe, [(256, 256)])
    serve_stance(report)
    assert check_prompt_lengths(loaded.family, loaded.pipe, (256, 256), report.aot_modules) == expected
    # Serving goes on as before: eagerly where nothing was compiled for the job, no error.
    loaded.family.generate(loaded.pipe, GenerationRequest(prompt="a red fox", steps=1, guidance=0.0,
                                                          height=256, width=320, seed=1))


def test_the_boot_record_says_whether_other_prompt_lengths_stay_compiled(run_worker_once, tmp_path):
    """The worker runs the check after a compiled warmup for a family that does not know its
    prompt shapes are fixed (the generic one), and the boot record (so the ready webhook) has it."""
    run = run_worker_once({"HF_MODEL_ID": "visgate/tiny-sd", "VISGATE_COMPILE": "regional",
                           "VISGATE_DEFAULT_STEPS": "2", "TMPDIR": str(tmp_path)},
                          {"prompt": "a red fox", "num_inference_steps": 2}, timeout=600)
    assert run.returncode == 0, run.log[-3000:]
    record = json.loads(re.search(r"boot record (\{.*\})\n", run.log)[1])
    assert record["stages"]["warmup"]["other_prompt_lengths"] == "compiled", record["stages"]["warmup"]
    assert "most jobs will be served eagerly" not in run.log


def test_an_attention_backend_that_takes_no_mask_leaves_prompts_unpadded(built_tiny_repo, tmp_path, caplog):
    """FlashAttention 2/3 (``auto`` picks FA3 on Hopper where installed) refuse an attention
    mask: padded prompts would fail every job and the warmup. Such a backend gets no padding, a
    warning naming the setting that would, and the boot's compile for other prompt lengths
    (dynamic in length) instead. PyTorch's flash-only SDPA backend refuses masks the same way,
    and runs on a CPU."""
    import torch

    from runtime.optimize import optimize, serve_stance
    from runtime.warmup import fit_prompt_lengths, warmup

    loaded, settings = _loaded(built_tiny_repo("visgate/tiny-qwen-image"), VISGATE_COMPILE="regional",
                               VISGATE_CACHE_DIR=str(tmp_path))
    loaded.pipe.transformer.set_attention_backend("_native_flash")
    caplog.set_level(logging.WARNING)
    report = optimize(loaded, settings)
    assert "prompt embeddings not padded (the attention backend takes no mask)" in report.applied["compile"]
    assert any("VISGATE_ATTENTION=sdpa" in r.getMessage() for r in caplog.records)
    assert not hasattr(loaded.pipe.encode_prompt, "text_tokens") and not loaded.family.fixed_prompt_shapes
    try:
        warmup(loaded.family, loaded.pipe, [(256, 256)])
        assert fit_prompt_lengths(loaded.family, loaded.pipe, [(256, 256)], []) == \
            "compiled, dynamic in prompt length"
        serve_stance(report)
        with torch.compiler.set_stance("fail_on_recompile"):
            for prompt in PROMPTS:
                assert loaded.family.generate(loaded.pipe, _request(prompt)).shape == (256, 256, 3)
    finally:
        # set_attention_backend also sets diffusers' process-wide backend: back to PyTorch SDPA
        # for the tests after this one.
        loaded.pipe.transformer.set_attention_backend("native")


def test_a_prompt_length_check_that_fails_does_not_fail_the_boot(built_tiny_repo, caplog, monkeypatch):
    """The check is one more generation after warmup: whatever stops it (here the pipeline itself
    failing) is a warning and "not checked" in the boot record, never a failed boot."""
    from runtime.warmup import check_prompt_lengths

    loaded, _ = _loaded(built_tiny_repo("visgate/tiny-sd"))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(loaded.pipe, "encode_prompt", broken)
    caplog.set_level(logging.WARNING)
    said = check_prompt_lengths(loaded.family, loaded.pipe, (256, 256), [])
    assert said == "not checked (RuntimeError: CUDA error: an illegal memory access was encountered)"
    assert any("did not run to its end" in r.getMessage() for r in caplog.records)


def test_where_lengths_change_the_shapes_a_second_pass_compiles_graphs_dynamic_in_length(
        built_tiny_repo, tmp_path, caplog):
    """A model whose text embeddings follow the prompt's length (Qwen-Image as the generic family
    serves it: CogView4 and Z-Image are built the same way) gets its graphs compiled again with
    the sizes that changed symbolic, at every warmed shape: then prompts of lengths neither pass
    saw run compiled (``fail_on_recompile`` raises nowhere) and agree with eager."""
    import torch

    from runtime.optimize import optimize, serve_stance
    from runtime.warmup import fit_prompt_lengths, warmup

    loaded, settings = _loaded_generic(built_tiny_repo("visgate/tiny-qwen-image"), VISGATE_COMPILE="regional",
                                       VISGATE_CACHE_DIR=str(tmp_path))
    family, pipe = loaded.family, loaded.pipe
    shapes = [(256, 256), (256, 320)]
    prompts = ("a fox", "a lighthouse at dusk on a rocky coast, long exposure, stars")
    eager = {(p, shape): family.generate(pipe, replace(_request(p), height=shape[0], width=shape[1]))
             for p in prompts for shape in shapes}
    report = optimize(loaded, settings)
    caplog.set_level(logging.WARNING)
    warmup(family, pipe, shapes)
    assert fit_prompt_lengths(family, pipe, shapes, []) == "compiled, dynamic in prompt length"
    serve_stance(report)
    with torch.compiler.set_stance("fail_on_recompile"):
        for (prompt, shape), image in eager.items():
            served = family.generate(pipe, replace(_request(prompt), height=shape[0], width=shape[1]))
            assert psnr(served, image) >= MIN_PSNR_DB
    assert not [r for r in caplog.records if "served eagerly" in r.getMessage()]


def test_ahead_of_time_packages_are_only_checked_and_the_log_says_so(built_tiny_repo, tmp_path, caplog):
    """aot packages are static per input signature: no second pass there, a warning instead."""
    from runtime.aot import AotStore
    from runtime.optimize import optimize, serve_stance
    from runtime.warmup import fit_prompt_lengths, warmup

    loaded, settings = _loaded_generic(built_tiny_repo("visgate/tiny-qwen-image"), VISGATE_COMPILE="aot",
                                       VISGATE_CACHE_DIR=str(tmp_path))
    report = optimize(loaded, settings, aot_store=AotStore(tmp_path / "aot", "testkey"))
    caplog.set_level(logging.WARNING)
    warmup(loaded.family, loaded.pipe, [(256, 256)])
    serve_stance(report)
    assert fit_prompt_lengths(loaded.family, loaded.pipe, [(256, 256)], report.aot_modules) == "served eagerly"
    assert any("most jobs will be served eagerly" in r.getMessage() for r in caplog.records)


# ---- Z-Image: one sequence of caption and image tokens, the caption rounded up to 32 -------------
@pytest.fixture(scope="module")
def tiny_z_image(tmp_path_factory) -> Any:
    """A tiny Z-Image pipeline (random weights, a byte-level tokenizer with a chat template),
    served by the generic family: its caption embeddings keep each prompt's own length (rounded
    up to 32 inside the transformer), and with classifier-free guidance the empty negative
    prompt's length decides whether the batch needs a mask."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from pipelines.tiny import _vae

    tokenizer = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(bytes_to_unicode().values())}, merges=[])
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                               "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    torch.manual_seed(0)
    encoder = Qwen3Model(Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                     vocab_size=len(tokenizer)))
    torch.manual_seed(1)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
                                           n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                           cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[1024, 512, 512])
    torch.manual_seed(2)
    repo = tmp_path_factory.mktemp("z-image")
    ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(latent_channels=16, flux=True),
                   text_encoder=encoder, tokenizer=tokenizer,
                   transformer=transformer).save_pretrained(repo, safe_serialization=True)
    # The generic family's default size is the denoiser's sample_size in latents (1024² without
    # one): 256², so that a worker booting this model warms a tiny image (diffusers ignores the key).
    config = repo / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "sample_size": 32}))
    return repo


def test_z_image_serves_every_prompt_length_compiled(tiny_z_image, tmp_path):
    """Z-Image as the generic family serves it, compiled, with classifier-free guidance: before,
    only prompts rounding up to warmup's length ran compiled. A short prompt matters on its own:
    as long as the empty negative prompt, the batch runs without a mask, another graph."""
    import torch

    from runtime.optimize import optimize, serve_stance
    from runtime.warmup import fit_prompt_lengths, warmup

    loaded, settings = _loaded(tiny_z_image, VISGATE_COMPILE="regional", VISGATE_CACHE_DIR=str(tmp_path))
    family, pipe = loaded.family, loaded.pipe
    assert (family.name, family.variant) == ("generic", "ZImagePipeline")
    guidance = family.serving_defaults.guidance
    assert guidance > 1  # the batch holds the prompt and the negative one
    shapes = [(256, 256), (256, 320)]
    requests = [GenerationRequest(prompt=p, steps=2, guidance=guidance, height=h, width=w, seed=3)
                for p in ("a cat", "a lighthouse at dusk on a rocky coast, long exposure, stars over the sea")
                for h, w in shapes]
    eager = [family.generate(pipe, r) for r in requests]
    report = optimize(loaded, settings)
    warmup(family, pipe, shapes)
    assert fit_prompt_lengths(family, pipe, shapes, []) == "compiled, dynamic in prompt length"
    serve_stance(report)
    with torch.compiler.set_stance("fail_on_recompile"):
        for request, image in zip(requests, eager):
            assert psnr(family.generate(pipe, request), image) >= MIN_PSNR_DB


# The worker's boot (runtime.boot.boot, every stage), then jobs through the job path, each under
# fail_on_recompile: serving runs eager_on_recompile, which falls back to eager without a word,
# so only this stance tells a job that ran compiled from one that did not.
_BOOT_THEN_SERVE = """
import json, sys
import torch
from runtime.boot import boot, read_settings
from runtime.boot_report import BootRecord
from runtime.compile_cache import inductor_cache_counters
from runtime.handler import generate_png
record = BootRecord()
service = boot(read_settings(), record)
with torch.compiler.set_stance("fail_on_recompile"):
    for prompt in json.loads(sys.argv[1]):
        generate_png(service, {"prompt": prompt})
# The whole process's cache counters: the record's are taken when the archive is saved, and
# would not see a graph compiled after that.
print("WARMUP STAGE " + json.dumps({**record.stages["warmup"], "process_counters": inductor_cache_counters()}))
"""


def _boot_in_a_fresh_process(env: dict[str, str], prompts: tuple[str, ...]) -> dict[str, Any]:
    """The boot record's warmup stage of a boot in a new process, which then served ``prompts``."""
    proc = subprocess.run([sys.executable, "-c", _BOOT_THEN_SERVE, json.dumps(prompts)], cwd=ROOT,
                          env=worker_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=600)
    log = proc.stdout.decode("utf-8", errors="replace")
    assert proc.returncode == 0, log[-4000:]
    return json.loads(log.split("WARMUP STAGE ", 1)[1])


def test_the_next_boot_restores_the_graphs_dynamic_in_prompt_length(tiny_z_image, tmp_path):
    """The dynamic-length graphs are compiled before the compile cache is saved, so that the
    next cold start restores them: a second boot, in a fresh process on a fresh local disk with
    the first one's volume, compiles nothing (every graph the first compiled, static and dynamic,
    is a cache hit), leaves the archive as it was (it would otherwise rewrite it on every boot,
    hundreds of MB for a full-size model) and serves prompts of lengths neither boot saw
    compiled."""
    volume = tmp_path / "volume"
    env = {"HF_MODEL_ID": str(tiny_z_image), "VISGATE_COMPILE": "regional", "VISGATE_CACHE_DIR": str(volume),
           "VISGATE_DEFAULT_STEPS": "2"}
    # Captions of 67 and 121 tokens (the template's 49 and one per byte): lengths neither boot's
    # passes saw, longer than the negative prompt's (so under a mask). Not a multiple of 32: those
    # take another graph, which neither pass compiles (README), on the first boot as on the next.
    prompts = ("a red cat on a mat", "a lighthouse at dusk on a rocky coast, long exposure, stars over the sea")

    def boot(local: str) -> dict[str, Any]:
        (tmp_path / local).mkdir()  # TMPDIR: a new container's empty disk, inductor's cache on it
        return _boot_in_a_fresh_process({**env, "TMPDIR": str(tmp_path / local)}, prompts)

    first = boot("local-1")
    cold = first["compile_cache"]
    assert first["other_prompt_lengths"] == "compiled, dynamic in prompt length", first
    assert cold["restored"] == "miss" and cold["saved_bytes"] > 0, cold
    archive = volume / "compile" / f"{cold['key']}.tar"
    saved = hashlib.sha256(archive.read_bytes()).hexdigest()

    second = boot("local-2")
    warm = second["compile_cache"]
    assert second["other_prompt_lengths"] == "compiled, dynamic in prompt length", second
    assert warm["restored"] == "hit", warm
    # Every graph the first boot compiled, static and dynamic, and nothing else, is a cache hit.
    compiled, restored = first["process_counters"], second["process_counters"]
    assert compiled["fxgraph_cache_miss"] > 0 and not compiled.get("fxgraph_cache_hit"), compiled
    assert restored.get("fxgraph_cache_hit") == compiled["fxgraph_cache_miss"], (compiled, restored)
    assert not restored.get("fxgraph_cache_miss") and restored == warm["counters"], (restored, warm)
    assert "saved_bytes" not in warm and hashlib.sha256(archive.read_bytes()).hexdigest() == saved
    # inductor's code generation is what the archive spares: what is left is tracing and loading
    assert warm["compile_seconds"]["backend"] < cold["compile_seconds"]["backend"], (cold, warm)
