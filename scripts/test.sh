#!/usr/bin/env bash
# Set up everything the test suite needs (venv, packages, Debian packages) and run it.
# Extra arguments go to pytest, e.g. scripts/test.sh -k store
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_apt.sh scripts/apt-packages.txt
scripts/setup_env.sh dev
[ -x .venv/bin/python ] || { echo "setup failed: no .venv" >&2; exit 1; }
exec .venv/bin/python -m pytest "$@"
