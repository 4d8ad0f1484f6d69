#!/usr/bin/env bash
# Create (once) the project's virtual environment and install everything it needs.
# Sourced by demo.sh and test.sh, so each README command does its own set-up on a fresh machine.
#
#   PYTHON=python3.11 bash scripts/test.sh     # the interpreter to build the venv with (>= 3.11)
#   VISGATE_VENV=/path/to/venv                 # where the venv lives (default: .venv)
#   VISGATE_SETUP_CHECK=1                      # check and say what would be done; change nothing
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VISGATE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# The pinned diffusers and numpy need Python 3.11 or newer (the Docker image has 3.11): say so
# before building anything, rather than leave pip to fail on the first pin.
PY_VERSION_CODE='import sys; print("%d.%d.%d" % sys.version_info[:3])'
py_version="$("$PYTHON" -c "$PY_VERSION_CODE" 2>/dev/null || true)"
IFS=. read -r py_major py_minor _ <<< "${py_version:-0.0.0}"
if [ -z "$py_version" ] || [ "$py_major" -lt 3 ] || { [ "$py_major" -eq 3 ] && [ "$py_minor" -lt 11 ]; }; then
  {
    if [ -z "$py_version" ]; then
      echo "setup.sh: error: cannot run '$PYTHON' (PYTHON): this project needs Python 3.11 or newer."
    else
      echo "setup.sh: error: '$PYTHON' is Python $py_version; this project needs Python 3.11 or newer"
      echo "  (its pinned diffusers and numpy do not install on older Pythons)."
    fi
    echo "  Point the scripts at another interpreter with PYTHON, e.g."
    echo "    PYTHON=python3.11 bash scripts/test.sh"
    echo "  (and VISGATE_VENV=/some/dir for a virtual environment elsewhere than $ROOT/.venv)."
  } >&2
  # shellcheck disable=SC2317  # exit: when run rather than sourced
  return 1 2>/dev/null || exit 1
fi
# torch is pinned for development and CI: an open range would pull the newest CUDA build. The pin
# alone does not choose the build: from the default index on Linux x86_64 torch==X.Y.Z is a CUDA
# build of several GB (it runs on the CPU too); VISGATE_TORCH_INDEX (below) picks torch's CPU
# build instead. The Docker image keeps its base image's torch; scripts/test_image_torch.sh names
# that torch and the image's torchao here (VISGATE_TORCHAO_VERSION replaces requirements-dev.txt's
# torchao pin).
TORCH_VERSION="${VISGATE_TORCH_VERSION:-2.13.0}"
TORCHAO_VERSION="${VISGATE_TORCHAO_VERSION:-}"
STAMP="$VENV/.requirements.sha256"
# The stamp names the interpreter too: packages built for another Python are reinstalled.
want="$({ echo "python $py_version torch $TORCH_VERSION torchao $TORCHAO_VERSION"; \
  cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt"; } | sha256sum | cut -d' ' -f1)"
# A venv made by another Python (an older one, or one since removed) is made again from PYTHON.
venv_version="$("$VENV/bin/python" -c "$PY_VERSION_CODE" 2>/dev/null || true)"
if [ ! -x "$VENV/bin/python" ]; then
  venv_plan="create"
elif [ "$venv_version" != "$py_version" ]; then
  venv_plan="rebuild (made by Python ${venv_version:-that no longer runs}, PYTHON is $py_version)"
else
  venv_plan="keep"
fi
if [ "$venv_plan" = keep ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  packages_plan="up to date"
else
  packages_plan="install"
fi
if [ -n "${VISGATE_SETUP_CHECK:-}" ]; then
  echo "setup.sh: Python $py_version ($PYTHON); venv $VENV: $venv_plan; packages: $packages_plan"
  # shellcheck disable=SC2317
  return 0 2>/dev/null || exit 0
fi
if [ "$venv_plan" != keep ]; then
  [ "$venv_plan" = create ] || echo "setup.sh: $VENV: $venv_plan: making it again" >&2
  "$PYTHON" -m venv --clear "$VENV"
fi
if [ "$packages_plan" = install ]; then
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
