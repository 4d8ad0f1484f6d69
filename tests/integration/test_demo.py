"""The README's demo: scripts/demo.py boots the real worker on the built-in tiny model and saves a PNG."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_demo_saves_a_png(tmp_path: Path, png_tools: Any) -> None:
    out = tmp_path / "demo" / "lighthouse.png"  # a folder that does not exist yet
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out), "--seed", "3",
         "--prompt", "a lighthouse"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=280)
    text = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    png = out.read_bytes()
    assert png_tools.header_size(png) == (1024, 1024)  # tiny-flux's default size
    assert png_tools.decode(png).shape == (1024, 1024, 3)
    saved = re.search(r"saved .*lighthouse\.png \((\d+) bytes\): (\{.*\})", text)
    assert saved, text[-2000:]
    assert int(saved.group(1)) == len(png)
    assert json.loads(saved.group(2)) == {"model_id": "visgate/tiny-flux", "seed": 3, "height": 1024,
                                          "width": 1024}
    assert out.with_suffix(".log").is_file()  # the worker's own log, for when it goes wrong
