#!/usr/bin/env bash
# The fleet harness (issue 22): N pushgate nodes on Apache Kafka behind the shipped
# HAProxy configuration, thousands of checking, resuming clients, and the scenarios
# that move them: (a) baseline, (b) rolling deploy, (c) kill -9 of one node, (d) kill -9
# of half the nodes, (e) every load-balancer process restarted at once, (f) cold restart
# of the whole fleet with cursors COLD_SECS old, (g) broker restart.
#
#   loadtest/fleet.sh                                  # 4 nodes, 4,000 clients, every scenario
#   CLIENTS=20000 CLIENT_PROCS=5 HAPROXIES=3 loadtest/fleet.sh
#   SCENARIOS="a b c" CLIENTS=1000 loadtest/fleet.sh
#   FLEET_CI=1 loadtest/fleet.sh                       # CI: 3 nodes, 1,500 clients, (b) and (c),
#                                                      #     exit 1 unless 0 lost/dup/reordered
#                                                      #     and every client resumed within
#                                                      #     WITHIN s of its outage and of the
#                                                      #     scenario's end (FLEET_CHECK=1: the same)
#
# Parts (all on 127.0.0.1 ports, all stopped at the end, every wait bounded):
# - Apache Kafka 4.4 (scripts/kafka-broker), topic `fleet` with PARTITIONS partitions;
# - NODES pushgate nodes (release build), Kafka mode, [server] drain_spread = DRAIN_SPREAD,
#   [limits] connect_rate = CONNECT_RATE (0: off), catchup_concurrency default;
# - HAPROXIES HAProxy processes, each deploy/haproxy.cfg's global, defaults and backend
#   settings with the nodes as servers (gRPC to a `proto h2` backend, as
#   docs/load-balancers.md says) and its own port: a cloud load balancer is several machines,
#   and one process here is limited to 20,000 open files (two per client);
# - `pushgate-loadtest fleet-produce`: RATE records/s to Kafka over KEYS keys, payload
#   {"ts","seq" (per key),"even"}; with the defaults each client gets about one record/s;
# - CLIENT_PROCS `pushgate-loadtest fleet-clients` processes (ulimit -n 20000 each), each
#   with its own source addresses 127.(20+p).x.y: WebSocket/SSE/gRPC 2:1:1, KEYS_PER_CLIENT
#   keys each, every 4th with the filter {"even":true}; every record checked (lost,
#   duplicated, reordered per key and partition), reconnects with full-jitter backoff
#   (250 ms base, 5 s cap) or Retry-After, resumes from its cursor;
# - NODE_LOG: the nodes' RUST_LOG (default warn), e.g. "warn,pushgate::server=debug";
# - `pushgate-loadtest fleet-sample`: each node's CPU, RSS and metrics every second.
# At the end `pushgate-loadtest fleet-report` writes $OUT/fleet.md (table, per-node figures,
# an ASCII chart of resumed clients per scenario).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -n "${FLEET_CI:-}" ]; then
    : "${NODES:=3}" "${CLIENTS:=1500}" "${CLIENT_PROCS:=2}" "${HAPROXIES:=1}"
    : "${SCENARIOS:=b c}" "${STEADY:=8}" "${RATE:=600}" "${DRAIN_SPREAD:=2s}" "${RAMP:=6}"
    : "${WITHIN:=45}"
