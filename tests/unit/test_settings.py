"""Settings.from_env: a table of environments -> values, or SettingsError naming what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runtime.errors import SettingsError
from runtime.settings import (ATTENTIONS, COMPILE_MODES, PRECISIONS, QUANTIZE_MODES, TOOL_NAMES,
                              WORKER_NAMES, Settings, check_runpod_flags, unknown_names,
                              webhook_settings)

pytestmark = pytest.mark.timeout(30)

MODEL = {"HF_MODEL_ID": "black-forest-labs/FLUX.1-schnell"}


@pytest.fixture
def no_volume(tmp_path: Path) -> Path:
    """A /runpod-volume that is not mounted."""
    return tmp_path / "runpod-volume"


@pytest.fixture
def mounted_volume(tmp_path: Path) -> Path:
    """A writable /runpod-volume, as on a Runpod endpoint with a network volume."""
    volume = tmp_path / "runpod-volume"
    volume.mkdir()
    return volume


def settings(env: dict[str, str], volume: Path) -> Settings:
    return Settings.from_env(env, volume_root=volume)


# ---- good environments -----------------------------------------------------------------------------
GOOD = [
    pytest.param({}, {"model_id": MODEL["HF_MODEL_ID"], "device": "cuda", "revision": "main",
                      "hf_token": None, "webhook_url": None, "webhook_secret": None,
                      "precision": "auto", "attention": "auto", "compile": "regional",
                      "quantize": "none", "warmup_shapes": ()}, id="defaults-on-cuda"),
    pytest.param({"HF_MODEL_ID": "  visgate/tiny-flux  "}, {"model_id": "visgate/tiny-flux"},
                 id="model-id-stripped"),
    pytest.param({"DEVICE": "cpu"}, {"device": "cpu", "compile": "off", "is_cuda": False},
                 id="cpu-compiles-off"),
    pytest.param({"DEVICE": "cuda:1"}, {"device": "cuda:1", "compile": "regional", "is_cuda": True},
                 id="cuda-index"),
    pytest.param({"DEVICE": ""}, {"device": "cuda"}, id="blank-device-is-default"),
    pytest.param({"DEVICE": "cpu", "VISGATE_COMPILE": "full"}, {"compile": "full"},
                 id="compile-explicit-on-cpu"),
    pytest.param({"VISGATE_PRECISION": "BF16", "VISGATE_ATTENTION": " sdpa ",
                  "VISGATE_QUANTIZE": "fp8-weight", "VISGATE_COMPILE": "Max-Autotune"},
                 {"precision": "bf16", "attention": "sdpa", "quantize": "fp8-weight",
                  "compile": "max-autotune"}, id="choices-case-and-space-insensitive"),
    pytest.param({"HF_MODEL_REVISION": "a1b2c3d", "HF_TOKEN": "hf_abc",
                  "VISGATE_WEBHOOK": "https://hooks.example.com/ready?token=t",
                  "VISGATE_WEBHOOK_SECRET": "s3cret-s3cret-s3cret", "RUNPOD_POD_ID": "pod1",
                  "RUNPOD_ENDPOINT_ID": "ep1"},
                 {"revision": "a1b2c3d", "hf_token": "hf_abc", "webhook_secret": "s3cret-s3cret-s3cret",
                  "webhook_url": "https://hooks.example.com/ready?token=t", "worker_id": "pod1",
                  "endpoint_id": "ep1",
                  # The webhook URL's query is redacted too: it often carries a token.
                  "secrets": ("hf_abc", "s3cret-s3cret-s3cret", "token=t")}, id="all-strings"),
    pytest.param({"VISGATE_WEBHOOK": "http://127.0.0.1:8080/hook"},
                 {"webhook_url": "http://127.0.0.1:8080/hook"}, id="webhook-http-with-port"),
    pytest.param({"HF_TOKEN": "   "}, {"hf_token": None, "secrets": ()}, id="blank-token-is-none"),
    pytest.param({"VISGATE_WARMUP_SHAPES": "1024x1024,768x1344"},
                 {"warmup_shapes": ((1024, 1024), (768, 1344))}, id="shapes"),
    pytest.param({"VISGATE_WARMUP_SHAPES": " 768X1344 , 1024x1024,768x1344,, "},
                 {"warmup_shapes": ((768, 1344), (1024, 1024))}, id="shapes-spaces-case-dupes"),
    pytest.param({"VISGATE_WARMUP_SHAPES": ""}, {"warmup_shapes": ()}, id="shapes-blank"),
    pytest.param({"VISGATE_DEFAULT_STEPS": " 4 ", "VISGATE_DEFAULT_GUIDANCE": "0"},
                 {"default_steps": 4, "default_guidance": 0.0}, id="default-overrides"),
    pytest.param({"VISGATE_DEFAULT_STEPS": "", "VISGATE_DEFAULT_GUIDANCE": "7.5"},
                 {"default_steps": None, "default_guidance": 7.5}, id="default-guidance-only"),
]


@pytest.mark.parametrize("env, expected", GOOD)
def test_good_environment(env: dict[str, str], expected: dict, no_volume: Path) -> None:
    s = settings({**MODEL, **env}, no_volume)
    for name, value in expected.items():
        assert getattr(s, name) == value, name


# ---- bad environments ------------------------------------------------------------------------------
BAD = [
    pytest.param({}, "HF_MODEL_ID is required", id="model-id-missing"),
    pytest.param({"HF_MODEL_ID": ""}, "HF_MODEL_ID is required", id="model-id-empty"),
    pytest.param({"HF_MODEL_ID": " \t "}, "HF_MODEL_ID is required", id="model-id-blank"),
    pytest.param({**MODEL, "DEVICE": "gpu"}, "DEVICE='gpu' is not valid: use cuda, cuda:N or cpu",
                 id="device-gpu"),
    pytest.param({**MODEL, "DEVICE": "cuda:"}, "DEVICE='cuda:' is not valid", id="device-no-index"),
    pytest.param({**MODEL, "DEVICE": "cuda:x"}, "DEVICE='cuda:x' is not valid", id="device-bad-index"),
    pytest.param({**MODEL, "DEVICE": "mps"}, "DEVICE='mps' is not valid", id="device-mps"),
    pytest.param({**MODEL, "VISGATE_WEBHOOK": "ftp://example.com/hook"},
                 "VISGATE_WEBHOOK must be an http:// or https:// URL", id="webhook-scheme"),
    pytest.param({**MODEL, "VISGATE_WEBHOOK": "example.com/hook"},
                 "VISGATE_WEBHOOK must be an http:// or https:// URL", id="webhook-no-scheme"),
    pytest.param({**MODEL, "VISGATE_WEBHOOK": "https://"},
                 "VISGATE_WEBHOOK must be an http:// or https:// URL with a host", id="webhook-no-host"),
    pytest.param({**MODEL, "VISGATE_WEBHOOK": "http://example.com:port/hook"},
                 "VISGATE_WEBHOOK", id="webhook-bad-port"),
    # requests cannot send to these: refused now, not after the warmup
    pytest.param({**MODEL, "VISGATE_WEBHOOK": "https://hooks.example.com /ready?token=tok_Secret1"},
                 "VISGATE_WEBHOOK is not a URL that can be sent to", id="webhook-space-in-host"),
    pytest.param({**MODEL, "VISGATE_WEBHOOK": "https://hooks..example.com/?token=tok_Secret1"},
                 "VISGATE_WEBHOOK is not a URL that can be sent to", id="webhook-empty-label"),
    pytest.param({**MODEL, "VISGATE_WEBHOOK": f"https://{'a' * 64}.example.com/?token=tok_Secret1"},
                 "VISGATE_WEBHOOK is not a URL that can be sent to", id="webhook-label-too-long"),
    *(pytest.param({**MODEL, "VISGATE_DEFAULT_STEPS": value}, "VISGATE_DEFAULT_STEPS is not valid: use a "
                   "whole number of steps from 1", id=f"default-steps-{value}")
      for value in ("0", "-1", "4.5", "four", "1" * 12)),
    *(pytest.param({**MODEL, "VISGATE_DEFAULT_GUIDANCE": value}, "VISGATE_DEFAULT_GUIDANCE is not valid: use "
                   "a number from 0", id=f"default-guidance-{value[:8]}")
      for value in ("-0.5", "nan", "inf", "high", "1" * 400)),
    pytest.param({**MODEL, "VISGATE_WARMUP_SHAPES": "1024"},
                 "VISGATE_WARMUP_SHAPES item '1024' is not HEIGHTxWIDTH", id="shape-one-number"),
    pytest.param({**MODEL, "VISGATE_WARMUP_SHAPES": "1024x1024,768*1344"},
                 "VISGATE_WARMUP_SHAPES item '768*1344' is not HEIGHTxWIDTH", id="shape-star"),
    pytest.param({**MODEL, "VISGATE_WARMUP_SHAPES": "-8x1024"},
                 "VISGATE_WARMUP_SHAPES item '-8x1024'", id="shape-negative"),
    # no family serves these: refused before anything is downloaded
    pytest.param({**MODEL, "VISGATE_WARMUP_SHAPES": "1024x1024,0x0"},
                 "VISGATE_WARMUP_SHAPES 0x0 is not valid", id="shape-zero"),
    pytest.param({**MODEL, "VISGATE_WARMUP_SHAPES": "4096x4096"},
                 "VISGATE_WARMUP_SHAPES 4096x4096 is not valid", id="shape-too-large"),
    pytest.param({**MODEL, "VISGATE_WARMUP_SHAPES": "2048x2048"},
                 "VISGATE_WARMUP_SHAPES 2048x2048 is not valid: height x width = 4194304 pixels is over "
                 "any model's limit of 2359296 pixels", id="shape-too-many-pixels"),
    pytest.param({**MODEL, "VISGATE_WARMUP_SHAPES": "1020x1024"},
                 "VISGATE_WARMUP_SHAPES 1020x1024 is not valid: 'height' must be a multiple of 8 for any model, "
                 "got 1020",
                 id="shape-not-multiple-of-8"),
]


@pytest.mark.parametrize("env, message", BAD)
def test_bad_environment_names_the_variable(env: dict[str, str], message: str, no_volume: Path) -> None:
    with pytest.raises(SettingsError) as info:
        settings(env, no_volume)
    assert message in str(info.value)


CHOICES = [("VISGATE_PRECISION", PRECISIONS), ("VISGATE_ATTENTION", ATTENTIONS),
           ("VISGATE_COMPILE", COMPILE_MODES), ("VISGATE_QUANTIZE", QUANTIZE_MODES)]


@pytest.mark.parametrize("name, valid", CHOICES, ids=[c[0] for c in CHOICES])
def test_every_choice_rejects_an_invalid_value_listing_the_valid_ones(
        name: str, valid: tuple[str, ...], no_volume: Path) -> None:
    with pytest.raises(SettingsError) as info:
        settings({**MODEL, name: "turbo-mode"}, no_volume)
    message = str(info.value)
    assert message.startswith(f"{name}='turbo-mode' is not valid")
    assert f"use one of {', '.join(valid)}" in message
    # And every listed value is accepted.
    for value in valid:
        assert getattr(settings({**MODEL, name: value}, no_volume),
                       name.removeprefix("VISGATE_").lower()) == value


def test_design_values_are_the_choices() -> None:
    """The decided names in DESIGN.md: a typo in a tuple would silently reject a documented value."""
    assert PRECISIONS == ("auto", "bf16", "fp16", "fp32")
    assert set(("auto", "sdpa", "flash", "flash3", "xformers")) <= set(ATTENTIONS)
    # DESIGN.md's four, in its order, then the project's own addition (aot, runtime/aot.py).
    assert COMPILE_MODES[:4] == ("off", "regional", "full", "max-autotune")
    assert COMPILE_MODES[4:] == ("aot",)
    assert QUANTIZE_MODES == ("none", "fp8", "fp8-weight", "int8-weight")


def test_bad_webhook_message_does_not_echo_the_url(no_volume: Path) -> None:
    """The URL may carry a token in its query: the message says what is wrong, not the value."""
    with pytest.raises(SettingsError) as info:
        settings({**MODEL, "VISGATE_WEBHOOK": "ftp://hooks.example.com/?token=tok_123"}, no_volume)
    assert "tok_123" not in str(info.value)


# ---- cache dir ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["https://hooks.example.com /ready?token=tok_Secret1",
                                 "https://hooks..example.com/?token=tok_Secret1"])
def test_an_unsendable_webhook_is_refused_without_quoting_it(url: str, no_volume: Path) -> None:
    with pytest.raises(SettingsError) as info:
        settings({**MODEL, "VISGATE_WEBHOOK": url}, no_volume)
    assert "tok_Secret1" not in str(info.value) and "hooks" not in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "https://hooks.example.com./x?token=t",
                                 "https://user:pw@h\u00fcbsch.example/x", "http://[::1]:9/x"])
def test_sendable_webhooks_pass(url: str, no_volume: Path) -> None:
    assert settings({**MODEL, "VISGATE_WEBHOOK": url}, no_volume).webhook_url == url


def test_cache_dir_on_a_mounted_volume(mounted_volume: Path) -> None:
    assert settings(MODEL, mounted_volume).cache_dir == mounted_volume / "visgate"


def test_cache_dir_without_a_volume_is_local(no_volume: Path) -> None:
    cache = settings(MODEL, no_volume).cache_dir
    assert cache == Path.home() / ".cache" / "visgate"
    assert not str(cache).startswith(str(no_volume))


def test_cache_dir_when_the_volume_path_is_not_a_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "runpod-volume"
    not_a_dir.write_text("")
    assert settings(MODEL, not_a_dir).cache_dir == Path.home() / ".cache" / "visgate"


def test_cache_dir_explicit_wins_over_the_volume(mounted_volume: Path, tmp_path: Path) -> None:
    assert settings({**MODEL, "VISGATE_CACHE_DIR": str(tmp_path / "c")},
                    mounted_volume).cache_dir == tmp_path / "c"
    assert settings({**MODEL, "VISGATE_CACHE_DIR": "~/vg"}, mounted_volume).cache_dir == \
        Path.home() / "vg"


def test_a_cache_dir_no_home_can_resolve_is_a_settings_error(no_volume: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="VISGATE_CACHE_DIR='~nosuchuser-visgate/c'.*absolute path"):
        settings({**MODEL, "VISGATE_CACHE_DIR": "~nosuchuser-visgate/c"}, no_volume)

    def homeless() -> Path:  # a container run as a UID with no passwd entry and no $HOME
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(homeless))
    with pytest.raises(SettingsError, match="no home directory.*set VISGATE_CACHE_DIR"):
        settings(MODEL, no_volume)
    assert settings({**MODEL, "VISGATE_CACHE_DIR": "/data/vg"}, no_volume).cache_dir == Path("/data/vg")


# ---- secrets and purity -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["VISGATE_WEBHOOK_SECRET", "HF_TOKEN"])
def test_a_secret_that_is_not_text_is_refused_without_quoting_it(name: str, no_volume: Path) -> None:
    # Environment bytes that are not UTF-8 reach Python as lone surrogates ("geheim\xe9"): the
    # signature (or the Authorization header) would fail only after the whole warmup.
    value = b"geheim\xe9".decode("utf-8", "surrogateescape")
    with pytest.raises(SettingsError) as info:
        settings({**MODEL, name: value}, no_volume)
    assert name in str(info.value) and "geheim" not in str(info.value)
    if name == "HF_TOKEN":  # an HTTP header: ASCII only
        with pytest.raises(SettingsError, match="HF_TOKEN holds characters that are not ASCII"):
            settings({**MODEL, name: "hf_caf\u00e9"}, no_volume)




@pytest.mark.parametrize("separator", ["\n", "\r\n", "\x00", "\t", "\x7f"])
def test_a_token_with_a_line_break_or_control_character_is_refused_without_quoting_it(
        separator: str, no_volume: Path) -> None:
    # It goes out as an HTTP header: requests refuses it only as the fetch sends it, and the boot
    # then ended after its retries blaming an unavailable hub.
    with pytest.raises(SettingsError) as info:
        settings({**MODEL, "HF_TOKEN": f"hf_partOne{separator}partTwo"}, no_volume)
    message = str(info.value)
    assert message.startswith("HF_TOKEN holds a line break or another control character")
    assert "partOne" not in message and "partTwo" not in message
    assert settings({**MODEL, "HF_TOKEN": "\n hf_oneLine \n"}, no_volume).hf_token == "hf_oneLine"

@pytest.mark.parametrize("secret", ["ready", "flux", "s3cret", "fifteen-chars-x"])
def test_a_short_webhook_secret_is_refused_without_quoting_it(secret: str, no_volume: Path) -> None:
    # A short key is guessable, and redacting a common string ("ready", "flux") would mangle the
    # webhook body, job errors and logs wherever it occurs.
    with pytest.raises(SettingsError) as info:
        settings({**MODEL, "VISGATE_WEBHOOK_SECRET": secret}, no_volume)
    message = str(info.value)
    assert "VISGATE_WEBHOOK_SECRET is shorter than 16 characters" in message
    assert "openssl rand -hex 32" in message and secret not in message
    assert settings({**MODEL, "VISGATE_WEBHOOK_SECRET": "sixteen-chars-xx"}, no_volume).webhook_secret


def test_secrets_are_not_in_repr(no_volume: Path) -> None:
    s = settings({**MODEL, "HF_TOKEN": "hf_SuperSecretToken", "VISGATE_WEBHOOK_SECRET": "whsec_XYZ0123456789",
                  "VISGATE_WEBHOOK": "https://hooks.example/ready?token=tok_QueryToken"}, no_volume)
    assert "tok_QueryToken" not in repr(s) and "hooks.example" not in repr(s)
    s = settings({**MODEL, "HF_TOKEN": "hf_SuperSecretToken", "VISGATE_WEBHOOK_SECRET": "whsec_XYZ0123456789"},
                 no_volume)
    assert s.secrets == ("hf_SuperSecretToken", "whsec_XYZ0123456789")
    for text in (repr(s), str(s)):
        assert "hf_SuperSecretToken" not in text
        assert "whsec_XYZ0123456789" not in text
        assert "black-forest-labs/FLUX.1-schnell" in text  # the repr is still useful


@pytest.mark.parametrize("name", ["HF_ENDPOINT", "VISGATE_WEBHOOK"])
def test_an_unparseable_url_is_a_settings_error_not_a_crash(name: str, no_volume: Path) -> None:
    with pytest.raises(SettingsError, match=f"{name} is not a valid URL"):
        settings({**MODEL, name: "http://[mirror.example/x?token=tok_123"}, no_volume)


@pytest.mark.parametrize("name", ["HF_ENDPOINT", "VISGATE_WEBHOOK"])
@pytest.mark.parametrize("port", ["99999", "12x"])
def test_a_bad_port_is_a_settings_error_that_does_not_quote_the_url(name: str, port: str,
                                                                     no_volume: Path) -> None:
    with pytest.raises(SettingsError, match=f"^{name} has an invalid port$"):
        settings({**MODEL, name: f"http://user:pw_Secret1@mirror.example:{port}/x"}, no_volume)


def test_credentials_in_the_hub_endpoint_are_secrets(no_volume: Path) -> None:
    s = settings({**MODEL, "HF_ENDPOINT": "https://mirror:pw_MirrorSecret@hub.example"}, no_volume)
    assert s.secrets == ("pw_MirrorSecret",)
    s = settings({**MODEL, "HF_ENDPOINT": "https://tok_UserNameToken@hub.example"}, no_volume)
    assert s.secrets == ("tok_UserNameToken",)


def test_device_is_case_insensitive(no_volume: Path) -> None:
    assert settings({**MODEL, "DEVICE": "CUDA:1"}, no_volume).device == "cuda:1"


def test_settings_are_frozen(no_volume: Path) -> None:
    s = settings(MODEL, no_volume)
    with pytest.raises(AttributeError):
        s.device = "cpu"  # type: ignore[misc]


def test_from_env_reads_only_the_mapping(no_volume: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_MODEL_ID", "from/os-environ")
    monkeypatch.setenv("DEVICE", "not-a-device")
    s = settings({"HF_MODEL_ID": "from/mapping", "DEVICE": "cpu"}, no_volume)
    assert (s.model_id, s.device) == ("from/mapping", "cpu")


# ---- names nothing reads ------------------------------------------------------------------------
@pytest.mark.parametrize("name, said", [
    ("VISGATE_WARMUP_SHAPE", "VISGATE_WARMUP_SHAPE (did you mean VISGATE_WARMUP_SHAPES?)"),
    ("VISGATE_QUANTISE", "VISGATE_QUANTISE (did you mean VISGATE_QUANTIZE?)"),
    ("VISGATE_WEBHOOK_URL", "VISGATE_WEBHOOK_URL (did you mean VISGATE_WEBHOOK?)"),
    ("visgate_compile", "visgate_compile (did you mean VISGATE_COMPILE?)"),
    ("VISGATE_FOO", "VISGATE_FOO"),  # nothing close: named alone, not matched on the prefix
])
def test_a_misspelt_setting_is_named_with_the_closest_one(name: str, said: str,
                                                          no_volume: Path) -> None:
    # It used to be ignored without a word: VISGATE_WARMUP_SHAPE=768x1344 left every job at
    # that size uncompiled, VISGATE_QUANTISE=int8-weight served unquantized.
    env = {**MODEL, name: "768x1344", "VISGATE_COMPILE": "off", "VISGATE_TORCH_INDEX": "x"}
    assert settings(env, no_volume).warmup_shapes == ()  # still a warning, not a refusal
    assert unknown_names(env) == [said]


class RecordingEnv(dict):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def test_the_known_names_are_those_the_worker_and_the_scripts_read(no_volume: Path) -> None:
    read = RecordingEnv(MODEL)
    Settings.from_env(read, volume_root=no_volume)
    webhook_settings(read)
    assert sorted(n for n in read.read if n.startswith("VISGATE_")) == sorted(WORKER_NAMES)
    root = Path(__file__).resolve().parents[2]
    tools = {name for path in [*root.glob("scripts/*.sh"), *root.glob("warmup/*.py"),
                               *root.glob("warmup/*.sh"), *root.glob("build-and-push.sh"),
                               *root.glob(".github/workflows/*.yml")]
             for name in re.findall(r"\bVISGATE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())}
    assert tools - set(WORKER_NAMES) <= set(TOOL_NAMES), "a script's own name would be reported"


# ---- Runpod's flags -----------------------------------------------------------------------------
ON_RUNPOD = {"RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.example/v2/x/job-take/$ID"}
LOCAL_JOB = '{"input": {"prompt": "a"}}'


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A working directory with a usable test_input.json (the SDK's local job)."""
    (tmp_path / "test_input.json").write_text(LOCAL_JOB)
    return tmp_path


