"""The readiness/failure webhook against a real HTTP receiver on 127.0.0.1 (no torch, no mocks)."""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from runtime import announce
from runtime.announce import Announcer, RetryPolicy, deliver, sign, verify_signature
from runtime.boot import failure_message, stop_signals_raise, warn_unknown_names
from runtime.boot_report import BootRecord
from runtime.errors import BootError, SettingsError, Stopped
from runtime.logs import RedactSecrets
from runtime.retry_after import parse_retry_after
from runtime.settings import Settings, webhook_settings
from tests.support.receiver import Reply, WebhookReceiver

SECRET = "whsec-unit-7f3a9c"
HF_TOKEN = "hf_unitTokenDoNotLeak"
# Fast schedule for tests: same shape as the real one, milliseconds instead of seconds.
FAST = RetryPolicy(attempt_timeout=2.0, budget=10.0, backoff_base=0.05, backoff_cap=0.2)


def post(url: str, policy: RetryPolicy = FAST, secret: str | None = SECRET, body: bytes = b'{"a":1}'):
    return deliver(url, body, "ready", "delivery-1", policy, secret=secret)


@pytest.fixture(autouse=True)
def no_torch(monkeypatch):
    """Unit tier: the boot record's device probe would import torch; a CPU answer will do."""
    from runtime import boot_report

    monkeypatch.setattr(boot_report, "device_info", lambda device=None: {"type": "cpu"})


@pytest.fixture
def receiver(request):
    replies = getattr(request, "param", ())
    with WebhookReceiver(replies) as hook:
        yield hook


class FakeFamily:
    name = "flux"
    variant = "schnell"


def settings_for(url: str, **kw) -> Settings:
    base = dict(model_id="visgate/tiny-flux", revision="main", webhook_url=url, webhook_secret=SECRET,
                hf_token=HF_TOKEN, webhook_timeout=2.0, webhook_budget=5.0, worker_id="pod-1",
                endpoint_id="ep-1")
    base.update(kw)
    return Settings(**base)


def record_with_stages() -> BootRecord:
    record = BootRecord()
    for name in ("fetch", "load", "optimize", "warmup"):
        with record.stage(name) as report:
            report["note"] = name
    return record


