"""Boot lifecycle of the real worker process: warmup, then the ready webhook, then serving.

The worker runs as ``python -m runtime --rp_serve_api`` (warmup.local_worker) on a built-in tiny
model on the CPU; the webhook goes to a real HTTP receiver on 127.0.0.1 (tests.support.receiver)
that records when each POST arrived and whether the worker's port was accepting connections then.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from runtime import announce
from runtime.announce import verify_signature
from tests.support.pid1 import as_pid_1, inner_pid
from tests.support.receiver import Reply, WebhookReceiver, port_listening
from warmup.local_worker import ROOT, LocalWorker, free_port, worker_env

SECRET = "whsec-lifecycle-5d2e8b1f"
HF_TOKEN = "hf_lifecycleTokenDoNotLeak"
URL_TOKEN = "urltoken-3c9a77"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(warm_cache_dir: Path, built_tiny_repo) -> Path:
    """The session's warm volume, tiny-flux already built on it (boots here skip the build)."""
    built_tiny_repo("visgate/tiny-flux")
    return warm_cache_dir


def env_for(cache_dir: Path, hook: WebhookReceiver, **extra: str) -> dict[str, str]:
    env = {"HF_MODEL_ID": "visgate/tiny-flux", "VISGATE_CACHE_DIR": str(cache_dir),
           "VISGATE_WEBHOOK": f"{hook.url}?token={URL_TOKEN}", "VISGATE_WEBHOOK_SECRET": SECRET,
           "HF_TOKEN": HF_TOKEN}
    env.update(extra)
    return env


def log_time(line: str) -> float:
    """Wall-clock time of a worker log line (the worker logs local time with milliseconds)."""
    match = LOG_TIME.match(line)
    assert match, line
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def last_line(log: str, marker: str) -> str:
    lines = [line for line in log.splitlines() if marker in line]
    assert lines, f"no log line with {marker!r} in:\n{log[-3000:]}"
    return lines[-1]


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET, HF_TOKEN, URL_TOKEN):
            assert secret not in text


def assert_signed(request) -> None:
    ts = request.header(announce.TIMESTAMP_HEADER)
    signature = request.header(announce.SIGNATURE_HEADER)
    assert verify_signature(SECRET, ts, request.body, signature)
    assert not verify_signature("not-the-secret", ts, request.body, signature)
    assert not verify_signature(SECRET, ts, request.body, signature, now=int(ts) + 301, tolerance=300)


