"""Compare benchmark results with the committed baseline; exit 1 on a regression.

    python -m warmup.check_regression RESULT.json [...]            # against warmup/baseline.json
    python -m warmup.check_regression --update RESULT.json [...]   # merge them into the baseline

The baseline is keyed by GPU name (``machine.gpu`` of a result), then by what was measured
(``latency/<mode>/<model>/<size>/<steps>[/<option>=<value>...]``, the options being compile,
quantize, attention and precision where not the default, or
``coldstart/<mode>/<model>/<scenario>[/entry=queue][/result_latency=<s>][/compile=<mode>][/<VISGATE_ setting>=<value>...]``,
the settings being those given with ``--env``; ``entry=queue``: booted on the job queue). A check fails when, on the same GPU:

- tuned seconds per image > baseline x ``latency_ratio`` (1.15);
- the compile cache hit takes more than ``cache_hit_ratio_max`` (0.25) of the cold compile
  (absolute: the issue's target, no baseline needed);
- tuned vs eager PSNR < ``psnr_min_db`` (30 dB) for a lossless configuration (a tuning that
  changes the image is a bug, however fast);
- cold start to ready > baseline x ``coldstart_ratio`` (1.25: boots are noisier than steps).

A measurement with no baseline entry (a new GPU, model or scenario) is reported as "new" and
does not fail; CPU results are not checked (shared CPUs are too noisy to gate on). A partial
result (a run killed before its end), a crash recorded in one, or a latency phase or cold-start
boot whose compile failed at warmup (served eagerly) fails the check, and ``--update`` refuses it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from warmup.bench_latency import served_eagerly
from warmup.targets import CACHE_HIT_RATIO

BASELINE = Path(__file__).resolve().parent / "baseline.json"
THRESHOLDS = {"latency_ratio": 1.15, "coldstart_ratio": 1.25, "cache_hit_ratio_max": CACHE_HIT_RATIO,
              "psnr_min_db": 30.0}
_DEFAULT_OPTIONS = {"compile": "regional", "quantize": "none", "attention": "auto", "precision": "auto"}
# Of a cold start's --env: the scenario's own compile mode (keyed as compile=) and the webhook's
# address and key (bench_coldstart points the webhook at its receiver; the key is a secret).
_NOT_KEYED_ENV = ("VISGATE_COMPILE", "VISGATE_WEBHOOK", "VISGATE_WEBHOOK_SECRET")


@dataclass(frozen=True)
class Check:
    gpu: str
    key: str
    metric: str
    value: float | None
    limit: float | None
    status: str  # "ok", "regression", "new", "error"
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("regression", "error")


# ---- keys and measurements ----------------------------------------------------------------------
def latency_key(result: dict[str, Any]) -> str:
    key = f"latency/{result['mode']}/{result['model']}/{result['size']}/{result['steps']}"
    options = result.get("options", {})
    extra = [f"{k}={v}" for k, v in sorted(options.items()) if _DEFAULT_OPTIONS.get(k) != v]
    return "/".join([key, *extra])


def coldstart_key(result: dict[str, Any], scenario: str, entry: dict[str, Any]) -> str:
    # A compile mode other than the scenario's usual one (regional; off without compile) is
    # another configuration: an aot boot is not compared with a regional baseline.
    key = f"coldstart/{result['mode']}/{result['model']}/{scenario}"
    if result.get("entry", "api") != "api":  # on the job queue: the SDK's checks count too
        key += f"/entry={result['entry']}"
    if result.get("result_latency_s"):  # results answered late: another per-image figure
        key += f"/result_latency={result['result_latency_s']:g}"
    if entry.get("compile") not in (None, "regional", "off"):
        key += f"/compile={entry['compile']}"
    # Worker settings given with --env (VISGATE_QUANTIZE=fp8, VISGATE_PRECISION=bf16, ...) are
    # another configuration too; not the variables that are no setting of the worker's speed.
    settings = sorted((k, v) for k, v in (result.get("env") or {}).items()
                      if k.startswith("VISGATE_") and k not in _NOT_KEYED_ENV)
    return "/".join([key, *(f"{k}={v}" for k, v in settings)])


def measurements(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """What a result file measured, by baseline key: the figures the checks compare."""
    what = result.get("what")
    if what == "latency":
        figures: dict[str, float] = {}
        for variant in ("eager", "tuned"):
            if result.get(variant, {}).get("median_s") is not None:
                figures[f"{variant}_median_s"] = float(result[variant]["median_s"])
        for name in ("compile_cache_ratio", "psnr_tuned_vs_eager_db"):
            if isinstance(result.get(name), (int, float)):
                figures[name] = float(result[name])
        return {latency_key(result): figures}
    if what == "coldstart":
        out = {}
        for scenario, entry in result.get("scenarios", {}).items():
            ready = entry.get("median", {}).get("ready_s")
            if ready is not None:
                out[coldstart_key(result, scenario, entry)] = {"ready_s": float(ready)}
        return out
    return {}


def gpu_of(result: dict[str, Any]) -> str | None:
    return (result.get("machine") or {}).get("gpu")


def errors_of(result: dict[str, Any]) -> list[str]:
    """Crashes recorded inside a result (a run killed before its end, a boot that failed, a
    cache-hit child that died)."""
    found = []
    if result.get("partial"):
        # Written after each phase so that a run killed at its time limit keeps what it measured:
        # what it never reached (the tuned run, the cache-hit boot) must not read as "no figure".
        found.append("partial result: the run was killed or crashed before its end")
    if result.get("what") == "coldstart":
        for scenario, entry in result.get("scenarios", {}).items():
            if entry.get("errors"):
                found.append(f"{scenario}: {entry['errors']} boot(s) failed")
            # A boot whose compile failed at warmup serves eagerly and is ready sooner: its
            # ready time is an eager boot's, not the compiled one the scenario names.
            eager = [run for run in entry.get("runs", []) if "error" not in run and "applied" in run
                     and run.get("compile") not in (None, "off") and "compile" not in run["applied"]]
            if eager:
                found.append(f"{scenario}: {len(eager)} boot(s) served eagerly, their compile failed")
    if isinstance(result.get("cache_hit_boot"), dict) and "error" in result["cache_hit_boot"]:
        found.append(f"cache-hit process: {result['cache_hit_boot']['error']}")
    if result.get("what") == "latency":
        # A compile that failed at warmup falls back to eager: that phase's figures (a fast
        # "cache hit", an eager "tuned" median) measure the fallback, not the compile.
        for phase, tuning in (("tuned run", result.get("tuning")),
                              ("cache-hit process", (result.get("cache_hit_boot") or {}).get("tuning"))):
            why = served_eagerly(tuning)
            if why:
                found.append(f"{phase}: compile {why}")
    return found


# ---- checking -----------------------------------------------------------------------------------
def check(result: dict[str, Any], baseline: dict[str, Any]) -> list[Check]:
    gpu = gpu_of(result)
    if not gpu:
        return []
    limits = {**THRESHOLDS, **baseline.get("thresholds", {})}
    known = baseline.get("gpus", {}).get(gpu, {})
    checks = [Check(gpu, result.get("what", "?"), "crash", None, None, "error", e)
              for e in errors_of(result)]
    for key, figures in measurements(result).items():
        base = known.get(key, {})
        if key.startswith("latency/"):
            checks += _latency_checks(gpu, key, figures, base, limits, bool(result.get("lossy")))
        else:
            checks.append(_relative(gpu, key, "ready_s", figures.get("ready_s"), base.get("ready_s"),
                                    limits["coldstart_ratio"]))
    return checks


def _latency_checks(gpu: str, key: str, figures: dict[str, float], base: dict[str, float],
                    limits: dict[str, float], lossy: bool) -> list[Check]:
    checks = []
    if "tuned_median_s" in figures:
        checks.append(_relative(gpu, key, "tuned_median_s", figures["tuned_median_s"],
                                base.get("tuned_median_s"), limits["latency_ratio"]))
    ratio = figures.get("compile_cache_ratio")
    if ratio is not None:
        limit = limits["cache_hit_ratio_max"]
        checks.append(Check(gpu, key, "compile_cache_ratio", ratio, limit,
                            "ok" if ratio <= limit else "regression",
                            f"cache hit / cold compile, at most {limit:g}"))
    psnr = figures.get("psnr_tuned_vs_eager_db")
    if psnr is not None and not lossy:
        limit = limits["psnr_min_db"]
        checks.append(Check(gpu, key, "psnr_tuned_vs_eager_db", psnr, limit,
                            "ok" if psnr >= limit else "regression",
                            f"tuned image vs eager, at least {limit:g} dB"))
    return checks


def _relative(gpu: str, key: str, metric: str, value: float | None, base: float | None,
              ratio: float) -> Check:
    if value is None:
        return Check(gpu, key, metric, None, None, "error", "not measured")
    if base is None:
        return Check(gpu, key, metric, value, None, "new", "no baseline on this GPU: not compared")
    limit = round(base * ratio, 4)
    status = "ok" if value <= limit else "regression"
    return Check(gpu, key, metric, value, limit, status, f"baseline {base:g} x {ratio:g}")


# ---- building the baseline ----------------------------------------------------------------------
def build_baseline(results: Iterable[tuple[str, dict[str, Any]]],
                   previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The baseline from GPU results (later files win for the same GPU and key)."""
    baseline = {"about": ("Baseline for warmup/check_regression.py, by GPU name then measurement; "
                          "updated with `python -m warmup.check_regression --update RESULT.json...`."),
                "thresholds": dict(THRESHOLDS), "gpus": {}}
    if previous:
        baseline["thresholds"] = {**baseline["thresholds"], **previous.get("thresholds", {})}
        baseline["gpus"] = json.loads(json.dumps(previous.get("gpus", {})))
    for name, result in results:
        gpu = gpu_of(result)
        if not gpu:
            continue
        for key, figures in measurements(result).items():
            keep = {k: v for k, v in figures.items()
                    if k in ("tuned_median_s", "eager_median_s", "ready_s", "compile_cache_ratio")}
            if keep:
                keep_meta = {"source": Path(name).name, "date": (result.get("machine") or {}).get("date")}
                baseline["gpus"].setdefault(gpu, {})[key] = {**keep, **keep_meta}
    return baseline


