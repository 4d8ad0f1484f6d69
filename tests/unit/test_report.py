"""warmup/report.py: tables with each figure beside its target, and real PNG charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warmup import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-27T13:12:35Z"}
CPU = {"cpu": "AMD EPYC", "cpu_threads": 2}


def latency(machine: dict[str, Any], tuned: float, target: float | None = None) -> dict[str, Any]:
    stages = {"text_encode_s": 0.05, "denoise_s": tuned - 0.1, "vae_decode_s": 0.05, "png_encode_s": 0.01}
    result = {"what": "latency", "mode": "synthetic" if "gpu" in machine else "tiny", "model": "flux-dev",
              "family": "flux", "variant": "dev", "precision": "bf16", "size": 1024, "steps": 28,
              "options": {"compile": "regional", "quantize": "none", "attention": "auto"},
              "machine": machine,
              "eager": {"median_s": 5.3, "p95_s": 5.4, "images_per_minute": 11.3,
                        "stages": {**stages, "denoise_s": 5.2}},
              "tuned": {"median_s": tuned, "p95_s": tuned, "images_per_minute": 60 / tuned, "stages": stages},
              "speedup": round(5.3 / tuned, 3), "psnr_tuned_vs_eager_db": 47.5,
              "tuning": {"warmup_with_compile_s": 43.3},
              "cache_hit_boot": {"tuning": {"warmup_with_compile_s": 10.5}}, "compile_cache_ratio": 0.243}
    if target:
        result["target_s"] = target
    return result


def coldstart(machine: dict[str, Any], ready: float, target: float | None,
              job: float | None = None) -> dict[str, Any]:
    median = {"import_s": 0.2, "settings_s": 0.0, "fetch_s": 0.1, "load_s": 4.0, "optimize_s": 0.3,
              "warmup_s": ready - 4.7, "other_s": 0.05, "announce_s": 0.05, "ready_s": ready,
              "serving_s": ready + 1.5, "first_job_s": 2.0}
    scenario = {"label": "(c) warm weights, warm compile cache", "compile": "regional", "median": median,
                "n": 1, "errors": 0, "runs": []}
    if target:
        scenario["target_ready_s"] = target
    if job:  # bench_coldstart --jobs: seconds per image from the served worker
        median.update(job_s=job, job_p95_s=job + 0.1)
        scenario["target_job_s"] = 1.1
    return {"what": "coldstart", "mode": "synthetic", "model": "sdxl", "device": "cuda", "repeat": 1,
            "jobs": 5 if job else 0,
            "command": "python -m warmup.bench_coldstart", "machine": machine,
            "scenarios": {"warm-cache": scenario,
                          "empty": {"label": "(a) empty cache", "compile": "regional",
                                    "skipped": "needs a hub", "runs": []}}}


def write(folder: Path, name: str, data: Any) -> None:
    (folder / name).write_text(json.dumps(data))


def test_figures_stand_beside_their_targets_and_charts_are_pngs(tmp_path: Path) -> None:
    write(tmp_path, "latency-gpu.json", latency(H100, tuned=3.92, target=2.4))
    write(tmp_path, "latency-fast.json", {**latency(H100, tuned=2.0, target=2.4), "model": "flux-fast"})
    write(tmp_path, "latency-cpu.json", latency(CPU, tuned=0.3))
    write(tmp_path, "coldstart-gpu.json", coldstart(H100, ready=9.5, target=8.0, job=1.05))
    write(tmp_path, "not-a-result.json", [1, 2])
    (tmp_path / "broken.json").write_text("{")
    written = report.build(tmp_path, tmp_path / "out")
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| 3.92 (3.92) |" in summary and "≤ 2.4: **missed**" in summary
    assert "≤ 2.4: **met**" in summary  # the 2.0 s run
    assert "none (CPU)" in summary
    assert "≤ 0.25: **met**" in summary  # compile cache ratio 0.243
    assert "**9.50**" in summary and "≤ 8: **missed**" in summary
    assert "after the first job (5 `/runsync` round trips" in summary
    assert "1.05 (p95 1.15, ≤ 1.1: **met**)" in summary
    assert "skipped: needs a hub" in summary
    charts = sorted(p.name for p in written if p.suffix == ".png")
    assert charts == ["coldstart-gpu.png", "compile-cache.png", "latency-synthetic.png", "latency-tiny.png"]
    for name in charts:
        data = (tmp_path / "out" / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000
        assert f"]({name})" in summary  # embedded


def test_the_benchmark_prints_what_the_summary_holds(tmp_path: Path) -> None:
    from warmup.bench_coldstart import render

    result = coldstart(H100, ready=7.5, target=8.0, job=1.2)
    scenario = result["scenarios"]["warm-cache"]
    scenario["median"].update(load_imports_s=2.1, load_device_init_s=0.4, load_weights_s=1.5)
    scenario["runs"] = [{"ready_s": 7.5, "priming_boot": {"ready_s": 140.0, "warmup_s": 131.0}}]
    write(tmp_path, "coldstart-gpu.json", result)
    report.build(tmp_path, tmp_path / "out")
    summary = (tmp_path / "out" / "summary.md").read_text()
    printed = render(result)
    for line in ("imports 2.10, CUDA context 0.40, weights 1.50", "ready 140.00 s, warmup 131.00 s",
                 "≤ 8: **met**", "1.20 (p95 1.30, ≤ 1.1: **missed**)"):
        assert line in printed and line in summary
    table = [line for line in printed.splitlines() if line.startswith("| (c)")]
    assert table and table[0] in summary


def test_no_results_still_writes_a_summary(tmp_path: Path) -> None:
    written = report.build(tmp_path, tmp_path)
    assert [p.name for p in written] == ["summary.md"]
    assert "# Benchmark summary" in (tmp_path / "summary.md").read_text()


def test_the_committed_results_render(tmp_path: Path) -> None:
    written = report.build(report.RESULTS, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "H100 80GB HBM3" in summary and "≤ 2.4: **missed**" in summary and "≤ 1.1: **missed**" in summary
    assert any(p.name == "latency-synthetic.png" for p in written)


def test_unwarmed_shape_strategies_render_one_row_each(tmp_path: Path) -> None:
    def row(strategy: str, first: float, graphs: int) -> dict[str, Any]:
        steady = {"median_s": 0.05, "p95_s": 0.06, "min_s": 0.04, "n": 3}
        return {"strategy": strategy, "warmup_s": 40.0, "graphs_at_warmup": 4, "graphs_at_new_shape": graphs,
                "recompiled_in_first_new_request": graphs > 0, "warm_shape": steady,
                "new_first_request_s": first, "new_shape": steady, "warm_shape_after_new": steady}

    write(tmp_path, "shapes.json", {"what": "unwarmed_shapes", "mode": "tiny", "model": "visgate/tiny-flux",
                                    "size": 256, "new": "256x384", "steps": 4, "runs": 3, "machine": CPU,
                                    "results": [row("eager-fallback", 0.12, 0), row("recompile", 25.8, 4)]})
    report.build(tmp_path, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "A shape warmup did not compile: tiny visgate/tiny-flux on CPU AMD EPYC" in summary
    assert "| eager-fallback | 40.00 | 0.0500 | 0.120 | 0.0500 | 0.0500 | 0 |" in summary
    assert "| recompile | 40.00 | 0.0500 | 25.800 | 0.0500 | 0.0500 | 4 |" in summary


def test_a_soak_run_renders_its_memory_samples(tmp_path: Path) -> None:
    from warmup import bench_soak

    args = bench_soak.parse_args(["--jobs", "100", "--every", "50"])
    # Every 10th job is the bad-input one (the 10th, 20th, ...), the rest are served images.
    assert [bench_soak.job_for(i, args)[1] for i in range(10)] == [True] * 9 + [False]
    assert bench_soak.job_for(9, args)[0]["num_inference_steps"] == 0
    write(tmp_path, "soak.json", {"what": "soak", "machine": CPU, "seconds": 30.0, "growth_mb": 12.5,
                                  "args": {k: str(v) for k, v in vars(args).items()},
                                  "samples": [{"jobs": 0, "rss_mb": 500.0}, {"jobs": 50, "rss_mb": 512.0},
                                              {"jobs": 100, "rss_mb": 512.5}]})
    report.build(tmp_path, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "## A long run: 100 jobs on visgate/tiny-flux, CPU AMD EPYC" in summary
    assert "worker RSS +12.5 MB from ready to the last job" in summary
    assert "| 50 | 512.0 |" in summary and "| 100 | 512.5 |" in summary


def test_a_partial_result_says_so_instead_of_pending_or_its_repeat(tmp_path: Path) -> None:
    """bench_latency and bench_coldstart write a partial result after each phase or boot, and
    gpu_check.sh kills a benchmark at its time limit: such a file is shown as the killed run it
    is, not as a target "pending" or as medians of the --repeat it never reached."""
    killed_latency = {**latency(H100, tuned=3.9, target=2.4), "partial": True}
    del killed_latency["tuned"]
    killed_coldstart = {**coldstart(H100, ready=12.0, target=8.0), "repeat": 3, "partial": True}
    killed_coldstart["scenarios"]["warm-cache"]["runs"] = [{"ready_s": 12.0}]
    write(tmp_path, "latency-killed.json", killed_latency)
    write(tmp_path, "coldstart-killed.json", killed_coldstart)
    report.build(tmp_path, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "≤ 2.4: not measured (run killed before its end)" in summary and "pending" not in summary
    assert "**partial**: killed after 1 of 3 boot(s) per scenario" in summary
    assert "(3 boot(s) per scenario)" not in summary
