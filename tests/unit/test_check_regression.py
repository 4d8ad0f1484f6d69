"""The GPU CI's regression gate (warmup/check_regression.py) on synthetic result dicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from warmup import check_regression as cr

H100 = "NVIDIA H100 80GB HBM3"
ROOT = Path(__file__).resolve().parents[2]


def latency(gpu: str | None = H100, tuned: float | None = 3.9, eager: float | None = 5.3,
            ratio: float | None = 0.24, psnr: float | None = 47.5, **options: str) -> dict[str, Any]:
    result: dict[str, Any] = {
        "what": "latency", "mode": "synthetic", "model": "flux-dev", "size": 1024, "steps": 28,
        "options": {"compile": "regional", "quantize": "none", "attention": "auto", **options},
        "machine": {"gpu": gpu, "date": "2026-11-27T13:12:35Z"} if gpu else {"cpu": "AMD EPYC"},
        "lossy": options.get("quantize", "none") != "none"}
    if eager is not None:
        result["eager"] = {"median_s": eager}
    if tuned is not None:
        result["tuned"] = {"median_s": tuned}
    if ratio is not None:
        result["compile_cache_ratio"] = ratio
    if psnr is not None:
        result["psnr_tuned_vs_eager_db"] = psnr
    return result


def coldstart(ready: float | None = 12.0, errors: int = 0, gpu: str = H100,
              compile_mode: str = "regional") -> dict[str, Any]:
    median = {"ready_s": ready} if ready is not None else {}
    return {"what": "coldstart", "mode": "synthetic", "model": "sdxl", "machine": {"gpu": gpu},
            "scenarios": {"warm-cache": {"median": median, "errors": errors, "compile": compile_mode}}}


def baseline_of(*results: dict[str, Any]) -> dict[str, Any]:
    return cr.build_baseline((f"r{i}.json", r) for i, r in enumerate(results))


def statuses(checks: list[cr.Check]) -> dict[str, str]:
    return {c.metric: c.status for c in checks}


# ---- latency ------------------------------------------------------------------------------------
def test_the_same_figures_pass() -> None:
    base = baseline_of(latency())
    checks = cr.check(latency(), base)
    assert statuses(checks) == {"tuned_median_s": "ok", "compile_cache_ratio": "ok",
                                "psnr_tuned_vs_eager_db": "ok"}
    assert not any(c.failed for c in checks)


def test_tuned_latency_within_the_threshold_passes_and_beyond_it_fails() -> None:
    base = baseline_of(latency(tuned=4.0))
    assert statuses(cr.check(latency(tuned=4.59), base))["tuned_median_s"] == "ok"  # 4.0 x 1.15 = 4.6
    slower = [c for c in cr.check(latency(tuned=4.61), base) if c.metric == "tuned_median_s"]
    assert slower[0].status == "regression" and slower[0].failed
    assert slower[0].limit == pytest.approx(4.6)


def test_a_faster_run_passes() -> None:
    base = baseline_of(latency(tuned=4.0))
    assert statuses(cr.check(latency(tuned=2.0), base))["tuned_median_s"] == "ok"


def test_the_threshold_comes_from_the_baseline_file() -> None:
    base = baseline_of(latency(tuned=4.0))
    base["thresholds"]["latency_ratio"] = 1.05
    assert statuses(cr.check(latency(tuned=4.3), base))["tuned_median_s"] == "regression"


def test_compile_cache_ratio_above_a_quarter_fails_even_without_a_baseline() -> None:
    checks = cr.check(latency(ratio=0.3), {"gpus": {}})
    assert statuses(checks)["compile_cache_ratio"] == "regression"
    assert statuses(cr.check(latency(ratio=0.25), {"gpus": {}}))["compile_cache_ratio"] == "ok"


def test_a_tuned_image_unlike_the_eager_one_fails_unless_quantized() -> None:
    assert statuses(cr.check(latency(psnr=18.0), {}))["psnr_tuned_vs_eager_db"] == "regression"
    lossy = cr.check(latency(psnr=18.0, quantize="fp8"), {})
    assert "psnr_tuned_vs_eager_db" not in statuses(lossy)


def test_a_new_gpu_or_configuration_is_reported_not_failed() -> None:
    base = baseline_of(latency())
    other_gpu = cr.check(latency(gpu="NVIDIA H200", tuned=99.0), base)
    assert statuses(other_gpu)["tuned_median_s"] == "new"
    other_options = cr.check(latency(tuned=99.0, attention="cudnn"), base)
    assert statuses(other_options)["tuned_median_s"] == "new"
    assert not any(c.failed for c in other_gpu + other_options)


def test_options_are_part_of_the_key() -> None:
    assert cr.latency_key(latency()) == "latency/synthetic/flux-dev/1024/28"
    assert cr.latency_key(latency(attention="cudnn")) == "latency/synthetic/flux-dev/1024/28/attention=cudnn"


def test_a_tuned_run_that_measured_nothing_is_an_error() -> None:
    base = baseline_of(latency())
    result = latency()
    result["tuned"] = {"median_s": None}
    assert "tuned_median_s" not in cr.measurements(result)[cr.latency_key(result)]
    crashed = latency()
    crashed["cache_hit_boot"] = {"error": "child exited 1"}
    checks = cr.check(crashed, base)
    assert any(c.status == "error" and c.failed for c in checks)


def test_a_run_killed_before_its_end_fails_the_check() -> None:
    """bench_latency and bench_coldstart write a partial result after each phase: one killed at its
    time limit after the eager run has no tuned figure, which must not pass as nothing to compare."""
    killed = latency(tuned=None, ratio=None, psnr=None)
    killed["partial"] = True
    checks = cr.check(killed, baseline_of(latency()))
    assert [c.metric for c in checks if c.failed] == ["crash"]
    assert "partial" in checks[0].detail


def test_update_refuses_a_partial_or_crashed_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(baseline_of(latency(tuned=4.0), coldstart(ready=10.0))))
    before = baseline.read_text()
    killed, crashed = latency(tuned=None, ratio=None, psnr=None), coldstart(ready=30.0, errors=2)
    killed["partial"] = True
    for name, result in (("killed.json", killed), ("crashed.json", crashed)):
        path = tmp_path / name
        path.write_text(json.dumps(result))
        assert cr.main([str(path), "--update", "--baseline", str(baseline)]) == 1
        assert name in capsys.readouterr().err
    assert baseline.read_text() == before  # the tuned figure and the cold start are kept


def test_cpu_results_are_not_checked() -> None:
    assert cr.check(latency(gpu=None, tuned=1000.0, ratio=0.9), baseline_of(latency())) == []


# ---- cold start ---------------------------------------------------------------------------------
def test_cold_start_regression_uses_its_own_threshold() -> None:
    base = baseline_of(coldstart(ready=10.0))
    assert statuses(cr.check(coldstart(ready=12.4), base))["ready_s"] == "ok"  # 10 x 1.25
    assert statuses(cr.check(coldstart(ready=12.6), base))["ready_s"] == "regression"


def test_an_aot_cold_start_is_not_compared_with_a_regional_baseline() -> None:
    base = baseline_of(coldstart(ready=16.0))
    assert statuses(cr.check(coldstart(ready=7.0, compile_mode="aot"), base))["ready_s"] == "new"
    both = baseline_of(coldstart(ready=16.0), coldstart(ready=7.0, compile_mode="aot"))
    assert statuses(cr.check(coldstart(ready=9.0, compile_mode="aot"), both))["ready_s"] == "regression"
    assert statuses(cr.check(coldstart(ready=9.0), both))["ready_s"] == "ok"


def test_a_cold_start_on_the_job_queue_is_not_compared_with_one_through_the_api_server() -> None:
    """On the queue, ready comes after the job SDK's start-up checks: another measurement."""
    base = baseline_of(coldstart(ready=10.0))
    assert statuses(cr.check({**coldstart(ready=10.5), "entry": "queue"}, base))["ready_s"] == "new"
    both = baseline_of(coldstart(ready=10.0), {**coldstart(ready=11.0), "entry": "queue"})
    assert statuses(cr.check({**coldstart(ready=14.0), "entry": "queue"}, both))["ready_s"] == "regression"
    assert statuses(cr.check({**coldstart(ready=10.5), "entry": "api"}, both))["ready_s"] == "ok"


