#!/usr/bin/env bash
# The test suite against the Docker image's torch and torchao instead of development's.
#
# Development and CI pin torch 2.13.0 (a CPU build); the image keeps its base image's torch
# (the `FROM pytorch/pytorch:X.Y.Z-...` line of the Dockerfile) and installs TORCHAO_VERSION.
# Code that leans on torch internals (torch.export, AOTInductor packages, the compile caches,
# torchao's tensor subclasses) can work on one and not the other; this runs every test on the
# image's versions, on the CPU, in a virtual environment of its own. The default index holds only
# CUDA builds of that torch for Linux (about 4 GB with their CUDA libraries, which run on a CPU
# too), so .ci/run leaves it out; run it before moving the base image or TORCHAO_VERSION and after
# changing code that touches torch internals. GitHub's tests.yml runs it on every push, taking
# torch's CPU build from VISGATE_TORCH_INDEX (a few hundred MB).
#
#   bash scripts/test_image_torch.sh                          # the whole suite (~10 min here)
#   bash scripts/test_image_torch.sh tests/integration/test_aot.py
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VISGATE_IMAGE_VENV:-$ROOT/.venv-image}"
PYTHON="${PYTHON:-python3}"
TORCH="$(sed -n 's|^FROM pytorch/pytorch:\([0-9][0-9.]*\)-.*|\1|p' "$ROOT/Dockerfile" | head -n 1)"
TORCHAO="$(sed -n 's|^ARG TORCHAO_VERSION=||p' "$ROOT/Dockerfile" | head -n 1)"
if [ -z "$TORCH" ] || [ -z "$TORCHAO" ]; then
  echo "cannot read the base image's torch or TORCHAO_VERSION from the Dockerfile" >&2
  exit 2
fi
STAMP="$VENV/.requirements.sha256"
want="$(printf '%s %s\n' "$TORCH" "$TORCHAO" | cat - "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" \
  | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # requirements-dev.txt pins development's torchao; the image's release replaces it.
  dev="$(mktemp)"
  trap 'rm -f "$dev"' EXIT
  grep -v '^torchao==' "$ROOT/requirements-dev.txt" > "$dev"
  # VISGATE_TORCH_INDEX: as in scripts/setup.sh, an index to take torch alone from.
  if [ -n "${VISGATE_TORCH_INDEX:-}" ]; then
    "$VENV/bin/python" -m pip install -q "torch==$TORCH" --index-url "$VISGATE_TORCH_INDEX"
  fi
  "$VENV/bin/python" -m pip install -q "torch==$TORCH" "torchao==$TORCHAO" \
    -r "$ROOT/requirements.txt" -r "$dev"
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
python -c "import torch, torchao; print('torch', torch.__version__, 'torchao', torchao.__version__)"
python -m pytest -p no:cacheprovider "$@"
