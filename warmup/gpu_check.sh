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
OUT="${OUT:-out/gpu}"; mkdir -p "$OUT"
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
# The end of a benchmark's output, without library warnings, shown and kept in $OUT/NAME.
summary() {  # summary LINES NAME
  grep -vE "Warning|warn\(|_pytree" | tail -"$1" | tee "$OUT/$2"
}
# "model steps timeout [extra bench_latency flags]" per line; override with BENCH_SPECS.
# Set but empty (BENCH_SPECS=) runs none.
BENCH_SPECS="${BENCH_SPECS-flux-dev 28 270
sdxl 30 170}"
while read -r model steps limit extra; do
  [ -n "$model" ] || continue
  tag="$model${extra:+-$(echo "$extra" | tr -c 'a-z0-9' '-' | sed 's/-*$//')}"
  # shellcheck disable=SC2086  # extra holds several flags on purpose
  timeout "$limit" python3 -m warmup.bench_latency --mode synthetic --model "$model" --device cuda \
    --size 1024 --steps "$steps" --runs 3 --cache-phases --cache-dir /tmp/bench-cache $extra \
    --out "$OUT/latency-synthetic-$tag-1024.json" 2>&1 | summary 30 "bench-$tag.txt"
done <<< "$BENCH_SPECS"
# Optional: "model repeat timeout [extra bench_coldstart flags]" per line, the synthetic cold
# start to the ready webhook by stage (warmup/bench_coldstart.py; weights written once to
# /tmp/visgate-volume); e.g. COLDSTART_SPECS='sdxl 2 330 --compile aot'.
while read -r model repeat limit extra; do
  [ -n "$model" ] || continue
  tag="$model${extra:+-$(echo "$extra" | tr -c 'a-z0-9' '-' | sed 's/-*$//')}"
  # shellcheck disable=SC2086  # extra holds several flags on purpose
  timeout "$limit" python3 -m warmup.bench_coldstart --mode synthetic --model "$model" --device cuda \
    --volume /tmp/visgate-volume --repeat "$repeat" --out "$OUT/coldstart-synthetic-$tag.json" $extra 2>&1 \
    | summary 20 "coldstart-$tag.txt"
done <<< "${COLDSTART_SPECS:-}"
# Optional: "model size new-shape steps timeout" per line, the unwarmed-shape strategies
# (warmup/bench_shapes.py); e.g. SHAPES_SPECS='sdxl 1024 832x1216 30 300'.
while read -r model size new steps limit; do
  [ -n "$model" ] || continue
  timeout "$limit" python3 -m warmup.bench_shapes --mode synthetic --model "$model" --device cuda \
    --size "$size" --new "$new" --steps "$steps" --runs 3 --cache-dir /tmp/bench-cache \
    --out "$OUT/shapes-synthetic-$model-$size.json" 2>&1 | summary 12 "shapes-$model.txt"
done <<< "${SHAPES_SPECS:-}"
if [ "${GPU_TESTS:-1}" = "1" ]; then
  timeout "${GPU_TESTS_TIMEOUT:-140}" python3 -m pytest tests/gpu -q -p no:cacheprovider --noconftest \
    -o addopts="" --disable-warnings --tb=short -rfE ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} 2>&1 | tee "$OUT/gpu-tests.txt" | tail -40
fi
