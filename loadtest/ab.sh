#!/usr/bin/env bash
# A/B two pushgate binaries side by side: the same scenarios, interleaved
# ROUNDS times, each run on a fresh server with loadtest/bench.toml. For
# checking that an optimization helps (and by how much) on a noisy machine.
#
#   loadtest/ab.sh OLD_BINARY NEW_BINARY
#   ROUNDS=3 TRANSPORTS="ws sse" SCENARIOS="broadcast filtered" loadtest/ab.sh a b
#
# Scenarios: broadcast (5,000 subscribers on one key, 20 publishes/s =
# 100,000 deliveries/s), filtered (5,000 over 1,000 keys, Zipf, 2,000
# publishes/s). Everything on 127.0.0.1, bounded, stops by itself. Results:
# loadtest/out/ab/.
#
# Two configurations of one binary instead: CONFIG_A / CONFIG_B name config
# files (default loadtest/bench.toml), and B_TRANSPORT the load generator's
# transport for side b (default: the same as a's). WebSocket compression:
#   CONFIG_B=loadtest/bench-deflate.toml B_TRANSPORT=ws-deflate \
#     loadtest/ab.sh target/release/pushgate target/release/pushgate
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
A=$(realpath "$1"); B=$(realpath "$2")
OUT="${OUT:-$ROOT/loadtest/out/ab}"
ROUNDS="${ROUNDS:-2}"
SECS="${SECS:-15}"
TRANSPORTS="${TRANSPORTS:-ws}"
SCENARIOS="${SCENARIOS:-broadcast filtered}"
PORT="${PORT:-18095}"
CONFIG_A=$(realpath "${CONFIG_A:-$ROOT/loadtest/bench.toml}")
CONFIG_B=$(realpath "${CONFIG_B:-$ROOT/loadtest/bench.toml}")
LT="$ROOT/target/release/pushgate-loadtest"
RUN="$(mktemp -d /tmp/pushgate-ab.XXXXXX)"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log() { echo "[ab $(date +%T)] $*" >&2; }
[ -x "$LT" ] || (cd "$ROOT" && cargo build --release -q -p pushgate-loadtest)

SERVER=""
stop_server() {
    if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; fi
}
trap 'stop_server; rm -rf "$RUN"' EXIT

start() { # BINARY CONFIG
    rm -rf "$RUN/data"
    "$1" --config "$2" --listen "127.0.0.1:$PORT" --data-dir "$RUN/data" 2>"$RUN/pushgate.log" &
    SERVER=$!
    for _ in $(seq 1 150); do
        curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "pushgate did not start"; cat "$RUN/pushgate.log" >&2; exit 1
}

for round in $(seq 1 "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        for t in $TRANSPORTS; do
            for side in a b; do
                bin=$A; config=$CONFIG_A; transport=$t
                if [ $side = b ]; then bin=$B; config=$CONFIG_B; transport=${B_TRANSPORT:-$t}; fi
                name="$scenario-$t-$side-r$round"
                case $scenario in
                    broadcast) args=(--dist hot --rates 20) ;;
                    filtered) args=(--dist zipf --keys 1000 --publish-dist uniform --rates 2000) ;;
                    *) log "unknown scenario $scenario"; exit 2 ;;
                esac
                start "$bin" "$config"
                log "$name"
                "$LT" run --url "http://127.0.0.1:$PORT" --transport "$transport" --server-pid "$SERVER" \
                    --connections 5000 --settle-secs 3 --step-secs "$SECS" --max-secs 300 --quiet \
                    --scenario "$name" --json "$OUT/$name.json" "${args[@]}" >/dev/null
                stop_server
            done
        done
    done
done

python3 - "$OUT" "$ROUNDS" "$SCENARIOS" "$TRANSPORTS" <<'EOF'
import json, sys, os
out, rounds, scenarios, transports = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
def load(n):
    with open(os.path.join(out, n + ".json")) as f:
        r = json.load(f)
    return r, r["steps"][0]
print(f"{'run':<24}{'deliv/s':>9}{'ratio':>7}{'deliv/CPU s':>13}{'user µs':>9}{'sys µs':>8}{'p50':>7}{'p99':>8}{'idle B/conn':>12}{'compressed':>12}")
for sc in scenarios:
    for t in transports:
        for r in range(1, rounds + 1):
            for side in "ab":
                n = f"{sc}-{t}-{side}-r{r}"
                res, s = load(n)
                l = s["latency"]
                print(f"{n:<24}{s['deliveries_per_sec']:>9.0f}{s['delivery_ratio']:>7.3f}{s['deliveries_per_cpu_sec']:>13.0f}{s['user_us_per_delivery']:>9.2f}{s['sys_us_per_delivery']:>8.2f}{l['p50_ms']:>7.2f}{l['p99_ms']:>8.2f}{res['rss_per_conn_bytes']:>12.0f}{res['errors'].get('compressed', 0):>12}")
            _, a = load(f"{sc}-{t}-a-r{r}"); _, b = load(f"{sc}-{t}-b-r{r}")
            print(f"  round {r}: b/a deliveries per CPU-second {b['deliveries_per_cpu_sec'] / a['deliveries_per_cpu_sec']:.2f}x, user CPU per delivery {b['user_us_per_delivery'] / a['user_us_per_delivery']:.2f}x")
EOF