def run_worker_to_exit(env: dict[str, str], timeout: float = 300, args: tuple[str, ...] = (),
                       cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: from another working directory `python -m runtime` still finds the project.
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=cwd,
                          env={**worker_env(env), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=timeout)


# ---- ready ------------------------------------------------------------------------------------
def test_ready_arrives_after_warmup_and_before_the_first_job(cache_dir, tmp_path):
    log_path = tmp_path / "worker.log"
    with WebhookReceiver() as hook:
        worker = LocalWorker(env_for(cache_dir, hook, RUNPOD_POD_ID="pod-abc", RUNPOD_ENDPOINT_ID="ep-xyz"),
                             log_path=log_path, boot_timeout=300)
        hook.watch_port = worker.port
        with worker:
            first_job_sent = time.time()
            result = worker.runsync({"prompt": "a cat", "height": 256, "width": 256,
                                     "num_inference_steps": 1})
            time.sleep(0.5)
            received = list(hook.received)
    log = log_path.read_text()
    assert result["status"] == "COMPLETED" and result["output"]["image_base64"], result

    # Exactly one POST, before the worker's port accepted anything, before the first job.
    assert len(received) == 1
    ready = received[0]
    assert ready.method == "POST" and ready.path == f"/hooks/boot?token={URL_TOKEN}"
    assert ready.port_listening is False
    assert ready.at < first_job_sent

    # ... and after warmup had finished: its log line, and the boot record's own clock.
    assert ready.at >= log_time(last_line(log, "runtime.warmup: warmup 1024x1024")) - 0.002
    body = ready.json()
    boot = body["boot"]
    assert boot["started_at"] + boot["total_seconds"] <= ready.at + 0.05
    assert ready.at >= log_time(last_line(log, "boot record")) - 0.002

    # Every field.
    assert body["status"] == "ready"
    assert body["delivery_id"] == ready.header(announce.DELIVERY_HEADER)
    assert ready.header(announce.EVENT_HEADER) == "ready"
    assert (body["model_id"], body["revision"]) == ("visgate/tiny-flux", "main")
    assert (body["family"], body["variant"]) == ("flux", "schnell")
    assert (body["worker_id"], body["endpoint_id"]) == ("pod-abc", "ep-xyz")
    assert list(boot["stages"]) == ["settings", "fetch", "load", "optimize", "warmup", "serve"]
    assert all(stage["seconds"] >= 0 for stage in boot["stages"].values())
    assert boot["stages"]["fetch"]["source"] == "builtin"
    load = boot["stages"]["load"]
    assert load["device"] == "cpu"
    # Where the load time went: imports and weights inside the stage, no CUDA context on a CPU.
    assert load["device_init_seconds"] == 0.0
    assert load["imports_seconds"] > 0 and load["weights_seconds"] > 0
    assert load["imports_seconds"] + load["weights_seconds"] <= load["seconds"] + 0.01
    assert "applied" in boot["stages"]["optimize"]
    runs = boot["stages"]["warmup"]["runs"]
    assert [(r["height"], r["width"], r["steps"]) for r in runs] == [(1024, 1024, 2)]
    assert {"torch", "diffusers", "runpod", "python"} <= set(boot["versions"])
    assert boot["device"]["type"] == "cpu"
    assert_signed(ready)

    assert "ready webhook delivered" in log
    assert_no_secrets(log, ready.body.decode())


def test_500_twice_then_200_is_three_attempts_and_the_worker_serves(cache_dir, tmp_path):
    log_path = tmp_path / "worker.log"
    with WebhookReceiver([500, 500, 200]) as hook:
        with LocalWorker(env_for(cache_dir, hook), log_path=log_path, boot_timeout=300) as worker:
            result = worker.runsync({"prompt": "x", "height": 256, "width": 256,
                                     "num_inference_steps": 1})
            time.sleep(0.5)
            received = list(hook.received)
    log = log_path.read_text()
    assert result["status"] == "COMPLETED", result
    assert len(received) == 3
    assert [r.header(announce.ATTEMPT_HEADER) for r in received] == ["1", "2", "3"]
    assert len({r.header(announce.DELIVERY_HEADER) for r in received}) == 1
    assert {r.json()["status"] for r in received} == {"ready"}
    for r in received:
        assert_signed(r)
    assert log.count("attempt 1 failed (HTTP 500)") == 1 and "attempt 2 failed (HTTP 500)" in log
    assert "(attempt 3, HTTP 200" in log
    assert_no_secrets(log)


def test_receiver_that_never_answers_does_not_hold_boot_beyond_the_budget(cache_dir, tmp_path):
    log_path = tmp_path / "worker.log"
    budget = 2.0
    with WebhookReceiver(default=Reply(hang=True)) as hook:
        env = env_for(cache_dir, hook, VISGATE_WEBHOOK_TIMEOUT="0.7",
                      VISGATE_WEBHOOK_BUDGET=str(budget))
        with LocalWorker(env, log_path=log_path, boot_timeout=300) as worker:
            serving_at = time.time()
            result = worker.runsync({"prompt": "x", "height": 256, "width": 256,
                                     "num_inference_steps": 1})
            received = list(hook.received)
    log = log_path.read_text()
    assert result["status"] == "COMPLETED", result
    assert len(received) >= 2  # timed out, retried, gave up
    line = last_line(log, "ready webhook NOT delivered")
    assert " ERROR " in line and "serving anyway" in line
    spent = float(re.search(r"attempt\(s\) in ([\d.]+)s", line).group(1))
    assert spent <= budget + 0.3
    # From the first attempt to a serving port: the budget, plus importing runpod and starting.
    assert serving_at - received[0].at < budget + 15



def test_sigterm_while_announcing_ready_exits_143_without_serving(cache_dir, tmp_path):
    """Runpod may scale a worker down while its receiver is slow to take "ready". The stop
    handlers ended with the boot: as PID 1 the worker dropped the SIGTERM, waited out the
    webhook budget and took jobs until Runpod's SIGKILL (not PID 1: killed with no log line)."""
    port = free_port()
    argv, pid_1 = as_pid_1([sys.executable, "-m", "runtime", "--rp_serve_api",
                            "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)])
    with WebhookReceiver(default=Reply(hang=True), watch_port=port) as hook:
        env = env_for(cache_dir, hook, VISGATE_WEBHOOK_TIMEOUT="60", VISGATE_WEBHOOK_BUDGET="120")
        proc = subprocess.Popen(argv, cwd=ROOT, env=worker_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            [ready] = hook.wait_for(1, timeout=300)
            worker = inner_pid(proc, pid_1)  # PID 1 inside its namespace
            stopped_at = time.monotonic()
            os.kill(worker, signal.SIGTERM)
            log = proc.communicate(timeout=30)[0].decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 143, log[-3000:]
    assert time.monotonic() - stopped_at < 30  # not the webhook's 120 s budget
    assert ready.json()["status"] == "ready" and not ready.port_listening
    assert "stopped by SIGTERM while announcing ready: exiting, no job taken" in log
    assert "Traceback" not in log and not port_listening(port)
    assert len(hook.received) == 1  # no second event after "ready"
    assert_no_secrets(log)


def test_sigterm_during_warmup_exits_143_at_once_and_posts_failed(cache_dir, tmp_path):
    """Warmup's generations run on the pipeline's thread (where the jobs will run); the signal
    reaches the main thread, waiting for them. The boot must still end at once, failed at
    "warmup", rather than when the compile under way there ends (70 s for this one)."""
    (tmp_path / "tmp").mkdir()  # an empty local inductor cache: warmup compiles for a while
    argv, pid_1 = as_pid_1([sys.executable, "-m", "runtime", "--test_input",
                            '{"input": {"prompt": "never"}}'])
    with WebhookReceiver() as hook:
        # A warmup shape of its own: no archive on the shared volume matches it.
        env = env_for(cache_dir, hook, VISGATE_COMPILE="regional", VISGATE_WARMUP_SHAPES="272x400",
                      TMPDIR=str(tmp_path / "tmp"))
        log_path = tmp_path / "worker.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=worker_env(env), stdout=out,
                                    stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 240
                while "optimization compile:" not in log_path.read_text(errors="replace"):
                    assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.1)
                time.sleep(1.0)  # into warmup's first compiled call
                stopped_at = time.monotonic()
                os.kill(inner_pid(proc, pid_1), signal.SIGTERM)
                proc.wait(timeout=30)
                exited_in = time.monotonic() - stopped_at
            finally:
                if proc.poll() is None:
                    proc.kill()
        received = hook.wait_for(1, timeout=10)
    log = log_path.read_text(errors="replace")
    assert proc.returncode == 143, log[-3000:]
    assert exited_in < 10, exited_in
    assert "boot failed at warmup: stopped by SIGTERM before the worker was ready" in log
    assert [r.json()["status"] for r in received] == ["failed"]
    assert received[0].json()["stage"] == "warmup"
    assert "Traceback" not in log and "warmup 1024x1024" not in log
    assert_no_secrets(log, received[0].body.decode())


EARLY_SIGNAL = """
import os, signal, sys
import runtime.__main__ as entry  # its first lines: the stop handlers, before the imports
os.kill(os.getpid(), signal.SIGTERM)  # lands during the imports, as Runpod's may
sys.exit(entry.main())
"""


def test_a_sigterm_before_the_boots_handlers_stops_the_boot_not_the_worker_unsaid(cache_dir, tmp_path):
    """The stop handlers came only after 0.5 s and more of imports: as PID 1 a SIGTERM then was
    dropped (the worker booted, announced ready and served); not PID 1, it killed the worker
    without a word. It is kept now, and the boot stops at once, with a failed event."""
    with WebhookReceiver() as hook:
        done = subprocess.run([sys.executable, "-c", EARLY_SIGNAL], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env=worker_env(env_for(cache_dir, hook)))
        received = hook.wait_for(1, timeout=5)
    log = done.stdout + done.stderr
    assert done.returncode == 143, log[-3000:]
    assert [r.json()["status"] for r in received] == ["failed"]
    assert "stopped by SIGTERM before the worker was ready" in received[0].json()["error"]
    assert "fetch" not in received[0].json()["boot"]["stages"]  # stopped before any loading
    assert "Traceback" not in log


def test_a_sigterm_while_a_failure_is_being_posted_ends_the_worker_at_once(cache_dir, tmp_path):
    """A boot failed; its receiver is slow to take the failed event. The stop handlers had
    ended with the boot: as PID 1 the worker dropped Runpod's SIGTERM and waited out the
    webhook budget (40 s here, 600 s at most)."""
    argv, pid_1 = as_pid_1([sys.executable, "-m", "runtime", "--test_input",
                            '{"input": {"prompt": "never"}}'])
    with WebhookReceiver(default=Reply(hang=True)) as hook:
        env = env_for(cache_dir, hook, HF_MODEL_ID="/nonexistent/dir", VISGATE_WEBHOOK_TIMEOUT="20",
                      VISGATE_WEBHOOK_BUDGET="40")
        proc = subprocess.Popen(argv, cwd=ROOT, env=worker_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            [failed] = hook.wait_for(1, timeout=120)
            stopped_at = time.monotonic()
            os.kill(inner_pid(proc, pid_1), signal.SIGTERM)
            log = proc.communicate(timeout=60)[0].decode(errors="replace")
            exited_in = time.monotonic() - stopped_at
        finally:
            if proc.poll() is None:
                proc.kill()
    assert failed.json()["status"] == "failed"
    assert proc.returncode == 143, log[-3000:]
    assert exited_in < 10, exited_in


# ---- failed -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["/nonexistent/dir", "empty-dir"])
def test_bad_model_posts_failed_and_exits_non_zero(cache_dir, tmp_path, model):
    if model == "empty-dir":
        model = str(tmp_path / "not-a-model")
        Path(model).mkdir()
        (Path(model) / "README.md").write_text("no model_index.json here\n")
    with WebhookReceiver() as hook:
        done = run_worker_to_exit(env_for(cache_dir, hook, HF_MODEL_ID=model, RUNPOD_POD_ID="pod-f"))
        received = hook.wait_for(1, timeout=5)
    log = done.stdout + done.stderr
    assert done.returncode != 0, log
    assert len(received) == 1
    body = received[0].json()
    assert body["status"] == "failed" and received[0].header(announce.EVENT_HEADER) == "failed"
    assert body["stage"] == ("fetch" if model.startswith("/nonexistent") else "load")
    assert body["error"] and "Traceback" not in body["error"] and "\n" not in body["error"]
    assert (body["model_id"], body["worker_id"]) == (model, "pod-f")
    assert body["boot"]["stages"][body["stage"]]["failed"] is True
    assert_signed(received[0])
    assert "failed webhook delivered" in log and "Traceback" not in log
    assert_no_secrets(log, received[0].body.decode())


def test_invalid_setting_still_posts_failed(cache_dir):
    with WebhookReceiver() as hook:
        done = run_worker_to_exit(env_for(cache_dir, hook, VISGATE_COMPILE="sometimes"))
        received = hook.wait_for(1, timeout=5)
    assert done.returncode == 2
    [failed] = received
    body = failed.json()
    assert (body["status"], body["stage"]) == ("failed", "settings")
    assert "VISGATE_COMPILE" in body["error"]
    assert_signed(failed)
    assert_no_secrets(done.stdout + done.stderr, failed.body.decode())


def test_a_token_with_a_line_break_fails_at_settings_without_quoting_it(tmp_path):
    # Sent as an HTTP header, it used to pass settings and fail the fetch after every retry,
    # blaming an unavailable hub; now the boot stops before fetching and says what is wrong.
    token = "hf_lifecycleLineOne\nhf_lifecycleLineTwo"
    with WebhookReceiver() as hook:
        done = run_worker_to_exit(env_for(tmp_path / "cache", hook, HF_TOKEN=token), timeout=60)
        received = hook.wait_for(1, timeout=5)
    log = done.stdout + done.stderr
    assert done.returncode == 2, log
    assert "boot failed at settings: HF_TOKEN holds a line break or another control character" in log
    assert "fetch" not in log and "Traceback" not in log, log
    [failed] = received
    body = failed.json()
    assert (body["status"], body["stage"]) == ("failed", "settings")
    assert body["error"].startswith("HF_TOKEN holds a line break")
    assert_signed(failed)
    for text in (log, failed.body.decode()):
        assert "lifecycleLine" not in text and "***" not in text  # not quoted, so nothing to hide
    assert_no_secrets(log, failed.body.decode())

@pytest.mark.parametrize("short", ["e", "Zq7-short"])
def test_a_refused_short_webhook_secret_leaves_the_failure_readable(tmp_path, short):
    # The refusal never quotes the secret, which still signs the failed event; registered for
    # redaction it garbled that very message ("boot fail***d at s***ttings" for "e").
    with WebhookReceiver() as hook:
        done = run_worker_to_exit(env_for(tmp_path / "cache", hook, VISGATE_WEBHOOK_SECRET=short),
                                  timeout=60)
        received = hook.wait_for(1, timeout=5)
    log = done.stdout + done.stderr
    assert done.returncode == 2, log
    message = "VISGATE_WEBHOOK_SECRET is shorter than 16 characters: a short key is easy to guess"
    assert f"boot failed at settings: {message}" in log
    assert "failed webhook delivered" in log and "***" not in log, log
    [failed] = received
    body = failed.json()
    assert (body["status"], body["stage"]) == ("failed", "settings")
    assert body["error"].startswith(message) and "***" not in failed.body.decode()
    assert verify_signature(short, failed.header(announce.TIMESTAMP_HEADER), failed.body,
                            failed.header(announce.SIGNATURE_HEADER))
    if len(short) > 1:  # a string that ordinary text does not hold: truly never quoted
        assert short not in log and short not in failed.body.decode()

@pytest.mark.parametrize("args, local_job, said", [
    (("--test_input", '{"input": {"prompt": "a"'), None, "--test_input is not valid JSON"),
    ((), '{"input": {"prompt": "a"', "test_input.json is not valid JSON"),
    ((), None, "no job to run: outside Runpod the worker runs one local job"),
    (("--rp_serve_api", "--rp_api_concurrency", "2"), None,
     "--rp_api_concurrency 2: Runpod's SDK serves HTTP jobs from one process only"),
])
def test_an_unusable_local_job_fails_at_settings_before_loading_or_ready(tmp_path, args, local_job, said):
    # Runpod's SDK parses --test_input, or reads test_input.json in local mode, only as serving
    # starts: without the settings check the worker would load, warm up and announce "ready",
    # then die on the JSON (or exit 1 with "test_input.json not found"). Its HTTP server asked
    # for more than one process exits then too (exit 3, after "ready").
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    if local_job is not None:
        (workdir / "test_input.json").write_text(local_job)
    with WebhookReceiver() as hook:
        t0 = time.monotonic()
        done = run_worker_to_exit(env_for(tmp_path / "cache", hook), timeout=60, args=args, cwd=workdir)
        seconds = time.monotonic() - t0
        received = hook.wait_for(1, timeout=5)
    log = done.stdout + done.stderr
    assert done.returncode == 2, log
    assert "boot failed at settings: " in log and said in log  # the file is named by its path
    assert seconds < 30 and "fetch" not in log and "Traceback" not in log, log
    [failed] = received
    body = failed.json()
    assert (body["status"], body["stage"]) == ("failed", "settings")
    assert said in body["error"]
    assert list(body["boot"]["stages"]) == ["settings"]
    assert_signed(failed)


def test_a_machine_the_job_sdk_would_refuse_fails_the_serve_stage_not_after_ready(cache_dir, tmp_path):
    # On Runpod's queue the SDK checks the machine before its first job (free memory; / at least
    # RUNPOD_MIN_DISK_PERCENT free, 10% by default, which weights on the container disk can take)
    # and ends the process when one falls short: this worker used to announce "ready" first, then
    # exit 1 without ever taking a job. The queue's URL leads nowhere: no job is ever asked for.
    with WebhookReceiver() as hook:
        done = run_worker_to_exit(env_for(cache_dir, hook, RUNPOD_MIN_DISK_PERCENT="100",
                                          RUNPOD_MIN_MEMORY_GB="0", RUNPOD_POD_ID="pod-q",
                                          RUNPOD_WEBHOOK_GET_JOB="http://127.0.0.1:9/v2/job-take/$ID?gpu=x"),
                                  timeout=180)
        received = hook.wait_for(1, timeout=5)
        time.sleep(0.5)  # a "ready" would have come before the failure
        received = list(hook.received)
    log = done.stdout + done.stderr
    assert done.returncode == 1, log
    assert [r.json()["status"] for r in received] == ["failed"], log
    body = received[0].json()
    assert body["stage"] == "serve" and body["boot"]["stages"]["serve"]["failed"] is True
    assert body["error"].startswith("Runpod's job SDK would stop this worker before its first job: "
                                    "Insufficient disk space: ")
    assert "a larger container disk, or a network volume" in body["error"]
    assert "Starting Serverless Worker" not in log and "Traceback" not in log
    assert_signed(received[0])
    assert_no_secrets(log, received[0].body.decode())


# ---- warmup touches every graph at every shape ----------------------------------------------
@pytest.mark.parametrize("model_id, batch", [("visgate/tiny-flux", 1), ("visgate/tiny-sdxl", 2)])
def test_warmup_runs_the_denoiser_twice_and_the_decoder_once_per_shape(built_tiny_repo, model_id,
                                                                      batch):
    """Two steps: the denoiser's graph runs twice (CFG batch 2 for SDXL at its default guidance),
    the VAE decoder once, at each serving shape."""
    from runtime.load import load
    from runtime.settings import Settings
    from runtime.warmup import WARMUP_STEPS, serving_shapes, warmup

    loaded = load(Settings(model_id=model_id, device="cpu"), built_tiny_repo(model_id))
    pipe, family = loaded.pipe, loaded.family
    shapes = serving_shapes(family, ((256, 512),))
    assert shapes == [(1024, 1024), (256, 512)]

    denoised: list[tuple[int, ...]] = []
    decoded: list[tuple[int, ...]] = []

    def on_denoiser(module, args, kwargs):
        x = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
        denoised.append(tuple(x.shape))

    def on_decoder(module, args, kwargs):
        decoded.append(tuple((args[0] if args else kwargs["z"]).shape))

    getattr(pipe, family.denoiser_attr).register_forward_pre_hook(on_denoiser, with_kwargs=True)
    pipe.vae.decoder.register_forward_pre_hook(on_decoder, with_kwargs=True)
    runs = warmup(family, pipe, shapes)

    assert WARMUP_STEPS == 2 and [(r["height"], r["width"]) for r in runs] == shapes
    latent_channels = pipe.vae.config.latent_channels
    expected_denoised, expected_decoded = [], []
    for h, w in shapes:
        if family.name == "flux":  # packed 2x2 latent patches: (batch, tokens, channels)
            expected_denoised += [(batch, (h // 16) * (w // 16), latent_channels * 4)] * WARMUP_STEPS
        else:
            expected_denoised += [(batch, latent_channels, h // 8, w // 8)] * WARMUP_STEPS
        expected_decoded.append((1, latent_channels, h // 8, w // 8))
    assert denoised == expected_denoised
    assert decoded == expected_decoded


def test_warmup_and_every_job_run_the_pipeline_on_one_thread_of_its_own(built_tiny_repo,
                                                                        warm_cache_dir):
    """The job SDK awaits the handler on its event loop, in the main thread; the jobs run on
    the pipeline's thread, leaving the loop free to read Runpod's per-job stop. Warmup runs on
    that same thread: torch.compile's CUDA graphs (max-autotune) are kept per thread, and a
    first job on another thread would record them all again, in a second memory pool."""
    import asyncio
    import threading

    import torch
    from runpod.serverless.modules.rp_job import run_job

    from runtime.boot import boot, read_settings
    from runtime.boot_report import BootRecord
    from runtime.handler import job_handler
    from runtime.pipeline_thread import PipelineThread

    built_tiny_repo("visgate/tiny-flux")
    threads: list[str] = []

    def denoiser_call(module, args):
        if type(module).__name__ == "FluxTransformer2DModel":
            threads.append(threading.current_thread().name)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(denoiser_call)
    try:
        pipeline = PipelineThread()
        service = boot(read_settings({"HF_MODEL_ID": "visgate/tiny-flux", "DEVICE": "cpu",
                                      "VISGATE_CACHE_DIR": str(warm_cache_dir)}),
                       BootRecord(), pipeline=pipeline)
        warmup_calls = len(threads)
        result = asyncio.run(run_job(job_handler(service, pipeline), {"id": "j", "input": {
            "prompt": "a pear", "height": 256, "width": 256, "num_inference_steps": 3}}))
    finally:
        hook.remove()
    assert set(result["output"]) == {"image_base64", "model_id", "seed", "height", "width"}
    assert warmup_calls >= 2 and len(threads) == warmup_calls + 3
    assert set(threads) == {"pipeline"}, threads