def test_failed_boots_fail_the_check() -> None:
    base = baseline_of(coldstart(ready=10.0))
    checks = cr.check(coldstart(ready=10.0, errors=1), base)
    assert any(c.metric == "crash" and c.failed for c in checks)
    checks = cr.check(coldstart(ready=None, errors=3), base)
    assert any(c.failed for c in checks)


# ---- the baseline and the command -----------------------------------------------------------------
def test_build_keeps_figures_per_gpu_and_later_files_win() -> None:
    base = baseline_of(latency(tuned=4.0), latency(tuned=3.5), latency(gpu="NVIDIA H200", tuned=3.8))
    assert base["gpus"][H100]["latency/synthetic/flux-dev/1024/28"]["tuned_median_s"] == 3.5
    assert base["gpus"]["NVIDIA H200"]["latency/synthetic/flux-dev/1024/28"]["tuned_median_s"] == 3.8
    merged = cr.build_baseline([("new.json", coldstart(ready=9.0))], previous=base)
    assert merged["gpus"][H100]["coldstart/synthetic/sdxl/warm-cache"]["ready_s"] == 9.0
    assert merged["gpus"][H100]["latency/synthetic/flux-dev/1024/28"]["tuned_median_s"] == 3.5


def test_main_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(baseline_of(latency(tuned=4.0))))
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(latency(tuned=4.1)))
    bad.write_text(json.dumps(latency(tuned=5.0)))
    assert cr.main([str(good), "--baseline", str(baseline)]) == 0
    assert cr.main([str(good), str(bad), "--baseline", str(baseline)]) == 1
    assert "REGRESSION" in capsys.readouterr().out