fi
NODES=${NODES:-4}
CLIENTS=${CLIENTS:-4000}
CLIENT_PROCS=${CLIENT_PROCS:-$(( (CLIENTS + 3999) / 4000 ))}
HAPROXIES=${HAPROXIES:-$(( (CLIENTS + 7999) / 8000 ))}
SCENARIOS=${SCENARIOS:-a b c d e f g}
STEADY=${STEADY:-20}
RATE=${RATE:-3333}
KEYS=${KEYS:-10000}
KEYS_PER_CLIENT=${KEYS_PER_CLIENT:-3}
PARTITIONS=${PARTITIONS:-8}
DRAIN_SPREAD=${DRAIN_SPREAD:-5s}
CONNECT_RATE=${CONNECT_RATE:-500}
COLD_SECS=${COLD_SECS:-120}
RAMP=${RAMP:-$(( CLIENTS / 400 + 5 ))}
WITHIN=${WITHIN:-60}
BASE_PORT=${BASE_PORT:-$(( 20000 + RANDOM % 20000 ))}
OUT=${OUT:-$ROOT/loadtest/out/fleet-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export PATH="$HOME/.cargo/bin:$PATH"
scripts/kafka-setup >/dev/null
command -v haproxy >/dev/null || { echo "haproxy is needed (apt-get install haproxy)" >&2; exit 1; }

if [ -z "${PUSHGATE_BIN:-}" ] || [ -z "${LOADTEST_BIN:-}" ]; then
    cargo build --release -p pushgate -p pushgate-loadtest
fi
PUSHGATE_BIN=${PUSHGATE_BIN:-$ROOT/target/release/pushgate}
LOADTEST_BIN=${LOADTEST_BIN:-$ROOT/target/release/pushgate-loadtest}

now_ms() { date +%s%3N; }
log() { echo "[fleet $(date -u +%H:%M:%S)] $*" >&2; }
pids=()
cleanup() {
    set +e
    touch "$OUT/stop"
    for f in "$OUT"/node*.pid "$OUT"/haproxy*.pid; do
        [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    scripts/kafka-broker stop "$OUT/kafka" >/dev/null 2>&1
    wait 2>/dev/null
}
trap cleanup EXIT

# --- Kafka
log "starting Kafka"
KAFKA_HEAP=${KAFKA_HEAP:-512m} scripts/kafka-broker start "$OUT/kafka" --watch-pid $$ >/dev/null
BROKER=$(cat "$OUT/kafka/bootstrap")
scripts/kafka-broker run "$OUT/kafka" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKER" \
    --create --topic fleet --partitions "$PARTITIONS" --replication-factor 1 >/dev/null

# --- pushgate nodes
node_port() { echo $(( BASE_PORT + $1 )); }
for i in $(seq 1 "$NODES"); do
    cat > "$OUT/node$i.toml" <<TOML
[server]
listen = "127.0.0.1:$(node_port "$i")"
static_dir = ""
shutdown_grace = "15s"
drain_spread = "$DRAIN_SPREAD"
trusted_proxies = ["127.0.0.1/32"]
[source]
kind = "kafka"
# Small on purpose: a cold restart's resumes are served by catch-up reads from Kafka.
warm_start_records = 200
[limits]
max_connections = 100000
max_connections_per_ip = 1000000
connect_rate = $CONNECT_RATE
connect_burst = 500
[auth]
anonymous_subscribe = true
[demo]
enabled = false
[kafka]
brokers = "$BROKER"
client_id = "fleet-node$i"
[[topics]]
name = "fleet"
ring_records = 4096
view_max_keys = 10000
TOML
done
start_node() {
    RUST_LOG="${NODE_LOG:-warn}" "$PUSHGATE_BIN" --config "$OUT/node$1.toml" >>"$OUT/node$1.log" 2>&1 &
    echo $! > "$OUT/node$1.pid"
}
wait_ready() {
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$(node_port "$1")/readyz" >/dev/null && return 0
        sleep 0.1
    done
    log "node$1 not ready after 60 s"; return 1
}
wait_exit() {  # pid, seconds
    for _ in $(seq 1 $(( $2 * 10 ))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    log "pid $1 still running after $2 s: SIGKILL"; kill -9 "$1" 2>/dev/null || true
}
for i in $(seq 1 "$NODES"); do start_node "$i"; done
for i in $(seq 1 "$NODES"); do wait_ready "$i"; done
log "$NODES nodes ready"

# --- HAProxy: the shipped configuration's global, defaults and backend settings.
haproxy_port() { echo $(( BASE_PORT + 100 + $1 )); }
shipped=$ROOT/deploy/haproxy.cfg
for j in $(seq 1 "$HAPROXIES"); do
    {
        # global + defaults as shipped (maxconn per process: half its 20,000 files).
        sed -n '/^global/,/^frontend/p' "$shipped" | sed '$d' | sed 's/maxconn 100000/maxconn 9800/'
        echo "frontend pushgate"
        echo "    bind 127.0.0.1:$(haproxy_port "$j")"
        echo "    use_backend grpc_nodes if { path_beg /pushgate.v1. }"
        echo "    default_backend nodes"
        for b in nodes grpc_nodes; do
            echo "backend $b"
            sed -n '/^backend nodes/,$p' "$shipped" | grep -v '^backend\|^ *server '
            for i in $(seq 1 "$NODES"); do
                if [ "$b" = grpc_nodes ]; then proto=" proto h2 check-proto h1"; else proto=""; fi
                echo "    server node$i 127.0.0.1:$(node_port "$i") check$proto"
            done
        done
    } > "$OUT/haproxy$j.cfg"
done
start_haproxy() {
    ( ulimit -n 20000; exec haproxy -db -f "$OUT/haproxy$1.cfg" >>"$OUT/haproxy$1.log" 2>&1 ) &
    echo $! > "$OUT/haproxy$1.pid"
}
for j in $(seq 1 "$HAPROXIES"); do start_haproxy "$j"; done
FRONTENDS=$(for j in $(seq 1 "$HAPROXIES"); do printf '127.0.0.1:%s,' "$(haproxy_port "$j")"; done)
FRONTENDS=${FRONTENDS%,}
sleep 2

# --- sampler, producer, clients
nodespec=$(for i in $(seq 1 "$NODES"); do printf 'node%s=%s=http://127.0.0.1:%s,' "$i" "$OUT/node$i.pid" "$(node_port "$i")"; done)
"$LOADTEST_BIN" fleet-sample --nodes "${nodespec%,}" --stop-file "$OUT/stop" --out "$OUT/samples.jsonl" &
pids+=($!)
"$LOADTEST_BIN" fleet-produce --brokers "$BROKER" --keys "$KEYS" --rate "$RATE" \
    --stop-file "$OUT/stop-producer" --counts "$OUT/counts.json" 2>"$OUT/producer.log" &
producer=$!
pids+=($producer)
per=$(( (CLIENTS + CLIENT_PROCS - 1) / CLIENT_PROCS ))
client_pids=()
for p in $(seq 0 $(( CLIENT_PROCS - 1 ))); do
    n=$(( CLIENTS - p * per )); [ "$n" -gt "$per" ] && n=$per
    ( ulimit -n 20000; exec "$LOADTEST_BIN" fleet-clients --frontends "$FRONTENDS" --clients "$n" \
        --first $(( p * per )) --source-octet $(( 20 + p )) --keys "$KEYS" \
        --keys-per-client "$KEYS_PER_CLIENT" --ramp-secs "$RAMP" --stop-file "$OUT/stop-clients" \
        --out "$OUT/clients-$p.json" ) 2>"$OUT/clients-$p.log" &
    client_pids+=($!)
    pids+=($!)
done
log "$CLIENTS clients in $CLIENT_PROCS processes through $HAPROXIES HAProxy processes; ramp ${RAMP}s"
sleep "$(( RAMP + 10 ))"

connected() {
    local total=0 n
    for i in $(seq 1 "$NODES"); do
        n=$(curl -sf --max-time 2 "http://127.0.0.1:$(node_port "$i")/metrics" | awk '$1 ~ /^pushgate_connections(\{|$)/ {s+=$2} END{print int(s)}')
        total=$(( total + ${n:-0} ))
    done
    echo "$total"
}
log "connected: $(connected)"
# CPU seconds used so far by each kind of process (nodes, HAProxy, clients, Kafka,
# producer) and by the whole machine (/proc/stat, all cores), one line each.
ticks=$(getconf CLK_TCK)
cpu_of() {  # pids...
    local p total=0
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        total=$(( total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}') ))
    done
    echo "$total"
}
cpu_split() {
    local nodes=() hap=() p
    for p in "$OUT"/node*.pid; do nodes+=("$(cat "$p")"); done
    for p in "$OUT"/haproxy*.pid; do hap+=("$(cat "$p")"); done
    local kafka; kafka=$(cat "$OUT/kafka/broker.pid" 2>/dev/null || echo 0)
    awk -v t="$ticks" '{printf "nodes %.2f\n", $1 / t}' <<< "$(cpu_of "${nodes[@]}")"
    awk -v t="$ticks" '{printf "haproxy %.2f\n", $1 / t}' <<< "$(cpu_of "${hap[@]}")"
    awk -v t="$ticks" '{printf "clients %.2f\n", $1 / t}' <<< "$(cpu_of "${client_pids[@]}")"
    awk -v t="$ticks" '{printf "kafka %.2f\n", $1 / t}' <<< "$(cpu_of "$kafka")"
    awk -v t="$ticks" '{printf "producer %.2f\n", $1 / t}' <<< "$(cpu_of "$producer")"
    awk -v t="$ticks" '/^cpu / {printf "machine %.2f\n", ($2 + $3 + $4 + $7 + $8) / t}' /proc/stat
}
event() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-$2}" >> "$OUT/events.tsv"; }

for s in $SCENARIOS; do
    sleep "$STEADY"
    log "scenario $s (connected: $(connected))"
    t0=$(now_ms)
    case $s in
    a)  cpu_split > "$OUT/cpu-a0"
        sleep "$STEADY"; event a "$t0" "$(now_ms)" "baseline"
        cpu_split > "$OUT/cpu-a1"
        # Where the machine's CPU went during the baseline, per kind of process.
        paste "$OUT/cpu-a0" "$OUT/cpu-a1" | awk -v secs="$(( ($(now_ms) - t0) / 1000 ))" \
            '{printf "%-10s %5.2f cores\n", $1, ($4 - $2) / secs}' > "$OUT/cpu-baseline.txt"
        log "CPU during the baseline (cores): $(tr '\n' ' ' < "$OUT/cpu-baseline.txt")" ;;
    b)  for i in $(seq 1 "$NODES"); do
            pid=$(cat "$OUT/node$i.pid"); kill -TERM "$pid"; wait_exit "$pid" 30
            start_node "$i"; wait_ready "$i"
        done
        event b "$t0" "$(now_ms)" "rolling deploy of $NODES nodes" ;;
    c)  kill -9 "$(cat "$OUT/node1.pid")"
        event c "$t0" "$(now_ms)" "kill -9 of 1 node"
        sleep 20; start_node 1; wait_ready 1 ;;
    d)  half=$(( NODES / 2 ))
        for i in $(seq 1 "$half"); do kill -9 "$(cat "$OUT/node$i.pid")"; done
        event d "$t0" "$(now_ms)" "kill -9 of $half nodes"
        sleep 25; for i in $(seq 1 "$half"); do start_node "$i"; done
        for i in $(seq 1 "$half"); do wait_ready "$i"; done ;;
    e)  for j in $(seq 1 "$HAPROXIES"); do kill -9 "$(cat "$OUT/haproxy$j.pid")"; done
        for j in $(seq 1 "$HAPROXIES"); do start_haproxy "$j"; done
        event e "$t0" "$(now_ms)" "all $HAPROXIES load balancers restarted" ;;
    f)  for i in $(seq 1 "$NODES"); do kill -TERM "$(cat "$OUT/node$i.pid")"; done
        for i in $(seq 1 "$NODES"); do wait_exit "$(cat "$OUT/node$i.pid")" 30; done
        log "fleet down; cursors age ${COLD_SECS}s"
        sleep "$COLD_SECS"
        t1=$(now_ms)
        for i in $(seq 1 "$NODES"); do start_node "$i"; done
        for i in $(seq 1 "$NODES"); do wait_ready "$i"; done
        event f "$t0" "$(now_ms)" "cold restart, cursors ${COLD_SECS} s old (times from the restart)" "$t1" ;;
    g)  scripts/kafka-broker stop "$OUT/kafka" >/dev/null
        scripts/kafka-broker start "$OUT/kafka" --watch-pid $$ >/dev/null
        event g "$t0" "$(now_ms)" "broker restart" ;;
    *)  log "unknown scenario $s"; exit 2 ;;
    esac
done
sleep "$STEADY"

log "stopping the producer"
touch "$OUT/stop-producer"
wait_exit "$producer" 90
echo "$OUT/counts.json" > "$OUT/stop-clients"
for p in "${client_pids[@]}"; do wait_exit "$p" 120; done
touch "$OUT/stop"
sleep 1
check=()
[ -n "${FLEET_CI:-}${FLEET_CHECK:-}" ] && check=(--check --within-secs "$WITHIN")
"$LOADTEST_BIN" fleet-report --dir "$OUT" --markdown "$OUT/fleet.md" "${check[@]}"
log "results in $OUT"
