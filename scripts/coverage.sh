#!/usr/bin/env bash
# The whole test suite under coverage (statement coverage of the product's packages, subprocesses included), then
# the report: `bash scripts/coverage.sh` after `bash scripts/test.sh` has installed everything once. Extra arguments
# go to pytest. Configuration: [tool.coverage.*] in pyproject.toml; data and the report in test-artifacts/coverage/.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf test-artifacts/coverage && mkdir -p test-artifacts/coverage
export LITELLM_LOCAL_MODEL_COST_MAP=True
export COVERAGE_FILE="$PWD/test-artifacts/coverage/.coverage"  # absolute: servers some tests start run elsewhere
status=0
.venv/bin/python -m coverage run -m pytest -q -n 4 --dist loadgroup "$@" || status=$?
.venv/bin/python -m coverage combine -q
.venv/bin/python -m coverage report --format=total > test-artifacts/coverage/total.txt
.venv/bin/python -m coverage report > test-artifacts/coverage/report.txt
tail -1 test-artifacts/coverage/report.txt
echo "statement coverage: $(cat test-artifacts/coverage/total.txt)% (per file: test-artifacts/coverage/report.txt)"
exit "$status"
