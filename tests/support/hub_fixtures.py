"""Fixtures for the fetch tests: tiny repositories with decoys, served by a local hub.

Import them into a test module (``from tests.support.hub_fixtures import *``). The repositories
are built once per test session (about 5 s) and shared by every module that uses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from runtime.fetch import FetchOptions
from runtime.hub.api import HubOptions
from runtime.hub.transfer import TransferOptions
from runtime.settings import Settings
from tests.support.hub_repos import build_repo
from tests.support.hub_server import HubServer

SDXL = "acme/tiny-sdxl"
FLUX = "acme/tiny-flux"
GATED = "acme/gated-flux"
TOKEN = "hf_TESTsecretTOKENvalue0123456789"  # the gated repository's token
OTHER_TOKEN = "hf_OTHERaccountTOKEN9876543210"  # a valid token of an account without access

# Short waits: a test must not sit through production backoffs and lock timeouts. The connect
# timeout is no wait (no test lets one expire: an unreachable hub refuses at once) but a margin:
# at 2 s a loaded machine once timed out against the local hub and a test read the wrong error.
FAST = FetchOptions(progress_interval_s=0.05,
                    hub=HubOptions(connect_timeout=10, read_timeout=10, retries=1, backoff_s=0.05),
                    transfer=TransferOptions(heartbeat_s=0.1, stale_after_s=1.0, backoff_s=0.05))

__all__ = ["hub_repo_dirs", "hub", "SDXL", "FLUX", "GATED", "TOKEN", "OTHER_TOKEN", "FAST",
           "hub_settings"]


def _built(root: Path, model_id: str) -> Path:
    dest = root / model_id.split("/")[-1]
    done = root / f"{dest.name}.done"
    if not done.exists():
        build_repo(model_id, dest)
        done.touch()
    return dest


@pytest.fixture(scope="session")
def hub_repo_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp() / "hub-repos"
    root.mkdir(exist_ok=True)
    return {"sdxl": _built(root, "visgate/tiny-sdxl"), "flux": _built(root, "visgate/tiny-flux")}


@pytest.fixture
def hub(hub_repo_dirs: dict[str, Path]) -> Iterator[HubServer]:
    """A running hub with acme/tiny-sdxl, acme/tiny-flux and the gated acme/gated-flux."""
    server = HubServer()
    server.add_repo(SDXL, hub_repo_dirs["sdxl"])
    server.add_repo(FLUX, hub_repo_dirs["flux"])
    server.add_repo(GATED, hub_repo_dirs["flux"], token=TOKEN, gated=True)
    server.known_tokens.add(OTHER_TOKEN)
    with server:
        yield server


def hub_settings(hub: HubServer, cache: Path, model_id: str = SDXL, **env: str) -> Settings:
    """Settings of a CPU worker using ``hub`` and the cache ``cache`` (volume root: none)."""
    values = {"HF_MODEL_ID": model_id, "DEVICE": "cpu", "VISGATE_CACHE_DIR": str(cache),
              "HF_ENDPOINT": hub.url, **env}
    return Settings.from_env(values, volume_root=cache / "no-volume")
