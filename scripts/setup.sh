#!/usr/bin/env bash
# Create (once) the project's virtual environment and install everything it needs.
# Sourced by demo.sh and test.sh, so each README command does its own set-up on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VISGATE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# torch is pinned to the CPU build for development and CI: an open range would pull a multi-GB
# CUDA build. The Docker image keeps its base image's torch instead; scripts/test_image_torch.sh
# names that torch and the image's torchao here (VISGATE_TORCHAO_VERSION replaces
# requirements-dev.txt's torchao pin).
TORCH_VERSION="${VISGATE_TORCH_VERSION:-2.13.0}"
TORCHAO_VERSION="${VISGATE_TORCHAO_VERSION:-}"
STAMP="$VENV/.requirements.sha256"
want="$({ echo "torch $TORCH_VERSION torchao $TORCHAO_VERSION"; cat "$ROOT/requirements.txt" \
  "$ROOT/requirements-dev.txt"; } | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # VISGATE_TORCH_INDEX: an index to take torch alone from (GitHub's workflow: torch's CPU builds,
  # where the default index has only CUDA ones); everything else comes from the default index.
  if [ -n "${VISGATE_TORCH_INDEX:-}" ]; then
    "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" --index-url "$VISGATE_TORCH_INDEX"
  fi
  if [ -n "$TORCHAO_VERSION" ]; then
    "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "torchao==$TORCHAO_VERSION" \
      -r "$ROOT/requirements.txt" -r <(grep -v '^torchao==' "$ROOT/requirements-dev.txt")
  else
    "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" -r "$ROOT/requirements.txt" \
      -r "$ROOT/requirements-dev.txt"
  fi
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
