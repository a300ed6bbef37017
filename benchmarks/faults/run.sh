#!/usr/bin/env bash
# Long run of the fault suite (tests/test_faults.py): every scenario repeats its fault, or runs, SCALE times over
# (kill -9 2xSCALE workers, SCALE Redis and PostgreSQL restarts, SCALE-times-longer upstream faults and disconnects).
# Needs redis-server and PostgreSQL's binaries (the suite starts private instances; it never touches shared ones).
# Usage: benchmarks/faults/run.sh [SCALE] [pytest args...]   SCALE defaults to 10; 1 is the run in the test command.
# Prints the table (test | requests | proxy-caused errors | records lost | overshoot), also in test-artifacts/faults.md.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$REPO"
export TIERGATE_FAULTS_SCALE="${1:-10}" LITELLM_LOCAL_MODEL_COST_MAP=True CI=true
"$REPO/.venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_faults.py "${@:2}"
status=$?
cat test-artifacts/faults.md
exit $status
