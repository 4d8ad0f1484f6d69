"""A long run of the real worker: does its memory grow with the jobs it serves?

    python -m warmup.bench_soak [--model visgate/tiny-flux] [--jobs 300] [--size 256] [--steps 2]
                                [--error-every 10] [--every 50] [--device cpu]

Boots ``python -m runtime`` behind the Runpod SDK's local API (as warmup/local_worker.py does for
the tests), sends ``--jobs`` jobs to ``/runsync`` one after the other, every ``--error-every``-th
a job with bad input (errors must not leak either), and reads the worker's resident memory
(VmRSS, /proc) when it is ready and after every ``--every`` jobs. A leak shows as growth that
does not level off; the first jobs' growth is the allocator settling. Each job's result is
checked: an image where one is due, the contract's error shape where not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warmup.local_worker import LocalWorker  # noqa: E402
from warmup.machine import machine_info, result_path  # noqa: E402


def rss_mb(pid: int) -> float:
    """The process's resident memory, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def job_for(index: int, args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """(input, whether an image is due): every error_every-th job asks for 0 steps."""
    bad = args.error_every > 0 and index % args.error_every == args.error_every - 1
    return {"prompt": f"a lighthouse at dusk, take {index}", "height": args.size, "width": args.size,
            "num_inference_steps": 0 if bad else args.steps, "seed": index}, not bad


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="visgate/tiny-flux", help="HF_MODEL_ID (a built-in tiny model)")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--error-every", type=int, default=10, help="every Nth job is a bad-input job")
    parser.add_argument("--every", type=int, default=50, help="read the memory after every N jobs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=None, help="VISGATE_CACHE_DIR")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.every < 1 or args.error_every < 0:
        parser.error("--jobs and --every take 1 or more, --error-every 0 (none) or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = {"HF_MODEL_ID": args.model, "DEVICE": args.device}
    if args.cache_dir:
        env["VISGATE_CACHE_DIR"] = str(args.cache_dir)
    samples: list[dict[str, float]] = []
    t0 = time.perf_counter()
    with LocalWorker(env) as worker:
        assert worker.proc is not None
        samples.append({"jobs": 0, "rss_mb": round(rss_mb(worker.proc.pid), 1)})
        for index in range(args.jobs):
            job, image_due = job_for(index, args)
            result = worker.runsync(job)
            # The SDK's local API answers a handler error as {"status": "FAILED", "error": ...}.
            served = "image_base64" in (result.get("output") or {})
            if served != image_due or (not image_due and "error" not in result):
                raise SystemExit(f"job {index}: unexpected answer, keys {sorted(result)}")
            if (index + 1) % args.every == 0 or index + 1 == args.jobs:
                samples.append({"jobs": index + 1, "rss_mb": round(rss_mb(worker.proc.pid), 1)})
    seconds = time.perf_counter() - t0
    first, last = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    out = result_path(f"soak-{args.model.replace('/', '_')}-{args.size}", args.device)
    out.write_text(json.dumps({"what": "soak", "args": {k: str(v) for k, v in vars(args).items()},
                               "machine": machine_info(args.device), "seconds": round(seconds, 1),
                               "samples": samples, "growth_mb": round(last - first, 1)}, indent=1))
    print("| jobs served | worker RSS MB |\n|---|---|")
    for sample in samples:
        print(f"| {sample['jobs']} | {sample['rss_mb']} |")
    print(f"growth after ready: {last - first:+.1f} MB over {args.jobs} jobs ({seconds:.0f} s)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
