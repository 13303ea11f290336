#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the given extras; idempotent, and quick
# when pyproject.toml and setup.py have not changed. Usage: scripts/setup_env.sh [EXTRAS]   e.g. scripts/setup_env.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-${extras:-base}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "[setup] installing deepseek-inspector${extras:+[$extras]} into .venv (first time: a minute or two)"
  pip_quiet() {
    # pip warns about every configured local index that lacks a package; those lines are noise.
    .venv/bin/python -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
  }
  pip_quiet install -q --upgrade pip
  # The torch this project is tested with, pinned here only (pyproject.toml declares a range): the
  # CPU build a local wheel cache holds; any other version downloads GBs of CUDA packages.
  pip_quiet install -q -e ".${extras:+[$extras]}" "torch==${TORCH_VERSION:-2.13.0}"
  touch "$stamp"
fi