@pytest.mark.parametrize("argv", [[], ["--rp_serve_api", "--rp_api_port", "8000"],
                                  ["--test_input", LOCAL_JOB], [f"--test_input={LOCAL_JOB}"],
                                  ["--test_input", ""], ["--rp_serve", "--rp_api_port", "8000"]])
def test_usable_runpod_flags_pass(argv: list[str], job_dir: Path) -> None:
    check_runpod_flags(argv, env={}, cwd=job_dir)


@pytest.mark.parametrize("argv, message", [
    (["--test_input", '{"input": {"prompt": "a"'], "--test_input is not valid JSON"),
    (["--test_in", "{input: 1}"], "--test_input is not valid JSON"),  # the SDK takes prefixes
    (["--test_input", '["a"]'], '--test_input must be a JSON object with an "input"'),
    (["--test_input", '{"prompt": "a"}'], '--test_input must be a JSON object with an "input"'),
    (["--rp_serve_api", "--test_input"], "argument --test_input: expected one argument"),
    (["--rp_serve_api", "--rp_api_port", "eighty"], "argument --rp_api_port: invalid int value"),
])
def test_a_test_input_the_sdk_cannot_run_is_a_settings_error(argv: list[str], message: str,
                                                             job_dir: Path) -> None:
    # The SDK parses its flags only when serving starts: after the boot and the ready webhook.
    with pytest.raises(SettingsError, match=re.escape(message)) as info:
        check_runpod_flags(argv, env={}, cwd=job_dir)
    if "--rp_api_port" not in argv:
        assert """--test_input '{"input": {"prompt": "a red fox"}}'""" in str(info.value)


