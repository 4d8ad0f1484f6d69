"""Announce stage: tell the orchestrator, once, that this worker is ready or that its boot failed.

One JSON POST to ``VISGATE_WEBHOOK`` per event, after warmup (``ready``) or after any boot failure
(``failed``). Delivery is bounded: a timeout per attempt and a total budget, retries with
exponential backoff and jitter on connection errors (TLS errors excepted), timeouts, 5xx and 429
(``Retry-After`` is honoured), none on any other answer. Redirects are not followed. An
undeliverable ``ready`` is logged as an ERROR and the worker serves anyway; announcing never
raises.

Signing, with ``VISGATE_WEBHOOK_SECRET`` set (the orchestrator verifies with ``verify_signature``):

    X-Visgate-Timestamp: <unix seconds, fresh on every attempt>
    X-Visgate-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>

Every attempt of one event carries the same ``X-Visgate-Delivery`` id (also ``delivery_id`` in the
body), so the orchestrator can drop duplicates when a response was lost and the POST retried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import requests

from runtime.boot_report import BootRecord
from runtime.errors import redact_values, safe_target
from runtime.retry_after import parse_retry_after
from runtime.settings import Settings

log = logging.getLogger(__name__)

# One attempt's (status, retry_after, reason, final); ``final``: retrying cannot help.
Outcome = tuple[int | None, float | None, str, bool]

TIMESTAMP_HEADER = "X-Visgate-Timestamp"
SIGNATURE_HEADER = "X-Visgate-Signature"
DELIVERY_HEADER = "X-Visgate-Delivery"
EVENT_HEADER = "X-Visgate-Event"
ATTEMPT_HEADER = "X-Visgate-Attempt"
SIGNATURE_PREFIX = "sha256="
# How far a timestamp may be from the verifier's clock: long enough for clock skew and a slow
# attempt, short enough that a captured request cannot be replayed later.
DEFAULT_TOLERANCE_S = 300

# Retry schedule: attempt n waits about BACKOFF_BASE_S * 2**(n-1), capped, with jitter so that a
# fleet of workers booting together does not hammer a recovering receiver in step.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 10.0
# A hard cap on attempts besides the budget: a receiver answering 503 instantly must not be
# hit dozens of times within one budget.
MAX_ATTEMPTS = 6
# The body's fields that can carry foreign text, redacted before sending (see Announcer.body).
FOREIGN_TEXT_FIELDS = ("error", "boot")
# OpenSSL's reasons for a TLS failure that retrying cannot mend: the receiver's certificate is not
# trusted, or what answers does not speak TLS (or not a version we share).
FINAL_TLS_REASONS = ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "TLSV1_ALERT_UNKNOWN_CA",
                     "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "RECORD_LAYER_FAILURE",
                     "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST")


# ---- signing ------------------------------------------------------------------------------------
def sign(secret: str, timestamp: str | int, body: bytes | str) -> str:
    """The ``X-Visgate-Signature`` value for this timestamp and raw body."""
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + raw, hashlib.sha256)
    return SIGNATURE_PREFIX + digest.hexdigest()


def verify_signature(secret: str, timestamp: str | int | None, body: bytes | str,
                     signature: str | None, now: float | None = None,
                     tolerance: float = DEFAULT_TOLERANCE_S) -> bool:
    """True when ``signature`` is ours for (timestamp, body) and the timestamp is fresh.

    ``body`` must be the raw request body as received (not re-serialized JSON). A timestamp more
    than ``tolerance`` seconds from ``now`` (either way) is rejected: that is the replay window.
    """
    if not secret or not signature or timestamp is None:
        return False
    # Header values are attacker-controlled: "²".isdigit() is True yet int() refuses it, and
    # compare_digest raises on non-ASCII str. A malformed header is a forgery, not a crash.
    text = str(timestamp).strip()
    if not (text.isascii() and text.isdigit()):
        return False
    if abs((time.time() if now is None else now) - int(text)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, text, body).encode(),
                               signature.strip().encode("utf-8", "replace"))


# ---- delivery -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    attempt_timeout: float  # seconds for one attempt (connect, and each read)
    budget: float  # seconds for all attempts and waits together
    max_attempts: int = MAX_ATTEMPTS
    backoff_base: float = BACKOFF_BASE_S
    backoff_cap: float = BACKOFF_CAP_S

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetryPolicy":
        return cls(attempt_timeout=settings.webhook_timeout, budget=settings.webhook_budget)

    def backoff(self, attempt: int, rng: random.Random | Any = random) -> float:
        """Wait after failed attempt ``attempt`` (1-based): exponential, capped, "equal jitter"."""
        step = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return step / 2 + rng.uniform(0, step / 2)


@dataclass
class Delivery:
    delivered: bool
    attempts: int
    status: int | None  # the last HTTP status, None when no answer came
    seconds: float
    reason: str  # why it was not delivered (or "HTTP 200")

    def as_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "attempts": self.attempts, "status": self.status,
                "seconds": self.seconds, "reason": self.reason}


class _NoRedirects(requests.Session):
    """Redirects are not followed (every POST passes ``allow_redirects=False``: a 3xx is a final
    answer), nor looked at: requests still prepares the redirect it does not follow
    (``Response.next``), reading the 3xx's whole body to do it, whatever ``stream`` says. A
    redirect with a large or endless body grew the worker's memory, and held the attempt until
    its timeout, after which it was counted as no answer and sent again."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


