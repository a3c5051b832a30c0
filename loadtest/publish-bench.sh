#!/usr/bin/env bash
# The cost of publishing (issue 29 item 5, group commit): server CPU per
# record and publish latency at 100, 1,000 and 10,000 publishes/s, one record
# per HTTP request, up to PUBLISHERS requests in flight, with
# `embedded.durability = "fsync"` (loadtest/bench.toml's default), topic
# `bench` with no subscribers. Each binary in BINS runs every rate on a fresh
# server, binaries alternating, ROUNDS times. Everything listens on
# 127.0.0.1, is bounded in time and stops by itself.
#
#   BINS="base=/tmp/a/pushgate new=/tmp/b/pushgate new5ms=/tmp/b/pushgate@5ms" \
#     LT=/tmp/pushgate-loadtest ROUNDS=2 SECS=20 loadtest/publish-bench.sh
# A BINS entry's `@WAIT` sets `embedded.commit_wait` (servers that have it).
# Results: loadtest/out/publish-bench/ (one JSON per binary, rate and round).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/loadtest/out/publish-bench}"
ROUNDS="${ROUNDS:-2}"
SECS="${SECS:-20}"
RATES="${RATES:-100 1000 10000}"
PUBLISHERS="${PUBLISHERS:-32}"
PORT=18080
BINS="${BINS:-current=$ROOT/target/release/pushgate}"
LT="${LT:-$ROOT/target/release/pushgate-loadtest}"
RUN="$(mktemp -d /tmp/pushgate-publish-bench.XXXXXX)"
mkdir -p "$OUT"
log() { echo "[publish-bench $(date +%T)] $*" >&2; }

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

for round in $(seq 1 "$ROUNDS"); do
    for rate in $RATES; do
        for bin in $BINS; do
            name=${bin%%=*} path=${bin#*=} wait=""
            if [[ $path == *@* ]]; then wait=${path#*@} path=${path%@*}; fi
            if [ -n "$wait" ]; then
                sed "s/^\[embedded\]$/[embedded]\ncommit_wait = \"$wait\"/" "$ROOT/loadtest/bench.toml" >"$RUN/pushgate.toml"
            else
                cp "$ROOT/loadtest/bench.toml" "$RUN/pushgate.toml"
            fi
            rm -rf "$RUN/data"
            "$path" --config "$RUN/pushgate.toml" --listen "127.0.0.1:$PORT" --data-dir "$RUN/data" 2>"$RUN/pushgate.log" &
            SERVER=$!
            wait_port $PORT
            log "$name $rate/s round $round"
            "$LT" publish-bench --url "http://127.0.0.1:$PORT" --server-pid "$SERVER" --rates "$rate" \
                --secs "$SECS" --publishers "$PUBLISHERS" --label "$name" \
                --json "$OUT/$name-$rate-r$round.json"
            stop_server
        done
    done
done

python3 - "$OUT" <<'PY'
import json, sys, os, glob
rows = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    r = json.load(open(f))
    for s in r["steps"]:
        rows.append((s["rate"], r["label"], os.path.basename(f), s))
print(f"{'run':<22}{'pub/s':>8}{'errs':>6}{'p50':>7}{'p99':>8}{'CPU µs':>8}{'user':>7}{'sys':>7}{'writer':>8}{'rec/batch':>10}{'app p50':>8}{'app p99':>8}{'load':>6}")
for rate, label, f, s in sorted(rows, key=lambda x: (x[0], x[1], x[2])):
    per = s["published"] / s["batches"] if s["batches"] else 0
    fmt = lambda v: f"{v:.2f}" if v is not None else "-"
    print(f"{f[:-5]:<22}{s['published']/s['secs']:>8.0f}{s['errors']:>6}{s['latency']['p50_ms']:>7.2f}{s['latency']['p99_ms']:>8.2f}"
          f"{s['cpu_us_per_record']:>8.1f}{s['user_us_per_record']:>7.1f}{s['sys_us_per_record']:>7.1f}{s['writer_cpu_us_per_record']:>8.1f}{per:>10.2f}"
          f"{fmt(s['append_p50_ms']):>8}{fmt(s['append_p99_ms']):>8}{s['loadavg']:>6.2f}")
PY
