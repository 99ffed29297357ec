#!/usr/bin/env bash
# bench/signers.sh: how long does a cache-miss fetch take when the key is in a file, in an HSM
# (SoftHSM2 over PKCS#11) or in Vault/OpenBao transit?
#
#   bench/signers.sh                      # release build (built if missing)
#   BENCH_PROFILE=debug bench/signers.sh  # the test build instead (rsa is optimised in it too)
#
# For each signer it starts the broker on 127.0.0.1:18090 in `env: local` (the embedded simulator
# verifies every grant with the key's public half), then asks, one at a time, for
# BENCH_MISSES (40) tokens no one asked for before (`/token/skd?org=<a new organisation>`): each is
# a cache miss, so each signs one grant. Prints the median and mean time per miss and the ratio
# of each to the file key's. Signing is on the miss path only; hits never sign.
#
# Needs what .ci/install-signer-tools.sh installs (it is run first). Everything it starts is
# stopped on exit; OpenBao listens on 127.0.0.1:18300.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROFILE=${BENCH_PROFILE:-release}
MISSES=${BENCH_MISSES:-40}
BIN="$ROOT/target/$PROFILE/maskinporten-broker"
BROKER=http://127.0.0.1:18090
BAO_ADDR=http://127.0.0.1:18300
BAO_TOKEN=bench-root-token
WORK=$(mktemp -d "${TMPDIR:-/tmp}/signers-bench.XXXXXX")
STARTED=()

log() { printf '[signers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cleanup() {
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_up() { # URL: at most 30 s
  for _ in $(seq 300); do
    curl -fsS --max-time 1 -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  log "ERROR: $1 did not answer within 30 s"; exit 1
}

if [ ! -x "$BIN" ]; then
  log "building the $PROFILE binary"
  (cd "$ROOT" && if [ "$PROFILE" = release ]; then cargo build --locked --release; else cargo build --locked; fi)
fi
BAO=$(bash "$ROOT/.ci/install-signer-tools.sh" | tail -1)

# SoftHSM2: a token of its own with the fixture key.
export SOFTHSM2_CONF="$WORK/softhsm2.conf"
mkdir "$WORK/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label bench --pin 1234 --so-pin 5678 >/dev/null
softhsm2-util --import "$ROOT/tests/fixtures/client-key.pem" --token bench --label mp --id 01 --pin 1234 >/dev/null
echo 1234 >"$WORK/pin"
MODULE=$(ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*-linux-gnu/softhsm/libsofthsm2.so 2>/dev/null | head -1)

# OpenBao: a dev server with a transit key.
HOME="$WORK" "$BAO" server -dev -dev-listen-address=127.0.0.1:18300 -dev-root-token-id="$BAO_TOKEN" >"$WORK/bao.log" 2>&1 &
STARTED+=($!)
wait_up "$BAO_ADDR/v1/sys/health"
curl -fsS -H "X-Vault-Token: $BAO_TOKEN" -X POST "$BAO_ADDR/v1/sys/mounts/transit" -d '{"type":"transit"}'
curl -fsS -H "X-Vault-Token: $BAO_TOKEN" -X POST "$BAO_ADDR/v1/transit/keys/mp" -d '{"type":"rsa-2048"}' >/dev/null
echo "$BAO_TOKEN" >"$WORK/vault-token"

# Valid organisation numbers (mod 11), one per miss.
ORGS=$(python3 - "$MISSES" <<'EOF'
import sys
n, out, base = int(sys.argv[1]), [], 91000000
while len(out) < n:
    digits = [int(c) for c in str(base)]
    rest = sum(d * w for d, w in zip(digits, [3, 2, 7, 6, 5, 4, 3, 2])) % 11
    check = 0 if rest == 0 else 11 - rest
    if check != 10:
        out.append(f"{base}{check}")
    base += 1
print(" ".join(out))
EOF
)

key_file="key:
  path: $ROOT/tests/fixtures/client-key.pem"
key_pkcs11="key:
  pkcs11:
    module: $MODULE
    token_label: bench
    key_label: mp
    pin_file: $WORK/pin"
key_vault="key:
  vault_transit:
    address: $BAO_ADDR/
    name: mp
    token_file: $WORK/vault-token"

# measure NAME KEY_YAML: prints "NAME median_ms mean_ms"
measure() {
  local name=$1 key=$2
  printf 'env: local\nlisten: 127.0.0.1:18090\nkid: bench\nlog:\n  level: warn\n%s\n' "$key" >"$WORK/$name.yaml"
  "$BIN" --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  STARTED+=("$pid")
  wait_up "$BROKER/healthz"
  curl -fsS -o /dev/null "$BROKER/token/admin" # warm: connections, sessions, the simulator
  local times=()
  for org in $ORGS; do
    times+=("$(curl -fsS -o /dev/null -w '%{time_total}' "$BROKER/token/skd?org=$org")")
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c '
import statistics, sys
t = [float(x) * 1000 for x in sys.argv[2:]]
print(sys.argv[1], round(statistics.median(t), 2), round(statistics.mean(t), 2))' "$name" "${times[@]}"
}

log "$MISSES cache misses per signer, one at a time ($PROFILE build)"
{
  measure file "$key_file"
  measure pkcs11 "$key_pkcs11"
  measure vault_transit "$key_vault"
} >"$WORK/results"
python3 - "$WORK/results" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
base = {"median": float(rows[0][1]), "mean": float(rows[0][2])}
print("| signer | median ms per miss | mean ms per miss | median / file key | mean / file key |")
print("|---|---:|---:|---:|---:|")
for name, median, mean in rows:
    print(f"| {name} | {median} | {mean} | {float(median) / base['median']:.2f} | {float(mean) / base['mean']:.2f} |")
EOF
