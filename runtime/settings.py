"""Settings: the environment read once into a frozen, typed object.

Nothing else in the worker reads ``os.environ`` for configuration: every stage receives a
``Settings``. ``Settings.from_env`` is a pure function of the mapping it is given (plus the
two filesystem facts it needs: whether the Runpod volume is mounted, and whether a CA bundle
variable names a file), so tests build settings from a plain dict.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence
from urllib.parse import SplitResult, urlsplit

from runtime.errors import SettingsError

RUNPOD_VOLUME = Path("/runpod-volume")

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ATTENTIONS = ("auto", "sdpa", "cudnn", "flash", "flash3", "xformers", "native")
COMPILE_MODES = ("off", "regional", "full", "max-autotune", "aot")
QUANTIZE_MODES = ("none", "fp8", "fp8-weight", "int8-weight")
# Webhook delivery bounds, in seconds: (default, smallest, largest). The budget bounds how long the
# announce stage can hold up serving (or exiting, after a failure) when the receiver is down.
WEBHOOK_TIMEOUT_S = (10.0, 0.1, 120.0)
WEBHOOK_BUDGET_S = (30.0, 0.1, 600.0)
# The webhook's HMAC key: a short one can be guessed, and is common enough to occur in ordinary
# text that the redaction of secrets would then mangle (logs, job errors, the webhook's error).
MIN_WEBHOOK_SECRET_LEN = 16
# A URL's user name beside a password is taken for a token (and redacted) from this length: the
# dummy names that go with a token in the password (x-access-token, oauth2) are shorter.
MIN_URL_USER_TOKEN_LEN = 16

# The VISGATE_* names the worker reads (tests/unit/test_settings.py holds this to what from_env
# and webhook_settings look up), and those of the project's scripts and benchmarks, which a shell
# that runs the worker by hand may export too. Any other is reported by ``unknown_names``.
WORKER_NAMES = ("VISGATE_CACHE_DIR", "VISGATE_WEBHOOK", "VISGATE_WEBHOOK_SECRET",
                "VISGATE_WEBHOOK_TIMEOUT", "VISGATE_WEBHOOK_BUDGET", "VISGATE_PRECISION",
                "VISGATE_ATTENTION", "VISGATE_COMPILE", "VISGATE_QUANTIZE", "VISGATE_WARMUP_SHAPES",
                "VISGATE_DEFAULT_STEPS", "VISGATE_DEFAULT_GUIDANCE")
TOOL_NAMES = ("VISGATE_TORCH_INDEX", "VISGATE_TORCH_VERSION", "VISGATE_TORCHAO_VERSION",
              "VISGATE_VENV", "VISGATE_IMAGE_VENV", "VISGATE_SETUP_CHECK", "VISGATE_BENCH_RESULTS",
              "VISGATE_SYNTHETIC_SCALE", "VISGATE_CI_VOLUME", "VISGATE_CI_PYTHON")

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_SHAPE_RE = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class Settings:
    model_id: str
    device: str = "cuda"
    revision: str = "main"
    # Secrets are kept out of repr() so that logging a Settings can never leak them.
    hf_token: str | None = field(default=None, repr=False)
    # repr=False: the URL may carry a token in its query or password.
    webhook_url: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_timeout: float = WEBHOOK_TIMEOUT_S[0]  # seconds per delivery attempt
    webhook_budget: float = WEBHOOK_BUDGET_S[0]  # seconds for all attempts and waits together
    # CA certificates for an https:// receiver with a private CA, from the standard variables:
    # the webhook's session ignores the environment (no .netrc credentials can leak to it).
    webhook_ca_bundle: str | None = None
    cache_dir: Path = Path(".cache/visgate")
    # The hub (HF_ENDPOINT: a mirror, or the tests' local server), whether it may be contacted at
    # all (HF_HUB_OFFLINE), and Runpod's read-only model cache, tried before our own cache.
    # repr=False: like the webhook's, the URL may carry a token in its password or query.
    hub_endpoint: str = field(default="https://huggingface.co", repr=False)
    hub_offline: bool = False
    runpod_model_cache: Path = RUNPOD_VOLUME / "huggingface-cache" / "hub"
    precision: str = "auto"
    attention: str = "auto"
    compile: str = "off"
    quantize: str = "none"
    warmup_shapes: tuple[tuple[int, int], ...] = ()
    # What a job that leaves them out gets, and what warmup compiles for, instead of the model's
    # own defaults: a few-step distilled checkpoint (SDXL-Lightning, Hyper-SD, SD3.5 Turbo, ...)
    # has its base model's configs, so nothing in the repository tells the worker.
    default_steps: int | None = None
    default_guidance: float | None = None
    # Runpod ids, carried into the webhook so the orchestrator can match the worker.
    worker_id: str | None = None
    endpoint_id: str | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in logs, outputs or errors (see ``secrets_in``).

        A webhook secret too short to accept is held only after a settings failure, to sign the
        failed event (``webhook_settings``). It is left out: the refusal never quotes it, and
        redacting so short a string would garble the very message that says why the boot stopped
        ("boot fail***d at s***ttings" for a secret "e")."""
        webhook_key = (self.webhook_secret
                       if len(self.webhook_secret or "") >= MIN_WEBHOOK_SECRET_LEN else None)
        return secrets_in({name: value for name, value in (
            ("HF_TOKEN", self.hf_token), ("VISGATE_WEBHOOK_SECRET", webhook_key),
            ("VISGATE_WEBHOOK", self.webhook_url), ("HF_ENDPOINT", self.hub_endpoint)) if value})

    @classmethod
    def from_env(cls, env: Mapping[str, str], volume_root: Path = RUNPOD_VOLUME) -> "Settings":
        """Build settings from an environment mapping; raise SettingsError naming the bad variable."""
        model_id = _text(env, "HF_MODEL_ID")
        if not model_id:
            raise SettingsError("HF_MODEL_ID is required: set it to a Hugging Face model id "
                                "(e.g. black-forest-labs/FLUX.1-schnell), a local model directory, "
                                "or a built-in tiny model (visgate/tiny-flux, visgate/tiny-sdxl)")
        device = (_text(env, "DEVICE") or "cuda").lower()
        if not _DEVICE_RE.match(device):
            raise SettingsError(f"DEVICE={device!r} is not valid: use cuda, cuda:N or cpu")
        on_cuda = device.startswith("cuda")
        return cls(
            model_id=model_id,
            device=device,
            **_identity_and_webhook(env),
            cache_dir=_cache_dir(_text(env, "VISGATE_CACHE_DIR"), volume_root),
            hub_endpoint=_hub_endpoint(_text(env, "HF_ENDPOINT")),
            hub_offline=_flag(env, "HF_HUB_OFFLINE"),
            runpod_model_cache=volume_root / "huggingface-cache" / "hub",
            precision=_choice(env, "VISGATE_PRECISION", PRECISIONS, "auto"),
            attention=_choice(env, "VISGATE_ATTENTION", ATTENTIONS, "auto"),
            # Compilation pays off on a GPU; on CPU it costs more boot time than it saves.
            compile=_choice(env, "VISGATE_COMPILE", COMPILE_MODES, "regional" if on_cuda else "off"),
            quantize=_choice(env, "VISGATE_QUANTIZE", QUANTIZE_MODES, "none"),
            warmup_shapes=_shapes(_text(env, "VISGATE_WARMUP_SHAPES")),
            default_steps=_default_steps(_text(env, "VISGATE_DEFAULT_STEPS")),
            default_guidance=_default_guidance(_text(env, "VISGATE_DEFAULT_GUIDANCE")),
        )