def new_session(ca_bundle: str | None = None) -> requests.Session:
    """A session that takes no credentials or proxies from the environment (no .netrc
    Authorization header can leak to the receiver). That also ignores REQUESTS_CA_BUNDLE, so the
    CA bundle the settings read from it is given here. Redirects: ``_NoRedirects``."""
    session = _NoRedirects()
    session.trust_env = False
    if ca_bundle:
        session.verify = ca_bundle
    return session


def deliver(url: str, body: bytes, event: str, delivery_id: str, policy: RetryPolicy,
            secret: str | None = None, session: requests.Session | None = None,
            sleep: Callable[[float], None] = time.sleep, rng: random.Random | Any = random) -> Delivery:
    """POST ``body`` until a 2xx, a final answer, ``max_attempts`` or the budget; never raises."""
    session = session or new_session()
    target = safe_target(url)
    t0 = time.monotonic()
    deadline = t0 + policy.budget
    attempt, status, reason = 0, None, "no attempt made"
    abandoned: list[list[Outcome]] = []  # see _within
    while attempt < policy.max_attempts:
        if (late := _late_success(abandoned)) is not None:
            return Delivery(True, attempt, late[0], round(time.monotonic() - t0, 3), late[2])
        remaining = deadline - time.monotonic()
        if remaining <= 0.01:
            reason += "; budget spent"
            break
        attempt += 1
        timeout = min(policy.attempt_timeout, remaining)
        status, retry_after, reason, final = _within(
            min(2 * timeout, remaining),
            partial(_attempt, session, url, body, event, delivery_id, attempt, timeout, secret),
            abandoned)
        if status is not None and 200 <= status < 300:
            return Delivery(True, attempt, status, round(time.monotonic() - t0, 3), reason)
        if final:
            break
        if attempt >= policy.max_attempts:
            reason += f"; {attempt} attempts made"
            break
        wait = retry_after if retry_after is not None else policy.backoff(attempt, rng)
        if time.monotonic() + wait >= deadline:
            reason += f"; the next attempt (in {wait:.1f}s) would pass the {policy.budget:g}s budget"
            break
        log.warning("%s webhook to %s: attempt %d failed (%s); retrying in %.1fs", event, target,
                    attempt, reason, wait)
        sleep(wait)
    if (late := _late_success(abandoned)) is not None:
        return Delivery(True, attempt, late[0], round(time.monotonic() - t0, 3), late[2])
    return Delivery(False, attempt, status, round(time.monotonic() - t0, 3), reason)


