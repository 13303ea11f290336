#!/usr/bin/env bash
# Set up the venv if needed, then run the demo: train the built-in engine with the Inspector on.
# Extra arguments go to `inspector demo`, e.g. scripts/demo.sh --steps 100
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
[ -x .venv/bin/python ] || { echo "setup failed: no .venv" >&2; exit 1; }
exec .venv/bin/inspector demo "$@"
