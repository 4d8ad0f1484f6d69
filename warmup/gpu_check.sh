#!/usr/bin/env bash
# Every GPU check in one prepared run on the lent GPU machine (see BENCHMARKS.md):
#   1. synthetic FLUX.1-dev and SDXL at full size: eager vs tuned, per-stage split,
#      compile cold vs cache hit in a fresh process, PSNR tuned vs eager;
#   2. optionally (COLDSTART_SPECS) the cold start to ready by stage, and (SHAPES_SPECS) the
#      strategies for a shape warmup did not compile;
#   3. the GPU test tier (tests/gpu) through the real boot path (GPU_TESTS=0 skips it).
# Expects wheels missing on that machine (diffusers, torchao, fpng) in .whl/ and writes to $OUT.
set -uo pipefail
OUT="${OUT:-out/gpu}"; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
python3 -c "import runpod; print('runpod', runpod.__version__)" 2>&1 | tail -1  # the worker entrypoint needs it
# "model steps timeout [extra bench_latency flags]" per line; override with BENCH_SPECS.
BENCH_SPECS="${BENCH_SPECS:-flux-dev 28 270
sdxl 30 170}"
while read -r model steps limit extra; do
  [ -n "$model" ] || continue
  tag="$model${extra:+-$(echo "$extra" | tr -c 'a-z0-9' '-' | sed 's/-*$//')}"
  # shellcheck disable=SC2086  # extra holds several flags on purpose
  timeout "$limit" python3 -m warmup.bench_latency --mode synthetic --model "$model" --device cuda \
    --size 1024 --steps "$steps" --runs 3 --cache-phases --cache-dir /tmp/bench-cache $extra \
    --out "$OUT/latency-synthetic-$tag-1024.json" 2>&1 | grep -vE "Warning|warn\(|_pytree" | tail -30 | tee "$OUT/bench-$tag.txt"
done <<< "$BENCH_SPECS"
# Optional: "model repeat timeout" per line, the synthetic cold start to the ready webhook by
# stage (warmup/bench_coldstart.py; weights written once to /tmp/visgate-volume);
# e.g. COLDSTART_SPECS='sdxl 2 330'.
while read -r model repeat limit; do
  [ -n "$model" ] || continue
  timeout "$limit" python3 -m warmup.bench_coldstart --mode synthetic --model "$model" --device cuda \
    --volume /tmp/visgate-volume --repeat "$repeat" --out "$OUT/coldstart-synthetic-$model.json" 2>&1 \
    | grep -vE "Warning|warn\(|_pytree" | tail -20 | tee "$OUT/coldstart-$model.txt"
done <<< "${COLDSTART_SPECS:-}"
# Optional: "model size new-shape steps timeout" per line, the unwarmed-shape strategies
# (warmup/bench_shapes.py); e.g. SHAPES_SPECS='sdxl 1024 832x1216 30 300'.
while read -r model size new steps limit; do
  [ -n "$model" ] || continue
  timeout "$limit" python3 -m warmup.bench_shapes --mode synthetic --model "$model" --device cuda \
    --size "$size" --new "$new" --steps "$steps" --runs 3 --cache-dir /tmp/bench-cache \
    --out "$OUT/shapes-synthetic-$model-$size.json" 2>&1 | grep -vE "Warning|warn\(|_pytree" | tail -12 | tee "$OUT/shapes-$model.txt"
done <<< "${SHAPES_SPECS:-}"
if [ "${GPU_TESTS:-1}" = "1" ]; then
  timeout "${GPU_TESTS_TIMEOUT:-140}" python3 -m pytest tests/gpu -q -p no:cacheprovider --noconftest \
    -o addopts="" 2>&1 | tail -25 | tee "$OUT/gpu-tests.txt"
fi
