"""Steady-state latency: eager vs tuned in one run, per-stage split, compile cold vs cache hit.

    python -m warmup.bench_latency --mode tiny --model visgate/tiny-flux --size 256 --steps 4
    python -m warmup.bench_latency --mode synthetic --model flux-dev --size 1024 --steps 28 \
        --cache-phases          # + a fresh process that boots the tuned pipeline from the cache

Modes: ``tiny`` (built-in models, CPU), ``synthetic`` (real architectures at full size with random
weights, for a GPU with no hub; see warmup/synthetic.py), ``real`` (a hub id or local dir,
fetched through the worker's own fetch stage). The tuned pipeline is built by the worker's own
optimize stage and compile cache, so what is measured is what the worker serves.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.settings import ATTENTIONS, COMPILE_MODES, PRECISIONS, QUANTIZE_MODES  # noqa: E402
from warmup.check_args import comma_choices  # noqa: E402
from warmup.machine import machine_info, result_path  # noqa: E402
from warmup.synthetic import record_mode  # noqa: E402
from warmup.targets import CACHE_HIT_RATIO, LATENCY  # noqa: E402

VARIANTS = ("eager", "tuned")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def p95(samples: list[float]) -> float:
    """The 95th percentile, nearest rank (with few runs: the slowest but an outlier or so)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(samples), 4), "p95_s": round(p95(samples), 4),
            "min_s": round(min(samples), 4), "n": len(samples)}


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def build(args: argparse.Namespace, workdir: Path) -> tuple[Any, Any]:
    """(Loaded, Settings) for the model under test, loaded eagerly."""
    from pipelines.registry import detect_family
    from runtime.load import DTYPE_NAMES, Loaded, check_device, choose_precision, quiet_libraries
    from runtime.settings import Settings

    import torch

    settings = Settings.from_env({
        "HF_MODEL_ID": args.model, "DEVICE": args.device, "VISGATE_CACHE_DIR": str(args.cache_dir),
        "VISGATE_PRECISION": args.precision, "VISGATE_COMPILE": args.compile,
        "VISGATE_QUANTIZE": args.quantize, "VISGATE_ATTENTION": args.attention,
        "VISGATE_WARMUP_SHAPES": f"{args.size}x{args.size}"})
    check_device(settings.device)
    quiet_libraries()
    if args.mode == "synthetic":
        from warmup import synthetic

        repo = synthetic.make_repo(args.model, workdir / "repo")
        family = detect_family(repo)
        precision = choose_precision(settings.precision, family, settings.device)
        dtype = getattr(torch, DTYPE_NAMES[precision])
        pipe = synthetic.build_pipeline(repo, dtype, settings.device)
    else:
        from runtime.fetch import fetch

        fetched = fetch(settings)
        family = detect_family(fetched.model_dir)
        precision = choose_precision(settings.precision, family, settings.device)
        # The weight variant the fetch stage chose (e.g. SDXL's fp16 files), as the worker loads it.
        pipe = family.load(getattr(torch, DTYPE_NAMES[precision]), settings.device,
                           variant=fetched.variant)
    return Loaded(family=family, pipe=pipe, precision=precision, device=settings.device), settings


def stage_split(loaded: Any, request: Any, encoder: Any, image: Any) -> dict[str, float]:
    """Seconds of text encoding, VAE decode and PNG encode, each alone; denoise is the rest."""
    import torch

    from pipelines.base import execution_device

    pipe, device, family = loaded.pipe, loaded.device, loaded.family
    out: dict[str, float] = {}
    with torch.inference_mode():
        if family.name == "flux":
            out["text_encode_s"] = timed(lambda: pipe.encode_prompt(
                request.prompt, prompt_2=None, device=execution_device(pipe),
                max_sequence_length=family.max_sequence_length), device)[0]
        elif family.name == "sdxl":
            out["text_encode_s"] = timed(lambda: pipe.encode_prompt(
                request.prompt, device=execution_device(pipe),
                do_classifier_free_guidance=request.guidance > 1), device)[0]
        vae = pipe.vae
        # Decode as the pipeline does: an fp16 VAE with force_upcast (SDXL) decodes in fp32, and
        # that is the graph warmup compiled; probing in fp16 would time an eager fallback.
        upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        channels = vae.config.latent_channels
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        latents = torch.randn(1, channels, request.height // factor, request.width // factor,
                              device=device, dtype=vae.dtype)
        vae.decode(latents)  # the first call may compile; time the second
        out["vae_decode_s"] = timed(lambda: vae.decode(latents), device)[0]
        if upcast:
            vae.to(torch.float16)
    out["png_encode_s"] = timed(lambda: encoder.encode(image), "cpu")[0]
    return {k: round(v, 4) for k, v in out.items()}