# ---- output -------------------------------------------------------------------------------------
def render(checks: list[Check]) -> str:
    if not checks:
        return "No GPU results to check."
    lines = ["| GPU | measurement | metric | value | limit | status | detail |",
             "|---|---|---|---|---|---|---|"]
    for c in checks:
        mark = {"ok": "ok", "new": "new", "regression": "**REGRESSION**", "error": "**ERROR**"}[c.status]
        lines.append(f"| {c.gpu} | {c.key} | {c.metric} | {_num(c.value)} | {_num(c.limit)} | {mark} "
                     f"| {c.detail} |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _read(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    return [(str(p), json.loads(p.read_text())) for p in paths]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--build", action="store_true",
                        help="print a baseline built from the results, merged into --baseline if it exists")
    parser.add_argument("--update", action="store_true",
                        help="the same, written into --baseline (after a deliberate change of speed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = _read(args.results)
    if args.build or args.update:
        # A killed run or failed boots would replace a baseline entry with what little they
        # measured (a partial latency run has no tuned figure: the entry would lose it for good).
        refused = [f"{name}: {error}" for name, result in results for error in errors_of(result)]
        if refused:
            print("not merged into the baseline:\n" + "\n".join(refused), file=sys.stderr)
            return 1
        previous = json.loads(args.baseline.read_text()) if args.baseline.is_file() else None
        text = json.dumps(build_baseline(results, previous), indent=1) + "\n"
        if args.update:
            args.baseline.write_text(text)
            print(f"updated {args.baseline}")
        else:
            print(text, end="")
        return 0
    baseline = json.loads(args.baseline.read_text())
    checks = [c for _, result in results for c in check(result, baseline)]
    table = render(checks)
    print(table)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as out:
            out.write("## Benchmark regression check\n\n" + table + "\n")
    failed = [c for c in checks if c.failed]
    if failed:
        print(f"\n{len(failed)} check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
