"""Fetch benchmark: the worker's fetch stage against a plain ``snapshot_download``, one run.

    python -m warmup.bench_fetch [--model visgate/tiny-sdxl] [--repeats 3] [--rates 0,5000000]

Both download the same test repository (a built-in tiny model in the hub layout, with the decoys
real repositories carry: root single-file checkpoint, .bin, ONNX, Flax, OpenVINO, fp16 variant)
from the same local hub server (``tests.support.hub_server``, its own process, optionally
throttled per connection to mimic a real link), each into a fresh cache; then once more on the
warm cache. Bytes and requests are counted by the server ("bytes": file bodies; "bytes_all":
with API answers). The run fails if our fetch received more file bytes than the needed set.
Results: ``warmup/results/fetch-<machine>.json`` and a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # before huggingface_hub reads its constants
os.environ.pop("HF_HUB_OFFLINE", None)

from warmup.machine import machine_info, result_path  # noqa: E402

REPO_ID = "bench/tiny-repo"


class Server:
    """The hub server in its own process, so that it does not share our GIL."""

    def __init__(self, folder: Path, rate: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.hub_server", str(folder), REPO_ID, str(rate)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url + "/_stats", timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def measure(server: Server, run: Callable[[], Any]) -> dict[str, Any]:
    before = server.stats()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    after = server.stats()
    return {"seconds": seconds, "bytes": after["file_bytes"] - before["file_bytes"],
            "bytes_all": after["bytes_sent"] - before["bytes_sent"],
            "requests": after["requests"] - before["requests"],
            "files": after["downloads"] - before["downloads"]}


def ours(url: str, cache: Path) -> Callable[[], Any]:
    from runtime.fetch import fetch
    from runtime.settings import Settings

    settings = Settings.from_env({"HF_MODEL_ID": REPO_ID, "HF_ENDPOINT": url, "DEVICE": "cpu",
                                  "VISGATE_CACHE_DIR": str(cache)}, volume_root=cache / "none")
    return lambda: fetch(settings)


def plain(url: str, cache: Path) -> Callable[[], Any]:
    from huggingface_hub import snapshot_download

    return lambda: snapshot_download(REPO_ID, cache_dir=str(cache / "hf"), endpoint=url)


def bench_rate(repo: Path, rate: float, repeats: int, work: Path) -> list[dict[str, Any]]:
    server = Server(repo, rate)
    rows: list[dict[str, Any]] = []
    try:
        for i in range(repeats):
            # Alternate who goes first, so neither always meets a cold server or page cache.
            tools = [("ours", ours), ("snapshot_download", plain)]
            for name, make in tools if i % 2 == 0 else tools[::-1]:
                run = make(server.url, work / f"{name}-{rate:.0f}-{i}")
                for phase in ("cold", "warm"):
                    rows.append({"tool": name, "phase": phase, "rate": rate, "repeat": i,
                                 **measure(server, run)})
    finally:
        server.stop()
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[float, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["rate"], row["tool"], row["phase"]), []).append(row)
    out = []
    for (rate, tool, phase), items in sorted(groups.items()):
        out.append({"rate_bytes_per_s": rate or None, "tool": tool, "phase": phase,
                    "median_s": round(statistics.median(r["seconds"] for r in items), 4),
                    "min_s": round(min(r["seconds"] for r in items), 4),
                    "bytes": max(r["bytes"] for r in items), "bytes_all": max(r["bytes_all"] for r in items),
                    "files": max(r["files"] for r in items),
                    "requests": max(r["requests"] for r in items), "n": len(items)})
    return out


def needed_bytes(repo: Path, precision: str) -> tuple[int, int]:
    """(files, bytes) of the needed set, counting identical files once (as both clients do)."""
    import hashlib

    from tests.support.hub_repos import expected_files

    blobs = {}
    for rel in expected_files(repo, precision):
        data = (repo / rel).read_bytes()
        blobs[hashlib.sha256(data).hexdigest()] = len(data)
    return len(blobs), sum(blobs.values())


def print_table(summary: list[dict[str, Any]], needed: int, total: int) -> None:
    print(f"repository {total / 1e6:.2f} MB; needed set {needed / 1e6:.2f} MB")
    print(f"{'link':>12} {'tool':>18} {'phase':>5} {'median s':>9} {'MB':>7} {'files':>5} {'requests':>8}")
    for row in summary:
        link = f"{row['rate_bytes_per_s'] / 1e6:.0f} MB/s" if row["rate_bytes_per_s"] else "unthrottled"
        print(f"{link:>12} {row['tool']:>18} {row['phase']:>5} {row['median_s']:>9.3f} "
              f"{row['bytes'] / 1e6:>7.2f} {row['files']:>5} {row['requests']:>8}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="visgate/tiny-sdxl", help="built-in tiny model to serve")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rates", default="0,5000000",
                        help="per-connection bytes/s to throttle the server to; 0: unthrottled")
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    from tests.support.hub_repos import build_repo

    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        work = Path(tmp)
        repo = build_repo(args.model, work / "repo")
        total = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
        files, needed = needed_bytes(repo, "fp32")
        rows: list[dict[str, Any]] = []
        for rate in (float(r) for r in args.rates.split(",")):
            rows += bench_rate(repo, rate, args.repeats, work)
    summary = summarize(rows)
    ours_cold = [r for r in rows if r["tool"] == "ours" and r["phase"] == "cold"]
    ok = all(r["bytes"] <= needed for r in ours_cold)
    result = {"benchmark": "fetch", "command": " ".join([Path(sys.executable).name, "-m",
                                                         "warmup.bench_fetch", *sys.argv[1:]]),
              "machine": machine_info("cpu"), "model": args.model, "precision": "fp32",
              "repository": {"bytes": total}, "needed": {"files": files, "bytes": needed},
              "ours_bytes_within_needed_set": ok, "summary": summary, "runs": rows}
    path = result_path("fetch", "cpu")
    path.write_text(json.dumps(result, indent=1) + "\n")
    print_table(summary, needed, total)
    print(f"wrote {path}")
    if not ok:
        print("FAIL: our fetch received more than the needed set", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