def test_more_than_one_server_process_is_a_settings_error(job_dir: Path) -> None:
    # uvicorn starts several processes only from an import string, which the SDK never passes:
    # it warned and exited once the boot was over, after the ready webhook.
    for argv in (["--rp_serve_api", "--rp_api_concurrency", "2"], ["--rp_serve_api", "--rp_api_conc=4"]):
        with pytest.raises(SettingsError, match=r"--rp_api_concurrency \d: Runpod's SDK serves HTTP "
                                                r"jobs from one process only"):
            check_runpod_flags(argv, env={}, cwd=job_dir)
    check_runpod_flags(["--rp_serve_api", "--rp_api_concurrency", "1"], env={}, cwd=job_dir)
    check_runpod_flags(["--rp_api_concurrency", "2"], env=ON_RUNPOD, cwd=job_dir)  # no server: unused


def test_a_realtime_port_the_sdk_cannot_read_is_a_settings_error(job_dir: Path) -> None:
    with pytest.raises(SettingsError, match="RUNPOD_REALTIME_PORT is not a port number"):
        check_runpod_flags([], env={"RUNPOD_REALTIME_PORT": "http"}, cwd=job_dir)


@pytest.mark.parametrize("content, message", [
    (None, "no job to run: outside Runpod the worker runs one local job"),
    ('{"input": {"prompt": "a"', "test_input.json is not valid JSON"),
    ('{"prompt": "a secret-ish prompt"}', 'test_input.json must be a JSON object with an "input"'),
    (b"\xff\xfe{", "cannot read"),
])
def test_local_mode_needs_a_usable_test_input_json(content: str | bytes | None, message: str,
                                                   tmp_path: Path) -> None:
    """No --test_input, no --rp_serve_api, not on Runpod: the SDK runs test_input.json after the
    boot, and a missing or malformed one failed only then (a traceback, or "not found, exiting")."""
    if isinstance(content, bytes):
        (tmp_path / "test_input.json").write_bytes(content)
    elif content is not None:
        (tmp_path / "test_input.json").write_text(content)
    with pytest.raises(SettingsError, match=re.escape(message)) as info:
        check_runpod_flags([], env={}, cwd=tmp_path)
    assert "secret-ish" not in str(info.value)
    # Where the SDK never reads it, the file does not matter: on Runpod, or serving HTTP jobs.
    check_runpod_flags([], env=ON_RUNPOD, cwd=tmp_path)
    check_runpod_flags([], env={"RUNPOD_REALTIME_PORT": "8080"}, cwd=tmp_path)
    check_runpod_flags([], env={"RUNPOD_WEBHOOK_GET_JOB": ""}, cwd=tmp_path)  # set at all, as the SDK reads it
    with pytest.raises(SettingsError, match=re.escape(message)):  # port 0: the SDK runs the local job
        check_runpod_flags([], env={"RUNPOD_REALTIME_PORT": "0"}, cwd=tmp_path)
    check_runpod_flags(["--rp_serve_api"], env={}, cwd=tmp_path)
    check_runpod_flags(["--test_input", LOCAL_JOB], env={}, cwd=tmp_path)


@pytest.mark.parametrize("argv, env, on_queue", [
    ([], ON_RUNPOD, True),
    ([], {"RUNPOD_WEBHOOK_GET_JOB": ""}, True),  # set at all, as the SDK reads it
    ([], {**ON_RUNPOD, "RUNPOD_REALTIME_PORT": "8080"}, False),  # the SDK serves HTTP instead
    ([], {**ON_RUNPOD, "RUNPOD_REALTIME_PORT": "0"}, True),
    (["--rp_serve_api"], ON_RUNPOD, False),
    (["--test_input", LOCAL_JOB], ON_RUNPOD, False),  # the SDK runs that job and exits
    (["--test_input", ""], ON_RUNPOD, True),  # an empty one: ignored, as the SDK ignores it
    ([], {}, False),  # local: test_input.json
])
def test_runpod_flags_tell_whether_the_sdk_takes_queue_jobs(argv: list[str], env: dict,
                                                             on_queue: bool, job_dir: Path) -> None:
    """Only on the queue does the SDK check the machine before its first job (runtime/serve.py)."""
    assert check_runpod_flags(argv, env=env, cwd=job_dir) is on_queue
