#!/usr/bin/env bash
# Tail latency of the filtered scenario with `embedded.durability = "fsync"`
# (the default: every batch fsynced before fan-out) and `"os"` (fan-out
# first, fsync in the background), next to Nchan, in one run (issue 13,
# part 4). 5,000 subscribers over 1,000 keys (Zipf), 2,000 publishes/s,
# WebSocket and SSE; every system and transport runs ROUNDS times,
# interleaved, each on a fresh server. Everything listens on 127.0.0.1, is
# bounded in time and stops by itself. Results: loadtest/out/durability/.
#
#   ROUNDS=2 SECS=20 loadtest/durability-bench.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/loadtest/out/durability}"
ROUNDS="${ROUNDS:-2}"
SECS="${SECS:-20}"
SUBS="${SUBS:-5000}"
RATE="${RATE:-2000}"
PG_PORT=18080 NCHAN_PORT=18081
PG="$ROOT/target/release/pushgate"
LT="$ROOT/target/release/pushgate-loadtest"
RUN="$(mktemp -d /tmp/pushgate-durability-bench.XXXXXX)"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log() { echo "[durability-bench $(date +%T)] $*" >&2; }
(cd "$ROOT" && cargo build --release -q -p pushgate -p pushgate-loadtest)

SERVER=""
stop_server() {
    if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; fi
}
trap 'stop_server; rm -rf "$RUN"' EXIT

wait_port() {
    for _ in $(seq 1 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listening on port $1"; exit 1
}

start_pushgate() { # MODE
    rm -rf "$RUN/data"
    sed "s/^\[embedded\]$/[embedded]\ndurability = \"$1\"/" "$ROOT/loadtest/bench.toml" >"$RUN/pushgate.toml"
    "$PG" --config "$RUN/pushgate.toml" --listen "127.0.0.1:$PG_PORT" --data-dir "$RUN/data" 2>"$RUN/pushgate.log" &
    SERVER=$!
    wait_port $PG_PORT
}

start_nchan() {
    rm -rf "$RUN/nginx"; mkdir -p "$RUN/nginx/tmp"
    nginx -p "$RUN/nginx/" -c "$ROOT/loadtest/peers/nchan/nginx.conf" 2>"$RUN/nginx.stderr" &
    SERVER=$!
    wait_port $NCHAN_PORT
}

one() { # NAME SYSTEM PORT TRANSPORT
    local name=$1 system=$2 port=$3 t=$4
    log "$name"
    "$LT" run --system "$system" --url "http://127.0.0.1:$port" --transport "$t" --server-pid "$SERVER" \
        --connections "$SUBS" --dist zipf --keys 1000 --publish-dist uniform --settle-secs 3 \
        --rates "$RATE" --step-secs "$SECS" --max-secs 300 --quiet \
        --scenario "$name" --json "$OUT/$name.json" >&2
    stop_server
}

for round in $(seq 1 "$ROUNDS"); do
    for t in ws sse; do
        start_nchan;            one "nchan-$t-r$round" nchan $NCHAN_PORT "$t"
        start_pushgate fsync;   one "fsync-$t-r$round" pushgate $PG_PORT "$t"
        start_pushgate os;      one "os-$t-r$round" pushgate $PG_PORT "$t"
    done
done

python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, sys, os
out, rounds = sys.argv[1], int(sys.argv[2])
print(f"{'run':<14}{'deliv/s':>9}{'ratio':>7}{'p50':>7}{'p90':>7}{'p99':>7}{'p99.9':>8}{'max':>8}{'CPU s':>7}{'user µs':>9}{'sys µs':>8}")
for t in ["ws", "sse"]:
    for system in ["nchan", "fsync", "os"]:
        for r in range(1, rounds + 1):
            name = f"{system}-{t}-r{r}"
            with open(os.path.join(out, name + ".json")) as f:
                s = json.load(f)["steps"][0]
            l = s["latency"]
            print(f"{name:<14}{s['deliveries_per_sec']:>9.0f}{s['delivery_ratio']:>7.3f}{l['p50_ms']:>7.2f}{l['p90_ms']:>7.2f}{l['p99_ms']:>7.2f}{l['p999_ms']:>8.2f}{l['max_ms']:>8.2f}{s['server_cpu_secs']:>7.2f}{s['user_us_per_delivery']:>9.2f}{s['sys_us_per_delivery']:>8.2f}")
EOF
