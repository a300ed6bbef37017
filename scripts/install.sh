#!/usr/bin/env bash
# Create .venv and install tiergate from the hash-pinned locks (pip --require-hashes: a tampered or substituted
# package fails the install). `bash scripts/install.sh` installs the runtime only (requirements.lock: what
# `tiergate serve` needs for OpenAI-wire and simulated deployments); name layers to add them:
#   providers  litellm, for deployments whose wire format is not OpenAI's (anthropic/, bedrock/, vertex_ai/, ...)
#   train      `tiergate train` / `calibrate` (scikit-learn, skl2onnx)
#   dev        the test suite and its tools (litellm included)
# e.g. `bash scripts/install.sh providers`, `bash scripts/install.sh train dev` (requirements-<layer>.lock).
# Re-runs are cheap: a layer is reinstalled only when its lock or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "tiergate needs Python >= 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
lock_of() { case "$1" in runtime) echo requirements.lock ;; providers|train|dev) echo "requirements-$1.lock" ;;
  *) echo "scripts/install.sh: unknown layer '$1' (known: providers, train, dev)" >&2; exit 2 ;; esac; }
# The editable install maps each top-level package it saw, so a new package (a new */__init__.py) reinstalls too.
stamp_of() { echo "$1 $( (cat "$(lock_of "$1")" pyproject.toml; ls -d */__init__.py) | sha256sum | cut -d' ' -f1)"; }
stamp=.venv/.tiergate-installed  # one "layer sha256" line per installed layer
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

layers=(runtime "$@") locks=() stale=0
for layer in "${layers[@]}"; do
  locks+=(-r "$(lock_of "$layer")")
  grep -qxF "$(stamp_of "$layer")" "$stamp" 2>/dev/null || stale=1
done
if [ "$stale" = 1 ]; then
  .venv/bin/python -m pip install --disable-pip-version-check --no-input -q --require-hashes "${locks[@]}"
  .venv/bin/python -m pip install --disable-pip-version-check --no-input -q --no-deps --no-build-isolation -e .
  { grep -vE "^($(IFS='|'; echo "${layers[*]}")) " "$stamp" 2>/dev/null || true
    for layer in "${layers[@]}"; do stamp_of "$layer"; done; } > "$stamp.new"
  mv "$stamp.new" "$stamp"
fi