def unknown_names(env: Mapping[str, str]) -> list[str]:
    """The VISGATE_* names in ``env`` that nothing reads, each with the closest name the worker
    reads: most likely a typo (VISGATE_QUANTISE, VISGATE_WARMUP_SHAPE, a lower-case name), which
    would otherwise leave that setting at its default without a word. Only the names: a value may
    be a secret. Not a settings error: an endpoint that still sets a name an older image read
    must keep booting."""
    prefix = "VISGATE_"
    # Matched without the prefix, which every name shares: else VISGATE_FOO "looks like" one.
    readable = {name[len(prefix):]: name for name in WORKER_NAMES}
    found = []
    for name in sorted(n for n in env if n.upper().startswith(prefix)):
        if name in WORKER_NAMES or name in TOOL_NAMES:
            continue
        close = difflib.get_close_matches(name[len(prefix):].upper(), readable, n=1, cutoff=0.6)
        found.append(f"{name} (did you mean {readable[close[0]]}?)" if close else name)
    return found


def secrets_in(env: Mapping[str, str]) -> tuple[str, ...]:
    """The values in ``env`` that must never appear in logs, outputs or errors: the hub token, the
    webhook's key, and the credentials in the webhook's and the hub's URLs. The one rule for what
    is secret: the worker's own list (``Settings.secrets``) and what a benchmark records of the
    environment it ran with both come from here."""
    values = (_text(env, "HF_TOKEN"), _text(env, "VISGATE_WEBHOOK_SECRET"),
              *_url_credentials(_text(env, "VISGATE_WEBHOOK")),
              *_url_credentials(_text(env, "HF_ENDPOINT")))
    return tuple(s for s in values if s)


