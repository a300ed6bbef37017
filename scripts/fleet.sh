#!/usr/bin/env bash
# A local tiergate fleet as users deploy it: N `tiergate serve` replicas of one policy behind HAProxy, sharing one
# Redis and one PostgreSQL ledger.
#
#   bash scripts/fleet.sh up N      # install what is missing, start N replicas and HAProxy on 127.0.0.1:4400
#   bash scripts/fleet.sh status    # each replica: port, pid, HAProxy state, sessions, active config sha256
#   bash scripts/fleet.sh restart   # rolling restart: drain in HAProxy, SIGTERM, start, wait healthy; one at a time
#   bash scripts/fleet.sh down      # stop everything `up` started (pid files); idempotent
#
# HAProxy: deploy/haproxy/haproxy.cfg (shared with deploy/compose) plus FLEET_RUN_DIR/backend.cfg, the replicas.
#
# Settings (environment):
#   FLEET_CONFIG     policy file, default configs/fleet.yaml (PostgreSQL database tiergate_fleet, Redis db 3)
#   FLEET_PORT       HAProxy's port, default 4400
#   FLEET_BASE_PORT  first replica port, default FLEET_PORT + 1; busy ports are skipped
#   FLEET_WORKERS    workers per replica, default 1
#   FLEET_GRACE_S    a replica's --shutdown-grace-s (SIGTERM drains in-flight requests and streams), default 30
#   FLEET_RUN_DIR    pid files, logs, backend.cfg and each replica's working directory, default var/fleet
#   FLEET_ADMIN_KEY  admin key `status` shows reload errors with, default the demo's sk-demo-admin
#   FLEET_INSTALL    1 (default): `up` runs scripts/install.sh first; 0: the caller has installed tiergate (e.g. the
#                    test suite, which must not reinstall the .venv it runs from); HAProxy and curl are checked anyway
#
# Each replica runs in its own directory under FLEET_RUN_DIR (its spool lives there, as a pod's emptyDir) and reads
# the policy through its own symlink to FLEET_CONFIG (as a pod reads its mounted ConfigMap): an edit of FLEET_CONFIG
# reaches every replica; replacing one replica's link gives that replica alone a different file.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$(realpath -m "${FLEET_CONFIG:-$ROOT/configs/fleet.yaml}")"
PORT="${FLEET_PORT:-4400}"
BASE_PORT="${FLEET_BASE_PORT:-$((PORT + 1))}"
WORKERS="${FLEET_WORKERS:-1}"
GRACE_S="${FLEET_GRACE_S:-30}"
RUN="$(realpath -m "${FLEET_RUN_DIR:-$ROOT/var/fleet}")"
PY="$ROOT/.venv/bin/python"
ADMIN_KEY="${FLEET_ADMIN_KEY:-sk-demo-admin}"
INSTALL="${FLEET_INSTALL:-1}"
SOCK="$RUN/haproxy.sock"
BACKEND=replicas
HAPROXY_CFG="$ROOT/deploy/haproxy/haproxy.cfg"
export TIERGATE_LB_BIND="127.0.0.1:$PORT" HAPROXY_STATS_SOCKET="$SOCK"
export LITELLM_LOCAL_MODEL_COST_MAP=True
# The checkout's packages as they are now, from any working directory (each replica runs in its own): the editable
# install maps only the top-level packages that existed when it ran.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "fleet: $*" >&2; }
die() { say "$*"; exit 1; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The polling loops below read /readyz and process states with bash's /dev/tcp, read and /proc, not with curl,
# cat and grep: a rolling restart polls hundreds of times.
http_ok() {  # http_ok PORT PATH: GET http://127.0.0.1:PORT/PATH answers 200 within 2 s
  (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3 &&
    IFS= read -r -t 2 line <&3 && [[ "$line" == "HTTP/1."?" 200"* ]]) 2>/dev/null
}

apt_ready=0
need_pkg() {  # need_pkg COMMAND PACKAGE: install PACKAGE with apt when COMMAND is missing
  command -v "$1" >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "$1 is missing: install the Debian package $2 (apt-get install $2)"
  [ "$apt_ready" = 1 ] || { apt-get update -qq; apt_ready=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

install() {
  need_pkg haproxy haproxy
  need_pkg curl curl
  [ "$INSTALL" = 0 ] || bash "$ROOT/scripts/install.sh"
}

# ---- shared services ------------------------------------------------------------------------------------------

check_services() {  # the policy is valid, its Redis answers, its PostgreSQL ledger database exists (created when
  # missing; tables are the replicas' job). One interpreter for all three: each start costs ~0.5 s of CPU.
  local rc=0
  "$PY" - "$CONFIG" <<'EOF' || rc=$?
import sys

from proxy.policy_file import load_or_report

policy = load_or_report(sys.argv[1], "fleet.sh")  # as `tiergate check-config`: every issue, with file and line
if policy is None:
    sys.exit(2)
metering = policy.config.metering
try:
    if metering.redis:
        import redis

        redis.Redis.from_url(metering.redis, socket_connect_timeout=3).ping()
    if metering.ledger.startswith(("postgres://", "postgresql://")):
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        name = conninfo_to_dict(metering.ledger)["dbname"]
        with psycopg.connect(make_conninfo(metering.ledger, dbname="postgres"), autocommit=True,
                             connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                print(f"fleet: created PostgreSQL database {name}", file=sys.stderr)
except Exception as exc:  # noqa: BLE001 - what failed is printed; the script says what it means
    print(f"fleet: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(3)
EOF
  case "$rc" in
    0) ;;
    2) die "$CONFIG is not a valid policy" ;;
    *) die "Redis or PostgreSQL named in $CONFIG does not answer" ;;
  esac
}

# ---- HAProxy --------------------------------------------------------------------------------------------------

hap() {  # hap "COMMAND": one command on HAProxy's runtime API (the stats socket); prints the answer
  if command -v socat >/dev/null 2>&1; then  # ~5 ms; a Python interpreter takes ~50 ms of CPU
    printf '%s\n' "$1" | socat -t 5 - "UNIX-CONNECT:$SOCK"
    return
  fi
  "$PY" - "$SOCK" "$1" <<'EOF'
import socket, sys
with socket.socket(socket.AF_UNIX) as s:
    s.connect(sys.argv[1])
    s.sendall(sys.argv[2].encode() + b"\n")
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
sys.stdout.write(b"".join(chunks).decode())
EOF
}

server_field() {  # server_field NAME FIELD [STATS]: one column (status, scur, ...) of `show stat` for one server,
  # from STATS (an earlier answer) or asked now
  { if [ $# -gt 2 ]; then printf '%s\n' "$3"; else hap "show stat"; fi; } |
    awk -F, -v be="$BACKEND" -v sv="$1" -v field="$2" '
      NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
      $1 == be && $2 == sv { print $col[field] }'
}

write_backend_cfg() {  # write_backend_cfg PORT... : the server list; the rest is deploy/haproxy/haproxy.cfg
  local n=0 port
  {
    echo "# Written by scripts/fleet.sh up (rewritten each time); shared settings: deploy/haproxy/haproxy.cfg"
    echo "backend $BACKEND"
    for port in "$@"; do
      n=$((n + 1))
      echo "    server r$n 127.0.0.1:$port"
    done
  } > "$RUN/backend.cfg"
  haproxy -c -q -f "$HAPROXY_CFG" -f "$RUN/backend.cfg" || die "HAProxy rejected $HAPROXY_CFG with $RUN/backend.cfg"
}

start_haproxy() {
  local i
  (exec setsid haproxy -db -f "$HAPROXY_CFG" -f "$RUN/backend.cfg" \
    >> "$RUN/haproxy.log" 2>&1 < /dev/null) &
  echo $! > "$RUN/haproxy.pid"
  for ((i = 0; i < 100; i++)); do
    [ -S "$SOCK" ] && answers "$PORT" && return 0
    started "$RUN/haproxy.pid" || break
    sleep 0.1
  done
  die "HAProxy did not start on 127.0.0.1:$PORT (see $RUN/haproxy.log)"
}

# ---- replicas -------------------------------------------------------------------------------------------------

running() {  # running PID: the process exists and has not exited. An exited process whose parent is gone stays a
  # zombie until pid 1 reaps it, which some container inits do only every few seconds: kill -0 still succeeds.
  local stat=""
  { read -r stat < "/proc/$1/stat"; } 2>/dev/null || true
  stat="${stat##*) }"
  [[ -n "$stat" && "${stat%% *}" != [ZX] ]]
}

alive() {  # alive NAME PIDFILE: the pid file names a running process whose command line contains NAME
  local pid="" args=()
  { read -r pid < "$2"; } 2>/dev/null || true
  [ -n "$pid" ] && running "$pid" || return 1
  { mapfile -d '' args < "/proc/$pid/cmdline"; } 2>/dev/null || return 1
  [[ " ${args[*]} " == *"$1"* ]]
}

started() {  # started PIDFILE: the process just started from this script still runs (until it execs its program its
  # command line is this script's: alive NAME would race with it)
  local pid=""
  { read -r pid < "$1"; } 2>/dev/null || true
  [ -n "$pid" ] && running "$pid"
}

start_replica() {  # start_replica DIR: start the replica described by DIR/port, wait until /readyz answers 200
  local dir="$1" port
  port="$(cat "$dir/port")"
  answers "$port" && die "port $port is taken: cannot start $(basename "$dir")"
  # Each replica is its own process tree with its own metrics: never a directory shared through the environment.
  (cd "$dir" && exec env -u PROMETHEUS_MULTIPROC_DIR setsid "$ROOT/.venv/bin/tiergate" serve \
    --config "$dir/policy.yaml" --host 127.0.0.1 --port "$port" --workers "$WORKERS" --shutdown-grace-s "$GRACE_S" \
    >> "$dir/replica.log" 2>&1 < /dev/null) &
  echo $! > "$dir/pid"
}

wait_ready() {  # wait_ready DIR: up to 120 s (several replicas start at once on a small machine)
  local dir="$1" port i
  port="$(cat "$dir/port")"
  for ((i = 0; i < 1200; i++)); do
    http_ok "$port" /readyz && return 0
    started "$dir/pid" || die "$(basename "$dir") exited:
$(tail -n 30 "$dir/replica.log")"
    sleep 0.1
  done
  die "$(basename "$dir") did not become ready on port $port (see $dir/replica.log)"
}

stop_pid() {  # stop_pid NAME PIDFILE SIGNAL GRACE_S: signal, wait up to GRACE_S, then SIGKILL; removes PIDFILE
  local pid i
  if alive "$1" "$2"; then
    read -r pid < "$2" || true
    kill "-$3" "$pid" 2>/dev/null || true
    for ((i = 0; i < $4 * 20; i++)); do running "$pid" || break; sleep 0.05; done
    if running "$pid"; then
      say "$1 (pid $pid) still running after ${4}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$2"
}

replica_dirs() {  # the replicas of the fleet that is up: directories with a port file, in order
  find "$RUN/replicas" -mindepth 2 -maxdepth 2 -name port -printf '%h\n' 2>/dev/null | sort -V
}

# ---- commands -------------------------------------------------------------------------------------------------

up() {
  local n="${1:-}" port ports=() dir i
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "usage: fleet.sh up N (N >= 1 replicas)"
  if alive haproxy "$RUN/haproxy.pid" || [ -n "$(replica_dirs)" ]; then
    say "a fleet is already up in $RUN: stopping it first"
    down
  fi
  answers "$PORT" && die "127.0.0.1:$PORT is taken by another program"
  [ -f "$CONFIG" ] || die "no policy file $CONFIG"
  install
  check_services
  mkdir -p "$RUN/replicas"
  # A failed `up` leaves nothing running behind it.
  trap 'rc=$?; if [ "$rc" != 0 ]; then say "up failed: stopping what it started"; down; fi' EXIT
  port="$BASE_PORT"
  for i in $(seq 1 "$n"); do
    while answers "$port" || [ "$port" = "$PORT" ]; do port=$((port + 1)); done
    dir="$RUN/replicas/r$i"
    mkdir -p "$dir"
    echo "$port" > "$dir/port"
    ln -sfn "$CONFIG" "$dir/policy.yaml"
    ports+=("$port")
    port=$((port + 1))
  done
  for dir in $(replica_dirs); do start_replica "$dir"; done
  for dir in $(replica_dirs); do wait_ready "$dir"; done
  write_backend_cfg "${ports[@]}"
  start_haproxy
  trap - EXIT
  say "up: HAProxy on http://127.0.0.1:$PORT in front of $n replica(s) on ports ${ports[*]} (config $CONFIG)"
}

down() {
  local dir
  # HAProxy first, softly (SIGUSR1: stop listening, finish the sessions it holds), then the replicas, which
  # finish their in-flight requests, flush the ledger and release their leases on SIGTERM.
  stop_pid haproxy "$RUN/haproxy.pid" USR1 30
  for dir in $(replica_dirs); do
    if alive tiergate "$dir/pid"; then kill -TERM "$(cat "$dir/pid")" 2>/dev/null || true; fi
  done
  for dir in $(replica_dirs); do
    stop_pid tiergate "$dir/pid" TERM $((GRACE_S + 15))
    # The directory stays: its spool, if a crash left one, is replayed when a replica starts there again.
    rm -f "$dir/port"
  done
  rm -f "$SOCK"
  say "down"
}

status() {
  # The config column is the sha256 each replica serves; "drift" marks one that does not serve its own file (it
  # rejected it, shown with the reload error, or has not reloaded yet) or whose file is not the fleet's.
  alive haproxy "$RUN/haproxy.pid" || { say "down (no HAProxy in $RUN)"; return 1; }
  local dir name port fleet_sha stats
  fleet_sha="$(sha256sum "$CONFIG" | cut -c1-64)"
  stats="$(hap "show stat")"
  echo "HAProxy http://127.0.0.1:$PORT; $CONFIG sha256 ${fleet_sha:0:12}"
  printf '%-7s %-6s %-8s %-6s %-8s %-8s %s\n' replica port pid state sessions served config
  for dir in $(replica_dirs); do
    name="$(basename "$dir")"; port="$(cat "$dir/port")"
    printf '%-7s %-6s %-8s %-6s %-8s %-8s %s\n' "$name" "$port" "$(cat "$dir/pid" 2>/dev/null || echo -)" \
      "$(server_field "$name" status "$stats")" "$(server_field "$name" scur "$stats")" \
      "$(server_field "$name" stot "$stats")" \
      "$(curl -fsS --max-time 2 -H "Authorization: Bearer $ADMIN_KEY" "http://127.0.0.1:$port/readyz" 2>/dev/null \
         | "$PY" -c 'import json, sys
config = json.load(sys.stdin)["config"]
error = config.get("last_reload_error")
drift = "" if config["sha256"] == sys.argv[1] == sys.argv[2] else "  drift"
print(config["sha256"][:12] + drift + (": rejected its file: " + error.splitlines()[0] if error else ""))' \
         "$fleet_sha" "$(sha256sum "$dir/policy.yaml" | cut -c1-64)" 2>/dev/null || echo 'not ready')"
  done
}

restart() {
  # Rolling restart, one replica at a time, so the others carry the traffic: HAProxy stops sending it new
  # requests (drain), it finishes what it holds, SIGTERM lets it flush its ledger and release its leases, then it
  # starts again and rejoins once HAProxy's own health checks see it ready.
  alive haproxy "$RUN/haproxy.pid" || die "no fleet is up in $RUN"
  local dir name i
  for dir in $(replica_dirs); do
    name="$(basename "$dir")"
    hap "set server $BACKEND/$name state drain" >/dev/null
    for ((i = 0; i < 300; i++)); do [ "$(server_field "$name" scur)" = 0 ] && break; sleep 0.1; done
    stop_pid tiergate "$dir/pid" TERM $((GRACE_S + 15))
    start_replica "$dir"
    wait_ready "$dir"
    hap "set server $BACKEND/$name state ready" >/dev/null
    for ((i = 0; i < 300; i++)); do [ "$(server_field "$name" status)" = UP ] && break; sleep 0.1; done
    [ "$(server_field "$name" status)" = UP ] || die "$name did not come back UP in HAProxy"
    say "restarted $name (pid $(cat "$dir/pid"))"
  done
}

case "${1:-}" in
  up) up "${2:-}" ;;
  down) down ;;
  status) status ;;
  restart) restart ;;
  *) die "usage: fleet.sh up N | down | status | restart" ;;
esac
