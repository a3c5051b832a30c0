#!/usr/bin/env bash
# pushgate's added latency over a bare librdkafka consumer (issue 10, part 5).
#
#   loadtest/kafka-latency.sh             # 1,000 records/s, 1,000 WS + 1,000 SSE clients, 30 s
#   SECS=10 CLIENTS=200 loadtest/kafka-latency.sh
#   CFUGO=1 loadtest/kafka-latency.sh     # then Centrifugo's own Kafka consumer, same broker and topic
#
# With CFUGO=1 (issue 29 item 2), pushgate is measured first and stopped, then
# Centrifugo v6.9.1 (built by loadtest/compare.sh into
# ${PUSHGATE_CACHE:-~/.cache/pushgate}/centrifugo-6.9.1, or built here) reads the
# same topic with its asynchronous Kafka consumer in publication data mode: every
# record carries the header `centrifugo-channels: <key>`, so its value is published
# into channel <key>, which CLIENTS unidirectional WebSocket and CLIENTS
# unidirectional SSE clients subscribe to. Its consumer polls with
# fetch_max_wait 10ms, as pushgate's fetch_wait_max_ms (its default is 500ms,
# which only matters when the topic is idle). Each run has its own bare consumer
# (the floor) and the server's CPU per delivery. A third run measures pushgate
# again (kafka-latency-again.*): the broker warms up during the first.
#
# Starts an Apache Kafka 4.4 node (scripts/kafka-broker: KRaft, PLAINTEXT, 1 GiB
# heap, G1 with full JIT unless KAFKA_JVM_OPTS says otherwise) and one pushgate
# (release build) on loopback ports, creates a 3-partition topic, then runs
# `pushgate-loadtest kafka-latency`: a librdkafka producer at RATE records/s
# over KEYS keys; a bare librdkafka consumer with pushgate's fetch settings
# (the floor); CLIENTS WebSocket and CLIENTS SSE clients of pushgate, each on
# one key. Everything it starts is stopped at the end; every step is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RATE=${RATE:-1000}
SECS=${SECS:-30}
CLIENTS=${CLIENTS:-1000}
KEYS=${KEYS:-1000}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=${PG_PORT:-$(free_port)}
OUT=${OUT:-$ROOT/loadtest/out/kafka-latency-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export PATH="$HOME/.cargo/bin:$PATH"
scripts/kafka-setup >/dev/null

if [ -z "${PUSHGATE_BIN:-}" ] || [ -z "${LOADTEST_BIN:-}" ]; then
    cargo build --release -p pushgate -p pushgate-loadtest
fi
PUSHGATE_BIN=${PUSHGATE_BIN:-$ROOT/target/release/pushgate}
LOADTEST_BIN=${LOADTEST_BIN:-$ROOT/target/release/pushgate-loadtest}

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    scripts/kafka-broker stop "$OUT/kafka" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listening on $1" >&2; return 1
}

# A benchmark broker: a bigger heap and the full JIT (the test default favours start-up).
KAFKA_HEAP=${KAFKA_HEAP:-1g} KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20} \
    scripts/kafka-broker start "$OUT/kafka" --watch-pid $$ >/dev/null
BROKER=$(cat "$OUT/kafka/bootstrap")
scripts/kafka-broker run "$OUT/kafka" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKER" \
    --create --topic lat --partitions 3 --replication-factor 1 >/dev/null

cat > "$OUT/pushgate.toml" <<TOML
[server]
listen = "127.0.0.1:$PG_PORT"
static_dir = ""
shutdown_grace = "2s"
[source]
kind = "kafka"
warm_start_records = 0
[limits]
max_connections = 60000
max_connections_per_ip = 100000
[auth]
anonymous_subscribe = true
[demo]
enabled = false
[kafka]
brokers = "$BROKER"
fetch_wait_max_ms = 10
[[topics]]
name = "lat"
ring_records = 1024
view_max_keys = 10000
TOML
# measure NAME PID ARGS...: one measured run against the server PID (stopped after),
# written to $OUT/NAME.json and NAME.md.
measure() {
    local name=$1 pid=$2
    shift 2
    timeout 900 "$LOADTEST_BIN" kafka-latency --brokers "$BROKER" --rate "$RATE" --keys "$KEYS" \
        --ws-clients "$CLIENTS" --sse-clients "$CLIENTS" --secs "$SECS" \
        --server-pid "$pid" --json "$OUT/$name.json" "$@" | tee "$OUT/$name.md"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# measure_pushgate SUFFIX: a fresh pushgate, one measured run, stopped.
measure_pushgate() {
    RUST_LOG=warn "$PUSHGATE_BIN" --config "$OUT/pushgate.toml" 2>>"$OUT/pushgate.log" &
    PG_PID=$!
    pids+=("$PG_PID")
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$PG_PORT/readyz" >/dev/null && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$PG_PORT/readyz" >/dev/null || { echo "pushgate never ready" >&2; exit 1; }
    measure "kafka-latency$1" "$PG_PID" --topic lat --url "http://127.0.0.1:$PG_PORT"
}
measure_pushgate ""

if [ "${CFUGO:-0}" = 1 ]; then
    CFUGO_DIR=${PUSHGATE_CACHE:-$HOME/.cache/pushgate}/centrifugo-6.9.1
    if [ ! -x "$CFUGO_DIR/centrifugo" ]; then
        mkdir -p "$CFUGO_DIR"
        (cd /tmp && GOBIN=$CFUGO_DIR go install "github.com/centrifugal/centrifugo/v6@v6.9.1")
    fi
    scripts/kafka-broker run "$OUT/kafka" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKER" \
        --create --topic latcf --partitions 3 --replication-factor 1 >/dev/null
    CF_PORT=$(free_port)
    python3 - "$ROOT/loadtest/peers/centrifugo/config.json" "$CF_PORT" "$BROKER" >"$OUT/centrifugo.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["http_server"]["port"] = int(sys.argv[2])
# Its own topic: a new group starts at the log's start (franz-go's default), which
# must not replay pushgate's run.
c["consumers"] = [{
    "name": "lat", "enabled": True, "type": "kafka",
    "kafka": {
        "brokers": [sys.argv[3]], "topics": ["latcf"], "consumer_group": "centrifugo-lat",
        "fetch_max_wait": "10ms",
        "publication_data_mode": {"enabled": True, "channels_header": "centrifugo-channels"},
    },
}]
print(json.dumps(c, indent=2))
PY
    "$CFUGO_DIR/centrifugo" --config "$OUT/centrifugo.json" >"$OUT/centrifugo.log" 2>&1 &
    CF_PID=$!
    pids+=("$CF_PID")
    wait_port "$CF_PORT"
    # A longer warm-up: the first records of the run wait for the consumer group's join.
    measure kafka-latency-centrifugo "$CF_PID" --system centrifugo --topic latcf --warmup-secs 10 \
        --url "http://127.0.0.1:$CF_PORT"
    # pushgate again: the broker was still warming up (JIT) during the first run,
    # so Centrifugo is compared with the runs on either side of it.
    measure_pushgate "-again"
fi
echo "results in $OUT" >&2
