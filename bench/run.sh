#!/usr/bin/env bash
# bench/run.sh: how fast and how small is maskinporten-broker on this machine?
#
#   bench/run.sh                   # everything, about 7.5 minutes after the builds
#   bench/run.sh --baseline-only   # only the axum baseline (no broker needed)
#   bench/run.sh --keys-only       # only step (7), many keys (about 3 minutes; BENCH_KEYS_QUIET=0: 40 s)
#   bench/run.sh --proxy-only      # only step (6), the egress proxy beside nginx (about 4 minutes)
#   bench/run.sh --identity-only   # only step (8), workload token vs API key (about 1 minute)
#   TEXAS_BIN=/path/to/texas bench/run.sh --texas-only   # only step (9), beside texas (about 4 minutes)
#
# Runs only on 127.0.0.1 (broker :18080, baseline :18081), in `env: local` (the embedded
# simulator: no credentials, no network). Installs oha into bench/.tools on first use. Prints one
# markdown table; bench/README.md says how to read it. Everything it starts is stopped on exit.
#
# Step (6) measures the egress proxy: an upstream (the baseline, 1 KiB body) called through the
# broker's /proxy/bench/ route, through nginx (Debian's nginx-light, installed when missing, run
# by this script on 127.0.0.1:18082 with its own configuration; the system service is never
# started) and directly, at 1, 16 and 64 connections with wrk -t1.
#
# Step (8) measures a workload-identity caller against an API-key caller: GET /token/admin with a
# Kubernetes-style service-account token (Authorization: Bearer, RS256, identity.issuers, its JWKS
# served on 127.0.0.1:18083 by python3 -m http.server; key and token made with openssl) and with
# X-Api-Key, wrk -t1 at 16 connections, the two taking turns each round.
#
# Step (9) measures the broker beside nais/texas, whose POST /api/v1/token it also serves. This
# script only runs a texas binary you give it in TEXAS_BIN; it never fetches or builds texas. Build
# it yourself: clone https://github.com/nais/texas and run `cargo build --release` there (the
# binary is target/release/texas). texas gets a Maskinporten client of its own (client id
# texas-bench, a key made by `maskinporten-broker keygen`, listed in maskinporten_clients) on the
# broker's embedded simulator, so both fetch their tokens from the same simulator and cache them
# (tokens of an hour, so every measured request is a cache hit). texas listens on
# 127.0.0.1:18084 (probes :18085), RUST_LOG=warn (as log.level: warn), its OTLP export pointed at
# 127.0.0.1:9. At 1, 16 and 64 connections, wrk -t1 in turn: POST /api/v1/token with the same
# JSON body (bench/wrk-post-token.lua) to the broker and to texas, and GET /token/admin (the same
# scopes) to the broker; each with the server's CPU time per request. The full run includes step
# (9) only when TEXAS_BIN is set.
#
# Knobs (environment): BENCH_SECONDS (5, per run), BENCH_ROUNDS (5 runs per load point, taking
# turns; the median counts, and each ratio is given with its min-max over the rounds),
# BENCH_PIN (1: servers on CPU 0, load generators on CPU 1), BENCH_REFRESH_SECONDS (50),
# BENCH_BURST (1000), BENCH_BODY_SIZE (baseline body in --baseline-only mode; otherwise the
# broker's measured answer size), BENCH_KEYS (2000 keys in step 7; 0 skips it),
# BENCH_KEYS_LIFETIME (30, seconds, the simulator's token lifetime in step 7), BENCH_KEYS_QUIET
# (1: step 7 also waits with no traffic to count upstream calls after the callers stop),
# TEXAS_BIN (a texas binary for step 9; unset: the full run skips step 9).
# CARGO_TARGET_DIR is honoured (the binaries are built and run from there).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
TOOLS="$BENCH/.tools"
OHA="$TOOLS/bin/oha"
OHA_VERSION=1.16.0
# Where cargo builds (relative to the repository, as cargo takes it when run there).
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
BROKER_BIN="$TARGET_DIR/release/maskinporten-broker"
BASELINE_BIN="$TARGET_DIR/release/examples/bench_baseline"
BROKER_URL=http://127.0.0.1:18080
BASELINE_URL=http://127.0.0.1:18081
NGINX_URL=http://127.0.0.1:18082
# Step (8)'s JWKS server.
JWKS_PORT=18083
# Step (6)'s upstream answer: 1 KiB, whatever the broker's token answer measures.
PROXY_BODY_SIZE=1024
SECONDS_PER_POINT=${BENCH_SECONDS:-5}
REFRESH_SECONDS=${BENCH_REFRESH_SECONDS:-50}
BURST=${BENCH_BURST:-1000}
ROUNDS=${BENCH_ROUNDS:-5}
KEYS=${BENCH_KEYS:-2000}
KEYS_LIFETIME=${BENCH_KEYS_LIFETIME:-30}
KEYS_QUIET=${BENCH_KEYS_QUIET:-1}
# BENCH_PIN=1: servers on CPU 0, the load generator on CPU 1 (taskset), instead of all of them
# sharing every core; shows what the scheduler's sharing does to the latency tail.
if [[ ${BENCH_PIN:-0} == 1 ]]; then
  ON_SERVER_CPU=(taskset -c 0)
  ON_LOAD_CPU=(taskset -c 1)
  PLACEMENT="servers pinned to CPU 0, load generator to CPU 1"
else
  ON_SERVER_CPU=()
  ON_LOAD_CPU=()
  PLACEMENT="load generator on the same cores"
fi
CONNECTIONS=(1 16 64)
# Step (6), the egress proxy beside nginx and beside calling its upstream directly.
PROXY_CONNECTIONS=(1 16 64)
# Must match bench/broker.yaml.
TOKEN_LIFETIME_SECONDS=20
# Step (8), workload token vs API key.
IDENTITY_CONNECTIONS=16
# Step (9), the broker beside texas: a texas binary the user built (never built here).
TEXAS_BIN=${TEXAS_BIN:-}
TEXAS_URL=http://127.0.0.1:18084
TEXAS_PROBE_URL=http://127.0.0.1:18085
TEXAS_CONNECTIONS=(1 16 64)
TEXAS_CLIENT_ID=texas-bench
# Tokens of an hour in step (9): texas keeps a token for half its life below 120 s and the
# broker refreshes ahead, so with an hour neither fetches during the runs (only hits are measured).
TEXAS_TOKEN_LIFETIME=3600s
# The request both get: the admin profile's scopes, in texas's JSON.
TEXAS_BODY='{"identity_provider":"maskinporten","target":"altinn:authentication/systemregister.write altinn:authentication/systemuser.request.read altinn:authentication/systemuser.request.write"}'

MODE=full
case "${1:-}" in
  "") ;;
  --baseline-only) MODE=baseline ;;
  --keys-only) MODE=keys ;;
  --proxy-only) MODE=proxy ;;
  --identity-only) MODE=identity ;;
  --texas-only) MODE=texas ;;
  -h | --help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;;
  *) echo "usage: $0 [--baseline-only | --keys-only | --proxy-only | --identity-only | --texas-only]" >&2; exit 2 ;;
