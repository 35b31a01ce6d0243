#!/usr/bin/env bash
# Set everything up with the test extra (scripts/setup.sh test) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then  # pytest: no tests collected (e.g. a -k that selects nothing) is not a failure
  echo "pytest collected no tests"
  exit 0
fi
exit "$rc"
