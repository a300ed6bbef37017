#!/usr/bin/env bash
# Upstream client overhead: litellm.acompletion vs pooled aiohttp / httpx / openai SDK, sequential, against the mock.
# The client is pinned to core 0, the mock to core 1. Writes benchmarks/out/upstream/results.json.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
exec taskset -c 0 "$REPO/.venv/bin/python" "$HERE/bench.py" "$@"