# What --test_input must look like: the job Runpod's SDK runs once, locally, then exits.
TEST_INPUT_EXAMPLE = """--test_input '{"input": {"prompt": "a red fox"}}'"""


def check_runpod_flags(argv: Sequence[str], env: Mapping[str, str] | None = None,
                       cwd: Path | None = None) -> bool:
    """Refuse a job Runpod's SDK could not run. The SDK parses its flags only as serving starts,
    after the whole boot and the ready webhook: a bad ``--test_input`` would fail only then. So
    would local mode (no ``--rp_serve_api``, not on Runpod) with no ``--test_input`` and a
    missing or malformed ``test_input.json`` in the working directory, which the SDK reads then.
    Read as the SDK reads them (argparse, its own flags, unknown ones left alone); the messages
    never quote the job.

    Returns whether the SDK will take jobs from Runpod's queue: only there does it check the
    machine before its first job (runtime/serve.py, ``JobSdk.check_machine``)."""
    env = os.environ if env is None else env
    flags = _RunpodFlags().parse_known_args(list(argv))[0]
    if flags.rp_serve_api and (flags.rp_api_concurrency or 1) > 1:
        # The SDK's server (uvicorn) runs several processes only for an application named by an
        # import string, which the SDK never passes: it would warn and exit after the whole boot
        # and the ready webhook. One process is what this worker is anyway: one pipeline.
        raise SettingsError(f"--rp_api_concurrency {flags.rp_api_concurrency}: Runpod's SDK serves "
                            "HTTP jobs from one process only (above 1 its server exits once the "
                            "boot is over); leave it at 1")
    if flags.test_input:  # an empty one: the SDK ignores it too
        _check_local_job(flags.test_input, "--test_input")
        return False
    if flags.rp_serve_api:
        return False
    if _sdk_serves(env):
        # The queue, unless a realtime port makes the SDK serve HTTP instead.
        return _realtime_port(env) == 0
    path = (Path.cwd() if cwd is None else cwd) / "test_input.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"no job to run: outside Runpod the worker runs one local job, from "
                            f"--test_input or {path}, which does not exist; give "
                            f"{TEST_INPUT_EXAMPLE}, or --rp_serve_api to serve HTTP jobs") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read {path} ({exc.__class__.__name__}), the local job "
                            f"the SDK would run") from None
    _check_local_job(text, str(path))
    return False


def _realtime_port(env: Mapping[str, str]) -> int:
    """The SDK's realtime HTTP port (0: none). One that is not a number would crash the SDK as
    serving starts, so it is refused now."""
    try:
        return int(env.get("RUNPOD_REALTIME_PORT", "0"))
    except ValueError:
        raise SettingsError("RUNPOD_REALTIME_PORT is not a port number (Runpod's SDK would fail "
                            "on it after the boot)") from None


def _sdk_serves(env: Mapping[str, str]) -> bool:
    """Whether the SDK will serve jobs rather than run one local job, judged as it judges: its
    job queue's URL set at all (even empty), or a realtime port other than 0."""
    return env.get("RUNPOD_WEBHOOK_GET_JOB") is not None or _realtime_port(env) != 0


