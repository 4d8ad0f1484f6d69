"""The demo: boot the real worker on a built-in tiny model (CPU, no network), send one job
through the Runpod SDK's local /runsync endpoint, and save the PNG it returns."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warmup.local_worker import LocalWorker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", default="a lighthouse on a cliff at sunset")
    parser.add_argument("--model", default="visgate/tiny-flux")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "demo.png")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".log")
    env = {"HF_MODEL_ID": args.model, "VISGATE_CACHE_DIR": str(ROOT / ".cache" / "visgate")}
    print(f"booting python -m runtime with HF_MODEL_ID={args.model} on the CPU (log: {log})")
    with LocalWorker(env, log_path=log) as worker:
        print(f"worker ready in {worker.ready_seconds:.1f}s; POST /runsync")
        result = worker.runsync({"prompt": args.prompt, "seed": args.seed})
    output = result.get("output") or {}
    if result.get("status") != "COMPLETED" or "image_base64" not in output:
        print(json.dumps(result, indent=2))
        return 1
    args.out.write_bytes(base64.b64decode(output.pop("image_base64")))
    print(f"saved {args.out} ({args.out.stat().st_size} bytes): {json.dumps(output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
