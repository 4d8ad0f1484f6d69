"""The hub settings: endpoint, offline switch, and where Runpod's model cache is looked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import SettingsError
from runtime.settings import Settings


def build(**env: str) -> Settings:
    return Settings.from_env({"HF_MODEL_ID": "org/model", **env}, volume_root=Path("/vol"))


def test_defaults():
    s = build()
    assert s.hub_endpoint == "https://huggingface.co"
    assert s.hub_offline is False
    assert s.runpod_model_cache == Path("/vol/huggingface-cache/hub")


def test_endpoint_and_offline():
    s = build(HF_ENDPOINT="http://127.0.0.1:8080/", HF_HUB_OFFLINE="1")
    assert s.hub_endpoint == "http://127.0.0.1:8080"
    assert s.hub_offline is True
    assert build(HF_HUB_OFFLINE="false").hub_offline is False


@pytest.mark.parametrize("env", [{"HF_ENDPOINT": "ftp://mirror"}, {"HF_HUB_OFFLINE": "maybe"}])
def test_invalid_values_name_the_variable(env: dict[str, str]):
    with pytest.raises(SettingsError, match=next(iter(env))):
        build(**env)


def test_the_token_is_a_secret():
    s = build(HF_TOKEN="hf_secret_value")
    assert "hf_secret_value" in s.secrets
    assert "hf_secret_value" not in repr(s)


def test_a_short_mirror_password_is_redacted_too():
    # Credentials in a URL count from 4 characters: redaction hides every secret settings list,
    # whatever its length (a 6-character password went out in clear for a while).
    from runtime.errors import redact

    s = build(HF_ENDPOINT="https://mirror:s3cr3t@hub.internal")
    assert "s3cr3t" in s.secrets
    assert redact("GET https://mirror:s3cr3t@hub.internal/api", s.secrets) == "GET https://mirror:***@hub.internal/api"


def test_secrets_in_an_environment_are_what_its_settings_hide():
    # One rule for what is secret: the benchmarks clean their records of an environment with
    # secrets_in, the worker its logs and webhooks with Settings.secrets.
    from runtime.settings import secrets_in

    env = {"HF_MODEL_ID": "org/model", "HF_TOKEN": " hf_tok3n ",
           "VISGATE_WEBHOOK_SECRET": "whsec-0123456789abcdef",
           "VISGATE_WEBHOOK": "https://hook:hookpass@hooks.example/x?token=qtoken",
           "HF_ENDPOINT": "https://mirror:mirrorpass@hub.internal", "DEVICE": "cpu"}
    assert secrets_in(env) == build(**env).secrets == (
        "hf_tok3n", "whsec-0123456789abcdef", "hookpass", "token=qtoken", "mirrorpass")
    assert secrets_in({"HF_MODEL_ID": "org/model", "HF_ENDPOINT": "http://127.0.0.1:8080"}) == ()


def test_a_mirror_password_is_not_in_repr():
    # Logging a Settings must not leak HF_ENDPOINT's credentials, as for the other secrets.
    s = build(HF_ENDPOINT="https://mirror:mirrorReprPass@hub.internal", DEVICE="cpu")
    assert "mirrorReprPass" not in repr(s) and "mirrorReprPass" not in str(s)
    assert "org/model" in repr(s) and "device='cpu'" in repr(s)  # the repr is still useful


@pytest.mark.parametrize("name", ["HF_ENDPOINT", "VISGATE_WEBHOOK"])
def test_a_token_in_the_user_name_beside_a_dummy_password_is_a_secret(name: str):
    # The common https://<token>:x-oauth-basic@host form: the token is the user name, and the
    # password is a fixed word. Both are redacted; a plain user name beside a password (mirror,
    # oauth2, x-access-token) is not, or "hook" would be cut out of every "webhook".
    token = "tok_InUserName0123456789"
    s = build(**{name: f"https://{token}:x-oauth-basic@host.example/x", "DEVICE": "cpu"})
    assert token in s.secrets and "x-oauth-basic" in s.secrets
    s = build(**{name: "https://x-access-token:pw_InPassword01@host.example/x", "DEVICE": "cpu"})
    assert s.secrets == ("pw_InPassword01",)
    s = build(**{name: "https://hook:hookpass@host.example/x", "DEVICE": "cpu"})
    assert s.secrets == ("hookpass",)
