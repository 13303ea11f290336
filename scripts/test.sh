#!/usr/bin/env bash
# Set up everything the test suite needs (venv, packages, Debian packages) and run it.
# Extra arguments go to every pytest run, e.g. scripts/test.sh -k store -x
#
# Three pytest processes on purpose: the browser tests' sync Playwright keeps an asyncio loop on
# the main thread, which breaks Textual's async tests in the same process.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install_apt.sh scripts/apt-packages.txt || exit 1
scripts/setup_env.sh dev || exit 1
[ -x .venv/bin/python ] || { echo "setup failed: no .venv" >&2; exit 1; }
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
failed=0
run_suite() {   # name, then pytest arguments
  local name=$1; shift
  echo "=== $name"
  .venv/bin/python -m pytest "$@" --junitxml="$reports/$name.xml"
  local rc=$?
  # 5 = this selection holds no test (e.g. -k store matches nothing in the UI suites)
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then failed=1; fi
}
run_suite core tests --ignore=tests/dash_app --ignore=tests/tui "$@"
run_suite dashboard tests/dash_app "$@"
run_suite tui tests/tui "$@"
.venv/bin/python scripts/junit_total.py "$reports"/*.xml || failed=1
exit $failed