def test_the_committed_baseline_holds_todays_gpu_results() -> None:
    baseline = json.loads((ROOT / "warmup" / "baseline.json").read_text())
    results = ROOT / "warmup" / "results"
    for name in ("latency-synthetic-flux-dev-1024-nvidia-h100-80gb-hbm3.json",
                 "latency-synthetic-sdxl-1024-nvidia-h200.json"):
        result = json.loads((results / name).read_text())
        checks = cr.check(result, baseline)
        assert checks and all(c.status == "ok" for c in checks), cr.render(checks)


def test_update_merges_into_the_baseline_file(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(baseline_of(latency(tuned=4.0))))
    result = tmp_path / "cold.json"
    result.write_text(json.dumps(coldstart(ready=9.0)))
    assert cr.main([str(result), "--update", "--baseline", str(baseline)]) == 0
    merged = json.loads(baseline.read_text())["gpus"][H100]
    assert merged["coldstart/synthetic/sdxl/warm-cache"]["ready_s"] == 9.0
    assert merged["latency/synthetic/flux-dev/1024/28"]["tuned_median_s"] == 4.0


# ---- a compile that fell back to eager ------------------------------------------------------------
FELL_BACK = {"applied": {"precision": "bf16"},
             "skipped": {"compile": "failed at warmup (BackendCompilerFailed); serving eagerly"}}
COMPILED = {"applied": {"precision": "bf16", "compile": "FluxTransformer2DModel repeated blocks"}, "skipped": {}}


def test_a_cache_hit_process_that_served_eagerly_fails_instead_of_meeting_the_ratio() -> None:
    """A damaged archive makes the fresh process's compiled warmup fail; the worker then serves
    eagerly, and its short eager warmup over the cold compile read as a cache hit far under 0.25."""
    result = latency(ratio=0.08)
    result["tuning"] = {"optimizations": COMPILED, "warmup_with_compile_s": 32.2}
    result["cache_hit_boot"] = {"tuning": {"optimizations": FELL_BACK, "warmup_with_compile_s": 2.6}}
    failed = [c for c in cr.check(result, baseline_of(latency())) if c.failed]
    assert [c.metric for c in failed] == ["crash"]
    assert "cache-hit process: compile failed at warmup" in failed[0].detail


def test_a_tuned_run_that_served_eagerly_fails() -> None:
    result = latency()
    result["tuning"] = {"optimizations": FELL_BACK}
    assert any(c.failed and "tuned run" in c.detail for c in cr.check(result, baseline_of(latency())))
    uncompiled = latency(compile="off")
    uncompiled["tuning"] = {"optimizations": {"applied": {}, "skipped": {"compile": "VISGATE_COMPILE=off"}}}
    assert not any(c.failed for c in cr.check(uncompiled, {}))


