"""Check a benchmark's command line without running it.

    python -m warmup.check_args bench_latency --mode synthetic --model sdxl --variants tuned

exits 0 when ``warmup.<bench>.parse_args`` accepts the arguments, else 2 with argparse's message.
warmup/gpu_check.sh runs it on every command it is about to run, before the first one starts: a
misspelt flag in its third benchmark would otherwise surface after the first two had spent minutes
of a 15-minute GPU session. The tests run it on every command the documentation gives.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

BENCHES = ("bench_latency", "bench_coldstart", "bench_shapes", "bench_compile_cache", "bench_encode",
           "bench_soak", "bench_fetch", "check_regression", "report")


def comma_choices(parser: argparse.ArgumentParser, flag: str, text: str, known: Sequence[str]) -> list[str]:
    """The items of a comma list, each one of ``known``; else a parser error naming the others."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in known]
    if unknown:
        parser.error(f"unknown {flag} {', '.join(unknown)}; known: {', '.join(known)}")
    return items


def check(bench: str, argv: list[str]) -> None:
    """Raises SystemExit (2, argparse's message on stderr) if ``bench`` refuses ``argv``."""
    if bench not in BENCHES:
        raise SystemExit(f"unknown benchmark {bench!r}; known: {', '.join(BENCHES)}")
    sys.argv[0] = f"python -m warmup.{bench}"  # argparse's usage line names the benchmark
    importlib.import_module(f"warmup.{bench}").parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit(__doc__)
    check(args[0], args[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
