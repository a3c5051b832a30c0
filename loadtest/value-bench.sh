#!/usr/bin/env bash
# The value-aware delivery benchmarks, side by side in one run (issue 11):
#
#   filters      5,000 WebSocket subscribers over 1,000 keys at 2,000 records/s:
#                key-only, then with 100 distinct value filters (deliveries per
#                server CPU-second; target >= 0.8x key-only).
#   shared       5,000 subscribers on one key: broadcast, then all sharing one
#                filter (target: within 10% of broadcast).
#   conflation   5,000 subscribers on one key updated 200 times a second with
#                max_rate 4, against unconflated delivery (at 4/s: the same
#                deliveries; at 20/s: about what this machine sustains).
#   delta        bytes on the wire with and without JSON Patch deltas on a
#                20-field CDC row and on the demo ticker (`delta-bytes`).
#
# Each pair runs interleaved ROUNDS times on a fresh pushgate (release build),
# so slow drift on a shared machine hits both sides. Everything listens on
# 127.0.0.1, is bounded in time and stops by itself. Results: loadtest/out/value/.
#
#   ROUNDS=2 STEP_SECS=15 loadtest/value-bench.sh
#   DELTA_ONLY=1 loadtest/value-bench.sh     # the delta part again
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/loadtest/out/value}"
ROUNDS="${ROUNDS:-2}"
STEP_SECS="${STEP_SECS:-15}"
SUBS="${SUBS:-5000}"
PORT="${PORT:-18090}"
PG="$ROOT/target/release/pushgate"
LT="$ROOT/target/release/pushgate-loadtest"
RUN="$(mktemp -d /tmp/pushgate-value-bench.XXXXXX)"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { echo "[value-bench $(date +%T)] $*" >&2; }
(cd "$ROOT" && cargo build --release -q -p pushgate -p pushgate-loadtest)

PGPID=""
stop_pg() { if [ -n "$PGPID" ]; then kill "$PGPID" 2>/dev/null || true; wait "$PGPID" 2>/dev/null || true; PGPID=""; fi; }
trap 'stop_pg; rm -rf "$RUN"' EXIT

# start_pg [extra config]: a fresh gateway on $PORT.
start_pg() {
    stop_pg
    rm -rf "$RUN/data"
    if [ -n "${1:-}" ]; then
        # The extra config brings its own [demo] section.
        sed '/^\[demo\]/,/^$/d' "$ROOT/loadtest/bench.toml" >"$RUN/pushgate.toml"
        printf '\n%s\n' "$1" >>"$RUN/pushgate.toml"
    else
        cp "$ROOT/loadtest/bench.toml" "$RUN/pushgate.toml"
    fi
    "$PG" --config "$RUN/pushgate.toml" --listen "127.0.0.1:$PORT" --data-dir "$RUN/data" 2>"$RUN/pushgate.log" &
    PGPID=$!
    for _ in $(seq 1 150); do
        curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "pushgate did not start"; cat "$RUN/pushgate.log" >&2; exit 1
}

# one NAME ARGS...: one load generator run against a fresh gateway.
one() {
    local name=$1; shift
    start_pg
    log "$name"
    "$LT" run --url "http://127.0.0.1:$PORT" --server-pid "$PGPID" --connections "$SUBS" \
        --step-secs "$STEP_SECS" --settle-secs 2 --drain-secs 2 --max-secs 300 --quiet \
        --scenario "$name" --json "$OUT/$name.json" "$@" | tail -n +1 >&2
}

# DELTA_ONLY=1: only the delta-bytes part (the runs' JSON from before is summarized).
for round in $(seq 1 "$ROUNDS"); do
    [ -n "${DELTA_ONLY:-}" ] && break
    one "keyonly-r$round"   --keys 1000 --dist uniform --rates 2000 --value-payload
    one "filters100-r$round" --keys 1000 --dist uniform --rates 2000 --filters 100
    one "broadcast-r$round" --dist hot --rates 10 --value-payload
    one "shared1-r$round"   --dist hot --rates 10 --filters 1
    one "conflated-r$round" --dist hot --rates 200 --max-rate 4
    one "plain4-r$round"    --dist hot --rates 4
    one "plain20-r$round"   --dist hot --rates 20
done

log "delta bytes"
start_pg $'[demo]\nenabled = true\ntopic = "prices"\nsymbols = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA", "META", "NFLX"]\ninterval = "100ms"\n\n[[topics]]\nname = "prices"\npartitions = 4\nretention_records = 100000\nring_records = 1024'
"$LT" delta-bytes --url "http://127.0.0.1:$PORT" --updates 5000 --keys 100 --rate 1000 \
    --demo-topic prices --demo-secs 20 --json "$OUT/delta.json" | tee "$OUT/delta.txt"
stop_pg

python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, sys, os
out, rounds = sys.argv[1], int(sys.argv[2])
def step(name):
    with open(os.path.join(out, name + ".json")) as f:
        r = json.load(f)
    s = r["steps"][0]
    return s, r
print(f"{'scenario':<16}{'round':>6}{'deliv/s':>10}{'ratio':>7}{'CPU s':>7}{'deliv/CPU s':>13}{'user µs':>9}{'sys µs':>8}{'p50 ms':>8}{'p99 ms':>8}")
pairs = [("keyonly", "filters100"), ("broadcast", "shared1"), ("plain4", "conflated"), ("plain20", "conflated")]
for n in ["keyonly", "filters100", "broadcast", "shared1", "conflated", "plain4", "plain20"]:
    for i in range(1, rounds + 1):
        s, r = step(f"{n}-r{i}")
        print(f"{n:<16}{i:>6}{s['deliveries_per_sec']:>10.0f}{s['delivery_ratio']:>7.3f}{s['server_cpu_secs']:>7.2f}{s['deliveries_per_cpu_sec']:>13.0f}{s['user_us_per_delivery']:>9.2f}{s['sys_us_per_delivery']:>8.2f}{s['latency']['p50_ms']:>8.2f}{s['latency']['p99_ms']:>8.2f}")
print()
for a, b in pairs:
    for i in range(1, rounds + 1):
        sa, _ = step(f"{a}-r{i}"); sb, _ = step(f"{b}-r{i}")
        print(f"round {i}: {b} / {a}: deliveries per CPU-second {sb['deliveries_per_cpu_sec'] / max(sa['deliveries_per_cpu_sec'], 1e-9):.2f}x, server CPU {sb['server_cpu_secs'] / max(sa['server_cpu_secs'], 1e-9):.2f}x, deliveries/s {sb['deliveries_per_sec'] / max(sa['deliveries_per_sec'], 1e-9):.2f}x")
EOF