def test_bench_latency_gives_no_cache_ratio_for_an_eager_fallback() -> None:
    from warmup import bench_latency

    cold = {"optimizations": COMPILED, "warmup_with_compile_s": 32.0}
    assert bench_latency.compile_cache_ratio(cold, {"optimizations": COMPILED, "warmup_with_compile_s": 4.0}) == 0.125
    assert bench_latency.compile_cache_ratio(cold, {"optimizations": FELL_BACK, "warmup_with_compile_s": 2.6}) is None
    assert bench_latency.compile_cache_ratio(cold, {}) is None


def test_a_cold_start_whose_compile_fell_back_to_eager_fails() -> None:
    """A boot whose compile fails at warmup serves eagerly and is ready sooner (on the CPU, 9.4 s
    against ~40 s compiled): as "(b) warm weights, cold compile cache" it would pass any baseline."""
    result = coldstart(ready=9.4)
    result["scenarios"]["warm-cache"]["runs"] = [
        {"ready_s": 9.4, "compile": "regional", "applied": ["fuse_qkv", "precision"]}]
    checks = cr.check(result, baseline_of(coldstart(ready=40.0)))
    assert any(c.failed and "served eagerly" in c.detail for c in checks)
    compiled = coldstart(ready=40.0)
    compiled["scenarios"]["warm-cache"]["runs"] = [
        {"ready_s": 40.0, "compile": "regional", "applied": ["compile", "fuse_qkv", "precision"]},
        {"ready_s": 5.0, "compile": "off", "applied": ["fuse_qkv", "precision"]}]
    assert not any(c.failed for c in cr.check(compiled, baseline_of(coldstart(ready=40.0))))


# ---- like with like: the settings a run was given --------------------------------------------------
def test_a_latency_run_at_another_precision_is_another_configuration() -> None:
    """SDXL loads as fp16 by default; --precision bf16 (fp8's prerequisite) is another run."""
    assert cr.latency_key(latency(precision="auto")) == "latency/synthetic/flux-dev/1024/28"
    bf16 = latency(tuned=9.0, precision="bf16")
    assert cr.latency_key(bf16) == "latency/synthetic/flux-dev/1024/28/precision=bf16"
    assert statuses(cr.check(bf16, baseline_of(latency())))["tuned_median_s"] == "new"


def test_a_cold_start_with_worker_settings_in_env_is_another_configuration() -> None:
    fp8 = coldstart(ready=30.0, compile_mode="aot")
    fp8["env"] = {"VISGATE_QUANTIZE": "fp8", "VISGATE_PRECISION": "bf16", "HF_TOKEN": "***",
                  "VISGATE_WEBHOOK_SECRET": "***", "VISGATE_COMPILE": "off"}
    assert cr.measurements(fp8) == {
        "coldstart/synthetic/sdxl/warm-cache/compile=aot/VISGATE_PRECISION=bf16/VISGATE_QUANTIZE=fp8": {"ready_s": 30.0}}
    base = baseline_of(coldstart(ready=7.0, compile_mode="aot"))
    assert statuses(cr.check(fp8, base))["ready_s"] == "new"
    merged = cr.build_baseline([("fp8.json", fp8)], previous=base)["gpus"][H100]
    assert merged["coldstart/synthetic/sdxl/warm-cache/compile=aot"]["ready_s"] == 7.0  # not replaced


def test_the_benchmarks_record_the_settings_the_key_reads() -> None:
    from warmup import bench_coldstart, bench_latency

    args = bench_latency.parse_args(["--mode", "synthetic", "--model", "sdxl", "--precision", "bf16"])
    assert cr.latency_key({**latency(), "options": bench_latency.run_options(args)}).endswith("/precision=bf16")
    args = bench_latency.parse_args(["--mode", "synthetic", "--model", "sdxl"])
    assert cr.latency_key({**latency(), "options": bench_latency.run_options(args)}) == "latency/synthetic/flux-dev/1024/28"
    args = bench_coldstart.parse_args(["--mode", "synthetic", "--env", "VISGATE_QUANTIZE=fp8"])
    record = bench_coldstart.summarize(args, bench_coldstart.RealHub("sdxl", None), {"warm-cache": []})
    assert record["env"] == {"VISGATE_QUANTIZE": "fp8"}
