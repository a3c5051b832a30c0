#!/usr/bin/env bash
# Cold-restart catch-up on one node (issue 22's (f) in small): how long N clients whose
# cursors are BEHIND records old take to be caught up (the server's `live`), and the CPU
# the node spends on it.
#
#   PUSHGATE_BIN=... LOADTEST_BIN=... CLIENTS=1000 DOWN=80 RATE=5000 loadtest/catchup-bench.sh
#   PERF=1 ...                     # also `perf record -e cpu-clock -g` of the node during the catch-up
#   NODE_EXTRA='partitioner = "murmur2"' ...   # extra lines in the topic's [[topics]] table
#
# Steps (all on 127.0.0.1, every wait bounded, everything stopped at the end):
# 1. Apache Kafka (scripts/kafka-broker), topic `fleet` with PARTITIONS partitions;
#    `fleet-produce` writes RATE records/s over KEYS keys for the whole run;
# 2. one pushgate node (Kafka mode, warm_start_records = 200 as in loadtest/fleet.sh);
#    CLIENTS `fleet-clients` (WebSocket/SSE/gRPC 2:1:1, KEYS_PER_CLIENT keys each, every
#    4th filtered) connect straight to it and go live;
# 3. the node gets SIGTERM; DOWN seconds later (RATE x DOWN records behind) it starts again;
# 4. prints the time from that start until every client is caught up again (the clients'
#    `live` count back at CLIENTS), the node's CPU seconds until then, and the clients'
#    check (lost, duplicated, reordered) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLIENTS=${CLIENTS:-1000}
DOWN=${DOWN:-80}
RATE=${RATE:-5000}
KEYS=${KEYS:-10000}
KEYS_PER_CLIENT=${KEYS_PER_CLIENT:-3}
PARTITIONS=${PARTITIONS:-8}
LIMIT=${LIMIT:-600}
PORT=${PORT:-$(( 20000 + RANDOM % 20000 ))}
OUT=${OUT:-/tmp/catchup-bench-$(date -u +%H%M%S)}
PUSHGATE_BIN=${PUSHGATE_BIN:-$ROOT/target/release/pushgate}
LOADTEST_BIN=${LOADTEST_BIN:-$ROOT/target/release/pushgate-loadtest}
mkdir -p "$OUT"
log() { echo "[catchup $(date -u +%H:%M:%S)] $*" >&2; }
now_ms() { date +%s%3N; }
pids=()
node=""
cleanup() {
    set +e
    [ -n "$node" ] && kill -9 "$node" 2>/dev/null
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    scripts/kafka-broker stop "$OUT/kafka" >/dev/null 2>&1
    wait 2>/dev/null
}
trap cleanup EXIT

KAFKA_HEAP=${KAFKA_HEAP:-512m} scripts/kafka-broker start "$OUT/kafka" --watch-pid $$ >/dev/null
BROKER=$(cat "$OUT/kafka/bootstrap")
scripts/kafka-broker run "$OUT/kafka" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKER" \
    --create --topic fleet --partitions "$PARTITIONS" --replication-factor 1 >/dev/null
cat > "$OUT/node.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
static_dir = ""
shutdown_grace = "5s"
drain_spread = "1s"
[source]
kind = "kafka"
warm_start_records = 200
[limits]
max_connections = 100000
max_connections_per_ip = 1000000
[auth]
anonymous_subscribe = true
[demo]
enabled = false
[kafka]
brokers = "$BROKER"
client_id = "catchup-bench"
[[topics]]
name = "fleet"
ring_records = 4096
view_max_keys = 10000
${NODE_EXTRA:-}
TOML
start_node() {
    RUST_LOG=warn "$PUSHGATE_BIN" --config "$OUT/node.toml" >>"$OUT/node.log" 2>&1 &
    node=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0
        sleep 0.1
    done
    log "node not ready after 60 s"; exit 1
}
live_count() { grep -o 'live [0-9]*/' "$OUT/clients.log" 2>/dev/null | tail -1 | tr -dc 0-9; }
wait_live() {  # seconds; returns 0 once every client is live
    local until=$(( $(date +%s) + $1 ))
    while [ "$(date +%s)" -lt "$until" ]; do
        [ "$(live_count)" = "$CLIENTS" ] && return 0
        sleep 0.2
    done
    return 1
}
cpu_secs() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }

start_node
"$LOADTEST_BIN" fleet-produce --brokers "$BROKER" --keys "$KEYS" --rate "$RATE" \
    --stop-file "$OUT/stop-producer" --counts "$OUT/counts.json" 2>"$OUT/producer.log" &
producer=$!
pids+=($producer)
( ulimit -n 20000; exec "$LOADTEST_BIN" fleet-clients --frontends "127.0.0.1:$PORT" --clients "$CLIENTS" \
    --keys "$KEYS" --keys-per-client "$KEYS_PER_CLIENT" --ramp-secs 5 \
    --stop-file "$OUT/stop-clients" --out "$OUT/clients.json" ) 2>"$OUT/clients.log" &
clients=$!
pids+=($clients)
wait_live 60 || { log "clients not live: $(live_count)/$CLIENTS"; exit 1; }
log "$CLIENTS clients live; node down for ${DOWN}s"
kill -TERM "$node"; wait "$node" 2>/dev/null || true; node=""
sleep "$DOWN"
t0=$(now_ms)
start_node
t_ready=$(now_ms)
if [ -n "${PERF:-}" ]; then
    perf record -e cpu-clock -g -F 499 -p "$node" -o "$OUT/perf.data" 2>"$OUT/perf.log" &
    perf_pid=$!
fi
ok=1
wait_live "$LIMIT" || ok=0
t1=$(now_ms)
cpu=$(cpu_secs "$node")
[ -n "${PERF:-}" ] && { kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; }
metrics=$(curl -sf "http://127.0.0.1:$PORT/metrics" || true)
m() { awk -v n="$1" '$1 == n || index($1, n "{") == 1 {s += $2} END {printf "%d", s}' <<< "$metrics"; }
result="clients $CLIENTS, behind $(( RATE * DOWN )) records: ready after $(( t_ready - t0 )) ms; all caught up $(( t1 - t0 )) ms after the start$([ $ok = 1 ] || echo " (NOT all: $(live_count)/$CLIENTS after ${LIMIT}s)"); node CPU $cpu s; replayed from the log $(m pushgate_replayed_records_total); catch-up reads $(m pushgate_catchup_reads_total), coalesced $(m pushgate_catchup_reads_coalesced_total)"
log "$result"
echo "$result" > "$OUT/result.txt"
grep '^pushgate_replayed_records_total\|^pushgate_kafka_catchup_reads_total' <<< "$metrics" >> "$OUT/result.txt" || true
touch "$OUT/stop-producer"
wait "$producer" 2>/dev/null || true
echo "$OUT/counts.json" > "$OUT/stop-clients"
wait "$clients" 2>/dev/null || true
tail -1 "$OUT/clients.log" | tee -a "$OUT/result.txt" >&2
