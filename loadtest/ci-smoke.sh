#!/usr/bin/env bash
# CI smoke test for loadtest/: starts the real gateway on a free loopback port
# with a temporary data dir, runs the load generator with 50 connections for a
# few seconds per transport and checks that deliveries arrive.
# Run after `cargo build --workspace` (debug binaries; PROFILE=release for
# release ones). Prints `N passed, N failed` last; exits non-zero on failure.
set -u
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-debug}
PG=${PUSHGATE_BIN:-target/$PROFILE/pushgate}
LT=${LOADTEST_BIN:-target/$PROFILE/pushgate-loadtest}
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); echo "FAILED - $1"; }

finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}

for bin in "$PG" "$LT"; do
    if [ ! -x "$bin" ]; then
        fail "binary $bin exists (run cargo build --workspace first)"
        finish
    fi
done

ulimit -n 4096 2>/dev/null || true
tmp=$(mktemp -d)
"$PG" --config loadtest/bench.toml --listen 127.0.0.1:0 --data-dir "$tmp/data" 2>"$tmp/pushgate.log" &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

addr=""
for _ in $(seq 1 300); do
    addr=$(grep -o 'listening on http://[0-9.:]*' "$tmp/pushgate.log" | head -n1 | sed 's/listening on //')
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$addr" ]; then
    fail "pushgate started"
    cat "$tmp/pushgate.log"
    finish
fi
ok "pushgate started on $addr"

# name, then loadtest arguments
scenario() {
    local name=$1
    shift
    if timeout 120 "$LT" run --system pushgate --url "$addr" --server-pid "$pid" \
        --connections 50 --settle-secs 1 --step-secs 3 --drain-secs 2 --max-secs 100 \
        --min-delivery-ratio 0.99 --scenario "$name" \
        --json "$tmp/$name.json" --svg "$tmp/$name.svg" "$@" >"$tmp/$name.out" 2>&1; then
        ok "$name: $(grep 'delivery check' "$tmp/$name.out")"
    else
        fail "$name"
        cat "$tmp/$name.out"
    fi
}

scenario smoke-ws-uniform --transport ws --dist uniform --keys 10 --rates 100
scenario smoke-sse-uniform --transport sse --dist uniform --keys 10 --rates 100
scenario smoke-ws-broadcast --transport ws --dist hot --rates 20,50
scenario smoke-sse-zipf --transport sse --dist zipf --keys 20 --rates 100
scenario smoke-grpc-zipf --transport grpc --dist zipf --keys 20 --rates 100

if [ -s "$tmp/smoke-ws-uniform.json" ] && [ -s "$tmp/smoke-ws-uniform.svg" ]; then
    ok "JSON result and SVG chart written"
else
    fail "JSON result and SVG chart written"
fi
if kill -0 "$pid" 2>/dev/null; then ok "pushgate still running"; else fail "pushgate still running"; fi
finish
