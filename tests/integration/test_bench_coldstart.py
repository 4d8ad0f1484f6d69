"""The cold-start benchmark's record (warmup.bench_coldstart): what it keeps of the command and
the environment it ran with, as a real run writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hub_server import HubServer
from warmup.local_worker import ROOT

pytestmark = pytest.mark.slow

HF_TOKEN = "hf_benchTokenDoNotRecord"
ENV_TOKEN = "hf_benchEnvFlagTokenDoNotRecord"
WEBHOOK_SECRET = "whsec-bench-7f3a9c2e5b1d"
MIRROR_PASSWORD = "mirrorPassw0rd-bench"


def test_the_record_keeps_no_secret_of_the_command_or_the_environment(tmp_path: Path) -> None:
    # A boot that fails at fetch (the model is not on the hub) is enough: the record is written
    # either way, with the command line as typed and the failed boot's error and log.
    out = tmp_path / "coldstart.json"
    with HubServer() as hub:
        endpoint = hub.url.replace("://", f"://mirror:{MIRROR_PASSWORD}@")
        done = subprocess.run(
            [sys.executable, "-m", "warmup.bench_coldstart", "--mode", "real", "--model", "org/absent",
             "--endpoint", endpoint, "--scenarios", "empty", "--no-first-job", "--boot-timeout", "120",
             "--env", f"HF_TOKEN={ENV_TOKEN}", "--env", f"VISGATE_WEBHOOK_SECRET={WEBHOOK_SECRET}",
             "--workdir", str(tmp_path / "work"), "--out", str(out)],
            cwd=ROOT, env={**os.environ, "HF_TOKEN": HF_TOKEN}, capture_output=True, text=True,
            timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # the boot failed, and says so
    text = out.read_text()
    record = json.loads(text)
    [run] = record["scenarios"]["empty"]["runs"]
    assert "error" in run
    command = record["command"]
    assert f"--endpoint {endpoint.replace(MIRROR_PASSWORD, '***')}" in command
    assert "HF_TOKEN=***" in command and "VISGATE_WEBHOOK_SECRET=***" in command
    for secret in (HF_TOKEN, ENV_TOKEN, WEBHOOK_SECRET, MIRROR_PASSWORD):
        assert secret not in text
        assert secret not in done.stdout + done.stderr