def run_variant(loaded: Any, request: Any, runs: int, encoder: Any) -> dict[str, Any]:
    family = loaded.family
    first_s, _ = timed(lambda: family.generate(loaded.pipe, request), loaded.device)
    samples, image = [], None
    for _ in range(runs):
        seconds, image = timed(lambda: family.generate(loaded.pipe, request), loaded.device)
        samples.append(seconds)
    result = {"first_call_s": round(first_s, 3), **summary(samples),
              "images_per_minute": round(60 / statistics.median(samples), 2),
              "stages": stage_split(loaded, request, encoder, image)}
    e2e = result["median_s"]
    stages = result["stages"]
    stages["denoise_s"] = round(max(0.0, e2e - stages.get("text_encode_s", 0) - stages["vae_decode_s"]), 4)
    return {"result": result, "image": image}


def tune(loaded: Any, settings: Any, request: Any, fresh_local: bool) -> dict[str, Any]:
    """Apply the worker's optimize stage + compile cache; time the compiling first call."""
    from runtime import compile_cache
    from runtime.boot import aot_store_for, compile_cache_for
    from runtime.optimize import optimize, serve_stance, warm_with_fallback
    from runtime.warmup import warmup

    shapes = [(request.height, request.width)]
    cache = compile_cache_for(settings, Path("synthetic"), loaded, shapes)
    if cache is not None:
        # The cold phase compiles from nothing (an earlier run's archive or packages would make
        # it a hit); the cache-hit phase is a new container: an empty local inductor directory.
        shutil.rmtree(cache.local_dir, ignore_errors=True)
        if not fresh_local:
            for earlier in cache.volume_dir.glob(f"{cache.key}.*"):
                earlier.unlink()
        cache.activate()
    t0 = time.perf_counter()
    report = optimize(loaded, settings, aot_store=aot_store_for(cache))
    optimize_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm_with_fallback(lambda: warmup(loaded.family, loaded.pipe, shapes, steps=2), report)
    compile_s = time.perf_counter() - t0
    status = compile_cache.finish(cache) if cache and "compile" in report.applied else {}
    serve_stance(report)
    return {"optimizations": report.as_dict(), "optimize_s": round(optimize_s, 3),
            "warmup_with_compile_s": round(compile_s, 3), "compile_cache": status,
            # every timer torch kept over 0.05 s: where a cache-hit compile still spends its time
            "compile_timers_s": compile_cache.compile_seconds(every_timer=True, minimum=0.05)}


