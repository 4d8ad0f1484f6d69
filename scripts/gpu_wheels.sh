#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (it has torch, transformers, accelerate, but no diffusers,
# torchao, fpng or the runpod SDK, and reaches no package index), downloaded here into .whl/ for
# Python 3.12 / x86_64, then carried with the call (`carry: [".whl"]`) and installed by
# warmup/gpu_check.sh. The runpod SDK and its dependencies are what the worker entrypoint (and so
# warmup/bench_coldstart.py) imports, opentelemetry-api included (fastapi imports it when the
# SDK starts its API server); the versions are the ones requirements.txt and the development
# venv resolve to. About 40 MB in all (the carry limit is 64 MiB with the repo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLATFORMS=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl \
  diffusers==0.42.1 torchao==0.18.0 fpng==0.1.0 lazy_loader==0.6 \
  runpod==1.12.0 aiohttp-retry==2.9.1 backoff==2.2.1 boto3==1.44.8 botocore==1.44.8 \
  s3transfer==0.19.3 jmespath==1.1.0 cryptography==50.0.2 fastapi==0.165.0 starlette==1.10.0 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  inquirerpy==0.3.4 pfzy==0.3.4 prompt_toolkit==3.0.53 wcwidth==0.9.4 paramiko==5.1.0 \
  bcrypt==5.0.0 PyNaCl==1.6.2 cffi==2.1.1 pycparser==3.12 prettytable==3.18.0 tomli==2.5.0 \
  tomlkit==0.15.2 tqdm-loggable==0.4.1 watchdog==7.1.0 uvicorn==0.54.0 \
  opentelemetry-api==1.45.2
du -sh .whl