def _late_success(abandoned: list[list[Outcome]]) -> Outcome | None:
    """An abandoned attempt that was answered 2xx after all: the receiver has the event."""
    for outcome in abandoned:
        if outcome and outcome[0][0] is not None and 200 <= outcome[0][0] < 300:
            status, retry_after, reason, final = outcome[0]
            return status, retry_after, f"{reason} (answered late, to an attempt given up on)", final
    return None


def _within(limit: float, attempt: Callable[[], Outcome], abandoned: list[list[Outcome]]) -> Outcome:
    """One attempt, given up after ``limit`` seconds of wall clock (the connect and the read
    timeouts added, within the budget). requests' timeouts bound each connect and each read,
    not their sum: a receiver or proxy trickling its answer a byte at a time would otherwise
    hold the worker's readiness for as long as it likes. An abandoned attempt ends on its own
    read timeout, in a daemon thread; its outcome list goes to ``abandoned``, where a late 2xx
    still counts as delivered (every attempt carries the same delivery id)."""
    outcome: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcome.append(attempt()), name="webhook-attempt",
                              daemon=True)
    try:
        thread.start()
    except RuntimeError:  # no thread to spare: the attempt runs here, bounded by its timeouts
        return attempt()
    thread.join(limit)
    if not outcome:
        abandoned.append(outcome)
        return None, None, f"no answer: Timeout, the answer was not complete after {limit:.1f}s", False
    return outcome[0]


def _attempt(session: requests.Session, url: str, body: bytes, event: str, delivery_id: str,
             attempt: int, timeout: float, secret: str | None
             ) -> Outcome:
    """One POST: (status, retry_after, reason, final). ``final`` means retrying cannot help."""
    headers = {"Content-Type": "application/json", "User-Agent": "visgate-worker",
               EVENT_HEADER: event, DELIVERY_HEADER: delivery_id, ATTEMPT_HEADER: str(attempt)}
    try:
        if secret:  # inside: announcing never raises (settings refuse a secret that cannot sign)
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
        # stream=True: only the status and headers are needed, so a receiver that sends them and
        # then stalls its body cannot hold the attempt open.
        with session.post(url, data=body, headers=headers, timeout=(timeout, timeout),
                          allow_redirects=False, stream=True) as response:
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
    except requests.exceptions.SSLError as exc:  # before ConnectionError, its base class
        reason = _tls_reason(exc)
        if reason in FINAL_TLS_REASONS:
            # An untrusted certificate, or TLS spoken to a plain-HTTP port: neither mends itself
            # within the budget, so retrying would only hold up serving (or exiting).
            return None, None, (f"TLS failed: {reason}, not retried: is the receiver https://, "
                                "and its CA in REQUESTS_CA_BUNDLE or SSL_CERT_FILE?"), True
        # The rest (an EOF mid-handshake while a load balancer restarts, ...) can pass.
        return None, None, f"no answer: SSLError ({reason})", False
    except (requests.ConnectionError, requests.Timeout) as exc:
        # The exception's text can carry the URL (and a token in its query): name the kind only.
        return None, None, f"no answer: {exc.__class__.__name__}", False
    except Exception as exc:  # noqa: BLE001 - a bad URL or header: final, and announcing never raises
        return None, None, f"request failed: {exc.__class__.__name__}", True
    if 200 <= status < 300:
        return status, None, f"HTTP {status}", True
    if 300 <= status < 400:
        return status, None, f"HTTP {status} redirect, not followed: set VISGATE_WEBHOOK to the final URL", True
    if status == 429 or status >= 500:  # busy or broken now: may work later
        return status, retry_after, f"HTTP {status}", False
    return status, None, f"HTTP {status}, not retried", True