def _check_local_job(text: str, where: str) -> None:
    try:
        job = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{where} is not valid JSON ({exc.msg}): give one job, e.g. "
                            f"{TEST_INPUT_EXAMPLE}") from None
    if not isinstance(job, dict) or job.get("input") is None:
        raise SettingsError(f'{where} must be a JSON object with an "input": e.g. '
                            f"{TEST_INPUT_EXAMPLE}")


class _RunpodFlags(argparse.ArgumentParser):
    """The SDK's flags, all of them so that a prefix (``--rp_serve``) resolves as the SDK's own
    parser resolves it; its errors become settings errors, not an exit."""

    def __init__(self) -> None:
        super().__init__(prog="runtime", add_help=False)
        for flag in ("--rp_log_level", "--rp_api_host", "--test_input"):
            self.add_argument(flag, type=str, default=None)
        for flag in ("--rp_api_port", "--rp_api_concurrency"):  # a non-number fails the SDK too
            self.add_argument(flag, type=int, default=None)
        for flag in ("--rp_debugger", "--rp_serve_api"):
            self.add_argument(flag, action="store_true", default=None)

    def error(self, message: str) -> NoReturn:
        raise SettingsError(f"Runpod flags: {message}; e.g. {TEST_INPUT_EXAMPLE}")


def webhook_settings(env: Mapping[str, str]) -> Settings | None:
    """What a failed ``from_env`` still allows: the webhook and the ids, to announce the failure.

    None when the webhook's own settings are invalid too (its URL or secret), so that the
    announcer can say so rather than "not set"; ``webhook_url`` is None when it is not set. A bad
    timeout or budget falls back to the defaults, since reporting the failure matters more than
    honouring them.
    """
    # Then without what the webhook can do without: bad timings fall back to the defaults, and a
    # bad HF_TOKEN (its only use here is redaction, and it is not one line of text) is left out.
    lenient = {k: v for k, v in env.items()
               if k not in ("VISGATE_WEBHOOK_TIMEOUT", "VISGATE_WEBHOOK_BUDGET")}
    # Last, a webhook secret too short to accept: it still signs the "failed" event that says
    # so (the receiver holds that key), instead of leaving the orchestrator with no event at all;
    # it is not redacted (see Settings.secrets).
    candidates = (env, lenient, {k: v for k, v in lenient.items() if k != "HF_TOKEN"})
    for strict, candidate in ((strict, c) for strict in (True, False) for c in candidates):
        try:
            # hub_endpoint as given, unchecked: here it only names credentials to redact.
            settings = Settings(model_id=_text(candidate, "HF_MODEL_ID") or "",
                                hub_endpoint=_text(candidate, "HF_ENDPOINT") or Settings.hub_endpoint,
                                **_identity_and_webhook(candidate, strict_secret=strict))
        except SettingsError:
            continue
        return settings
    return None


def _identity_and_webhook(env: Mapping[str, str], strict_secret: bool = True) -> dict[str, Any]:
    """The fields the webhook needs: read by from_env, and alone after a failed from_env."""
    return dict(
        revision=_text(env, "HF_MODEL_REVISION") or "main",
        hf_token=_header_secret(env, "HF_TOKEN"),
        webhook_url=_webhook_url(_text(env, "VISGATE_WEBHOOK")),
        webhook_secret=_webhook_secret(env, strict_secret),
        webhook_timeout=_seconds(env, "VISGATE_WEBHOOK_TIMEOUT", WEBHOOK_TIMEOUT_S),
        webhook_budget=_seconds(env, "VISGATE_WEBHOOK_BUDGET", WEBHOOK_BUDGET_S),
        webhook_ca_bundle=_ca_bundle(env),
        worker_id=_text(env, "RUNPOD_POD_ID"),
        endpoint_id=_text(env, "RUNPOD_ENDPOINT_ID"),
    )


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _secret(env: Mapping[str, str], name: str, encoding: str) -> str | None:
    """A secret that can be sent: environment bytes that are not text come through as lone
    surrogates, which would fail only later (signing the ready webhook, after the whole warmup).
    The message never quotes the value."""
    value = _text(env, name)
    if value is not None:
        try:
            value.encode(encoding)
        except UnicodeEncodeError:
            raise SettingsError(f"{name} holds characters that are not {encoding.upper()} text: "
                                "set it again") from None
    return value


