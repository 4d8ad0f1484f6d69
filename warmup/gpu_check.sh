#!/usr/bin/env bash
# Every GPU check in one prepared run on the lent GPU machine (see BENCHMARKS.md):
#   1. synthetic FLUX.1-dev and SDXL at full size: eager vs tuned, per-stage split,
#      compile cold vs cache hit in a fresh process, PSNR tuned vs eager;
#   2. optionally (COLDSTART_SPECS) the cold start to ready by stage, and (SHAPES_SPECS) the
#      strategies for a shape warmup did not compile;
#   3. the GPU test tier (tests/gpu) through the real boot path (GPU_TESTS=0 skips it;
#      GPU_TESTS_K, a pytest -k expression, runs part of it, to split it across calls).
# Expects wheels missing on that machine (diffusers, torchao, fpng) in .whl/ and writes to $OUT.
set -uo pipefail
OUT="${OUT:-out/gpu}"
# The end of a benchmark's output, without library warnings, shown and kept in $OUT/NAME.
summary() {  # summary LINES NAME
  grep -vE "Warning|warn\(|_pytree" | tail -"$1" | tee "$OUT/$2"
}
# bench KIND LIMIT LINES NAME BENCH ARGS...: with KIND=check, only parse the command line
# (warmup/check_args.py); with KIND=run, run it for at most LIMIT seconds and keep its summary.
bench() {
  local kind=$1 limit=$2 lines=$3 name=$4 module=$5
  shift 5
  if [ "$kind" = check ]; then
    # Not the arguments themselves: an --env among them may carry a secret.
    python3 -m warmup.check_args "$module" "$@" || { echo "refused: a $module spec; nothing has run" >&2; return 1; }
  else
    timeout "$limit" python3 -m "warmup.$module" "$@" 2>&1 | summary "$lines" "$name"
    local status=${PIPESTATUS[0]}
    # A killed run's last lines are a figure from its middle: say so where they are read.
    if [ "$status" = 124 ]; then
      echo "$name: TIMED OUT after ${limit}s; its results are partial" | tee -a "$OUT/$name"
    elif [ "$status" != 0 ]; then
      echo "$name: FAILED (exit $status)" | tee -a "$OUT/$name"
    fi
    return 0  # a failed benchmark leaves the next ones their time; its output says why
  fi
}
# tag MODEL EXTRA: the result files' name for a spec line.
tag() {
  echo "$1${2:+-$(echo "$2" | tr -c 'a-z0-9' '-' | sed 's/-*$//')}"
}
# Every spec line's benchmark: each_bench check parses them all, each_bench run runs them.
# shellcheck disable=SC2086  # extra holds several flags on purpose
each_bench() {
  local kind=$1 model steps repeat limit extra size new t
  # "model steps timeout [extra bench_latency flags]" per line; override with BENCH_SPECS.
  # Set but empty (BENCH_SPECS=) runs none.
  while read -r model steps limit extra; do
    [ -n "$model" ] || continue
    t=$(tag "$model" "$extra")
    bench "$kind" "$limit" 30 "bench-$t.txt" bench_latency --mode synthetic --model "$model" --device cuda \
      --size 1024 --steps "$steps" --runs 3 --cache-phases --cache-dir /tmp/bench-cache $extra \
      --out "$OUT/latency-synthetic-$t-1024.json" || return 1
  done <<< "${BENCH_SPECS-flux-dev 28 270
sdxl 30 170}"
  # Optional: "model repeat timeout [extra bench_coldstart flags]" per line, the synthetic cold
  # start to the ready webhook by stage (warmup/bench_coldstart.py; weights written once to
  # /tmp/visgate-volume); e.g. COLDSTART_SPECS='sdxl 2 330 --compile aot'.
  while read -r model repeat limit extra; do
    [ -n "$model" ] || continue
    t=$(tag "$model" "$extra")
    bench "$kind" "$limit" 20 "coldstart-$t.txt" bench_coldstart --mode synthetic --model "$model" \
      --device cuda --volume /tmp/visgate-volume --repeat "$repeat" \
      --out "$OUT/coldstart-synthetic-$t.json" $extra || return 1
  done <<< "${COLDSTART_SPECS:-}"
  # Optional: "model size new-shape steps timeout" per line, the unwarmed-shape strategies
  # (warmup/bench_shapes.py); e.g. SHAPES_SPECS='sdxl 1024 832x1216 30 300'.
  while read -r model size new steps limit; do
    [ -n "$model" ] || continue
    bench "$kind" "$limit" 12 "shapes-$model.txt" bench_shapes --mode synthetic --model "$model" \
      --device cuda --size "$size" --new "$new" --steps "$steps" --runs 3 --cache-dir /tmp/bench-cache \
      --out "$OUT/shapes-synthetic-$model-$size.json" || return 1
  done <<< "${SHAPES_SPECS:-}"
}
# GPU_CHECK_ARGS_ONLY=1: only parse every spec's command line, with no GPU, wheels or $OUT
# output (the tests do, for each command BENCHMARKS.md gives).
if [ "${GPU_CHECK_ARGS_ONLY:-0}" = 1 ]; then
  each_bench check
  exit
