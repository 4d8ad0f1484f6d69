#!/usr/bin/env bash
# The test suite: sets up the environment, then runs pytest (extra arguments are passed on).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
python -m pytest "$@"
