#!/usr/bin/env bash
# Regenerate docs/dashboard.png on request: the dashboard test (demo proxy, traffic, headless Chromium) saves its
# screenshot there instead of in its temp dir. Test runs never rewrite it. Needs Debian's chromium (or
# TIERGATE_TEST_CHROMIUM=/path/to/chromium) and the dev layer (installed here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
mkdir -p docs
export LITELLM_LOCAL_MODEL_COST_MAP=True TIERGATE_SCREENSHOT="$PWD/docs/dashboard.png"
.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_dashboard.py -k test_dashboard_shows_the_spend_report "$@"
echo "wrote docs/dashboard.png"
