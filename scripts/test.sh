#!/usr/bin/env bash
# Install all three layers (runtime, train, dev), make sure Redis and PostgreSQL answer, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh train dev

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {
  for _ in $(seq 1 60); do answers "$1" && return 0; sleep 0.5; done
  echo "$2 did not start on 127.0.0.1:$1" >&2; return 1
}
apt_ready=0
need_pkg() {
  command -v "$1" >/dev/null 2>&1 && return 0
  [ "$apt_ready" = 1 ] || { apt-get update -qq; apt_ready=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

if ! answers 6379; then
  need_pkg redis-server redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for 6379 Redis
fi
if ! answers 5432; then
  need_pkg pg_ctlcluster postgresql
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  wait_for 5432 PostgreSQL
fi

# tests/fleet: Sentinel failover (Debian's redis-sentinel) and packet loss inside network namespaces (nft).
need_pkg redis-sentinel redis-sentinel
need_pkg nft nftables
# tests/fleet: replicas behind Debian's HAProxy (scripts/fleet.sh).
need_pkg haproxy haproxy

# The dashboard test drives Debian's headless Chromium (Playwright's own browser downloads are not used).
need_pkg chromium chromium || echo "could not install chromium: tests/test_dashboard.py will fail under CI" >&2

# tests/test_real_clients.py drives the real Claude Code and Codex CLIs (pinned in tests/clients/package-lock.json).
need_pkg node nodejs
need_pkg npm npm
# npm ci rebuilds node_modules from scratch (~25 s): only when the lock changed since the last install.
clients_stamp="$(sha256sum tests/clients/package-lock.json | cut -d' ' -f1)"
if [ "$(cat tests/clients/node_modules/.tiergate-lock 2>/dev/null)" != "$clients_stamp" ]; then
  npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error
  echo "$clients_stamp" > tests/clients/node_modules/.tiergate-lock
fi

export LITELLM_LOCAL_MODEL_COST_MAP=True
# Some images set PYTHONDONTWRITEBYTECODE=1 (this machine's does): then every interpreter the suite starts (the xdist
# workers, ~150 servers and CLIs) compiles the project from source again, and pytest re-rewrites every test module in
# every worker: ~0.3 s per server and ~8 s per worker of CPU. Bytecode is cached for this run, written once up front.
unset PYTHONDONTWRITEBYTECODE
.venv/bin/python -m compileall -q -j 0 proxy pipeline router upstream metering text wire classifiers kvcache simulator
# Four pytest-xdist workers on two cores: most of a test's wall time is waiting on servers, sockets and Redis, not
# CPU. Tests that cannot share the machine with others (network namespaces, fixed fleets) carry an xdist_group mark
# and run one after another on one worker. TIERGATE_TEST_WORKERS=0 runs everything in this process.
exec .venv/bin/python -m pytest -q -n "${TIERGATE_TEST_WORKERS:-4}" --dist loadgroup "$@"
