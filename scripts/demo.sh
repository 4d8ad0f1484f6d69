#!/usr/bin/env bash
# The demo: a real image from the real worker entry point on a built-in tiny model, CPU, no
# network. Sets up the environment first. Arguments go to scripts/demo.py (--prompt, --model, ...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
exec python "$ROOT/scripts/demo.py" "$@"
