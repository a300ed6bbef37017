#!/usr/bin/env bash
# Install, then serve the demo policy on http://127.0.0.1:4000 (simulated providers: no keys, no services).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p var
exec .venv/bin/tiergate serve --config configs/demo.yaml --host 127.0.0.1 --port "${PORT:-4000}" "$@"
