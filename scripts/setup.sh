#!/usr/bin/env bash
# Create (once) the project's virtual environment and install everything it needs.
# Sourced by demo.sh and test.sh, so each README command does its own set-up on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VISGATE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.requirements.sha256"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch is pinned to the CPU build for development and CI: an open range would pull a
  # multi-GB CUDA build. The Docker image keeps its base image's torch instead.
  # VISGATE_TORCH_INDEX: an index to take torch alone from (GitHub's workflow: torch's CPU builds,
  # where the default index has only CUDA ones); everything else comes from the default index.
  if [ -n "${VISGATE_TORCH_INDEX:-}" ]; then
    "$VENV/bin/python" -m pip install -q "torch==2.13.0" --index-url "$VISGATE_TORCH_INDEX"
  fi
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
