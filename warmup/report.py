"""Turn the benchmark results into Markdown tables and PNG charts.

    python -m warmup.report [--results warmup/results] [--out warmup/results]

Reads every ``*.json`` result in ``--results`` (latency, cold start, fetch), and writes:

- ``summary.md``: one table per kind, each figure beside its target where one applies;
- ``latency-<mode>.png``: eager vs tuned seconds per image per model and machine, each bar split
  into text encoding, denoising and VAE decode, with the target marked;
- ``compile-cache.png``: first compiled calls, cold vs with the compile cache in a fresh process;
- ``coldstart-<...>.png``: process start to ready webhook, one stacked bar per scenario.

Only what the result files hold is shown; a figure with no result is absent, never estimated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warmup.targets import CACHE_HIT_RATIO  # noqa: E402

RESULTS = ROOT / "warmup" / "results"
LATENCY_STAGES = (("text_encode_s", "text encoding", "#8fb3d9"), ("denoise_s", "denoising", "#2f6db3"),
                  ("vae_decode_s", "VAE decode", "#f0a04b"))
COLDSTART_PARTS = (("import_s", "process start + imports", "#bbbbbb"), ("settings_s", "settings", "#666666"),
                   ("fetch_s", "fetch", "#4c9a5f"), ("load_s", "load", "#2f6db3"),
                   ("optimize_s", "optimize", "#9b59b6"), ("warmup_s", "warmup", "#f0a04b"),
                   ("serve_s", "serve (job SDK; on the queue its checks)", "#17a2b8"),
                   ("other_s", "other (no stage)", "#d9534f"), ("announce_s", "announce", "#333333"))
# Facts about a result that its numbers cannot carry, shown beside it.
CAVEATS = {
    "latency-synthetic-sdxl-1024-nvidia-h200.json":
        "tuned VAE s is not representative: the stage probe decodes in fp16, while the pipeline "
        "warmed (and compiled) the upcast fp32 decoder, so the probe ran eagerly; the tuned denoise "
        "figure (median minus the others) is off by the same amount",
    "latency-synthetic-flux-dev-cudnn-tuned-1024-nvidia-h200.json":
        "tuned only (VISGATE_ATTENTION=cudnn), on the H200: not comparable with the H100 eager run",
}


# ---- reading ----------------------------------------------------------------------------------------
def load_results(folder: Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    kinds: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "latency": [], "coldstart": [], "fetch": [], "compile_cache_mechanisms": [], "png_encode": [],
        "unwarmed_shapes": [], "soak": []}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            print(f"skipping {path.name}: not readable JSON", file=sys.stderr)
            continue
        if not isinstance(data, dict):
            continue
        kind = data.get("what") or data.get("benchmark")
        if kind in kinds:
            kinds[kind].append((path.name, data))
    return kinds


def machine_label(machine: dict[str, Any]) -> str:
    gpu = machine.get("gpu")
    if gpu:
        return gpu.replace("NVIDIA ", "")
    threads = machine.get("cpu_threads")
    return f"CPU {machine.get('cpu', '?')}" + (f", {threads} threads" if threads else "")


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def verdict(value: float | None, target: float | None) -> str:
    if target is None:
        return "no target"
    if value is None:
        return f"≤ {target:g}: pending"
    return f"≤ {target:g}: **{'met' if value <= target else 'missed'}**"


def latency_target(r: dict[str, Any]) -> float | None:
    if r.get("target_s"):
        return float(r["target_s"])
    return None


def latency_verdict(r: dict[str, Any], target: float | None) -> str:
    if target is None:
        return "no target" if r["machine"].get("gpu") else "none (CPU)"
    tuned = r.get("tuned")
    if tuned is None and r.get("partial"):  # not "pending": this run died before it measured
        return f"≤ {target:g}: not measured (run killed before its end)"
    return verdict(tuned["median_s"] if tuned else None, target)


def options_label(r: dict[str, Any]) -> str:
    opts = r.get("options", {})
    extra = [f"{k}={v}" for k, v in opts.items() if (k, v) not in
             (("compile", "regional"), ("quantize", "none"), ("attention", "auto"), ("precision", "auto"))]
    return ", ".join(extra)


# ---- Markdown ---------------------------------------------------------------------------------------
def latency_tables(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["## Steady-state latency (seconds per image)", "",
             "| machine | mode | model | size, steps | options | eager median (p95) | tuned median (p95) "
             "| speedup | PSNR tuned vs eager | target (tuned) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, r in items:
        eager, tuned = r.get("eager"), r.get("tuned")
        target = latency_target(r)
        cell = lambda v: f"{fmt(v['median_s'])} ({fmt(v['p95_s'])})" if v else "-"  # noqa: E731
        psnr = r.get("psnr_tuned_vs_eager_db")
        lines.append(f"| {machine_label(r['machine'])} | {r['mode']} | {r['model']} "
                     f"| {r['size']}², {r['steps']} | {options_label(r) or '-'} | {cell(eager)} "
                     f"| {cell(tuned)} | {fmt(r.get('speedup'))}{'×' if r.get('speedup') else ''} "
                     f"| {fmt(psnr, 1)}{' dB' if psnr is not None else ''} "
                     f"| {latency_verdict(r, target)} |")
        if name in CAVEATS:
            notes.append(f"- {r['model']} on {machine_label(r['machine'])}: {CAVEATS[name]}.")
    lines += ["", "Per-stage split of the median (seconds; denoise is the median minus the others; "
              "PNG encode is outside the median):", "",
              "| machine | model | variant | text encoding | denoising | VAE decode | PNG encode | images/min |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in items:
        for variant in ("eager", "tuned"):
            v = r.get(variant)
            if not v:
                continue
            s = v.get("stages", {})
            label = f"{variant} ({options_label(r)})" if variant == "tuned" and options_label(r) else variant
            lines.append(f"| {machine_label(r['machine'])} | {r['model']} | {label} "
                         f"| {fmt(s.get('text_encode_s'), 3)} | {fmt(s.get('denoise_s'), 3)} "
                         f"| {fmt(s.get('vae_decode_s'), 3)} | {fmt(s.get('png_encode_s'), 3)} "
                         f"| {fmt(v.get('images_per_minute'), 1)} |")
    if notes:
        lines += ["", "Notes:", *notes]
    return lines


def compile_rows(items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for _, r in items:
        cold = r.get("tuning", {}).get("warmup_with_compile_s")
        hit = r.get("cache_hit_boot", {}).get("tuning", {}).get("warmup_with_compile_s")
        if cold is None or r.get("options", {}).get("compile") == "off":
            continue
        rows.append({"machine": machine_label(r["machine"]), "model": r["model"],
                     "options": options_label(r), "cold": cold, "hit": hit,
                     "ratio": r.get("compile_cache_ratio")})
    return rows


def compile_table(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = compile_rows(items)
    if not rows:
        return []
    lines = ["## Compile cache (first compiled calls of warmup)", "",
             "| machine | model | options | cold s | with the cache, fresh process s | ratio | target |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['machine']} | {row['model']} | {row['options'] or '-'} | {fmt(row['cold'])} "
                     f"| {fmt(row['hit'])} | {fmt(row['ratio'], 3)} "
                     f"| {verdict(row['ratio'], CACHE_HIT_RATIO) if row['hit'] is not None else 'not measured'} |")
    return lines


def coldstart_section(r: dict[str, Any]) -> list[str]:
    """One cold-start result as Markdown: the stage table, each figure beside its target, then
    the load split, the priming boot and the seconds per image. ``bench_coldstart`` prints it
    after a run and ``summary.md`` holds it for every result file, so the two cannot drift."""
    heads = [label for _, label, _ in COLDSTART_PARTS]
    lines = ["| scenario | compile | " + " | ".join(heads) + " | **ready** | target | serving | first job |",
             "|---|---|" + "---|" * len(heads) + "---|---|---|---|"]
    medians = [(s["label"], s["median"]) for s in r["scenarios"].values() if s.get("median")]
    for scenario in r["scenarios"].values():
        if "skipped" in scenario:
            lines.append(f"| {scenario['label']} | {scenario['compile']} | skipped: {scenario['skipped']} |")
            continue
        m = scenario.get("median", {})
        target = scenario.get("target_ready_s")
        lines.append(f"| {scenario['label']} | {scenario['compile']} | "
                     + " | ".join(fmt(m.get(key)) for key, _, _ in COLDSTART_PARTS)
                     + f" | **{fmt(m.get('ready_s'))}** | {verdict(m.get('ready_s'), target) if target else '-'} "
                     f"| {fmt(m.get('serving_s'))} | {fmt(m.get('first_job_s'))} |")
    splits = [f"{label}: imports {fmt(m.get('load_imports_s'))}, CUDA context "
              f"{fmt(m.get('load_device_init_s'))}, weights {fmt(m.get('load_weights_s'))}"
              for label, m in medians if "load_imports_s" in m]
    if splits:
        lines += ["", "Load split (s), median: " + "; ".join(splits) + "."]
    primes = [run["priming_boot"] for s in r["scenarios"].values() for run in s.get("runs", [])
              if "priming_boot" in run]
    for prime in primes:
        lines += ["", f"Priming boot (the same settings, nothing compiled yet): ready "
                  f"{fmt(prime.get('ready_s'))} s, warmup {fmt(prime.get('warmup_s'))} s."]
    steady = [f"{s['label']}: {fmt(s['median']['job_s'])} (p95 {fmt(s['median'].get('job_p95_s'))}"
              + (f", {verdict(s['median']['job_s'], s['target_job_s'])}" if s.get("target_job_s") else "")
              + ")" for s in r["scenarios"].values() if "job_s" in s.get("median", {})]
    if steady:
        how = (f"{r.get('jobs')} jobs queued at once on the job queue, each from the last one's "
               "result to its own" if r.get("entry") == "queue"
               else f"{r.get('jobs')} `/runsync` round trips")
        lines += ["", f"Seconds per image after the first job ({how}, at the model's defaults, "
                  "PNG included), median: " + "; ".join(steady) + "."]
    if r.get("entry") == "queue":
        lines += ["", "Booted as on a Runpod endpoint (`python -m runtime`, its jobs from a stand-in "
                  "for Runpod's job queue): ready includes the job SDK's start-up checks (serve stage); "
                  "serving is the worker's first job-take."]
    return lines


def boots_label(r: dict[str, Any]) -> str:
    """Boots per scenario; for a partial result (a run killed at its time limit, written after each
    boot) the boots it got to, not the --repeat it was given."""
    if not r.get("partial"):
        return f"{r['repeat']} boot(s) per scenario"
    done = max((len(s.get("runs", [])) for s in r["scenarios"].values() if "skipped" not in s), default=0)
    return f"**partial**: killed after {done} of {r['repeat']} boot(s) per scenario"


def coldstart_tables(items: list[tuple[str, dict[str, Any]]], charts: dict[str, str]) -> list[str]:
    if not items:
        return []
    lines = ["## Cold start: process start to ready webhook (seconds, medians)", ""]
    for name, r in items:
        lines += [f"### {r['mode']} {r['model']} on {machine_label(r['machine'])}, "
                  f"device {r['device']} ({boots_label(r)})", "",
                  f"`{r.get('command', '')}`", "", *coldstart_section(r)]
        if name in charts:
            lines += ["", f"![cold start {r['model']}]({charts[name]})"]
        lines.append("")
    return lines


def fetch_tables(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not items:
        return []
    lines = ["## Fetch (weights from a local hub server)", ""]
    for _, r in items:
        needed = r.get("needed", {})
        lines += [f"{r['model']} on {machine_label(r['machine'])}: repository "
                  f"{r['repository']['bytes'] / 1e6:.2f} MB, needed set {needed.get('bytes', 0) / 1e6:.2f} MB "
                  f"({needed.get('files')} files); our fetch within the needed set: "
                  f"**{r.get('ours_bytes_within_needed_set')}**", "",
                  "| link | tool | cache | median s | MB received | files | requests |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["summary"]:
            link = f"{row['rate_bytes_per_s'] / 1e6:.0f} MB/s" if row.get("rate_bytes_per_s") else "unthrottled"
            lines.append(f"| {link} | {row['tool']} | {row['phase']} | {fmt(row['median_s'], 3)} "
                         f"| {row['bytes'] / 1e6:.2f} | {row['files']} | {row['requests']} |")
        lines.append("")
    return lines


def _tables(items: list[tuple[str, dict[str, Any]]], heading: Callable[[dict[str, Any]], list[str]],
            columns: list[str], rows: Callable[[dict[str, Any]], Iterable[list[str]]]) -> list[str]:
    """One Markdown table per result file: its heading lines, then a row per ``rows(result)``."""
    lines: list[str] = []
    for _, r in items:
        lines += heading(r) + ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows(r)]
        lines.append("")
    return lines


def mechanism_tables(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return _tables(
        items, lambda r: [f"## Compile cache mechanisms: {r['model']} on {machine_label(r['machine'])} "
                          "(first compiled calls in a fresh process)", ""],
        ["restored from", "warmup s", "cache", "ratio to cold"],
        lambda r: ([name, fmt(row.get("warmup_s")), str(row.get("restored", "-")), fmt(row.get("ratio_to_cold"), 3)]
                   for name, row in r.get("results", {}).items()))


def png_tables(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return _tables(
        items, lambda r: [f"## PNG encode {r['size']}² on {machine_label(r['machine'])} "
                          f"(median of {r.get('repeat')})", ""],
        ["encoder", "median ms", "MB", "lossless"],
        lambda r: ([name, fmt(row.get("median_ms"), 1), f"{row.get('bytes', 0) / 1e6:.2f}", str(row.get("lossless"))]
                   for name, row in r.get("results", {}).items()))


def soak_tables(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return _tables(
        items, lambda r: [f"## A long run: {r['args']['jobs']} jobs on {r['args']['model']}, "
                          f"{machine_label(r['machine'])}", "",
                          f"{r['args']['size']}², {r['args']['steps']} steps, "
                          + (f"every {r['args']['error_every']}th job a bad-input job"
                             if r['args']['error_every'] != "0" else "no bad-input jobs")
                          + f"; worker RSS {r['growth_mb']:+.1f} MB from ready to the last job.", ""],
        ["jobs served", "worker RSS MB"],
        lambda r: ([str(sample["jobs"]), fmt(sample["rss_mb"], 1)] for sample in r.get("samples", [])))


def shapes_tables(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return _tables(
        items, lambda r: [f"## A shape warmup did not compile: {r['mode']} {r['model']} on "
                          f"{machine_label(r['machine'])}", "",
                          f"Warmed {r['size']}x{r['size']}, new shape {r['new']}, {r['steps']} steps; "
                          f"medians of {r.get('runs')} (fresh process per strategy).", ""],
        ["strategy", "warmup s", "warmed shape s", "new shape: first request s", "new shape s",
         "warmed shape after, s", "graphs compiled at the new shape"],
        lambda r: ([row["strategy"], fmt(row["warmup_s"]), fmt(row["warm_shape"]["median_s"], 4),
                    fmt(row["new_first_request_s"], 3), fmt(row["new_shape"]["median_s"], 4),
                    fmt(row["warm_shape_after_new"]["median_s"], 4), str(row["graphs_at_new_shape"])]
                   for row in r.get("results", [])))


# ---- charts -----------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_chart(items: list[tuple[str, dict[str, Any]]], path: Path, title: str) -> bool:
    bars = []  # (group label, variant, stages, median, target)
    for _, r in items:
        group = f"{r['model']}{' ' + options_label(r) if options_label(r) else ''}\n{machine_label(r['machine'])}"
        for variant in ("eager", "tuned"):
            v = r.get(variant)
            if v:
                bars.append((group, variant, v.get("stages", {}), v["median_s"], latency_target(r)))
    if not bars:
        return False
    plt = _pyplot()
    groups = list(dict.fromkeys(b[0] for b in bars))
    fig, ax = plt.subplots(figsize=(max(6.0, 2.4 * len(groups)), 4.8))
    width = 0.36
    for gi, group in enumerate(groups):
        for b in (b for b in bars if b[0] == group):
            x = gi + (-width / 2 if b[1] == "eager" else width / 2)
            bottom = 0.0
            for key, _, color in LATENCY_STAGES:
                value = float(b[2].get(key) or 0.0)
                ax.bar(x, value, width * 0.95, bottom=bottom, color=color,
                       hatch="//" if b[1] == "eager" else None, edgecolor="white", linewidth=0.5)
                bottom += value
            ax.text(x, b[3], f"{b[1]}\n{b[3]:.2f} s", ha="center", va="bottom", fontsize=8)
        target = next((b[4] for b in bars if b[0] == group and b[4]), None)
        if target:
            ax.hlines(target, gi - 0.45, gi + 0.45, colors="#d9534f", linestyles="--")
            ax.text(gi - 0.45, target, f"target {target:g} s", color="#d9534f", va="bottom",
                    ha="left", fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_xlim(-0.75, len(groups) - 0.25)
    ax.set_ylabel("seconds per image (median)")
    ax.set_title(title)
    top = max(max(b[3] for b in bars), max((b[4] or 0) for b in bars))
    ax.set_ylim(0, top * 1.25)
    from matplotlib.patches import Patch

    handles = [Patch(color=color, label=label) for _, label, color in LATENCY_STAGES]
    handles.append(Patch(facecolor="#999999", hatch="//", edgecolor="white", label="eager (hatched)"))
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    return _save(plt, fig, ax, path, grid="y")


def _save(plt: Any, fig: Any, ax: Any, path: Path, grid: str) -> bool:
    ax.grid(axis=grid, alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def compile_chart(items: list[tuple[str, dict[str, Any]]], path: Path) -> bool:
    rows = [r for r in compile_rows(items) if r["hit"] is not None]
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.5, 2.2 * len(rows)), 4.2))
    width = 0.36
    for i, row in enumerate(rows):
        ax.bar(i - width / 2, row["cold"], width * 0.95, color="#d9534f", label="cold" if i == 0 else None)
        ax.bar(i + width / 2, row["hit"], width * 0.95, color="#4c9a5f",
               label="cache hit, fresh process" if i == 0 else None)
        ax.text(i - width / 2, row["cold"], f"{row['cold']:.1f} s", ha="center", va="bottom", fontsize=8)
        ax.text(i + width / 2, row["hit"], f"{row['hit']:.1f} s\n({row['ratio']:.0%} of cold)",
                ha="center", va="bottom", fontsize=8)
    labels = [f"{r['model']}{' ' + r['options'] if r['options'] else ''}\n{r['machine']}" for r in rows]
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("seconds (first compiled calls)")
    ax.set_title(f"Compile cache: target ≤ {CACHE_HIT_RATIO:.0%} of cold")
    ax.set_ylim(0, max(r["cold"] for r in rows) * 1.2)
    ax.legend(fontsize=8)
    return _save(plt, fig, ax, path, grid="y")


def median_boot(scenario: dict[str, Any]) -> dict[str, Any]:
    """The boot whose ready time is the median (the lower one for an even count): its parts add up
    to its ready time, which per-part medians need not."""
    good = sorted((r for r in scenario.get("runs", []) if "error" not in r and r.get("ready_s") is not None),
                  key=lambda r: r["ready_s"])
    return good[(len(good) - 1) // 2] if good else scenario["median"]


def coldstart_chart(r: dict[str, Any], path: Path) -> bool:
    scenarios = [s for s in r["scenarios"].values() if "skipped" not in s and s.get("median", {}).get("ready_s")]
    if not scenarios:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.7 * len(scenarios)))
    for i, scenario in enumerate(scenarios):
        m = median_boot(scenario)
        left = 0.0
        for key, label, color in COLDSTART_PARTS:
            value = float(m.get(key) or 0.0)
            ax.barh(i, value, left=left, height=0.6, color=color, edgecolor="white", linewidth=0.5,
                    label=label if i == 0 else None)
            left += value
        end = left
        serving = m.get("serving_s")
        if serving and serving > left:  # announced ready, then the job server starts
            ax.barh(i, serving - left, left=left, height=0.6, color="white", hatch="...",
                    edgecolor="#999999", linewidth=0.5,
                    label="after ready: job server starting" if i == 0 else None)
            end = serving
        ax.text(end, i, f" ready {m['ready_s']:.2f} s" + (f" (serving {serving:.2f})" if serving else ""),
                va="center", fontsize=8)
        target = scenario.get("target_ready_s")
        if target:
            ax.vlines(target, i - 0.4, i + 0.4, colors="#d9534f", linestyles="--",
                      label="target (warm caches)")
    ax.set_yticks(range(len(scenarios)), [f"{s['label']}\n(VISGATE_COMPILE={s['compile']})"
                                          for s in scenarios], fontsize=8)
    ax.invert_yaxis()
    ends = [max(median_boot(s)["ready_s"], median_boot(s).get("serving_s") or 0, s.get("target_ready_s") or 0)
            for s in scenarios]
    ax.set_xlim(0, max(ends) * 1.45)
    ax.set_xlabel("seconds from process start (the boot with the median ready time)")
    ax.set_title(f"Cold start to the ready webhook: {r['mode']} {r['model']} on "
                 f"{machine_label(r['machine'])}", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(plt, fig, ax, path, grid="x")


# ---- main -------------------------------------------------------------------------------------------
def build(results: Path, out: Path) -> list[Path]:
    kinds = load_results(results)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    lines = ["# Benchmark summary", "",
             f"Generated by `python -m warmup.report` from the result files in `{_shown(results)}`; "
             "do not edit by hand. Targets (issue 6) are for an H100/H200; CPU runs have none.", ""]
    by_mode: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for item in kinds["latency"]:
        by_mode.setdefault(item[1]["mode"], []).append(item)
    if kinds["latency"]:
        lines += latency_tables(kinds["latency"]) + [""]
        for mode, items in sorted(by_mode.items()):
            chart = out / f"latency-{mode}.png"
            if latency_chart(items, chart, f"Seconds per image, eager vs tuned ({mode} mode)"):
                written.append(chart)
                lines += [f"![latency {mode}]({chart.name})", ""]
        table = compile_table(kinds["latency"])
        if table:
            lines += table + [""]
            chart = out / "compile-cache.png"
            if compile_chart(kinds["latency"], chart):
                written.append(chart)
                lines += [f"![compile cache]({chart.name})", ""]
    charts = {}
    for name, r in kinds["coldstart"]:
        chart = out / (Path(name).stem + ".png")
        if coldstart_chart(r, chart):
            written.append(chart)
            charts[name] = chart.name
    lines += coldstart_tables(kinds["coldstart"], charts)
    lines += fetch_tables(kinds["fetch"])
    lines += mechanism_tables(kinds["compile_cache_mechanisms"])
    lines += png_tables(kinds["png_encode"])
    lines += shapes_tables(kinds["unwarmed_shapes"])
    lines += soak_tables(kinds["soak"])
    summary = out / "summary.md"
    summary.write_text("\n".join(lines).rstrip() + "\n")
    written.append(summary)
    return written


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=None, help="default: the results folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in build(args.results, args.out or args.results):
        print(f"wrote {_shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
