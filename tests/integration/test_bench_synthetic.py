"""Synthetic weights on disk (warmup/synthetic.saved_repo), as the GPU cold-start benchmark boots them.

On a GPU the architectures are full size (34 GB for FLUX.1-dev); here the same code runs with every
architecture shrunk (VISGATE_SYNTHETIC_SCALE=small), so that what is checked is the path: the real pipeline
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
def small_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(synthetic.SCALE_ENV, "small")


def test_saved_repo_loads_as_its_family_and_generates(small_scale: None, tmp_path: Path) -> None:
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


def test_a_complete_repo_is_not_written_again_and_a_partial_one_is(small_scale: None, tmp_path: Path,
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


def test_small_sdxl_loads_as_its_family_and_generates(small_scale: None, tmp_path: Path) -> None:
    import torch

    from pipelines.base import GenerationRequest

    dest = synthetic.saved_repo("sdxl", tmp_path / "sdxl", device="cpu")
    family = detect_family(dest)
    assert family.name == "sdxl"
    pipe = family.load(torch.float32, "cpu")
    assert sum(p.numel() for p in pipe.unet.parameters()) < 5_000_000  # not the 2.6 B original
    image = family.generate(pipe, GenerationRequest(prompt="a red fox", steps=1, guidance=5.0,
                                                    height=256, width=256, seed=0))
    assert image.shape == (256, 256, 3)


def test_a_rehearsal_never_passes_for_real_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(synthetic.SCALE_ENV, raising=False)
    assert synthetic.record_mode("synthetic") == "synthetic"
    monkeypatch.setenv(synthetic.SCALE_ENV, "small")
    assert synthetic.record_mode("synthetic") == "synthetic-small"
    assert synthetic.record_mode("tiny") == "tiny"
    monkeypatch.setenv(synthetic.SCALE_ENV, "huge")
    with pytest.raises(ValueError, match="full, small"):
        synthetic.record_mode("synthetic")
