#!/usr/bin/env bash
# Rewrite the four hash-pinned locks from pyproject.toml, all cut from ONE resolution so a package shared by two
# layers has the same version and hashes in each:
#   requirements.lock            runtime (scripts/install.sh, the Dockerfile)
#   requirements-providers.lock  runtime + the `providers` extra (litellm, for non-OpenAI-wire deployments)
#   requirements-train.lock      runtime + the `train` extra
#   requirements-dev.lock        runtime + the `dev` extra, which takes `providers` in (scripts/test.sh)
# Versions already pinned are preferred (only new or changed dependencies move), so adding a dependency is:
#   edit pyproject.toml (dependencies or an extra), run `bash scripts/lock.sh`, commit pyproject.toml and the locks.
# Extra arguments go to the resolution: `--upgrade` (everything to the newest allowed), `-P NAME` (one package).
# Needs uv: .venv/bin/uv after `bash scripts/test.sh` (it is a dev dependency), or any uv on PATH, or UV=/path/to/uv.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v .venv/bin/uv || command -v uv || true)}
[ -n "$UV" ] || { echo "scripts/lock.sh needs uv: run bash scripts/test.sh once (it installs it), or pip install uv" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pins() { grep -hE '^[A-Za-z0-9]' "$@" 2>/dev/null | cut -d' ' -f1 | sort -u; }  # "name==version" lines
compile() {  # compile OUTPUT [uv args...]
  local out=$1; shift
  "$UV" pip compile -q pyproject.toml requirements-build.in "$@" --generate-hashes --python-version 3.11 \
    --custom-compile-command "bash scripts/lock.sh" -o "$out"
}
# One resolution of every extra; uv prefers the versions already in its output file, i.e. today's pins.
pins requirements*.lock > "$tmp/all.lock"
compile "$tmp/all.lock" --all-extras "$@"
pins "$tmp/all.lock" > "$tmp/resolved"
# Each layer is that resolution cut down to what the layer needs (-c: nothing may move).
compile requirements.lock -c "$tmp/resolved"
compile requirements-providers.lock --extra providers -c "$tmp/resolved"
compile requirements-train.lock --extra train -c "$tmp/resolved"
compile requirements-dev.lock --extra dev -c "$tmp/resolved"
locks=(requirements.lock requirements-providers.lock requirements-train.lock requirements-dev.lock)
sed -i "\\|^    #   -c $tmp/resolved\$|d" "${locks[@]}"  # temp path: noise
echo "wrote ${locks[*]} ($(wc -l < "$tmp/resolved") packages in all)"