esac
# Step (9) runs a texas binary the user built; say how before anything starts.
if [[ -n $TEXAS_BIN || $MODE == texas ]] && [[ ! -x $TEXAS_BIN ]]; then
  echo "$0: step (9) needs TEXAS_BIN=/path/to/texas, an executable texas binary (now: '${TEXAS_BIN}')." >&2
  echo "Build texas yourself: git clone https://github.com/nais/texas && cd texas && cargo build --release" >&2
  echo "(the binary is target/release/texas), then: TEXAS_BIN=\$PWD/target/release/texas $0 --texas-only" >&2
  exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/broker-bench.XXXXXX")
STARTED=()     # pids of everything this script started

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  local pid
  for pid in ${STARTED[@]+"${STARTED[@]}"}; do
    stop_pid "$pid"
  done
  if [[ $status -ne 0 ]]; then
    log "failed; logs and raw results kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A clean environment for the broker: no BROKER__* overrides from the caller's shell.
for name in $(compgen -e); do
  if [[ $name == BROKER_* ]]; then unset "$name"; fi
done

# 1000 concurrent connections need more than the usual 1024 file descriptors, on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $((BURST * 2 + 256)) ]]; then
  log "warning: ulimit -n is $(ulimit -n); the ${BURST}-connection burst may see connection errors"
fi

# ---- tools and builds ------------------------------------------------------------------------

if [[ $MODE == proxy || $MODE == identity || $MODE == texas ]]; then
  OHA_NAME="oha not used"  # steps (6), (8) and (9) run wrk only
else
  if [[ ! -x $OHA ]]; then
    log "installing oha $OHA_VERSION into bench/.tools (once; a few minutes)"
    cargo install oha --version "$OHA_VERSION" --locked --root "$TOOLS"
  fi
  OHA_NAME=$("$OHA" --version)
  log "$OHA_NAME"
fi
# apt_install PACKAGE COMMAND: install a Debian package when COMMAND is missing (as root). No
# service is started by the install: when the machine has no policy-rc.d, one that refuses every
# start is put in place for the install and removed afterwards (nginx-light would otherwise start
# the system nginx on port 80).
apt_install() {
  local package=$1 command=$2 policy=/usr/sbin/policy-rc.d placed=0 status=0
  command -v "$command" >/dev/null && return 0
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    die "$command is missing: sudo apt-get install $package (Debian/Ubuntu), then run again"
  fi
  log "installing $package from the Debian package (once)"
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && placed=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null || status=$?
  if [[ $placed == 1 ]]; then rm -f "$policy"; fi
  [[ $status == 0 ]] || die "apt-get install $package failed; install it and run again"
  command -v "$command" >/dev/null || die "$package installed no $command"
}
# wrk (Debian package) beside oha: one thread of a C load generator takes far less of the two
# shared cores than oha, so its ratios show more of the servers' own cost.
apt_install wrk wrk
if [[ $MODE == full || $MODE == proxy ]]; then
  # Step (6)'s reference proxy; the binary is /usr/sbin/nginx.
  PATH=$PATH:/usr/sbin apt_install nginx-light nginx
  NGINX_BIN=$(PATH=$PATH:/usr/sbin command -v nginx)
  NGINX_VERSION=$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')
  log "$NGINX_VERSION"
fi
WRK_VERSION=$({ wrk -v 2>&1 || true; } | head -n 1 | awk '{ print $1, $2 }')  # wrk -v exits 1
log "$WRK_VERSION"

log "building release binaries"
if [[ $MODE != keys && $MODE != identity && $MODE != texas ]]; then
  (cd "$ROOT" && cargo build --release --locked --example bench_baseline)
fi
if [[ $MODE != baseline ]]; then
  (cd "$ROOT" && cargo build --release --locked)
fi

# ---- helpers ---------------------------------------------------------------------------------

port_free() { ! curl -s --max-time 1 -o /dev/null "$1/"; }

# start NAME COMMAND...: start in the background, log to $WORK/NAME.log, pid in $LAST_PID.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  STARTED+=("$LAST_PID")
}

