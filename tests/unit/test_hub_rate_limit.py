"""How long the hub client waits before trying again: the hub's own reset time where it gave
one (an exhausted rate limit, Retry-After), its backoff otherwise, never past the cap."""

from __future__ import annotations

from requests.structures import CaseInsensitiveDict

from runtime.hub.api import TransientHubError, reset_seconds, wait_before_retry


def headers(**values: str) -> CaseInsensitiveDict:
    return CaseInsensitiveDict({name.replace("_", "-"): value for name, value in values.items()})


def test_an_exhausted_rate_limit_names_its_reset():
    # whole seconds on the wire: one more, so the retry does not land just before the reset
    assert reset_seconds(429, headers(ratelimit='"resolvers";r=0;t=55')) == 56.0
    assert reset_seconds(429, headers(RateLimit='"api";r=0;t=0',
                                      RateLimit_Policy='"fixed window";"api";q=500;w=300')) == 1.0


def test_retry_after_where_no_exhausted_rate_limit_says_more():
    # requests are left in the window: this 429 is not the window's, so Retry-After decides
    assert reset_seconds(429, headers(RateLimit='"api";r=3;t=55', Retry_After="7")) == 7.0
    assert reset_seconds(503, headers(Retry_After="2")) == 2.0
    assert reset_seconds(503, headers(RateLimit='"api";r=0;t=9')) is None  # a 503 is no rate limit
    assert reset_seconds(429, headers()) is None
    assert reset_seconds(429, headers(RateLimit="garbage", Retry_After="soon")) is None


def test_the_wait_is_the_backoff_the_reset_or_the_cap():
    assert wait_before_retry(TransientHubError("cut"), 2.0, 300.0) == 2.0
    assert wait_before_retry(TransientHubError("429", retry_after=56.0), 2.0, 300.0) == 56.0
    assert wait_before_retry(TransientHubError("429", retry_after=0.5), 2.0, 300.0) == 2.0
    assert wait_before_retry(TransientHubError("429", retry_after=3601.0), 2.0, 300.0) == 300.0
