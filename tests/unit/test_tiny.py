"""Built-in tiny models: deterministic bytes, real tokenizers with their real lengths, and a build
that never leaves a half-written model behind."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import pytest

from pipelines import tiny
from pipelines.tiny import TINY_MODELS, build_to, ensure_tiny, is_tiny

pytestmark = pytest.mark.timeout(120)

NAMES = ["visgate/tiny-flux", "visgate/tiny-flux-dev", "visgate/tiny-sdxl", "visgate/tiny-sdxl-turbo",
         "visgate/tiny-sd", "visgate/tiny-qwen-image"]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_documented_names() -> None:
    assert sorted(TINY_MODELS) == sorted(NAMES)
    assert all(is_tiny(name) for name in NAMES)
    assert not is_tiny("black-forest-labs/FLUX.1-schnell") and not is_tiny("tiny-flux")


@pytest.mark.parametrize("model_id", NAMES)
def test_build_is_byte_identical(model_id: str, tmp_path: Path,
                                 built_tiny_repo: Callable[[str], Path]) -> None:
    """Same bytes on every build (and so on every machine): a hub test server can serve them, and
    a seed means the same image everywhere."""
    first = digests(build_to(model_id, tmp_path / "a"))
    second = digests(build_to(model_id, tmp_path / "b"))
    assert first == second
    assert any(name.endswith(".safetensors") for name in first)
    assert not any(name.endswith((".bin", ".pt", ".onnx", ".msgpack")) for name in first)
    # ensure_tiny's copy holds the same repository (plus its completion marker).
    cached = digests(built_tiny_repo(model_id))
    assert cached.pop(".complete")
    assert cached == first


@pytest.mark.parametrize("model_id, lengths", [
    ("visgate/tiny-flux", {"tokenizer": 77, "tokenizer_2": 512}),
    ("visgate/tiny-sdxl", {"tokenizer": 77, "tokenizer_2": 77}),
])
def test_tokenizers_keep_their_real_max_length(model_id: str, lengths: dict[str, int],
                                               built_tiny_repo: Callable[[str], Path]) -> None:
    from transformers import AutoTokenizer

    repo = built_tiny_repo(model_id)
    for folder, length in lengths.items():
        tokenizer = AutoTokenizer.from_pretrained(repo / folder)
        assert tokenizer.model_max_length == length, folder
        ids = tokenizer("a lighthouse on a cliff at sunset", padding="max_length",
                        max_length=length, truncation=True)["input_ids"]
        assert len(ids) == length
        # A real vocabulary: the prompt becomes real tokens, not all unknowns.
        known = [i for i in ids if i not in (tokenizer.pad_token_id, tokenizer.unk_token_id)]
        assert len(known) > 5, folder


def test_ensure_tiny_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = TINY_MODELS["visgate/tiny-sdxl-turbo"]
    monkeypatch.setitem(TINY_MODELS, "visgate/tiny-sdxl-turbo", lambda d: (calls.append(d), real(d)))
    first = ensure_tiny("visgate/tiny-sdxl-turbo", tmp_path)
    second = ensure_tiny("visgate/tiny-sdxl-turbo", tmp_path)
    assert first == second == tmp_path / "visgate--tiny-sdxl-turbo"
    assert len(calls) == 1
    assert (first / "model_index.json").is_file() and (first / ".complete").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["visgate--tiny-sdxl-turbo"]  # no temp dirs


def test_interrupted_build_leaves_nothing_a_boot_would_use(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def crash_midway(dest: Path) -> None:
        (dest / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
        raise OSError("No space left on device")

    monkeypatch.setitem(TINY_MODELS, "visgate/tiny-flux", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        ensure_tiny("visgate/tiny-flux", tmp_path)
    assert list(tmp_path.iterdir()) == []
    # The next boot builds it for real.
    monkeypatch.setitem(TINY_MODELS, "visgate/tiny-flux", lambda d: tiny.build_flux(d, dev=False))
    assert (ensure_tiny("visgate/tiny-flux", tmp_path) / "transformer" / "config.json").is_file()


def test_incomplete_directory_is_rebuilt(tmp_path: Path) -> None:
    """A directory without the completion marker (e.g. copied half-way) is not taken as built."""
    dest = tmp_path / "visgate--tiny-sdxl-turbo"
    dest.mkdir()
    (dest / "model_index.json").write_text("{}")
    built = ensure_tiny("visgate/tiny-sdxl-turbo", tmp_path)
    assert built == dest and (dest / ".complete").is_file()
    assert (dest / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_tiny_repos_are_small(built_tiny_repo: Callable[[str], Path]) -> None:
    for name in NAMES:
        size = sum(p.stat().st_size for p in built_tiny_repo(name).rglob("*") if p.is_file())
        assert size < 4 * 2**20, (name, size)