def run_options(args: argparse.Namespace) -> dict[str, str]:
    """The worker settings a run was given, as the regression check keys it (precision: "auto"
    or --precision): a bf16 run of SDXL, which loads as fp16, is not compared with an fp16 one."""
    return {"compile": args.compile, "quantize": args.quantize, "attention": args.attention,
            "precision": args.precision}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("tiny", "synthetic", "real"), default="tiny")
    parser.add_argument("--model", default="visgate/tiny-flux")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="default: the family's")
    parser.add_argument("--runs", type=int, default=3)
    # The worker's own option names (runtime/settings.py), checked here, before minutes of loading.
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="regional")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default="none")
    parser.add_argument("--attention", choices=ATTENTIONS, default="auto")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--variants", default="eager,tuned")
    parser.add_argument("--cache-phases", action=argparse.BooleanOptionalAction, default=False,
                        help="then boot the tuned pipeline again in a fresh process (cache hit)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # A misspelt variant would measure nothing and still write a result: refused here instead.
    comma_choices(parser, "--variants", args.variants, VARIANTS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from pipelines.base import GenerationRequest
    from runtime.encode import PngEncoder

    variants = args.variants.split(",")
    compile_tag = "" if args.compile == "regional" else f"-{args.compile}"
    out_path = args.out or result_path(
        f"latency-{record_mode(args.mode)}-{args.model.replace('/', '_')}{compile_tag}-{args.size}", args.device)

    def checkpoint(record: dict[str, Any]) -> None:
        # After each phase too: a run killed at its time limit keeps what it measured.
        if not args.child:
            out_path.write_text(json.dumps({**record, "partial": True}, indent=1, default=str))

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        loaded, settings = build(args, Path(tmp))
        build_s = time.perf_counter() - t0
        d = loaded.family.defaults
        request = GenerationRequest(prompt="a photo of a red fox in the snow, golden hour",
                                    steps=args.steps or d.steps, guidance=d.guidance,
                                    height=args.size, width=args.size, seed=0)
        encoder = PngEncoder()
        record: dict[str, Any] = {
            "what": "latency", "mode": record_mode(args.mode), "model": args.model,
            "family": loaded.family.name,
            "variant": loaded.family.variant, "precision": loaded.precision, "size": args.size,
            "steps": request.steps, "guidance": request.guidance, "build_s": round(build_s, 2),
            "options": run_options(args),
            "machine": machine_info(args.device), "png_encoder": encoder.name}
        images = {}
        if "eager" in variants:
            out = run_variant(loaded, request, args.runs, encoder)
            record["eager"], images["eager"] = out["result"], out["image"]
            checkpoint(record)
        if "tuned" in variants:
            record["tuning"] = tune(loaded, settings, request, fresh_local=args.child)
            checkpoint(record)
            out = run_variant(loaded, request, args.runs, encoder)
            record["tuned"], images["tuned"] = out["result"], out["image"]
        if len(images) == 2:
            record["psnr_tuned_vs_eager_db"] = psnr(images["eager"], images["tuned"])
            record["speedup"] = round(record["eager"]["median_s"] / record["tuned"]["median_s"], 3)
            record["lossy"] = args.quantize != "none"
        target = LATENCY.get((args.model, args.size, request.steps))
        if target and args.device.startswith("cuda"):
            record["target_s"] = target
    if args.cache_phases and not args.child:
        record["cache_hit_boot"] = cache_hit_phase(argv or sys.argv[1:])
        ratio = compile_cache_ratio(record.get("tuning"), record["cache_hit_boot"].get("tuning"))
        if ratio is not None:
            record["compile_cache_ratio"] = ratio
            record["compile_cache_target_ratio"] = CACHE_HIT_RATIO
    if args.child:
        print("CHILD_RESULT " + json.dumps(record, default=str))
        return 0
    out_path.write_text(json.dumps(record, indent=1, default=str))
    print(render(record))
    print(f"wrote {out_path}")
    return 0


def served_eagerly(tuning: dict[str, Any] | None) -> str | None:
    """Why a tuned phase that was to compile runs eagerly (its compile failed at warmup and the
    worker fell back), else None."""
    opts = (tuning or {}).get("optimizations") or {}
    if "compile" in opts.get("applied", {}) or opts.get("skipped", {}).get("compile") in (None, "VISGATE_COMPILE=off"):
        return None
    return opts["skipped"]["compile"]


def compile_cache_ratio(cold: dict[str, Any] | None, hit: dict[str, Any] | None) -> float | None:
    """Cache-hit over cold first-call seconds, only when both phases compiled: a cache-hit process
    whose restored code failed serves eagerly, and its short eager warmup is no cache hit."""
    cold_s = (cold or {}).get("warmup_with_compile_s")
    hit_s = (hit or {}).get("warmup_with_compile_s")
    if not cold_s or not hit_s or served_eagerly(cold) or served_eagerly(hit):
        return None
    return round(hit_s / cold_s, 3)


def cache_hit_phase(argv: list[str]) -> dict[str, Any]:
    """Boot the tuned pipeline in a fresh process: only the volume archive carries over."""
    child = [a for a in argv if a != "--cache-phases"] + ["--child", "--variants", "tuned", "--runs", "1"]
    proc = subprocess.run([sys.executable, "-m", "warmup.bench_latency", *child], cwd=ROOT,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    return {"error": f"child exited {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}


def render(r: dict[str, Any]) -> str:
    lines = [f"## {r['mode']} {r['model']} ({r['family']}/{r['variant']}, {r['precision']}) "
             f"{r['size']}x{r['size']}, {r['steps']} steps on {r['machine'].get('gpu') or r['machine'].get('cpu')}",
             "", "| variant | median s | p95 s | images/min | text enc s | denoise s | VAE s | PNG s |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("eager", "tuned"):
        v = r.get(name)
        if v:
            s = v["stages"]
            lines.append(f"| {name} | {v['median_s']} | {v['p95_s']} | {v['images_per_minute']} | "
                         f"{s.get('text_encode_s', '-')} | {s['denoise_s']} | {s['vae_decode_s']} | {s['png_encode_s']} |")
    if "speedup" in r:
        lines.append(f"\nspeedup {r['speedup']}x; PSNR tuned vs eager {r['psnr_tuned_vs_eager_db']} dB"
                     + (" (quantized: lossy)" if r.get("lossy") else ""))
    opts = r.get("tuning", {}).get("optimizations")
    if opts:  # a skipped fp8 or a compile that fell back to eager must show beside the figures
        skipped = "; ".join(f"{k} ({v})" for k, v in opts.get("skipped", {}).items())
        lines.append(f"tuned: applied {', '.join(opts.get('applied', {}))}" + (f"; skipped {skipped}" if skipped else ""))
    if "tuning" in r and r["options"].get("compile") != "off":
        lines.append(f"compile (first calls, cold cache): {r['tuning']['warmup_with_compile_s']} s")
    hit = r.get("cache_hit_boot", {}).get("tuning")
    if served_eagerly(hit):
        lines.append(f"compile in a fresh process with the cache: FAILED, served eagerly ({served_eagerly(hit)})")
    elif hit:
        lines.append(f"compile in a fresh process with the cache: {hit['warmup_with_compile_s']} s "
                     f"(ratio {r.get('compile_cache_ratio')}, target <= {CACHE_HIT_RATIO})")
    if "target_s" in r and "tuned" in r:
        verdict = "meets" if r["tuned"]["median_s"] <= r["target_s"] else "misses"
        lines.append(f"target: <= {r['target_s']} s per image; tuned {r['tuned']['median_s']} s ({verdict})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
