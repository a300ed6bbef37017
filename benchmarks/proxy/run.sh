#!/usr/bin/env bash
# Proxy-overhead benchmark: tiergate vs LiteLLM Proxy against `tiergate mock-upstream`, on 127.0.0.1 only.
#
#   benchmarks/proxy/run.sh --setup          # once: apt wrk, py-spy into .venv, LiteLLM Proxy venv outside the repo
#   benchmarks/proxy/run.sh                  # the side-by-side run (~6 min), writes benchmarks/out/proxy/results.json
#   benchmarks/proxy/run.sh --targets tiergate --soak 100000 --streams 0 --startups 1   # RSS-flatness check only
#
# Any other flags go to bench.py (see `bench.py --help`). Ports: mock 18400, tiergate 4400, LiteLLM 4100.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
LITELLM_VENV="${LITELLM_VENV:-/tmp/litellm-venv}"
LITELLM_VERSION="1.110.2"   # never 1.82.7 / 1.82.8 (the March 2026 credential stealer)

setup() {
  command -v wrk >/dev/null || { apt-get update && apt-get install -y wrk; }
  "$REPO/.venv/bin/python" -m pip install -q py-spy
  if [ ! -x "$LITELLM_VENV/bin/litellm" ]; then
    python3.11 -m venv "$LITELLM_VENV"
    # `litellm[proxy]==1.110.2` pins litellm-proxy / litellm-proxy-extras / litellm-enterprise companions that the
    # package index here does not carry; the proxy server itself ships inside the litellm wheel, so install litellm
    # plus the rest of its [proxy] extra (read from the wheel's own metadata), minus those three.
    if ! "$LITELLM_VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION"; then
      tmp="$(mktemp -d)"
      "$LITELLM_VENV/bin/pip" download -q --no-deps -d "$tmp" "litellm==$LITELLM_VERSION"
      unzip -p "$tmp"/litellm-*.whl "litellm-$LITELLM_VERSION.dist-info/METADATA" \
        | sed -n "s/^Requires-Dist: \(.*\) ; .*extra == 'proxy'.*/\1/p" \
        | grep -vE '^(litellm-proxy|litellm-proxy-extras|litellm-enterprise)[=<> ]' > "$tmp/proxy-reqs.txt"
      "$LITELLM_VENV/bin/pip" install -q "litellm==$LITELLM_VERSION" -r "$tmp/proxy-reqs.txt"
      rm -rf "$tmp"
    fi
  fi
}

if [ "${1:-}" = "--setup" ]; then setup; exit 0; fi
export LITELLM_VENV PATH="$REPO/.venv/bin:$PATH"
exec "$REPO/.venv/bin/python" "$HERE/bench.py" "$@"