def _tls_reason(exc: BaseException) -> str:
    """OpenSSL's reason code (CERTIFICATE_VERIFY_FAILED, WRONG_VERSION_NUMBER, ...) from the
    chain of wrapped errors: unlike their text, it cannot carry the URL."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        error = pending.pop()
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ssl.SSLError) and isinstance(error.reason, str):
            return error.reason
        pending += [*error.args, getattr(error, "reason", None), error.__cause__, error.__context__]
    return "SSLError"


# ---- the one transition -------------------------------------------------------------------------
class Announcer:
    """The worker leaves "booting" once: to "ready" or to "failed", announced exactly once."""

    def __init__(self, settings: Settings | None, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session
        self.state = "booting"

    def ready(self, family: Any, record: BootRecord) -> dict[str, Any]:
        """Announce readiness with the boot record; return the delivery report. Never raises."""
        extra = {"family": family.name, "variant": family.variant}
        return self._announce("ready", extra, record)

    def failed(self, stage: str, message: str, record: BootRecord,
               family: Any | None = None) -> dict[str, Any]:
        """Announce a boot failure (``message`` already safe: no traceback, no secrets).

        The family is known once the load stage has reported it, even when a later stage failed.
        """
        loaded = record.stages.get("load", {})
        extra = {"family": getattr(family, "name", None) or loaded.get("family"),
                 "variant": getattr(family, "variant", None) or loaded.get("variant"),
                 "stage": stage, "error": message}
        return self._announce("failed", extra, record)

    def _announce(self, event: str, extra: dict[str, Any], record: BootRecord) -> dict[str, Any]:
        if self.state != "booting":
            raise RuntimeError(f"boot already announced as {self.state!r}; cannot announce {event!r}")
        self.state = event
        settings = self.settings
        if settings is None:  # the webhook's own settings failed (runtime.settings.webhook_settings)
            log.warning("%s: the webhook settings are invalid (see the settings error), nothing "
                        "announced", event)
            return {"webhook": "invalid settings"}
        if not settings.webhook_url:
            log.info("%s: no VISGATE_WEBHOOK set, nothing to announce", event)
            return {"webhook": "not configured"}
        delivery_id = uuid.uuid4().hex
        body = self.body(event, delivery_id, extra, record)
        result = deliver(settings.webhook_url, body, event, delivery_id,
                         RetryPolicy.from_settings(settings), secret=settings.webhook_secret,
                         session=self.session or new_session(settings.webhook_ca_bundle))
        target = safe_target(settings.webhook_url)
        if result.delivered:
            log.info("%s webhook delivered to %s (attempt %d, %s, %.2fs, delivery %s)", event,
                     target, result.attempts, result.reason, result.seconds, delivery_id)
        else:
            then = "serving anyway" if event == "ready" else "exiting"
            log.error("%s webhook NOT delivered to %s after %d attempt(s) in %.2fs: %s; %s", event,
                      target, result.attempts, result.seconds, result.reason, then)
        return {"webhook": target, "event": event, "delivery_id": delivery_id, **result.as_dict()}

    def body(self, event: str, delivery_id: str, extra: dict[str, Any], record: BootRecord) -> bytes:
        settings = self.settings
        assert settings is not None
        payload = {
            "status": event,
            "delivery_id": delivery_id,
            "model_id": settings.model_id or None,
            "revision": settings.revision,
            **extra,
            "worker_id": settings.worker_id,
            "endpoint_id": settings.endpoint_id,
            "boot": _record_dict(record),
        }
        clean = json.loads(json.dumps(payload, default=str))
        # A safety net: no foreign text may carry a secret to the receiver. Only the fields that
        # can hold some (the error message, the stage reports: an exception's text, a URL) are
        # redacted, and only their values: the fields and keys the worker writes itself (status,
        # stage, family, model_id, ...) go out as written. Value by value, after a JSON round
        # trip and before encoding: replacing in the JSON text could hit a secret that equals a
        # literal (true, a number) or miss one that JSON escapes.
        for name in FOREIGN_TEXT_FIELDS:
            if name in clean:
                clean[name] = redact_values(clean[name], settings.secrets)
        return json.dumps(clean).encode()  # insertion order: stages in boot order


def _record_dict(record: BootRecord) -> dict[str, Any]:
    try:
        return record.as_dict()
    except Exception:  # noqa: BLE001 - a broken torch/CUDA must not stop a failure report
        log.warning("boot record incomplete (device or versions unreadable)", exc_info=True)
        return {"total_seconds": record.total_seconds(), "stages": record.stages, **record.info}