def _header_secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret sent as an HTTP header (``Authorization: Bearer``): ASCII, on one line. requests
    refuses a line break or another control character in a header only as the fetch sends it,
    and each retry fails the same until the boot ends blaming an unavailable hub. The message
    never quotes the value."""
    value = _secret(env, name, "ascii")
    if value is not None and not value.isprintable():  # ASCII: \x00-\x1f and \x7f
        raise SettingsError(f"{name} holds a line break or another control character: set it "
                            "again, on one line")
    return value


def _webhook_secret(env: Mapping[str, str], strict: bool = True) -> str | None:
    secret = _secret(env, "VISGATE_WEBHOOK_SECRET", "utf-8")
    if strict and secret is not None and len(secret) < MIN_WEBHOOK_SECRET_LEN:
        raise SettingsError(f"VISGATE_WEBHOOK_SECRET is shorter than {MIN_WEBHOOK_SECRET_LEN} "
                            "characters: a short key is easy to guess; make a random one, e.g. "
                            "with `openssl rand -hex 32`")
    return secret


def _ca_bundle(env: Mapping[str, str]) -> str | None:
    """The CA bundle file named by requests' variable, else OpenSSL's. Not ours to refuse: a base
    image may set them for other tools, so one naming no file is passed over (the system's CAs)."""
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        path = _text(env, name)
        if path and Path(path).is_file():
            return path
    return None


def _choice(env: Mapping[str, str], name: str, valid: tuple[str, ...], default: str) -> str:
    value = _text(env, name)
    if value is None:
        return default
    value = value.lower()
    if value not in valid:
        raise SettingsError(f"{name}={value!r} is not valid: use one of {', '.join(valid)}")
    return value


def _webhook_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = _split_url("VISGATE_WEBHOOK", url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The URL may carry a token in its query, so the message names only what is wrong.
        raise SettingsError("VISGATE_WEBHOOK must be an http:// or https:// URL with a host")
    _check_sendable("VISGATE_WEBHOOK", url)
    return url


def _check_sendable(name: str, url: str) -> None:
    """Refuse now a URL that requests cannot send to (a space in the host, an empty label as in
    ``hooks..example.com``): it would otherwise fail only after the whole warmup."""
    import requests  # here: the settings module itself stays standard-library only

    try:
        prepared = requests.Request("POST", url).prepare().url or ""
        # Label lengths (none empty, none over 63) are checked by urllib3 only as it connects.
        (urlsplit(prepared).hostname or "").encode("idna")
    except (requests.RequestException, ValueError):  # UnicodeError and urllib3's are ValueErrors
        # The URL may carry a token: the message does not quote it.
        raise SettingsError(f"{name} is not a URL that can be sent to: check its host for spaces, "
                            "empty labels ('..') or characters not allowed in a host name") from None


def _seconds(env: Mapping[str, str], name: str, bounds: tuple[float, float, float]) -> float:
    default, low, high = bounds
    value = _text(env, name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not low <= seconds <= high:  # also rejects nan
        raise SettingsError(f"{name}={value!r} is not valid: use a number of seconds "
                            f"from {low:g} to {high:g} (default {default:g})")
    return seconds


def _default_steps(text: str | None) -> int | None:
    """VISGATE_DEFAULT_STEPS: a whole number from 1 (the model's own range is checked at load)."""
    if text is None:
        return None
    if not re.fullmatch(r"\d{1,9}", text) or int(text) < 1:
        raise SettingsError("VISGATE_DEFAULT_STEPS is not valid: use a whole number of steps from 1, "
                            "e.g. 4 for a few-step distilled model (unset: the model's own default)")
    return int(text)


def _default_guidance(text: str | None) -> float | None:
    """VISGATE_DEFAULT_GUIDANCE: a number from 0 (the model's own range is checked at load)."""
    if text is None:
        return None
    try:
        guidance = float(text) if len(text) <= 32 else float("nan")
    except ValueError:
        guidance = float("nan")
    if not 0 <= guidance < float("inf"):  # also rejects nan
        raise SettingsError("VISGATE_DEFAULT_GUIDANCE is not valid: use a number from 0, e.g. 0 "
                            "for a distilled model that runs without classifier-free guidance "
                            "(unset: the model's own default)")
    return guidance


def _url_credentials(url: str | None) -> tuple[str, ...]:
    """A URL's password and query string often carry a token (``?token=...``), and so does its
    user name: given alone (``https://<token>@mirror``), or with a dummy password
    (``https://<token>:x-oauth-basic@mirror``). HTTP libraries log the request line at DEBUG and
    put URLs in their errors, so these are redacted like the other secrets.

    From 4 characters, except a user name beside a password: that is usually a plain name
    (``mirror``, ``oauth2``, ``x-access-token``) that ordinary text holds too ("hook" in
    "webhook"), so it counts only from ``MIN_URL_USER_TOKEN_LEN`` characters, as a token would."""
    if not url:
        return ()
    try:
        parts = urlsplit(url)
    except ValueError:  # invalid URLs never get this far (_split_url refuses them)
        return ()
    user_floor = 4 if parts.password is None else MIN_URL_USER_TOKEN_LEN
    user = parts.username if parts.username and len(parts.username) >= user_floor else None
    return tuple(s for s in (parts.password, parts.query, user) if s and len(s) >= 4)


def _split_url(name: str, url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket; the message does not echo the URL
        raise SettingsError(f"{name} is not a valid URL") from None
    try:
        _ = parts.port  # parsed lazily: a bad one would fail later, in a message quoting the URL
    except ValueError:
        raise SettingsError(f"{name} has an invalid port") from None
    return parts


def _hub_endpoint(url: str | None) -> str:
    if url is None:
        return "https://huggingface.co"
    parts = _split_url("HF_ENDPOINT", url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError("HF_ENDPOINT must be an http:// or https:// URL with a host")
    return url.rstrip("/")


def _flag(env: Mapping[str, str], name: str) -> bool:
    """Strict booleans: a typo must not silently mean "off"."""
    value = (_text(env, name) or "0").lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r} is not valid: use 1/true/yes/on or 0/false/no/off")


def _cache_dir(value: str | None, volume_root: Path) -> Path:
    # expanduser() and home() raise RuntimeError for an unknown user or a process without a home
    # (a container run as a UID with no passwd entry): a settings error naming the fix.
    if value:
        try:
            return Path(value).expanduser()
        except RuntimeError:
            raise SettingsError(f"VISGATE_CACHE_DIR={value!r}: its '~' names no known home "
                                "directory; give an absolute path") from None
    if volume_root.is_dir() and os.access(volume_root, os.W_OK):
        return volume_root / "visgate"
    try:
        return Path.home() / ".cache" / "visgate"
    except RuntimeError:
        raise SettingsError(f"{volume_root} is not mounted and this process has no home directory "
                            "for a local cache: set VISGATE_CACHE_DIR") from None


def _shapes(value: str | None) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    shapes = []
    for item in value.replace(" ", "").split(","):
        if not item:
            continue
        match = _SHAPE_RE.match(item.lower())
        if not match:
            raise SettingsError(f"VISGATE_WARMUP_SHAPES item {item!r} is not HEIGHTxWIDTH "
                                "(e.g. 1024x1024,768x1344)")
        shape = (int(match.group(1)), int(match.group(2)))
        _check_shape_any_family(shape)
        if shape not in shapes:
            shapes.append(shape)
    return tuple(shapes)


def _check_shape_any_family(shape: tuple[int, int]) -> None:
    """Fail before the fetch on a shape no family can serve (a family may be stricter still, e.g.
    FLUX's multiples of 16, checked as soon as model_index.json is read)."""
    from pipelines.base import COMMON_SIZE_RULES
    from runtime.errors import JobInputError
    from runtime.validate import check_shape

    try:
        check_shape(*shape, COMMON_SIZE_RULES)
    except JobInputError as exc:
        raise SettingsError(f"VISGATE_WARMUP_SHAPES {shape[0]}x{shape[1]} is not valid: {exc}") from None