# wait_healthy URL PID: poll URL/healthz for at most 30 s while PID lives.
wait_healthy() {
  local url=$1 pid=$2
  for _ in $(seq 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$WORK"/*.log >&2 || true
      die "the server at $url exited during start-up"
    fi
    if curl -fsS --max-time 1 -o /dev/null "$url/healthz" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  die "$url/healthz did not answer within 30 s"
}

# start_broker [VAR=VALUE...]: the broker on bench/broker.yaml (or $BROKER_CONFIG), with these
# config overrides.
start_broker() {
  port_free "$BROKER_URL" || die "something already listens on $BROKER_URL"
  start broker "${ON_SERVER_CPU[@]}" env "$@" "$BROKER_BIN" \
    --config "${BROKER_CONFIG:-$BENCH/broker.yaml}" serve
  BROKER_PID=$LAST_PID
  wait_healthy "$BROKER_URL" "$BROKER_PID"
}

start_baseline() {
  port_free "$BASELINE_URL" || die "something already listens on $BASELINE_URL"
  start baseline "${ON_SERVER_CPU[@]}" "$BASELINE_BIN" "$1" 127.0.0.1:18081
  BASELINE_PID=$LAST_PID
  wait_healthy "$BASELINE_URL" "$BASELINE_PID"
}

# rss_kib PID FIELD: VmRSS or VmHWM of a process, in KiB.
rss_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# sample_rss PID FILE: write the largest VmRSS seen (KiB) to FILE until stopped.
sample_rss() {
  local pid=$1 file=$2 max=0 now
  while kill -0 "$pid" 2>/dev/null; do
    now=$(rss_kib "$pid" VmRSS 2>/dev/null || echo 0)
    if [[ ${now:-0} -gt $max ]]; then max=$now; echo "$max" >"$file"; fi
    sleep 0.1
  done
}

# load NAME URL CONNECTIONS: oha for SECONDS_PER_POINT at CONNECTIONS, JSON to $WORK/NAME.json.
load() {
  local name=$1 url=$2 c=$3 seconds=${4:-$SECONDS_PER_POINT}
  log "load: $name ($c connections, ${seconds}s)"
  timeout $((seconds + 60)) "${ON_LOAD_CPU[@]}" "$OHA" --no-tui --output-format json \
    -z "${seconds}s" -c "$c" "$url" >"$WORK/$name.json"
}

# wrk_load NAME URL CONNECTIONS: wrk with one thread for SECONDS_PER_POINT at CONNECTIONS, the
# JSON line of bench/wrk-report.lua to $WORK/NAME.wrk.json. WRK_SCRIPT may name another script
# that reports the same way (bench/wrk-post-token.lua).
wrk_load() {
  local name=$1 url=$2 c=$3 seconds=${4:-$SECONDS_PER_POINT}
  log "load: $name with wrk ($c connections, ${seconds}s)"
  timeout $((seconds + 60)) "${ON_LOAD_CPU[@]}" wrk -t1 -c "$c" -d "${seconds}s" \
    -s "${WRK_SCRIPT:-$BENCH/wrk-report.lua}" "$url" | tail -n 1 >"$WORK/$name.wrk.json"
}

# load_urls NAME FILE CONNECTIONS: as load, each request to a random URL of FILE.
load_urls() {
  local name=$1 file=$2 c=$3 seconds=${4:-$SECONDS_PER_POINT}
  log "load: $name ($c connections, ${seconds}s, $(wc -l <"$file") URLs)"
  timeout $((seconds + 60)) "${ON_LOAD_CPU[@]}" "$OHA" --no-tui --output-format json \
    -z "${seconds}s" -c "$c" --urls-from-file "$file" >"$WORK/$name.json"
}

# cpu_ticks PID: user + system CPU time of a process so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# burst NAME URL N: N requests on N connections at once.
burst() {
  local name=$1 url=$2 n=$3
  log "burst: $name ($n requests on $n connections)"
  timeout 120 "${ON_LOAD_CPU[@]}" "$OHA" --no-tui --output-format json -n "$n" -c "$n" "$url" >"$WORK/$name.json"
}

# metric NAME [LABEL=VALUE...]: the sum of a Prometheus counter over the series that carry
# every given label; 0 if no series matches.
metric() {
  curl -fsS --max-time 5 "$BROKER_URL/metrics" >"$WORK/metrics.txt" ||
    die "GET $BROKER_URL/metrics failed: this broker has no /metrics yet"
  python3 - "$WORK/metrics.txt" "$@" <<'PY'
import re, sys
path, name, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
total = 0.0
for line in open(path):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    m = re.match(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)', line)
    if not m or m.group(1) != name:
        continue
    labels = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
    if all(labels.get(k) == v.strip('"') for k, v in (w.split("=", 1) for w in wanted)):
        total += float(m.group(4))
print(int(total) if total.is_integer() else total)
PY
}

record() { printf '%s=%s\n' "$1" "$2" >>"$WORK/results.env"; }

# record_metric KEY METRIC [LABEL=VALUE...]: record a counter; a failed scrape stops the run
# (a command substitution inside an argument would not).
record_metric() {
  local key=$1 value
  shift
  value=$(metric "$@")
  record "$key" "$value"
}

# ---- the runs --------------------------------------------------------------------------------

record date "$(date -u '+%Y-%m-%d %H:%M UTC')"
record nproc "$(nproc)"
record memory_mib "$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)"
record oha "$OHA_NAME"
record wrk "$WRK_VERSION"
record rustc "$(rustc --version)"
record nginx "${NGINX_VERSION:-}"
record mode "$MODE"
record burst "$BURST"
record rounds "$ROUNDS"
record placement "$PLACEMENT"
record seconds "$SECONDS_PER_POINT"

# The cache-hit series of every server in SERVERS (name:pid:url): idle RSS, then at each
# connection count ROUNDS runs per server, the servers taking turns so that drift on a shared
# machine hits them alike; the median run by req/s is the one reported. Peak RSS is sampled
# during the largest connection count.
hit_series() {
  local server name pid url c round
  local -a samplers=()
  sleep 1
  for server in "${SERVERS[@]}"; do
    IFS=: read -r name pid url <<<"$server"
    record "${name}_idle_rss_kib" "$(rss_kib "$pid" VmRSS)"
  done
  for c in "${CONNECTIONS[@]}"; do
    if [[ $c == "${CONNECTIONS[-1]}" ]]; then
      for server in "${SERVERS[@]}"; do
        IFS=: read -r name pid url <<<"$server"
        sample_rss "$pid" "$WORK/${name}_peak_rss" &
        samplers+=("$!")
        STARTED+=("$!")
      done
    fi
    for round in $(seq "$ROUNDS"); do
      for server in "${SERVERS[@]}"; do
        IFS=: read -r name pid url <<<"$server"  # url keeps its own colons
        load "${name}_c${c}_r$round" "$url" "$c"
        wrk_load "${name}_c${c}_r$round" "$url" "$c"
      done
    done
    for server in "${SERVERS[@]}"; do
      median_run "${server%%:*}_c$c"
      median_wrk_run "${server%%:*}_c$c"
    done
  done
  for pid in "${samplers[@]}"; do stop_pid "$pid"; done
  for server in "${SERVERS[@]}"; do
    name=${server%%:*}
    record "${name}_peak_rss_kib" "$(cat "$WORK/${name}_peak_rss")"
  done
}

# median_run NAME: of NAME_r1.json ... the run with the median req/s becomes NAME.json.
median_run() {
  python3 - "$WORK" "$1" <<'PY'
import glob, json, os, shutil, sys
work, name = sys.argv[1], sys.argv[2]
runs = sorted((p for p in glob.glob(os.path.join(work, name + "_r*.json"))
               if not p.endswith(".wrk.json")),
              key=lambda p: json.load(open(p))["summary"]["requestsPerSec"])
shutil.copy(runs[len(runs) // 2], os.path.join(work, name + ".json"))
PY
}

# median_wrk_run NAME: as median_run, for the wrk runs (NAME_r*.wrk.json -> NAME.wrk.json).
median_wrk_run() {
  python3 - "$WORK" "$1" <<'PY'
import glob, json, os, shutil, sys
work, name = sys.argv[1], sys.argv[2]
runs = sorted(glob.glob(os.path.join(work, name + "_r*.wrk.json")),
              key=lambda p: json.load(open(p))["requestsPerSec"])
shutil.copy(runs[len(runs) // 2], os.path.join(work, name + ".wrk.json"))
PY
}

# start_nginx: nginx on NGINX_URL in front of BASELINE_URL, run by this script from a
# configuration of its own (never the system's): 2 workers, HTTP/1.1 to a keepalive upstream
# pool, a static Authorization header (the broker adds a token), no access log, loopback only.
start_nginx() {
  port_free "$NGINX_URL" || die "something already listens on $NGINX_URL"
  local dir="$WORK/nginx"
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  upstream bench_upstream {
    server ${BASELINE_URL#http://};
    keepalive 64;
  }
  server {
    listen ${NGINX_URL#http://};
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-static-token-of-nginx";
    }
  }
}
CONF
  "$NGINX_BIN" -t -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" ||
    die "nginx refused the generated configuration $dir/nginx.conf"
  start nginx "${ON_SERVER_CPU[@]}" "$NGINX_BIN" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
  NGINX_PID=$LAST_PID
  wait_healthy "$NGINX_URL" "$NGINX_PID"
}

# tree_cpu_ticks PID: cpu_ticks of PID and its child processes (nginx's master and workers).
tree_cpu_ticks() {
  local total child
  total=$(cpu_ticks "$1")
  for child in $(cat "/proc/$1/task/$1/children" 2>/dev/null); do
    total=$((total + $(cpu_ticks "$child" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# proxy_series: step (6). The broker (BROKER_PID, warm) and an upstream with a 1 KiB body on
# BASELINE_URL must run. Starts nginx; at each connection count ROUNDS rounds, each round wrk
# -t1 through the broker, through nginx and directly, in turn; each run's server CPU time is
# recorded next to its wrk report.
proxy_series() {
  local c round name url pid before
  start_nginx
  curl -fsS --max-time 30 -o /dev/null "$BROKER_URL/proxy/bench/token/altinn" ||
    die "the broker did not proxy to the upstream; see $WORK/broker.log"
  record proxy_body_bytes "$(curl -fsS --max-time 5 "$NGINX_URL/token/altinn" | wc -c)"
  for c in "${PROXY_CONNECTIONS[@]}"; do
    for round in $(seq "$ROUNDS"); do
      for target in "proxy:$BROKER_PID:$BROKER_URL/proxy/bench/token/altinn" \
        "nginx:$NGINX_PID:$NGINX_URL/token/altinn" "direct:$BASELINE_PID:$BASELINE_URL/token/altinn"; do
        IFS=: read -r name pid url <<<"$target"
        before=$(tree_cpu_ticks "$pid")
        wrk_load "${name}_c${c}_r$round" "$url" "$c"
        record "${name}_c${c}_r${round}_cpu_ticks" "$(($(tree_cpu_ticks "$pid") - before))"
      done
    done
  done
  record clk_tck "$(getconf CLK_TCK)"
  stop_pid "$NGINX_PID"
}

# identity_series: step (8). An RSA key, its JWKS served on JWKS_PORT, a service-account token it
# signs (an hour's exp), an API key; a broker on bench/broker.yaml plus identity.issuers and two
# clients; then ROUNDS rounds of wrk -t1 at IDENTITY_CONNECTIONS on GET /token/admin, with the
# token and with the API key in turn. Stops what it started.
identity_series() {
  local dir="$WORK/identity" round token api_key=bench-api-key-of-step-8 jwks_pid
  mkdir -p "$dir/jwks"
  openssl genrsa -out "$dir/key.pem" 2048 2>/dev/null || die "openssl genrsa failed"
  token=$(python3 - "$dir" "http://127.0.0.1:$JWKS_PORT" <<'PY'
import base64, json, subprocess, sys, time
d, iss = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
modulus = subprocess.run(["openssl", "rsa", "-in", f"{d}/key.pem", "-noout", "-modulus"],
                         check=True, capture_output=True, text=True).stdout.strip().split("=", 1)[1]
n = bytes.fromhex(modulus)
jwk = {"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig", "n": b64(n), "e": b64(b"\x01\x00\x01")}
json.dump({"keys": [jwk]}, open(f"{d}/jwks/jwks.json", "w"))
now = int(time.time())
claims = {"iss": iss, "aud": ["maskinporten-broker"], "sub": "system:serviceaccount:bench:caller",
          "iat": now, "nbf": now, "exp": now + 3600,
          "kubernetes.io": {"namespace": "bench", "serviceaccount": {"name": "caller"}}}
signing = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode()) + "." + b64(json.dumps(claims).encode())
signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{d}/key.pem"], input=signing.encode(),
                           check=True, capture_output=True).stdout
print(signing + "." + b64(signature))
PY
  ) || die "cannot make step (8)'s key, JWKS and token"
  {
    cat "$BENCH/broker.yaml"
    cat <<YAML
identity:
  issuers:
    bench:
      issuer: http://127.0.0.1:$JWKS_PORT
      jwks_uri: http://127.0.0.1:$JWKS_PORT/jwks.json
      audience: maskinporten-broker
clients:
  - name: workload
    identity: {issuer: bench, subject: "system:serviceaccount:bench:caller"}
    profiles: [admin]
  - name: keyed
    key_sha256: $(printf %s "$api_key" | sha256sum | cut -d' ' -f1)
    profiles: [admin]
YAML
  } >"$dir/broker.yaml"
  port_free "http://127.0.0.1:$JWKS_PORT" || die "something already listens on :$JWKS_PORT"
  start jwks python3 -m http.server "$JWKS_PORT" --bind 127.0.0.1 --directory "$dir/jwks"
  jwks_pid=$LAST_PID
  for _ in $(seq 50); do
    curl -fsS --max-time 1 -o /dev/null "http://127.0.0.1:$JWKS_PORT/jwks.json" 2>/dev/null && break
    sleep 0.2
  done
  BROKER_CONFIG="$dir/broker.yaml" start_broker
  curl -fsS --max-time 30 -o /dev/null -H "Authorization: Bearer $token" "$BROKER_URL/token/admin" ||
    die "the broker did not serve /token/admin to the workload token; see $WORK/broker.log"
  curl -fsS --max-time 30 -o /dev/null -H "X-Api-Key: $api_key" "$BROKER_URL/token/admin" ||
    die "the broker did not serve /token/admin to the API key; see $WORK/broker.log"
  local c=$IDENTITY_CONNECTIONS
  for round in $(seq "$ROUNDS"); do
    log "load: identity_token_c${c}_r$round with wrk ($c connections, ${SECONDS_PER_POINT}s)"
    timeout $((SECONDS_PER_POINT + 60)) "${ON_LOAD_CPU[@]}" wrk -t1 -c "$c" -d "${SECONDS_PER_POINT}s" \
      -H "Authorization: Bearer $token" -s "$BENCH/wrk-report.lua" "$BROKER_URL/token/admin" |
      tail -n 1 >"$WORK/identity_token_c${c}_r$round.wrk.json"
    log "load: identity_key_c${c}_r$round with wrk ($c connections, ${SECONDS_PER_POINT}s)"
    timeout $((SECONDS_PER_POINT + 60)) "${ON_LOAD_CPU[@]}" wrk -t1 -c "$c" -d "${SECONDS_PER_POINT}s" \
      -H "X-Api-Key: $api_key" -s "$BENCH/wrk-report.lua" "$BROKER_URL/token/admin" |
      tail -n 1 >"$WORK/identity_key_c${c}_r$round.wrk.json"
  done
  record identity_connections "$c"
  record_metric identity_cache_hits broker_identity_cache_lookups_total issuer=bench outcome=hit
  record_metric identity_cache_misses broker_identity_cache_lookups_total issuer=bench outcome=miss
  stop_pid "$BROKER_PID"
  stop_pid "$jwks_pid"
}

# texas_series: step (9). A key and client for texas on the broker's embedded simulator (as a
# second entry of maskinporten_clients, so the simulator registers it), the broker with
# on_demand.scopes for the texas request and hour-long tokens, texas on TEXAS_URL against the same
# simulator; then at each of TEXAS_CONNECTIONS, ROUNDS rounds of wrk -t1 in turn: POST
# /api/v1/token to the broker, the same POST to texas, GET /token/admin to the broker, each run's
# server CPU time recorded next to its wrk report. Stops what it started.
texas_series() {
  local dir="$WORK/texas" c round name pid url script before kid issuer jwk texas_pid
  mkdir -p "$dir"
  port_free "$TEXAS_URL" || die "something already listens on $TEXAS_URL"
  port_free "$TEXAS_PROBE_URL" || die "something already listens on $TEXAS_PROBE_URL"
  # texas's private key: a JWKS of one RS256 key, written by the broker's own keygen.
  "$BROKER_BIN" --config "$BENCH/broker.yaml" keygen --add-to "$dir/texas.jwks.json" >"$dir/keygen.log" 2>&1 ||
    die "maskinporten-broker keygen failed; see $dir/keygen.log"
  kid=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["keys"][0]["kid"])' "$dir/texas.jwks.json") ||
    die "no kid in $dir/texas.jwks.json"
  {
    cat "$BENCH/broker.yaml"
    cat <<YAML
# Step (9): texas's POST /api/v1/token body asks for the admin profile's scopes.
on_demand:
  scopes: ["altinn:*"]
# texas's client, registered with the embedded simulator (no profile uses it).
maskinporten_clients:
  texas:
    client_id: $TEXAS_CLIENT_ID
    kid: $kid
    key: {path: $dir/texas.jwks.json}
YAML
  } >"$dir/broker.yaml"
  BROKER_CONFIG="$dir/broker.yaml" start_broker BROKER__LOCAL__TOKEN_LIFETIME="$TEXAS_TOKEN_LIFETIME"
  # The embedded simulator's issuer (a loopback port chosen at start), as the broker lists it.
  issuer=$(curl -fsS --max-time 5 "$BROKER_URL/readyz" | python3 -c '
import json, sys
clients = json.load(sys.stdin)["maskinporten_clients"]
print(next(c["issuer"] for c in clients if c["name"] == sys.argv[1]))' texas) ||
    die "GET $BROKER_URL/readyz did not list the texas client's issuer; see $WORK/broker.log"
  [[ $issuer == http://127.0.0.1:* ]] || die "the simulator's issuer $issuer is not on 127.0.0.1"
  jwk=$(python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["keys"][0]))' "$dir/texas.jwks.json")
  # texas with nothing of the caller's environment but PATH: only its Maskinporten provider.
  start texas "${ON_SERVER_CPU[@]}" env -i PATH="$PATH" \
    BIND_ADDRESS="${TEXAS_URL#http://}" PROBE_BIND_ADDRESS="${TEXAS_PROBE_URL#http://}" \
    MASKINPORTEN_ENABLED=true MASKINPORTEN_CLIENT_ID="$TEXAS_CLIENT_ID" MASKINPORTEN_CLIENT_JWK="$jwk" \
    MASKINPORTEN_WELL_KNOWN_URL="${issuer}.well-known/oauth-authorization-server" \
    RUST_LOG=warn OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:9 "$TEXAS_BIN"
  texas_pid=$LAST_PID
  wait_healthy "$TEXAS_PROBE_URL" "$texas_pid"
  # Warm both caches, and check that each answers the request with a token.
  for url in "$BROKER_URL" "$TEXAS_URL"; do
    curl -fsS --max-time 30 -H 'Content-Type: application/json' --data-binary "$TEXAS_BODY" \
      "$url/api/v1/token" | python3 -c 'import json, sys; assert json.load(sys.stdin)["access_token"]' ||
      die "POST $url/api/v1/token gave no token; see $WORK/broker.log and $WORK/texas.log"
  done
  curl -fsS --max-time 30 -o /dev/null "$BROKER_URL/token/admin" ||
    die "the broker did not serve /token/admin; see $WORK/broker.log"
  local upstream_before
  upstream_before=$(metric broker_upstream_requests_total target=maskinporten)
  for c in "${TEXAS_CONNECTIONS[@]}"; do
    for round in $(seq "$ROUNDS"); do
      for target in "texas_broker_post:$BROKER_PID:post:$BROKER_URL/api/v1/token" \
        "texas_texas_post:$texas_pid:post:$TEXAS_URL/api/v1/token" \
        "texas_broker_get:$BROKER_PID:get:$BROKER_URL/token/admin"; do
        IFS=: read -r name pid script url <<<"$target"  # url keeps its own colons
        if [[ $script == post ]]; then script=$BENCH/wrk-post-token.lua; else script=$BENCH/wrk-report.lua; fi
        before=$(tree_cpu_ticks "$pid")
        BENCH_TOKEN_BODY=$TEXAS_BODY BENCH_WRK_REPORT=$BENCH/wrk-report.lua WRK_SCRIPT=$script \
          wrk_load "${name}_c${c}_r$round" "$url" "$c"
        record "${name}_c${c}_r${round}_cpu_ticks" "$(($(tree_cpu_ticks "$pid") - before))"
      done
    done
  done
  record texas_broker_upstream "$(($(metric broker_upstream_requests_total target=maskinporten) - upstream_before))"
  record texas_bin "$TEXAS_BIN"
  record texas_connections "${TEXAS_CONNECTIONS[*]}"
  record texas_token_lifetime "$TEXAS_TOKEN_LIFETIME"
  record clk_tck "$(getconf CLK_TCK)"
  stop_pid "$texas_pid"
  stop_pid "$BROKER_PID"
}

SERVERS=()
if [[ $MODE == identity ]]; then
  identity_series
fi
if [[ $MODE == texas ]]; then
  texas_series
fi
if [[ $MODE == proxy ]]; then
  start_broker
  start_baseline "$PROXY_BODY_SIZE"
  proxy_series
  stop_pid "$BROKER_PID"
  stop_pid "$BASELINE_PID"
fi
if [[ $MODE == full || $MODE == baseline ]]; then
if [[ $MODE == full ]]; then
  # (1) cache hits: warm the cache; (2) the baseline, with a body of the broker's size.
  start_broker
  curl -fsS --max-time 30 -o "$WORK/answer.json" "$BROKER_URL/token/altinn" ||
    die "the broker did not serve /token/altinn; see $WORK/broker.log"
  BODY_SIZE=$(wc -c <"$WORK/answer.json")
  metric broker_cache_lookups_total >/dev/null # fail early without /metrics
  SERVERS+=("broker:$BROKER_PID:$BROKER_URL/token/altinn")
else
  BODY_SIZE=${BENCH_BODY_SIZE:-1024}
fi
record body_bytes "$BODY_SIZE"
start_baseline "$BODY_SIZE"
SERVERS+=("baseline:$BASELINE_PID:$BASELINE_URL/token/altinn")
hit_series
if [[ $MODE == full ]]; then
  record broker_hwm_kib "$(rss_kib "$BROKER_PID" VmHWM)"
  # (6) the egress proxy beside nginx, on an upstream with a 1 KiB body.
  stop_pid "$BASELINE_PID"
  start_baseline "$PROXY_BODY_SIZE"
  proxy_series
  stop_pid "$BROKER_PID"
  # (8) a workload token beside an API key, on a broker of its own.
  identity_series
  # (9) the broker beside texas, when the user gave a texas binary.
  if [[ -n $TEXAS_BIN ]]; then texas_series; fi
fi
# The same burst as (3), for reference: a burst of new connections costs this much anyway.
burst baseline_burst "$BASELINE_URL/token/altinn" "$BURST"
stop_pid "$BASELINE_PID"

if [[ $MODE == full ]]; then
  # (3) cold burst: a new broker, an empty cache, BURST requests at once.
  start_broker
  burst cold_burst "$BROKER_URL/token/altinn" "$BURST"
  record_metric burst_upstream_maskinporten broker_upstream_requests_total target=maskinporten
  record_metric burst_upstream_altinn broker_upstream_requests_total target=altinn
  record_metric burst_misses broker_cache_lookups_total result=miss
  record burst_hwm_kib "$(rss_kib "$BROKER_PID" VmHWM)"

  # (4) refresh under load: more than two token lifetimes at 16 connections. The admin profile
  # serves the raw Maskinporten token (20 s here); an Altinn token lives 30 minutes whatever
  # Maskinporten's lifetime, so /token/altinn would not refresh during the run. Warm it first.
  curl -fsS --max-time 30 -o /dev/null "$BROKER_URL/token/admin" ||
    die "the broker did not serve /token/admin; see $WORK/broker.log"
  misses_before=$(metric broker_cache_lookups_total result=miss)
  upstream_before=$(metric broker_upstream_requests_total target=maskinporten)
  load refresh "$BROKER_URL/token/admin" 16 "$REFRESH_SECONDS"
  misses_after=$(metric broker_cache_lookups_total result=miss)
  upstream_after=$(metric broker_upstream_requests_total target=maskinporten)
  record refresh_new_misses "$((misses_after - misses_before))"
  record refresh_upstream "$((upstream_after - upstream_before))"
  record refresh_seconds "$REFRESH_SECONDS"
  record lifetime_seconds "$TOKEN_LIFETIME_SECONDS"
  stop_pid "$BROKER_PID"
fi
fi

if [[ ($MODE == full || $MODE == keys) && $KEYS -gt 0 ]]; then
  # (7) many keys: KEYS system-user tokens (/token/skd?org=...), tokens of KEYS_LIFETIME s, info
  # logs, a fetch budget the warm-up does not hit.
  start_broker BROKER__LOCAL__TOKEN_LIFETIME="${KEYS_LIFETIME}s" \
    BROKER__CACHE__MAX_FETCHES_PER_SECOND=100000 BROKER__LOG__LEVEL=info
  python3 - "$KEYS" "$BROKER_URL" >"$WORK/keys.txt" <<'PY'
import sys
n, base, weights, out = int(sys.argv[1]), sys.argv[2], [3, 2, 7, 6, 5, 4, 3, 2], []
prefix = 90000000
while len(out) < n:
    digits = str(prefix)
    check = 11 - sum(int(d) * w for d, w in zip(digits, weights)) % 11
    if check != 10:
        out.append(f"{base}/token/skd?org={digits}{check % 11}")
    prefix += 1
print("\n".join(out))
PY
  head -n 1 "$WORK/keys.txt" >"$WORK/hot.txt"
  cp "$WORK/keys.txt" "$WORK/rotate.txt"
  warm_keys() { xargs -P 16 -n 64 sh -c 'curl -fsS "$@" >/dev/null' _ <"$WORK/keys.txt"; }
  record keys "$KEYS"
  record keys_lifetime "$KEYS_LIFETIME"
  # (6a) a burst of KEYS keys, each asked for once, then no traffic for a token lifetime.
  log "keys: a burst of $KEYS keys, each asked for once"
  warm_keys
  record_metric keys_burst_upstream broker_upstream_requests_total target=maskinporten
  if [[ $KEYS_QUIET == 1 ]]; then
    log "keys: no traffic for one token lifetime"
    sleep "$((KEYS_LIFETIME + 5))"
    record_metric keys_after_burst_upstream broker_upstream_requests_total target=maskinporten
  fi
  # (6b) CPU per hit: one hot key, then every request to a random one of the KEYS keys.
  warm_keys
  misses_before=$(metric broker_cache_lookups_total result=miss)
  for run in hot rotate; do
    cpu_before=$(cpu_ticks "$BROKER_PID")
    log_before=$(stat -c %s "$WORK/broker.log")
    load_urls "keys_$run" "$WORK/$run.txt" 16
    record "keys_${run}_cpu_ticks" "$(($(cpu_ticks "$BROKER_PID") - cpu_before))"
    record "keys_${run}_log_bytes" "$(($(stat -c %s "$WORK/broker.log") - log_before))"
  done
  record keys_new_misses "$(($(metric broker_cache_lookups_total result=miss) - misses_before))"
  record clk_tck "$(getconf CLK_TCK)"
  record keys_hwm_kib "$(rss_kib "$BROKER_PID" VmHWM)"
  # (6c) the callers stop: upstream calls in the next token lifetime, and in the one after.
  if [[ $KEYS_QUIET == 1 ]]; then
    stopped=$(metric broker_upstream_requests_total target=maskinporten)
    log "keys: callers stopped; counting upstream calls for two token lifetimes"
    sleep "$KEYS_LIFETIME"
    first=$(metric broker_upstream_requests_total target=maskinporten)
    sleep "$KEYS_LIFETIME"
    second=$(metric broker_upstream_requests_total target=maskinporten)
    record keys_stop_first "$((first - stopped))"
    record keys_stop_second "$((second - first))"
  fi
  stop_pid "$BROKER_PID"
fi

# ---- the table -------------------------------------------------------------------------------

python3 - "$WORK" "${PROXY_CONNECTIONS[*]}" "${CONNECTIONS[@]}" <<'PY'
import json, os, sys

work, proxy_conns, conns = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
results = dict(line.rstrip("\n").split("=", 1) for line in open(os.path.join(work, "results.env")))

def oha(name):
    path = os.path.join(work, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None

def wrk(name):
    path = os.path.join(work, name + ".wrk.json")
    return json.load(open(path)) if os.path.exists(path) else None

def ok(run):
    """Answers with status 200 and everything else (errors and other statuses)."""
    codes = run.get("statusCodeDistribution") or {}
    good = int(codes.get("200", 0))
    other = sum(int(v) for k, v in codes.items() if k != "200")
    other += sum(int(v) for k, v in (run.get("errorDistribution") or {}).items()
                 if "deadline" not in k)  # requests cut off by the end of a timed run
    return good, other

def rps(run):
    if not run:
        return None
    good, _ = ok(run)
    return good / run["summary"]["total"]

def ms(run, p):
    return run["latencyPercentiles"][p] * 1000 if run else None

def fmt(value, digits=0):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"

def mib(kib):
    return "n/a" if kib in (None, "") else f"{int(kib) / 1024:.1f} MiB"

def ratio(a, b, digits=2):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.{digits}f}"

rounds = int(results.get("rounds", "1"))

def per_round(load, name):
    """The runs of each round of NAME (NAME_r1 ... NAME_rN), None where one is missing."""
    return [load(f"{name}_r{i}") for i in range(1, rounds + 1)]

def spread(a_runs, b_runs, value, target=None, higher_is_better=True):
    """ " (min–max)" of the per-round ratios value(a)/value(b), the two taking turns within a
    round; with a target, whether it lies inside that spread (the runs cannot tell) or which
    side of it every round fell on."""
    ratios = [value(a) / value(b) for a, b in zip(a_runs, b_runs)
              if a and b and value(b)]
    if not ratios:
        return ""
    lo, hi = min(ratios), max(ratios)
    text = f" ({lo:.2f}–{hi:.2f}"
    if target is not None:
        if lo <= target <= hi:
            text += f"; {target:.2f} inside the spread"
        elif (lo > target) == higher_is_better:
            text += f"; every round better than {target:.2f}"
        else:
            text += f"; every round worse than {target:.2f}"
    return text + ")"

def wrk_rps(run):
    return run["requestsPerSec"] if run else None

def wrk_ms(run, p):
    return run[p] * 1000 if run else None

r = results.get
rows = [
    ("date", r("date"), "", ""),
    ("machine", f"nproc {r('nproc')}, {r('memory_mib')} MiB RAM; {r('placement')}", "", ""),
    ("cache-hit runs", f"median of {r('rounds')} runs of {r('seconds')} s per point, broker and baseline taking turns", "", ""),
    ("tools", f"{r('oha')}; {r('wrk')} (-t1); {r('rustc')}"
     + (f"; {r('nginx')}" if r("nginx") else ""), "", ""),
]
if r("mode") == "identity":
    rows[2] = ("identity runs", f"median of {r('rounds')} runs of {r('seconds')} s, workload token and API key taking turns", "", "")
if r("mode") == "texas":
    rows[2] = ("texas runs", f"median of {r('rounds')} runs of {r('seconds')} s per point, broker POST, texas POST and broker GET taking turns", "", "")
if r("mode") == "proxy":
    rows[2] = ("proxy runs", f"median of {r('rounds')} runs of {r('seconds')} s per point, proxy, nginx and direct taking turns; upstream body {r('proxy_body_bytes')} bytes", "", "")
if r("mode") in ("full", "baseline"):
    rows.append(("answer body (JSON)", f"{r('body_bytes')} bytes" if r("mode") == "full" else "n/a",
                 f"{r('body_bytes')} bytes", ""))
for c in (conns if r("mode") in ("full", "baseline") else []):
    b, base = oha(f"broker_c{c}"), oha(f"baseline_c{c}")
    target = 0.95 if c == "1" else 0.9
    ob, obase = per_round(oha, f"broker_c{c}"), per_round(oha, f"baseline_c{c}")
    rows.append((f"(1,2) cache hit, {c} conn: req/s", fmt(rps(b)), fmt(rps(base)),
                 ratio(rps(b), rps(base)) + spread(ob, obase, rps, target)))
    rows.append((
        f"(1,2) cache hit, {c} conn: p50 / p99 / p99.9 ms",
        " / ".join(fmt(ms(b, p), 2) for p in ("p50", "p99", "p99.9")),
        " / ".join(fmt(ms(base, p), 2) for p in ("p50", "p99", "p99.9")),
        ratio(ms(b, "p99"), ms(base, "p99")) + " (p99)"
        + spread(ob, obase, lambda x: ms(x, "p99"), 1.2, higher_is_better=False),
    ))
    errors = [ok(x)[1] if x else None for x in (b, base)]
    rows.append((f"(1,2) cache hit, {c} conn: non-200 answers", fmt(errors[0]), fmt(errors[1]), ""))
    wb, wbase = wrk(f"broker_c{c}"), wrk(f"baseline_c{c}")
    wrps = [x["requestsPerSec"] if x else None for x in (wb, wbase)]
    wb_runs, wbase_runs = per_round(wrk, f"broker_c{c}"), per_round(wrk, f"baseline_c{c}")
    rows.append((f"(1,2) cache hit, {c} conn, wrk: req/s", fmt(wrps[0]), fmt(wrps[1]),
                 ratio(*wrps) + spread(wb_runs, wbase_runs, wrk_rps, target)))
    wms = wrk_ms
    rows.append((
        f"(1,2) cache hit, {c} conn, wrk: p50 / p99 / p99.9 ms",
        " / ".join(fmt(wms(wb, p), 2) for p in ("p50", "p99", "p999")),
        " / ".join(fmt(wms(wbase, p), 2) for p in ("p50", "p99", "p999")),
        ratio(wms(wb, "p99"), wms(wbase, "p99")) + " (p99)"
        + spread(wb_runs, wbase_runs, lambda x: wms(x, "p99"), 1.2, higher_is_better=False),
    ))
    werr = [x["non2xx"] + x["errors"] if x else None for x in (wb, wbase)]
    rows.append((f"(1,2) cache hit, {c} conn, wrk: non-2xx answers and socket errors", fmt(werr[0]), fmt(werr[1]), ""))
burst, base_burst = oha("cold_burst"), oha("baseline_burst")

def total_ms(run):
    return run["summary"]["total"] * 1000 if run else None

def burst_latency(run):
    if not run:
        return "n/a"
    return f"{ms(run, 'p50'):,.1f} / {ms(run, 'p99'):,.1f} / {run['summary']['slowest'] * 1000:,.1f}"

def answers(run):
    return "n/a" if not run else "{} / {}".format(*ok(run))

rows += [] if r("mode") in ("keys", "proxy", "identity", "texas") else [
    ("(3) cold burst: requests / connections", f"{r('burst')} / {r('burst')}",
     f"{r('burst')} / {r('burst')}", ""),
    ("(3) cold burst: total time ms", fmt(total_ms(burst)), fmt(total_ms(base_burst)),
     ratio(total_ms(burst), total_ms(base_burst))),
    ("(3) cold burst: p50 / p99 / max ms", burst_latency(burst), burst_latency(base_burst), ""),
    ("(3) cold burst: 200 / other answers", answers(burst), answers(base_burst), ""),
]
if burst:
    rows += [
        ("(3) cold burst: upstream calls maskinporten / altinn",
         f"{r('burst_upstream_maskinporten')} / {r('burst_upstream_altinn')}", "", "1 / 1 expected"),
        ("(3) cold burst: cache misses", r("burst_misses"), "", ""),
    ]
refresh = oha("refresh")
if refresh:
    lifetimes = int(r("refresh_seconds")) / int(r("lifetime_seconds"))
    upstream = int(r("refresh_upstream"))
    rows += [
        (f"(4) refresh: {r('refresh_seconds')} s at 16 conn, token lifetime {r('lifetime_seconds')} s: req/s",
         fmt(rps(refresh)), "", ""),
        ("(4) refresh: p50 / p99.9 / max ms",
         f"{ms(refresh, 'p50'):,.2f} / {ms(refresh, 'p99.9'):,.2f} / {refresh['summary']['slowest'] * 1000:,.2f}", "", ""),
        ("(4) refresh: new cache misses during the run", r("refresh_new_misses"), "", "0 expected"),
        ("(4) refresh: maskinporten calls (per token lifetime)",
         f"{upstream} ({upstream / lifetimes:.2f})", "", ""),
        ("(4) refresh: non-200 answers", fmt(ok(refresh)[1]), "", ""),
    ]
def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

def cpu_us(name, c, i, run):
    """The server's CPU time (user + system, all its processes) per request of one run, in µs."""
    ticks = r(f"{name}_c{c}_r{i}_cpu_ticks")
    if not run or ticks is None or not run["requests"]:
        return None
    return int(ticks) / int(r("clk_tck")) * 1e6 / run["requests"]

for c in proxy_conns:
    runs = {n: per_round(wrk, f"{n}_c{c}") for n in ("proxy", "nginx", "direct")}
    if not any(runs["proxy"]):
        continue
    med = lambda n, f: median(f(x) for x in runs[n] if x)
    p, n, d = (med(x, wrk_rps) for x in ("proxy", "nginx", "direct"))
    rows.append((f"(6) proxy / nginx, {c} conn, wrk: req/s", fmt(p), fmt(n),
                 ratio(p, n) + spread(runs["proxy"], runs["nginx"], wrk_rps, 0.9)))
    lat = {x: [med(x, lambda run, q=q: wrk_ms(run, q)) for q in ("p50", "p99")]
           for x in ("proxy", "nginx", "direct")}
    rows.append((
        f"(6) proxy / nginx, {c} conn, wrk: p50 / p99 ms",
        " / ".join(fmt(v, 2) for v in lat["proxy"]),
        " / ".join(fmt(v, 2) for v in lat["nginx"]),
        ratio(lat["proxy"][1], lat["nginx"][1]) + " (p99)"
        + spread(runs["proxy"], runs["nginx"], lambda x: wrk_ms(x, "p99"), 1.2,
                 higher_is_better=False),
    ))
    cpu = {x: [cpu_us(x, c, i + 1, run) for i, run in enumerate(runs[x])]
           for x in ("proxy", "nginx")}
    pairs = [(a / b) for a, b in zip(cpu["proxy"], cpu["nginx"]) if a and b]
    rows.append((
        f"(6) proxy / nginx, {c} conn: server CPU µs per request (user + system)",
        fmt(median(cpu["proxy"]), 1), fmt(median(cpu["nginx"]), 1),
        ratio(median(cpu["proxy"]), median(cpu["nginx"]))
        + (f" ({min(pairs):.2f}–{max(pairs):.2f})" if pairs else ""),
    ))
    werr = [sum(x["non2xx"] + x["errors"] for x in runs[k] if x) for k in ("proxy", "nginx")]
    rows.append((f"(6) proxy / nginx, {c} conn, wrk: non-2xx answers and socket errors",
                 fmt(werr[0]), fmt(werr[1]), ""))
    rows.append((
        f"(6) upstream called directly, {c} conn, wrk: req/s / p99 ms",
        "", f"{fmt(d)} / {fmt(lat['direct'][1], 2)}",
        f"proxy/direct {ratio(p, d)}, nginx/direct {ratio(n, d)} (req/s)",
    ))
if r("identity_connections"):
    c = r("identity_connections")
    token_runs, key_runs = per_round(wrk, f"identity_token_c{c}"), per_round(wrk, f"identity_key_c{c}")
    t, k = (median(wrk_rps(x) for x in runs if x) for runs in (token_runs, key_runs))
    rows.append((f"(8) workload token / API key, GET /token/admin, {c} conn, wrk: req/s",
                 fmt(t), fmt(k), ratio(t, k) + spread(token_runs, key_runs, wrk_rps, 0.8)))
    lat = [median(wrk_ms(x, "p99") for x in runs if x) for runs in (token_runs, key_runs)]
    rows.append((f"(8) workload token / API key, {c} conn, wrk: p99 ms",
                 fmt(lat[0], 2), fmt(lat[1], 2), ratio(*lat) + " (p99)"))
    werr = [sum(x["non2xx"] + x["errors"] for x in runs if x) for runs in (token_runs, key_runs)]
    rows.append((f"(8) workload token / API key, {c} conn, wrk: non-2xx answers and socket errors",
                 fmt(werr[0]), fmt(werr[1]), "0 / 0 expected"))
    rows.append(("(8) identity cache hits / misses (the token verified once)",
                 f"{r('identity_cache_hits')} / {r('identity_cache_misses')}", "", "1 miss expected"))
if r("texas_connections"):
    # (9) the broker beside texas: the same POST /api/v1/token to both, and the broker's GET
    # /token/admin (the same scopes) against texas's POST; texas has no GET route.
    rows.append(("(9) texas", f"{r('texas_bin')}; tokens of {r('texas_token_lifetime')} from the broker's simulator (neither refreshes during the runs)", "", ""))
    rows.append(("(9) the broker's Maskinporten calls during the runs (all hits)", r("texas_broker_upstream"), "", "0 expected"))
    for c in r("texas_connections").split():
        runs = {n: per_round(wrk, f"texas_{n}_c{c}") for n in ("broker_post", "texas_post", "broker_get")}
        med = lambda n, f: median(f(x) for x in runs[n] if x)
        bp, tp, bg = (med(n, wrk_rps) for n in ("broker_post", "texas_post", "broker_get"))
        post_target = None if c == "1" else 1.5
        rows.append((f"(9) POST /api/v1/token, broker / texas, {c} conn, wrk: req/s", fmt(bp), fmt(tp),
                     ratio(bp, tp) + spread(runs["broker_post"], runs["texas_post"], wrk_rps, post_target)))
        rows.append((f"(9) GET /token/admin (broker) / POST (texas), {c} conn, wrk: req/s", fmt(bg), fmt(tp),
                     ratio(bg, tp) + spread(runs["broker_get"], runs["texas_post"], wrk_rps, 1.3)))
        lat = {n: [med(n, lambda run, q=q: wrk_ms(run, q)) for q in ("p50", "p99")] for n in runs}
        rows.append((
            f"(9) POST broker / texas, {c} conn, wrk: p50 / p99 ms (broker GET: {' / '.join(fmt(v, 2) for v in lat['broker_get'])})",
            " / ".join(fmt(v, 2) for v in lat["broker_post"]),
            " / ".join(fmt(v, 2) for v in lat["texas_post"]),
            ratio(lat["broker_post"][1], lat["texas_post"][1]) + " (p99)"
            + spread(runs["broker_post"], runs["texas_post"], lambda x: wrk_ms(x, "p99"), None,
                     higher_is_better=False),
        ))
        cpu = {n: [cpu_us(f"texas_{n}", c, i + 1, run) for i, run in enumerate(runs[n])] for n in runs}
        for n, label in (("broker_post", "POST"), ("broker_get", "GET /token/admin")):
            pairs = [a / b for a, b in zip(cpu[n], cpu["texas_post"]) if a and b]
            rows.append((
                f"(9) broker {label} / texas POST, {c} conn: server CPU µs per request (user + system)",
                fmt(median(cpu[n]), 1), fmt(median(cpu["texas_post"]), 1),
                ratio(median(cpu[n]), median(cpu["texas_post"]))
                + (f" ({min(pairs):.2f}–{max(pairs):.2f})" if pairs else ""),
            ))
        werr = [sum(x["non2xx"] + x["errors"] for x in runs[n] if x) for n in runs]
        rows.append((f"(9) {c} conn, wrk: non-2xx answers and socket errors (broker GET: {werr[2]})",
                     fmt(werr[0]), fmt(werr[1]), "0 / 0 expected"))
if r("mode") in ("full", "baseline"):
    rows += [
        ("(5) idle RSS (cache warm)", mib(r("broker_idle_rss_kib")), mib(r("baseline_idle_rss_kib")), ""),
        (f"(5) peak RSS during the {conns[-1]}-conn load", mib(r("broker_peak_rss_kib")), mib(r("baseline_peak_rss_kib")), ""),
        ("(5) VmHWM after steps 1-2 / after the cold burst", f"{mib(r('broker_hwm_kib'))} / {mib(r('burst_hwm_kib'))}", "", ""),
    ]
hot, rotate = oha("keys_hot"), oha("keys_rotate")
if hot and rotate:
    keys, tck = r("keys"), int(r("clk_tck"))

    def us_per_hit(run, name):
        return int(r(f"keys_{name}_cpu_ticks")) / tck * 1e6 / max(ok(run)[0], 1)

    def log_per_10k(run, name):
        return int(r(f"keys_{name}_log_bytes")) * 10000 / max(ok(run)[0], 1)

    rows += [
        (f"(7) {keys} keys, tokens of {r('keys_lifetime')} s: upstream calls for a burst of {keys} keys, each asked once",
         r("keys_burst_upstream"), "", f"{keys} expected"),
    ]
    if r("keys_after_burst_upstream"):
        rows.append((f"(7) then no traffic for {int(r('keys_lifetime')) + 5} s: more upstream calls",
                     str(int(r("keys_after_burst_upstream")) - int(r("keys_burst_upstream"))), "", "0 expected"))
    rows += [
        ("(7) 16 conn, one hot key: req/s / CPU µs per hit", f"{fmt(rps(hot))} / {us_per_hit(hot, 'hot'):.1f}", "", ""),
        (f"(7) 16 conn, rotating over {keys} keys: req/s / CPU µs per hit",
         f"{fmt(rps(rotate))} / {us_per_hit(rotate, 'rotate'):.1f}", "", ""),
        ("(7) log bytes per 10,000 hits at info (hot / rotating)",
         f"{log_per_10k(hot, 'hot'):,.0f} / {log_per_10k(rotate, 'rotate'):,.0f}", "", ""),
        ("(7) new cache misses during the two runs / non-200 answers",
         f"{r('keys_new_misses')} / {ok(hot)[1] + ok(rotate)[1]}", "", "0 / 0 expected"),
        (f"(7) VmHWM with {keys} keys cached", mib(r("keys_hwm_kib")), "", ""),
    ]
    if r("keys_stop_first"):
        rows.append(("(7) callers stop: upstream calls in the next token lifetime / the one after",
                     f"{r('keys_stop_first')} / {r('keys_stop_second')}", "", f"at most {keys} / 0 expected"))
print("| measurement | broker | baseline | broker/baseline, or expected |")
print("| --- | --- | --- | --- |")
for row in rows:
    print("| " + " | ".join(str(x) if x is not None else "n/a" for x in row) + " |")
PY
