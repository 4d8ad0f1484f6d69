"""How long the hub client waits before trying again: the hub's own reset time where it gave
one (an exhausted rate limit, Retry-After), its backoff otherwise, never past the cap, and no
more waiting once the fetch's budget for rate limits is spent."""

from __future__ import annotations

import pytest

from runtime.hub import api
from runtime.hub.api import HubClient, HubOptions, TransientHubError, reset_seconds


def test_an_exhausted_rate_limit_names_its_reset():
    # whole seconds on the wire: one more, so the retry does not land just before the reset
    assert reset_seconds(429, {"ratelimit": '"resolvers";r=0;t=55'}) == 56.0
    assert reset_seconds(429, {"RateLimit": '"api";r=0;t=0',
                               "RateLimit-Policy": '"fixed window";"api";q=500;w=300'}) == 1.0


def test_retry_after_where_no_exhausted_rate_limit_says_more():
    # requests are left in the window: this 429 is not the window's, so Retry-After decides
    assert reset_seconds(429, {"RateLimit": '"api";r=3;t=55', "retry-after": "7"}) == 7.0
    assert reset_seconds(503, {"Retry-After": "2"}) == 2.0
    assert reset_seconds(503, {"RateLimit": '"api";r=0;t=9'}) is None  # a 503 is no rate limit
    assert reset_seconds(429, {}) is None
    assert reset_seconds(429, {"RateLimit": "garbage", "Retry-After": "soon"}) is None


@pytest.mark.parametrize("headers", [
    {"RateLimit": '"api";r=0;t=' + "9" * 400},  # beyond float()
    {"RateLimit": '"api";r=0;t=' + "9" * 5000},  # beyond int() of a string
    {"RateLimit": '"api";r=0;t=-5'},
])
def test_a_reset_that_makes_no_sense_is_ignored_not_a_crash(headers):
    assert reset_seconds(429, headers) is None


def client(**options: float) -> HubClient:
    return HubClient("http://hub.invalid", "org/model", None, HubOptions(**options))


def test_the_pause_is_the_backoff_or_the_reset_with_jitter_within_the_cap(monkeypatch):
    monkeypatch.setattr(api.random, "uniform", lambda a, b: b)  # the most jitter: one second
    hub = client(max_wait_s=300.0)
    assert hub.retry_pause(TransientHubError("cut"), 2.0) == 2.0
    assert hub.retry_pause(TransientHubError("429", retry_after=56.0), 2.0) == 57.0
    assert hub.retry_pause(TransientHubError("429", retry_after=0.5), 2.0) == 2.0
    assert hub.retry_pause(TransientHubError("429", retry_after=3601.0), 2.0) == 300.0
    assert hub.retry_pause(TransientHubError("429", retry_after=float("inf")), 2.0) == 300.0


def test_no_more_waiting_once_the_budget_since_the_first_wait_is_spent(monkeypatch):
    monkeypatch.setattr(api.random, "uniform", lambda a, b: a)
    now = [1000.0]
    monkeypatch.setattr(api.time, "monotonic", lambda: now[0])
    hub = client(max_wait_s=300.0, wait_budget_s=600.0)
    limited = TransientHubError("429", retry_after=300.0)
    assert hub.retry_pause(limited, 1.0) == 300.0
    now[0] += 300.0
    assert hub.retry_pause(limited, 1.0) == 300.0  # ends 600 s after the first: still within
    now[0] += 300.0
    assert hub.retry_pause(limited, 1.0) is None
    assert hub.retry_pause(TransientHubError("cut"), 1.0) == 1.0  # plain backoff is not budgeted


def test_a_listing_naming_paths_outside_the_repository_writes_nothing_there() -> None:
    """HF_ENDPOINT may be any server: the commit, file names and hashes of its listing become
    paths in the cache (snapshots/<commit>/<name>, blobs/<hash>), so "../" in one would write
    outside it. Such files are left out, such hashes not used, such a commit refused."""
    from runtime.hub.api import _parse_listing

    commit, sha = "a" * 40, "b" * 64
    listing = _parse_listing({"sha": commit, "siblings": [
        {"rfilename": "unet/config.json", "size": 3, "blobId": "c" * 40},
        {"rfilename": "unet/w.safetensors", "size": 9, "lfs": {"sha256": sha, "size": 9}},
        {"rfilename": "vae/w.safetensors", "size": 9, "lfs": {"sha256": "../../escape", "size": 9}},
        *({"rfilename": name, "size": 1} for name in
          ("../../etc/cron.d/x", "/etc/passwd", "unet/../../x", "", "a//b", "./x", None)),
    ]})
    assert sorted(listing.files) == ["unet/config.json", "unet/w.safetensors", "vae/w.safetensors"]
    assert listing.files["unet/w.safetensors"].blob_name == sha
    assert listing.files["vae/w.safetensors"].blob_name == "size-9-vae--w.safetensors"
    for bad in ("../" + "a" * 37, "A" * 40, None):
        with pytest.raises(TransientHubError, match="no commit sha"):
            _parse_listing({"sha": bad, "siblings": []})
