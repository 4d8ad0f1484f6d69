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
TORCH="$(sed -n 's|^FROM pytorch/pytorch:\([0-9][0-9.]*\)-.*|\1|p' "$ROOT/Dockerfile" | head -n 1)"
TORCHAO="$(sed -n 's|^ARG TORCHAO_VERSION=||p' "$ROOT/Dockerfile" | head -n 1)"
if [ -z "$TORCH" ] || [ -z "$TORCHAO" ]; then
  echo "cannot read the base image's torch or TORCHAO_VERSION from the Dockerfile" >&2
  exit 2
fi
# The README's test command, in an environment of its own with the image's versions (exported:
# a test that runs a project script gets the same environment).
export VISGATE_VENV="${VISGATE_IMAGE_VENV:-$ROOT/.venv-image}" VISGATE_TORCH_VERSION="$TORCH" \
  VISGATE_TORCHAO_VERSION="$TORCHAO"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
python -c "import torch, torchao; print('torch', torch.__version__, 'torchao', torchao.__version__)"
exec bash "$ROOT/scripts/test.sh" -p no:cacheprovider "$@"
