#!/usr/bin/env bash
# Before/after figures for the tuning patches: two pushgate binaries, same
# load, one after the other.
#   loadtest/tuning/measure.sh BEFORE_BIN AFTER_BIN [LOADTEST_BIN]
# Prints idle RSS per connection (19,500 or ulimit-bound connections, WS and
# SSE) and broadcast deliveries per server CPU-second at 20 and 100 msg/s
# (5,000 subscribers on one key, WS and SSE), each binary run twice.
set -euo pipefail
cd "$(dirname "$0")/../.."
BEFORE=$1 AFTER=$2 LT=${3:-target/release/pushgate-loadtest}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PORT=18080
run_server() {
    rm -rf "$TMP/data"
    "$1" --config loadtest/bench.toml --listen 127.0.0.1:$PORT --data-dir "$TMP/data" 2>/dev/null &
    PID=$!
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.1; done
}
stop_server() {
    kill "$PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PID" 2>/dev/null || true
    sleep 2
}
TMP=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$TMP"' EXIT
N=$(( $(ulimit -n) - 500 )); [ "$N" -gt 20000 ] && N=20000
for round in 1 2; do
    for label in before after; do
        bin=$BEFORE; [ "$label" = after ] && bin=$AFTER
        for t in ws sse; do
            run_server "$bin"
            "$LT" run --system pushgate --url http://127.0.0.1:$PORT --transport $t --connections "$N" \
                --dist uniform --keys 1000 --settle-secs 10 --server-pid "$PID" --quiet \
                --json "$TMP/r.json" >/dev/null 2>&1 || true
            echo "round $round $label idle-$t: $(grep -o '"rss_per_conn_bytes": [0-9.]*' "$TMP/r.json" | awk '{printf "%.0f B/conn", $2}')"
            stop_server
            run_server "$bin"
            "$LT" run --system pushgate --url http://127.0.0.1:$PORT --transport $t --connections 5000 \
                --dist hot --rates 20,100 --step-secs 6 --settle-secs 2 --server-pid "$PID" 2>&1 \
                | grep 'step ' | sed "s/.*step /round $round $label broadcast-$t /; s/deliveries\/s.*server/deliveries\/s, server/"
            stop_server
        done
    done
done
