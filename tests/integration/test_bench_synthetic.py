"""Synthetic weights on disk (warmup/synthetic.saved_repo), as the GPU cold-start benchmark boots them.

On a GPU the architectures are full size (34 GB for FLUX.1-dev); here the same code runs with the
transformer and text encoders shrunk, so that what is checked is the path: the real pipeline
classes saved in the diffusers layout, detected by the real registry, loaded by the family, and
generating an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.registry import detect_family
from warmup import synthetic


@pytest.fixture
def small_flux(monkeypatch: pytest.MonkeyPatch) -> None:
    real_load = synthetic._load

    def small(name: str) -> dict[str, Any]:
        config = real_load(name)
        if name == "flux-dev-transformer.json":
            config.update(attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                          num_layers=1, num_single_layers=1, pooled_projection_dim=32,
                          axes_dims_rope=[4, 6, 6])
        if name == "vae.json":
            config["flux"].update(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8)
        return config

    monkeypatch.setattr(synthetic, "_load", small)
    monkeypatch.setattr(synthetic, "CLIP_L", {**synthetic.CLIP_L, "hidden_size": 32, "intermediate_size": 37,
                                              "num_attention_heads": 4, "num_hidden_layers": 1,
                                              "projection_dim": 32})
    monkeypatch.setattr(synthetic, "T5_XXL", {**synthetic.T5_XXL, "d_model": 32, "d_ff": 37, "d_kv": 8,
                                              "num_heads": 4, "num_layers": 1})


def test_saved_repo_loads_as_its_family_and_generates(small_flux: None, tmp_path: Path) -> None:
    import torch

    from pipelines.base import GenerationRequest

    dest = synthetic.saved_repo("flux-dev", tmp_path / "flux-dev", device="cpu")
    assert (dest / ".complete").is_file()
    assert (dest / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (tmp_path / "flux-dev.configs").exists()  # the configs-only scratch repo is gone
    family = detect_family(dest)
    assert (family.name, family.variant) == ("flux", "dev")
    pipe = family.load(torch.float32, "cpu")
    image = family.generate(pipe, GenerationRequest(prompt="a red fox", steps=1, guidance=3.5,
                                                    height=256, width=256, seed=0))
    assert image.shape == (256, 256, 3)


def test_a_complete_repo_is_not_written_again_and_a_partial_one_is(small_flux: None, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "flux-dev"
    dest.mkdir()
    (dest / "half-written.safetensors").write_bytes(b"x")  # no .complete marker: rebuilt
    synthetic.saved_repo("flux-dev", dest, device="cpu")
    assert not (dest / "half-written.safetensors").exists()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a complete synthetic repo must not be built again")

    monkeypatch.setattr(synthetic, "build_pipeline", fail)
    assert synthetic.saved_repo("flux-dev", dest, device="cpu") == dest
