#!/usr/bin/env bash
# Every benchmark once, in tiny mode on the CPU, as a smoke test (called by .ci/run before the
# tests). Each must run to its end and write its results; timings are printed, never asserted.
# Results go to out/bench-smoke/ (BENCH_SMOKE_OUT), not warmup/results/: the committed figures
# stay as measured. About 6 minutes on 2 cores.
#   BENCH_SMOKE_COMPILE=1  also boots with the compile cache cold and warm (adds ~2-3 minutes)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
OUT="${BENCH_SMOKE_OUT:-$ROOT/out/bench-smoke}"
rm -rf "$OUT"
mkdir -p "$OUT/logs"
export VISGATE_BENCH_RESULTS="$OUT" PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1

run() {  # run NAME COMMAND...: the command's log goes to a file; its table (or its failure) here
  local name="$1" log="$OUT/logs/$1.log" t0=$SECONDS
  shift
  echo "== bench smoke: $name"
  if "$@" >"$log" 2>&1; then
    grep -E '^(\||#|wrote|written|speedup|compile|target|tuned:|repository|FAIL| *link| +(unthrottled|[0-9]+ MB/s))' "$log" || true
    echo "== $name: ok in $((SECONDS - t0)) s"
  else
    local rc=$?
    tail -n 80 "$log"
    echo "== $name: FAILED (exit $rc) after $((SECONDS - t0)) s; full log: $log" >&2
    return "$rc"
  fi
}

run latency python -m warmup.bench_latency --mode tiny --model visgate/tiny-flux --size 256 \
  --steps 2 --runs 2 --compile off --cache-dir "$OUT/cache"
# VISGATE_COMPILE=aot: export, compile and store the packages, then load them in a fresh process
# (--cache-phases), the benchmark's own aot path (~1 minute).
run latency-aot python -m warmup.bench_latency --mode tiny --model visgate/tiny-flux --size 256 \
  --steps 2 --runs 1 --compile aot --variants tuned --cache-phases --cache-dir "$OUT/cache"
# The GPU workflow's latency steps build synthetic pipelines (warmup/synthetic.build_pipeline), which
# no tiny run touches: the same build at small scale, uncompiled (~15 s).
VISGATE_SYNTHETIC_SCALE=small run latency-synthetic python -m warmup.bench_latency --mode synthetic \
  --model flux-dev --device cpu --size 256 --steps 2 --runs 1 --compile off --cache-dir "$OUT/cache"
scenarios="empty,warm-eager"
if [ "${BENCH_SMOKE_COMPILE:-0}" = "1" ]; then
  scenarios="all"
fi
run coldstart python -m warmup.bench_coldstart --repeat 1 --scenarios "$scenarios" --compile off
# The next GPU session's first call, rehearsed at small scale on the CPU (~1.5 minutes): the
# synthetic SDXL written to a volume, a priming boot that compiles the aot packages, and a boot
# that loads them; keeps that never-yet-run GPU path working on every CI run.
VISGATE_SYNTHETIC_SCALE=small run coldstart-synthetic python -m warmup.bench_coldstart --mode synthetic \
  --model sdxl --device cpu --volume "$OUT/volume" --repeat 1 --compile aot --scenarios warm-cache --jobs 2 \
  --entry queue
# One strategy (one compile, ~1 minute) runs the parent/child machinery; bench_shapes runs all three.
run shapes python -m warmup.bench_shapes --strategies eager-fallback --size 256 --new 256x320 \
  --steps 1 --runs 1 --cache-dir "$OUT/cache"
run fetch python -m warmup.bench_fetch --repeats 1 --rates 0
run soak python -m warmup.bench_soak --jobs 20 --every 10 --error-every 5 --cache-dir "$OUT/cache"
run report python -m warmup.report --results "$OUT"
echo "== bench smoke: all benchmarks ran; results and charts in $OUT"