fi
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  echo "no wheels in .whl/: run scripts/gpu_wheels.sh here and carry .whl" >&2
  exit 1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
# Preflight, in seconds: every import the runs below need (the runpod SDK's API server included,
# which the worker entrypoint starts only after a whole boot), so a missing wheel fails here and
# not after minutes of GPU time.
python3 - <<'PY' || exit 1
import importlib
import sys

import diffusers
import torch

print("torch", torch.__version__, "diffusers", diffusers.__version__)
missing = []
for name in ("transformers", "accelerate", "torchao.quantization", "runpod",
             "runpod.serverless.modules.rp_fastapi", "uvicorn", "tests.support.receiver",
             "warmup.local_worker", "warmup.synthetic", "fpng"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        if name == "fpng":  # optional: Pillow encodes the PNGs without it
            print(f"fpng unavailable ({exc.__class__.__name__}): PNG timings will be Pillow's")
            continue
        missing.append(f"{name}: {exc.__class__.__name__}: {exc}")
print("\n".join(["preflight: ok"] if not missing else ["preflight FAILED:", *missing]))
sys.exit(1 if missing else 0)
PY
# The runpod SDK's start-up checks, each timed as the worker runs them before "ready" on the
# queue (runtime/serve.py, JobSdk.check_machine): what they add to a GPU host's cold start. The
# network one fails there (no internet): its failure is printed, not fatal here.
timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/sdk-checks.txt" | tail -12
import asyncio
import inspect
import time

from runpod.serverless.modules import rp_fitness

started = time.perf_counter()
rp_fitness._ensure_gpu_check_registered()
rp_fitness._ensure_system_checks_registered()
print(f"sdk checks registered (nvidia-smi probes): {time.perf_counter() - started:.2f}s")
for check in list(rp_fitness._fitness_checks):
    began = time.perf_counter()
    try:
        outcome = check()
        if inspect.iscoroutine(outcome):
            asyncio.run(outcome)
        said = "passed"
    except Exception as exc:  # noqa: BLE001 - printed, measured all the same
        said = f"failed: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
    print(f"sdk check {check.__name__}: {time.perf_counter() - began:.2f}s {said}")
print(f"sdk checks in all: {time.perf_counter() - started:.2f}s")
PY
each_bench check || exit 1  # a refused spec stops the call before any benchmark has run
each_bench run
if [ "${GPU_TESTS:-1}" = "1" ]; then
  timeout "${GPU_TESTS_TIMEOUT:-140}" python3 -m pytest tests/gpu -q -p no:cacheprovider --noconftest \
    -o addopts="" --disable-warnings --tb=short -rfE ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} 2>&1 | tee "$OUT/gpu-tests.txt" | tail -40
fi
