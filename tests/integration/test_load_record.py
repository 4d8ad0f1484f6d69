"""Where the load stage's time goes in the boot record, seen in a fresh process (diffusers imports
a pipeline's module once per process, on first use)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from warmup.local_worker import ROOT

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("model", ["visgate/tiny-sdxl", "visgate/tiny-flux"])
def test_importing_the_pipeline_class_counts_as_imports_not_weights(model, built_tiny_repo):
    """The pipeline class's import (1.3-1.4 s here; the tiny weights take 0.1-0.2 s) was made on
    the way into from_pretrained and counted as weights: full-size SDXL's weights_seconds read
    2.8-3.1 s for a true 0.5-1.1 s."""
    proc = subprocess.run([sys.executable, "-m", "tests.support.load_split", str(built_tiny_repo(model))],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    split = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    first = split["class_import"]
    assert first["seconds"] > 0.05, split  # it did import: nothing in the process had before
    assert not first["during_weights"], split
    assert split["imports_seconds"] >= first["seconds"], split
