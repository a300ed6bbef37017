#!/usr/bin/env bash
# Create .venv and install tiergate from the hash-pinned lock file (pip --require-hashes: a tampered or
# substituted package fails the install). Re-runs are cheap: nothing is reinstalled unless the lock changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "tiergate needs Python >= 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.tiergate-installed 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --disable-pip-version-check --no-input -q --require-hashes -r requirements.lock
  .venv/bin/python -m pip install --disable-pip-version-check --no-input -q --no-deps --no-build-isolation -e .
  echo "$want" > .venv/.tiergate-installed
fi