# ---- signatures -------------------------------------------------------------------------------
def test_signature_verifies_with_the_secret_and_fails_with_another():
    body = b'{"status":"ready"}'
    now = time.time()
    ts = str(int(now))
    signature = sign(SECRET, ts, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify_signature(SECRET, ts, body, signature, now=now)
    assert verify_signature(SECRET, ts, body.decode(), signature, now=now)  # str body accepted
    assert not verify_signature("another-secret", ts, body, signature, now=now)
    assert not verify_signature(SECRET, ts, body + b" ", signature, now=now)  # tampered body
    assert not verify_signature(SECRET, str(int(now) + 1), body, signature, now=now)  # other ts
    assert not verify_signature(SECRET, ts, body, None, now=now)
    assert not verify_signature(SECRET, "not-a-number", body, signature, now=now)
    assert not verify_signature("", ts, body, signature, now=now)


def test_stale_or_future_timestamp_is_rejected_as_replay():
    body = b"{}"
    sent = int(time.time()) - 600
    signature = sign(SECRET, sent, body)
    assert not verify_signature(SECRET, sent, body, signature, tolerance=300)
    assert verify_signature(SECRET, sent, body, signature, now=sent + 299, tolerance=300)
    assert not verify_signature(SECRET, sent, body, signature, now=sent - 301, tolerance=300)


def readme_verify():
    """The README's verification recipe, run as written (an orchestrator will copy it)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    [code] = re.findall(r"```python\n(import hashlib, hmac, time\n.*?)```", readme, re.DOTALL)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - our own README
    return namespace["verify"]


# Malformed headers from a forger or a broken proxy: "²" passes str.isdigit() but not int(),
# and a non-ASCII str makes hmac.compare_digest raise TypeError.
MALFORMED = [("²", None), ("１７００００００００", None), ("-5", None), (" ", None),
             (None, "sha256=é"), (None, "sha256=\u2603" + "0" * 63), (None, "\udcff")]


@pytest.mark.parametrize("timestamp, signature", MALFORMED)
def test_malformed_signature_headers_are_rejected_not_raised(timestamp, signature):
    body = b'{"status":"ready"}'
    now = int(time.time())
    timestamp = str(now) if timestamp is None else timestamp
    signature = sign(SECRET, now, body) if signature is None else signature
    assert verify_signature(SECRET, timestamp, body, signature, now=now) is False
    headers = {"X-Visgate-Timestamp": timestamp, "X-Visgate-Signature": signature}
    assert readme_verify()(SECRET, headers, body) is False


def test_the_readme_recipe_accepts_a_real_signature():
    body = b'{"status":"ready"}'
    ts = str(int(time.time()))
    headers = {"X-Visgate-Timestamp": ts, "X-Visgate-Signature": sign(SECRET, ts, body)}
    assert readme_verify()(SECRET, headers, body) is True
    assert readme_verify()("another-secret-0123", headers, body) is False


# ---- delivery and retries -----------------------------------------------------------------------
def test_signed_post_carries_timestamp_signature_and_delivery_id(receiver):
    result = post(receiver.url)
    assert result.delivered and result.attempts == 1 and result.status == 200
    [req] = receiver.received
    assert req.method == "POST" and req.path == "/hooks/boot" and req.body == b'{"a":1}'
    assert req.header("Content-Type") == "application/json"
    assert req.header(announce.EVENT_HEADER) == "ready"
    assert req.header(announce.DELIVERY_HEADER) == "delivery-1"
    assert req.header(announce.ATTEMPT_HEADER) == "1"
    ts = req.header(announce.TIMESTAMP_HEADER)
    assert abs(int(ts) - req.at) < 5
    assert verify_signature(SECRET, ts, req.body, req.header(announce.SIGNATURE_HEADER))
    assert not verify_signature("wrong", ts, req.body, req.header(announce.SIGNATURE_HEADER))


def test_unsigned_without_a_secret(receiver):
    assert post(receiver.url, secret=None).delivered
    [req] = receiver.received
    assert req.header(announce.SIGNATURE_HEADER) is None
    assert req.header(announce.TIMESTAMP_HEADER) is None
    assert req.header(announce.DELIVERY_HEADER) == "delivery-1"


@pytest.mark.parametrize("receiver", [[500, 500, 200]], indirect=True)
def test_500_twice_then_200_is_three_attempts_with_one_delivery_id(receiver):
    result = post(receiver.url)
    assert result.delivered and result.attempts == 3 and result.status == 200
    reqs = receiver.received
    assert len(reqs) == 3
    assert [r.header(announce.ATTEMPT_HEADER) for r in reqs] == ["1", "2", "3"]
    assert {r.header(announce.DELIVERY_HEADER) for r in reqs} == {"delivery-1"}
    assert all(verify_signature(SECRET, r.header(announce.TIMESTAMP_HEADER), r.body,
                                r.header(announce.SIGNATURE_HEADER)) for r in reqs)
    gaps = [b.at - a.at for a, b in zip(reqs, reqs[1:])]
    assert gaps[0] >= FAST.backoff_base / 2 - 0.01 and gaps[1] >= FAST.backoff_base - 0.01


@pytest.mark.parametrize("receiver", [[502, 503, 504, 500, 599, 500, 500, 500]], indirect=True)
def test_attempts_are_bounded(receiver):
    result = post(receiver.url)
    assert not result.delivered and result.attempts == announce.MAX_ATTEMPTS
    time.sleep(0.3)
    assert len(receiver.received) == announce.MAX_ATTEMPTS


@pytest.mark.parametrize("receiver", [[Reply(429, {"Retry-After": "1"}), 200]], indirect=True)
def test_429_waits_retry_after(receiver):
    result = post(receiver.url)
    assert result.delivered and result.attempts == 2
    first, second = receiver.received
    assert second.at - first.at >= 0.95  # not the 25-50 ms backoff: the receiver's own 1 s


def test_429_retry_after_as_http_date():
    later = email.utils.formatdate(time.time() + 1.2, usegmt=True)
    with WebhookReceiver([Reply(429, {"Retry-After": later}), 200]) as hook:
        assert post(hook.url).delivered
        first, second = hook.received
    assert second.at - first.at >= 0.15  # the date has whole-second resolution


@pytest.mark.parametrize("receiver", [[Reply(503, {"Retry-After": "3600"}), 200]], indirect=True)
def test_retry_after_beyond_the_budget_gives_up_at_once(receiver):
    t0 = time.monotonic()
    result = post(receiver.url, policy=RetryPolicy(attempt_timeout=1, budget=3))
    assert time.monotonic() - t0 < 1
    assert not result.delivered and result.attempts == 1 and "budget" in result.reason
    assert len(receiver.received) == 1


@pytest.mark.parametrize("receiver", [[400, 200]], indirect=True)
def test_400_is_not_retried(receiver):
    result = post(receiver.url)
    assert not result.delivered and result.attempts == 1 and result.status == 400
    time.sleep(0.3)
    assert len(receiver.received) == 1


@pytest.mark.parametrize("status", [401, 403, 404, 410, 422])
def test_other_4xx_are_not_retried(status):
    with WebhookReceiver([status, 200]) as hook:
        result = post(hook.url)
        time.sleep(0.2)
        assert not result.delivered and len(hook.received) == 1


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(status):
    with WebhookReceiver([Reply(status, {"Location": "/elsewhere"})], default=200) as hook:
        result = post(hook.url)
        time.sleep(0.2)
        assert [r.path for r in hook.received] == ["/hooks/boot"]
    assert not result.delivered and result.status == status and "redirect" in result.reason


def test_a_redirects_body_is_not_read():
    """requests prepares the redirect it does not follow, reading the 3xx's whole body to do it:
    a large (here: stalled) one held the attempt to its timeout, which then counted as no
    answer and was sent again; a large one grew the worker's memory by its size."""
    policy = RetryPolicy(attempt_timeout=1.0, budget=5.0, backoff_base=0.05, backoff_cap=0.1)
    stalled = Reply(302, {"Location": "/elsewhere"}, body=b"<html>" * 100, body_length=10**9)
    with WebhookReceiver([stalled], default=200) as hook:
        t0 = time.monotonic()
        result = deliver(hook.url, b"{}", "ready", "d-1", policy)
        took = time.monotonic() - t0
        received = list(hook.received)
    assert (result.delivered, result.attempts, result.status) == (False, 1, 302), result
    assert len(received) == 1 and took < 0.9, took


def test_receiver_that_never_answers_is_bounded_by_the_budget():
    policy = RetryPolicy(attempt_timeout=0.4, budget=1.5, backoff_base=0.05, backoff_cap=0.1)
    with WebhookReceiver(default=Reply(hang=True)) as hook:
        t0 = time.monotonic()
        result = post(hook.url, policy=policy)
        elapsed = time.monotonic() - t0
        assert len(hook.received) >= 2  # timed out, then retried
    assert not result.delivered and result.status is None and "Timeout" in result.reason
    assert elapsed < policy.budget + 0.5


def test_a_receiver_trickling_its_answer_is_bounded_by_the_budget():
    """requests' timeouts bound each read, not their sum: a receiver (or a proxy) sending its
    answer a byte every 0.2 s never trips them, and would hold the worker's readiness."""
    def trickle(conn: socket.socket, _number: int, stop: threading.Event) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 200:
            if stop.wait(0.2):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return

    policy = RetryPolicy(attempt_timeout=0.5, budget=1.5, backoff_base=0.05, backoff_cap=0.1)
    with raw_receiver(trickle) as port:
        t0 = time.monotonic()
        result = post(f"http://127.0.0.1:{port}/hook", policy=policy)
        elapsed = time.monotonic() - t0
    assert not result.delivered and "Timeout" in result.reason
    assert elapsed < policy.budget + 0.5, elapsed


@contextlib.contextmanager
def raw_receiver(answer: Callable[[socket.socket, int, threading.Event], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that hands each connection (and its number, from 1) to
    ``answer``, for receivers no HTTP server would be: trickling, late, cut mid-handshake."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        number = 0
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            number += 1
            with conn:
                answer(conn, number, stop)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()


def test_an_attempt_given_up_on_that_is_answered_2xx_late_counts_as_delivered():
    def answer(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.recv(65536)
        if number == 1:  # 200, a byte every 25 ms: past the attempt's 0.6 s limit
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                if stop.wait(0.025):
                    return
                conn.sendall(bytes([byte]))
        else:
            conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")

    policy = RetryPolicy(attempt_timeout=0.3, budget=4.0, backoff_base=0.2, backoff_cap=0.4)
    with raw_receiver(answer) as port:
        result = post(f"http://127.0.0.1:{port}/hook", policy=policy)
    assert result.delivered and result.status == 200 and "answered late" in result.reason, result


def test_connection_refused_is_retried_within_the_budget():
    with WebhookReceiver() as hook:
        url = hook.url
    policy = RetryPolicy(attempt_timeout=0.5, budget=1.0, backoff_base=0.1, backoff_cap=0.2)
    t0 = time.monotonic()
    result = post(url, policy=policy)
    assert not result.delivered and result.attempts >= 2 and "ConnectionError" in result.reason
    assert time.monotonic() - t0 < 1.5


def test_tls_error_is_final_not_retried_until_the_budget_is_spent():
    # TLS spoken to a plain-HTTP receiver: an SSLError (a ConnectionError to requests) that no
    # retry can mend, so one attempt, not the whole budget.
    with WebhookReceiver() as hook:
        t0 = time.monotonic()
        result = post(hook.url.replace("http://", "https://"))
    assert not result.delivered and result.attempts == 1, result
    assert result.reason.startswith("TLS failed: WRONG_VERSION_NUMBER, not retried")
    assert "REQUESTS_CA_BUNDLE" in result.reason and time.monotonic() - t0 < 1.5


def test_a_tls_handshake_cut_short_is_retried():
    # A receiver behind a load balancer that is restarting: the connection closes mid-handshake
    # (an EOF, not a certificate problem), which the next attempt can get past.
    policy = RetryPolicy(attempt_timeout=0.5, budget=1.5, backoff_base=0.1, backoff_cap=0.2)
    with raw_receiver(lambda conn, number, stop: None) as port:  # closed before any TLS byte
        result = post(f"https://127.0.0.1:{port}/hook", policy=policy)
    assert not result.delivered and result.attempts >= 2, result
    assert "not retried" not in result.reason


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (its own CA), and a server context using it."""
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("ca")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_a_receiver_with_a_private_ca_verifies_with_the_standard_ca_variables(private_ca, variable):
    cert, context = private_ca
    with WebhookReceiver(tls=context) as hook:
        env = {"HF_MODEL_ID": "visgate/tiny-flux", "VISGATE_WEBHOOK": hook.url,
               "VISGATE_WEBHOOK_BUDGET": "5"}
        untrusted = Announcer(Settings.from_env(env)).ready(FakeFamily(), BootRecord())
        settings = Settings.from_env({**env, variable: str(cert)})
        assert settings.webhook_ca_bundle == str(cert)
        trusted = Announcer(settings).ready(FakeFamily(), BootRecord())
        assert len(hook.received) == 1
    assert trusted["delivered"] and trusted["attempts"] == 1, trusted
    assert not untrusted["delivered"] and untrusted["attempts"] == 1, untrusted
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted["reason"]


def test_a_ca_variable_naming_no_file_is_passed_over(tmp_path):
    env = {"HF_MODEL_ID": "visgate/tiny-flux", "REQUESTS_CA_BUNDLE": str(tmp_path / "missing.pem")}
    assert Settings.from_env(env).webhook_ca_bundle is None
    (tmp_path / "ca.pem").write_text("")
    assert Settings.from_env({**env, "SSL_CERT_FILE": str(tmp_path / "ca.pem")}).webhook_ca_bundle == str(
        tmp_path / "ca.pem")


def test_backoff_is_exponential_capped_and_jittered():
    policy = RetryPolicy(attempt_timeout=1, budget=60, backoff_base=1.0, backoff_cap=8.0)
    rng = random.Random(0)
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        waits = {policy.backoff(attempt, rng) for _ in range(50)}
        assert all(step / 2 <= w <= step for w in waits)
        assert len(waits) > 1  # jittered


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31


# ---- the announcer: payloads, once-only, secrets ----------------------------------------------
def test_ready_payload_has_every_field(receiver, caplog):
    caplog.set_level(logging.INFO)
    record = record_with_stages()
    record.info["png_encoder"] = "fpng"
    report = Announcer(settings_for(receiver.url)).ready(FakeFamily(), record)
    [req] = receiver.received
    body = req.json()
    assert body["status"] == "ready"
    assert body["delivery_id"] == req.header(announce.DELIVERY_HEADER) == report["delivery_id"]
    assert (body["model_id"], body["revision"]) == ("visgate/tiny-flux", "main")
    assert (body["family"], body["variant"]) == ("flux", "schnell")
    assert (body["worker_id"], body["endpoint_id"]) == ("pod-1", "ep-1")
    boot = body["boot"]
    assert set(boot["stages"]) == {"fetch", "load", "optimize", "warmup"}
    assert all("seconds" in s for s in boot["stages"].values())
    assert {"started_at", "total_seconds", "versions", "device", "png_encoder"} <= set(boot)
    assert "python" in boot["versions"]
    assert report["delivered"] and report["attempts"] == 1
    assert "ready webhook delivered" in caplog.text


def test_failed_payload_has_stage_and_message(receiver):
    record = BootRecord()
    with pytest.raises(BootError), record.stage("fetch"):
        raise BootError("could not download x/y: RepositoryNotFoundError")
    Announcer(settings_for(receiver.url)).failed("fetch", "could not download x/y", record)
    [req] = receiver.received
    body = req.json()
    assert body["status"] == "failed" and req.header(announce.EVENT_HEADER) == "failed"
    assert (body["stage"], body["error"]) == ("fetch", "could not download x/y")
    assert body["family"] is None and body["model_id"] == "visgate/tiny-flux"
    assert body["boot"]["stages"]["fetch"]["failed"] is True
    assert record.failed_stage == "fetch"


def test_announced_exactly_once(receiver):
    announcer = Announcer(settings_for(receiver.url))
    announcer.ready(FakeFamily(), record_with_stages())
    with pytest.raises(RuntimeError):
        announcer.ready(FakeFamily(), record_with_stages())
    with pytest.raises(RuntimeError):
        announcer.failed("warmup", "late", record_with_stages())
    assert len(receiver.received) == 1 and announcer.state == "ready"


def test_no_webhook_configured_posts_nothing():
    assert Announcer(settings_for(None)).ready(FakeFamily(), BootRecord()) == {"webhook": "not configured"}
    assert Announcer(None).failed("settings", "bad", BootRecord()) == {"webhook": "invalid settings"}


@pytest.mark.parametrize("env, said", [
    ({"VISGATE_COMPILE": "bogus"}, "no VISGATE_WEBHOOK set"),
    ({"VISGATE_COMPILE": "bogus", "VISGATE_WEBHOOK": "ftp://hook.example/x"}, "webhook settings are invalid"),
    ({"VISGATE_WEBHOOK": "http://[broken"}, "webhook settings are invalid"),
])
def test_after_a_settings_error_the_log_tells_unset_from_invalid(env, said, caplog):
    # As runtime.__main__ does after a settings error: announce with what is still readable.
    caplog.set_level(logging.INFO, logger="runtime")
    Announcer(webhook_settings(env)).failed("settings", "bad", BootRecord())
    [line] = [r.getMessage() for r in caplog.records if r.name == "runtime.announce"]
    assert said in line, line


def test_secrets_appear_in_no_log_line_or_body(caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")  # whatever an earlier test set it to
    record = BootRecord()
    with record.stage("fetch") as report:
        report["note"] = f"echoed {HF_TOKEN} and {SECRET}"  # a careless stage report
    with WebhookReceiver([500], default=400) as hook:
        settings = settings_for(hook.url + "?token=url-token-xyz")
        Announcer(settings).failed("fetch", f"boom {HF_TOKEN}", record)
        bodies = [r.body.decode() for r in hook.received]
    assert len(bodies) == 2
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("runtime"))
    for text in bodies + [ours]:
        assert HF_TOKEN not in text and SECRET not in text and "url-token-xyz" not in text
    assert "NOT delivered" in ours and caplog.records[-1].levelno == logging.ERROR
    # urllib3 logs the request line (query included) at DEBUG: the worker's log filter, given
    # the settings' secrets, cleans those records too.
    assert "url-token-xyz" in caplog.text
    redactor = RedactSecrets(settings.secrets)
    for r in caplog.records:
        redactor.filter(r)
        assert "url-token-xyz" not in r.getMessage() and HF_TOKEN not in r.getMessage()


def test_a_token_in_a_urls_user_name_reaches_no_log_job_error_or_boot_record(capsys):
    # https://<token>:x-oauth-basic@host: the password is a fixed word and the token is the user
    # name. Wherever a URL is echoed (a library's error, a careless stage report, a log line), the
    # token is removed: from the log, a job's error, and the failed event's error and boot record.
    from runtime.errors import register_secrets
    from runtime.handler import job_error
    from runtime.logs import setup_logging

    hub_token, hook_token = "tok_HubUserToken0123456789", "tok_HookUserToken0123456789"
    factory, root = logging.getLogRecordFactory(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with WebhookReceiver() as hook:
            url = hook.url.replace("http://", f"http://{hook_token}:x-oauth-basic@")
            settings = Settings.from_env({
                "HF_MODEL_ID": "visgate/tiny-flux", "DEVICE": "cpu", "VISGATE_WEBHOOK": url,
                "HF_ENDPOINT": f"https://{hub_token}:x@hub.internal"})
            setup_logging(settings.secrets)
            echo = f"could not reach {settings.hub_endpoint}/api and {url}"
            logging.getLogger("some.library").warning("retrying %s", echo)
            error = job_error(RuntimeError(echo), settings.model_id, settings.secrets)["error"]
            record = BootRecord()
            with contextlib.suppress(BootError), record.stage("fetch") as report:
                report["endpoint"] = settings.hub_endpoint
                raise BootError(echo)
            stage, message = failure_message(BootError(echo), settings.secrets, "fetch")
            Announcer(settings).failed(stage, message, record)
            [req] = hook.received
        body = req.body.decode()
    finally:
        register_secrets(())
        logging.setLogRecordFactory(factory)
        root.handlers[:] = handlers
        root.setLevel(level)
    logged = capsys.readouterr().err
    assert "retrying could not reach" in logged and "hub.internal" in body
    for text in (logged, error, message, body):
        assert hub_token not in text and hook_token not in text, text


def test_undeliverable_ready_is_logged_as_error_and_does_not_raise(caplog):
    with WebhookReceiver() as hook:
        url = hook.url
    settings = settings_for(url, webhook_timeout=0.3, webhook_budget=0.5)
    report = Announcer(settings).ready(FakeFamily(), BootRecord())
    assert report["delivered"] is False
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "serving anyway" in errors[-1].getMessage()


# ---- settings and failure messages ------------------------------------------------------------
def test_webhook_timing_settings():
    base = {"HF_MODEL_ID": "visgate/tiny-flux"}
    s = Settings.from_env(base)
    assert (s.webhook_timeout, s.webhook_budget) == (10.0, 30.0)
    s = Settings.from_env({**base, "VISGATE_WEBHOOK_TIMEOUT": "2.5", "VISGATE_WEBHOOK_BUDGET": "7"})
    assert (s.webhook_timeout, s.webhook_budget) == (2.5, 7.0)
    for name, value in [("VISGATE_WEBHOOK_TIMEOUT", "0"), ("VISGATE_WEBHOOK_TIMEOUT", "abc"),
                        ("VISGATE_WEBHOOK_BUDGET", "nan"), ("VISGATE_WEBHOOK_BUDGET", "100000")]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({**base, name: value})


def test_webhook_settings_survive_another_bad_setting():
    env = {"VISGATE_WEBHOOK": "http://hook.example/x", "VISGATE_WEBHOOK_SECRET": SECRET,
           "VISGATE_COMPILE": "bogus", "RUNPOD_POD_ID": "pod-9"}
    with pytest.raises(SettingsError):
        Settings.from_env(env)
    partial = webhook_settings(env)
    assert partial.webhook_url == "http://hook.example/x" and partial.worker_id == "pod-9"
    assert SECRET in partial.secrets and partial.model_id == ""
    assert webhook_settings({"VISGATE_COMPILE": "bogus"}).webhook_url is None  # not set: not invalid
    assert webhook_settings({"VISGATE_WEBHOOK": "ftp://x"}) is None
    assert webhook_settings({"VISGATE_WEBHOOK": "http://[broken"}) is None
    # A bad timeout or budget must not silence the failure report: the defaults stand in.
    partial = webhook_settings({**env, "VISGATE_WEBHOOK_BUDGET": "abc"})
    assert partial is not None and partial.webhook_budget == 30.0
    # Nor a token that is not text (refused by from_env): the webhook does without it.
    bad_token = {**env, "HF_TOKEN": "hf_abc" + b"\xff".decode("utf-8", "surrogateescape")}
    with pytest.raises(SettingsError):
        Settings.from_env(bad_token)
    partial = webhook_settings(bad_token)
    assert partial is not None and partial.hf_token is None and SECRET in partial.secrets
    # The hub URL's credentials stay secret after a settings failure too (the fallback used to
    # drop HF_ENDPOINT, so they were not in its redaction list), even when the URL is refused.
    for endpoint in ("https://mirror-user:mirror-pass-77@hub.example", "ftp://mirror-user:mirror-pass-77@x"):
        partial = webhook_settings({**env, "HF_ENDPOINT": endpoint})
        assert partial is not None and "mirror-pass-77" in partial.secrets


@pytest.mark.parametrize("secret", ["1234567890123456", 'se"cret\\x-0123456789', "clé-secrète-0123456"])
def test_body_redaction_works_on_values_not_json_text(secret):
    record = BootRecord()
    with record.stage("fetch") as report:
        report["flag"] = True
        report["note"] = f"echoed {secret} here"
    settings = settings_for("http://hook.example/x", webhook_secret=secret)
    body = Announcer(settings).body("failed", "d-1", {"stage": "fetch"}, record)
    payload = json.loads(body)  # still valid JSON, whatever the secret looks like
    assert payload["boot"]["stages"]["fetch"]["flag"] is True
    assert payload["boot"]["stages"]["fetch"]["note"] == "echoed *** here"
    strings: list[str] = []

    def collect(value):
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                strings.append(k)
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(payload)
    assert not [text for text in strings if secret in text]


def test_fields_the_worker_writes_are_not_redacted():
    # A secret that equals something the worker writes itself (here the model id, a stage
    # report's key) must not mangle those fields; foreign text (the error, a stage report's
    # values) is still cleaned.
    secret = "visgate/tiny-flux"
    record = BootRecord()
    with record.stage("fetch") as report:
        report[secret] = f"echoed {secret}"
    settings = settings_for("http://hook.example/x", webhook_secret=secret)
    extra = {"stage": "fetch", "family": "flux", "error": f"boom {secret}"}
    payload = json.loads(Announcer(settings).body("failed", "d-1", extra, record))
    assert (payload["model_id"], payload["status"], payload["stage"]) == (secret, "failed", "fetch")
    assert payload["error"] == "boom ***"
    assert payload["boot"]["stages"]["fetch"][secret] == "echoed ***"


@pytest.mark.parametrize("secret", ["ready", "flux", "fetch", "main"])
def test_a_short_secret_leaves_the_workers_own_fields_alone(secret):
    # Settings refuse such a webhook secret; even so, "status": "ready" must not become "***"
    # nor "visgate/tiny-flux" "visgate/tiny-***": only foreign text (error, boot) is redacted.
    settings = settings_for("http://hook.example/x", webhook_secret=secret)
    payload = json.loads(Announcer(settings).body("ready", "d-1", {"family": "flux"}, record_with_stages()))
    assert (payload["status"], payload["model_id"], payload["revision"], payload["family"]) == (
        "ready", "visgate/tiny-flux", "main", "flux")


def test_a_refused_short_secret_still_signs_the_failure_that_says_so():
    """The boot stops at settings; the orchestrator still gets a "failed" event it can verify
    with the key it holds, rather than nothing at all."""
    from runtime.errors import SettingsError
    from runtime.settings import Settings

    short = "0123456789ab"  # 12 characters: refused
    with WebhookReceiver() as hook:
        env = {"HF_MODEL_ID": "visgate/tiny-flux", "VISGATE_WEBHOOK": hook.url,
               "VISGATE_WEBHOOK_SECRET": short}
        with pytest.raises(SettingsError, match="shorter than 16") as refused:
            Settings.from_env(env)
        fallback = webhook_settings(env)
        assert fallback is not None and fallback.webhook_secret == short
        assert short not in fallback.secrets  # never quoted; redacted, it garbled the message
        Announcer(fallback).failed("settings", str(refused.value), BootRecord())
        [req] = hook.wait_for(1, timeout=10)
    assert req.json()["status"] == "failed" and "shorter than 16" in req.json()["error"]
    assert verify_signature(short, req.header(announce.TIMESTAMP_HEADER), req.body,
                            req.header(announce.SIGNATURE_HEADER))


def test_failure_message_names_the_stage_that_raised():
    assert failure_message(ValueError("bad\nsecond line tok"), ("tok",), "fetch") == (
        "fetch", "ValueError: bad")
    assert failure_message(BootError("no GPU", stage="load"), (), "fetch") == ("load", "no GPU")
    assert failure_message(BootError("x"), (), "warmup") == ("warmup", "x")
    assert failure_message(RuntimeError("has tok-secret-1 inside"), ("tok-secret-1",)) == (
        "boot", "RuntimeError: has *** inside")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_while_booting_unwinds_the_stage_and_is_reported_there(signum, code):
    # Runpod scales a worker down with SIGTERM: its default action ended the process where it
    # stood, leaving the fetch's locks on the volume for the next worker to wait out.
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    record = BootRecord()
    unwound = []
    with pytest.raises(Stopped) as stopped:
        with stop_signals_raise():
            with record.stage("fetch"):
                try:
                    os.kill(os.getpid(), signum)
                    time.sleep(5)  # interrupted: the handler raises in this (the main) thread
                finally:
                    unwound.append(signum)
    assert unwound == [signum] and stopped.value.exit_code == code
    assert {s: signal.getsignal(s) for s in before} == before  # serving keeps the SDK's own
    name = signal.Signals(signum).name
    assert failure_message(stopped.value, (), record.failed_stage) == (
        "fetch", f"stopped by {name} before the worker was ready")


def test_a_second_stop_signal_ends_a_slow_clean_up_at_once():
    # Short sleeps: a signal that lands after the print and just before a sleep's system call
    # starts is seen only when that call returns (CPython checks for signals only between
    # calls); a 30 s sleep there once made this test wait 30 s in CI.
    code = ("import os, signal, sys, time\n"
            "from runtime.boot import stop_signals_raise\n"
            "with stop_signals_raise():\n"
            "    try:\n"
            "        print('booting', flush=True)\n"
            "        for _ in range(300): time.sleep(0.1)\n"
            "    finally:\n"
            "        print('cleaning up', flush=True)\n"
            "        for _ in range(300): time.sleep(0.1)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    assert proc.stdout.readline() == "booting\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "cleaning up\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130 and time.monotonic() - t0 < 20


def test_names_the_worker_ignores_are_logged_and_sent_in_the_boot_record(caplog):
    record = BootRecord()
    with record.stage("settings"):
        pass
    with caplog.at_level(logging.WARNING):
        warn_unknown_names(record, {"VISGATE_QUANTISE": "int8-weight", "VISGATE_COMPILE": "off"})
        warn_unknown_names(BootRecord(), {"VISGATE_COMPILE": "off"})  # nothing to say
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "VISGATE_QUANTISE (did you mean VISGATE_QUANTIZE?)" in line and "int8" not in line
    body = json.loads(Announcer(settings_for("http://127.0.0.1:9/")).body("ready", "id", {}, record))
    assert body["boot"]["stages"]["settings"]["unknown_variables"] == [
        "VISGATE_QUANTISE (did you mean VISGATE_QUANTIZE?)"]


def test_boot_record_body_is_json_and_excludes_running_stage():
    record = record_with_stages()
    with record.stage("announce"):
        body = Announcer(settings_for("http://127.0.0.1:9/")).body("ready", "id", {}, record)
    assert "announce" not in json.loads(body)["boot"]["stages"]
    assert "announce" in record.stages


def test_failed_after_load_names_the_family(receiver):
    record = BootRecord()
    with record.stage("load") as report:
        report.update(family="flux", variant="dev")
    Announcer(settings_for(receiver.url)).failed("warmup", "compiled warmup failed", record)
    body = json.loads(receiver.received[0].body)
    assert (body["family"], body["variant"], body["stage"]) == ("flux", "dev", "warmup")
