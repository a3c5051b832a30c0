#!/usr/bin/env bash
# Traces against a real receiver: Jaeger v1.75.0's all-in-one (scripts/jaeger-setup builds
# it from the Go module proxy, cached) on 127.0.0.1 with in-memory storage and an OTLP/HTTP
# receiver, and two gateways exporting to it (telemetry.otlp_endpoint, every trace sampled):
#   1. the embedded log: a record published with curl-like urllib and a `traceparent` header;
#   2. Apache Kafka 4.4 (scripts/kafka-broker): a record produced by kafka-python with a
#      `traceparent` record header, and one published through the gateway's publish API
#      with a `traceparent` header (its Kafka producer passes it on as a record header).
# Each time a WebSocket client (Python websockets), an SSE client (urllib) and a gRPC client
# (grpcio, tests/grpc/client.py in tests/grpc/.venv, from scripts/grpc-setup) receive the
# record, the gateway is stopped (SIGTERM: the drain flushes the spans), and check.py asks
# Jaeger's query API for the trace id the producer chose: it must hold pushgate's ingest
# span (child of the producer's span), its fan-out span and one delivery span per transport,
# and a catch-up span inside a connection span. Bounded in time; every process it starts
# is gone when it returns.
#
#   PUSHGATE_BIN   gateway binary (default: target/debug/pushgate)
#   TRACES_KAFKA   0 skips the Kafka half (default 1: scripts/kafka-setup installed it)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin=${PUSHGATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/pushgate}
[ -x "$bin" ] || { echo "traces: no gateway binary at $bin (cargo build first)" >&2; exit 2; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
scripts/jaeger-setup
jaeger=$(scripts/jaeger-setup --path)
python3 -c 'import websockets' 2>/dev/null || python3 -m pip install --quiet websockets
[ -x tests/grpc/.venv/bin/python ] || { echo "traces: no tests/grpc/.venv (scripts/grpc-setup)" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -f "$work/kafka/broker.pid" ]; then scripts/kafka-broker stop "$work/kafka" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "traces: $1 did not answer within $2 s" >&2
  return 1
}

otlp_port=$(free_port)
query_port=$(free_port)
query_grpc=$(free_port)
cat >"$work/jaeger.yaml" <<YML
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:$query_port
    grpc:
      endpoint: 127.0.0.1:$query_grpc
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:$otlp_port
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YML
timeout 600 "$jaeger" --config "file:$work/jaeger.yaml" >"$work/jaeger.log" 2>&1 &
pids+=($!)
jaeger_url=http://127.0.0.1:$query_port
wait_http "$jaeger_url/api/services" 60 || { cat "$work/jaeger.log" >&2; exit 1; }

# gateway NAME TOML: starts a gateway, prints its URL; its pid is in $work/NAME.pid.
gateway() {
  local name=$1 port
  port=$(free_port)
  mkdir -p "$work/$name"
  printf '%s\n' "$2" >"$work/$name/pushgate.toml"
  (cd "$work/$name" && exec timeout 300 "$bin" --config pushgate.toml --listen "127.0.0.1:$port" \
    --data-dir "$work/$name/data") >"$work/$name/gateway.log" 2>&1 &
  echo $! >"$work/$name.pid"
  pids+=($!)
  wait_http "http://127.0.0.1:$port/readyz" 60 >&2 || { cat "$work/$name/gateway.log" >&2; return 1; }
  echo "http://127.0.0.1:$port"
}
# Each gateway its own service name, so one's spans never pass for the other's.
telemetry() {
  printf '[telemetry]\notlp_endpoint = "http://127.0.0.1:%s"\ntrace_sample_ratio = 1.0\nservice_name = "pushgate-%s"\n' "$otlp_port" "$1"
}

# check ROUND GATEWAY_NAME URL TOPIC "MODE..." [BROKERS]: one traced record per mode (each on a
# key of its own, to fresh subscribers), then the gateway stops, then Jaeger is asked for each trace.
check() {
  local name=$2 url=$3 out mode all=() ids pid
  echo "== $1"
  for mode in $5; do
    out=$(timeout 120 python3 tests/traces/check.py deliver "$url" "$4" "k-$mode" "$mode" "${6:-}") ||
      { echo "$out"; cat "$work/$name/gateway.log" >&2; exit 1; }
    echo "$out"
    all+=("$(grep '^{' <<<"$out" | tail -1)")
  done
  pid=$(cat "$work/$name.pid")
  kill -TERM "$pid"
  timeout 30 tail --pid="$pid" -f /dev/null || { echo "traces: the $name gateway did not stop" >&2; exit 1; }
  for ids in "${all[@]}"; do
    timeout 120 python3 tests/traces/check.py jaeger "$jaeger_url" "pushgate-$name" \
      "$(jq -r .trace_id <<<"$ids")" "$(jq -r .parent_span_id <<<"$ids")" ||
      { cat "$work/$name/gateway.log" >&2; exit 1; }
  done
}

url=$(gateway embedded "[server]
shutdown_grace = \"3s\"
static_dir = \"\"
[auth]
anonymous_subscribe = true
anonymous_publish = true
[demo]
enabled = false
[[topics]]
name = \"news\"
partitions = 2
$(telemetry embedded)")
check "embedded log: publish API with a traceparent header" embedded "$url" news publish

if [ "${TRACES_KAFKA:-1}" != 0 ]; then
  scripts/kafka-broker start "$work/kafka" --watch-pid $$ >/dev/null
  brokers=$(cat "$work/kafka/bootstrap")
  python3 tests/kafka_common/kafka_tool.py create --brokers "$brokers" --topic traced --partitions 2 >/dev/null
  url=$(gateway kafka "[server]
shutdown_grace = \"3s\"
static_dir = \"\"
[source]
kind = \"kafka\"
[auth]
anonymous_subscribe = true
anonymous_publish = true
[demo]
enabled = false
[kafka]
brokers = \"$brokers\"
startup_timeout = \"30s\"
[[topics]]
name = \"traced\"
$(telemetry kafka)")
  check "Kafka: kafka-python producer with a traceparent record header; the publish API, whose producer writes the header" kafka "$url" traced "kafka publish" "$brokers"
fi
echo "== traces: passed"
