#!/usr/bin/env bash
# Side-by-side load test: pushgate (embedded log) vs Nchan (nginx module) vs
# Pushpin vs Centrifugo, each on its own loopback port, under the same load
# generator.
#
#   loadtest/compare.sh            # full run (about 15 minutes), writes loadtest/RESULTS.md
#   QUICK=1 loadtest/compare.sh    # small numbers, checks the script end to end
#   PG_CONFIG=file                 # pushgate config instead of loadtest/bench.toml
#
# Scenarios (issue 6):
#   (a) idle:      20,000 connections (capped below the open-file hard limit),
#                  one subscription each, server RSS per connection after settling
#   (b) broadcast: 5,000 subscribers on one key, publish rate stepped up until
#                  p99 > 100 ms; highest sustained deliveries/s and deliveries
#                  per server CPU-second
#   (c) filtered:  5,000 subscribers over 1,000 keys (Zipf), 2,000 publishes/s
#                  (uniform over the keys), latency percentiles
#   (d) fanout:    19,000 WebSocket subscribers (the open-file limit is 20,000),
#                  one key each of 10,000, 10,000 publishes/s uniform over the
#                  keys (each key about once a second), after Kafkorama's shape
#   (e) resume:    pushgate and Centrifugo only (the others have no position to
#                  resume from): the filtered shape at FILTERED_RATE/4, every
#                  subscriber drops its connection every RESUME_EVERY_MS (first
#                  drop spread over one period), stays away RESUME_AWAY_MS and
#                  resumes: pushgate with its cursor, Centrifugo with `recover`,
#                  offset and epoch; missed, duplicate and unrecovered deliveries
# Centrifugo (SYSTEMS=centrifugo, or CFUGO=1 to add it to the default list):
# v6.9.1 from the Go module proxy (`go install` into
# ${PUSHGATE_CACHE:-~/.cache/pushgate}/centrifugo-6.9.1, once), unidirectional
# WebSocket and SSE, one channel per key, publishes through /api/batch,
# history 100 per channel with recovery on in every scenario
# (loadtest/peers/centrifugo/config.json).
# Every scenario also runs the floor (loadtest/floor): pushgate's protocol on
# the same stack with nothing but fan-out; RESULTS.md gives each system's CPU
# per delivery (user and system) and deliveries per CPU-second as a fraction
# of the floor's. Broadcast steps run twice each (sustained = both hold the
# p99 bound) and go one rate past the first failure.
# SSE for all three; WebSocket for pushgate and Nchan too (Pushpin's WebSocket
# mode needs a WebSocket-over-HTTP origin, which this setup does not have).
#
# Needs root for apt-get (installs nginx, libnginx-mod-nchan, pushpin, zurl
# when missing). Only 127.0.0.0/8 is used. Every process started here is
# stopped at the end, and every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=${QUICK:-0}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${OUT:-$ROOT/loadtest/out/$STAMP}
if [ "${CFUGO:-0}" = 1 ]; then
    SYSTEMS=${SYSTEMS:-"floor pushgate nchan pushpin centrifugo"}
    SCENARIOS=${SCENARIOS:-"idle broadcast filtered fanout resume"}
fi
SYSTEMS=${SYSTEMS:-"floor pushgate nchan pushpin"}
SCENARIOS=${SCENARIOS:-"idle broadcast filtered fanout"}
RESUME_EVERY_MS=${RESUME_EVERY_MS:-5000}; RESUME_AWAY_MS=${RESUME_AWAY_MS:-500}
CENTRIFUGO_VERSION=6.9.1
CFUGO_DIR=${PUSHGATE_CACHE:-$HOME/.cache/pushgate}/centrifugo-$CENTRIFUGO_VERSION
if [ "$QUICK" = 1 ]; then
    IDLE_CONNS=${IDLE_CONNS:-500}; SUBS=${SUBS:-200}; RATES=${RATES:-"10,50"}; FANOUT_CONNS=${FANOUT_CONNS:-500}
    STEP_SECS=${STEP_SECS:-3}; FILTERED_SECS=${FILTERED_SECS:-4}; SETTLE=${SETTLE:-2}
    FILTERED_RATE=${FILTERED_RATE:-200}
else
    IDLE_CONNS=${IDLE_CONNS:-20000}; SUBS=${SUBS:-5000}; FANOUT_CONNS=${FANOUT_CONNS:-19000}
    RATES=${RATES:-"10,20,50,100,150,200,300,400,600,800"}
    STEP_SECS=${STEP_SECS:-8}; FILTERED_SECS=${FILTERED_SECS:-15}; SETTLE=${SETTLE:-10}
    FILTERED_RATE=${FILTERED_RATE:-2000}
fi
PG_PORT=18080 NCHAN_PORT=18081 PUSHPIN_PORT=18082 PUSHPIN_PUB_PORT=18083 ORIGIN_PORT=18084 FLOOR_PORT=18085
CFUGO_PORT=18086

log() { echo "== $*" >&2; }

# --- packages and binaries -------------------------------------------------
has() { case " $SYSTEMS " in *" $1 "*) return 0 ;; esac; return 1; }
need_install=0
if has nchan; then
    command -v nginx >/dev/null || need_install=1
    [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || need_install=1
fi
if has pushpin; then
    command -v pushpin >/dev/null || need_install=1
    command -v zurl >/dev/null || need_install=1
fi
if has centrifugo && [ ! -x "$CFUGO_DIR/centrifugo" ]; then
    log "building Centrifugo v$CENTRIFUGO_VERSION from the Go module proxy into $CFUGO_DIR"
    mkdir -p "$CFUGO_DIR"
    (cd /tmp && GOBIN=$CFUGO_DIR go install "github.com/centrifugal/centrifugo/v6@v$CENTRIFUGO_VERSION")
fi
if [ "$need_install" = 1 ]; then
    log "installing nginx, libnginx-mod-nchan, pushpin, zurl"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y nginx libnginx-mod-nchan pushpin zurl \
        || { apt-get update && apt-get install -y nginx libnginx-mod-nchan pushpin zurl; }
fi
# PUSHGATE_BIN / LOADTEST_BIN: use these binaries instead of building.
if [ -z "${PUSHGATE_BIN:-}" ] || [ -z "${LOADTEST_BIN:-}" ]; then
    log "building release binaries"
    cargo build --release -p pushgate -p pushgate-loadtest -p pushgate-floor
fi
FLOOR=${FLOOR_BIN:-$ROOT/target/release/pushgate-floor}
PG=${PUSHGATE_BIN:-$ROOT/target/release/pushgate}
LT=${LOADTEST_BIN:-$ROOT/target/release/pushgate-loadtest}

# --- limits --------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$IDLE_CONNS" -gt $((NOFILE - 500)) ]; then
    log "open-file limit is $NOFILE (hard); idle scenario capped at $((NOFILE - 500)) connections"
    IDLE_CONNS=$((NOFILE - 500))
fi
if [ "$FANOUT_CONNS" -gt $((NOFILE - 500)) ]; then
    FANOUT_CONNS=$((NOFILE - 500))
fi

mkdir -p "$OUT"
RUN=$(mktemp -d /tmp/pushgate-compare.XXXXXX)
: >"$OUT/commands.txt"
PIDS=()        # everything started, for the exit trap
SERVER_PIDS="" # what the load generator samples (roots; descendants included)

stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    PIDS=()
    SERVER_PIDS=""
}
trap 'stop_all; rm -rf "$RUN"' EXIT

wait_port() {
    for _ in $(seq 1 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listening on port $1"; return 1
}

start_pushgate() {
    rm -rf "$RUN/pushgate-data"
    "$PG" --config "${PG_CONFIG:-$ROOT/loadtest/bench.toml}" --listen "127.0.0.1:$PG_PORT" \
        --data-dir "$RUN/pushgate-data" 2>"$RUN/pushgate.log" &
    PIDS+=($!); SERVER_PIDS=$!
    wait_port $PG_PORT
}

start_floor() {
    "$FLOOR" --listen "127.0.0.1:$FLOOR_PORT" 2>"$RUN/floor.log" &
    PIDS+=($!); SERVER_PIDS=$!
    wait_port $FLOOR_PORT
}

start_nchan() {
    mkdir -p "$RUN/nginx/tmp"
    nginx -p "$RUN/nginx/" -c "$ROOT/loadtest/peers/nchan/nginx.conf" 2>"$RUN/nginx.stderr" &
    PIDS+=($!); SERVER_PIDS=$!
    wait_port $NCHAN_PORT
}

start_pushpin() {
    local dir=$RUN/pushpin
    rm -rf "$dir"; mkdir -p "$dir"
    sed "s#@RUNDIR@#$dir#g; s#@PEERS@#$ROOT/loadtest/peers#g" \
        "$ROOT/loadtest/peers/pushpin/pushpin.conf" >"$dir/pushpin.conf"
    sed "s#@RUNDIR@#$dir#g" "$ROOT/loadtest/peers/pushpin/zurl.conf" >"$dir/zurl.conf"
    "$LT" grip-origin --listen "127.0.0.1:$ORIGIN_PORT" --max-secs 3600 2>"$dir/origin.log" &
    PIDS+=($!)
    zurl --config="$dir/zurl.conf" >"$dir/zurl.log" 2>&1 &
    PIDS+=($!); local zurl=$!
    pushpin --config="$dir/pushpin.conf" >"$dir/pushpin.log" 2>&1 &
    PIDS+=($!)
    # The server is Pushpin's process tree plus zurl; the GRIP origin stands
    # for the application and is not counted.
    SERVER_PIDS="$!,$zurl"
    wait_port $PUSHPIN_PORT
    wait_port $PUSHPIN_PUB_PORT
    wait_port $ORIGIN_PORT
}

start_centrifugo() {
    # Centrifugo's memory engine keeps history in the process; nothing on disk.
    sed "s/18086/$CFUGO_PORT/" "$ROOT/loadtest/peers/centrifugo/config.json" >"$RUN/centrifugo.json"
    "$CFUGO_DIR/centrifugo" --config "$RUN/centrifugo.json" >"$RUN/centrifugo.log" 2>&1 &
    PIDS+=($!); SERVER_PIDS=$!
    wait_port $CFUGO_PORT
}

urls() {
    case $1 in
        pushgate) echo "--url http://127.0.0.1:$PG_PORT" ;;
        floor) echo "--url http://127.0.0.1:$FLOOR_PORT" ;;
        nchan) echo "--url http://127.0.0.1:$NCHAN_PORT" ;;
        pushpin) echo "--url http://127.0.0.1:$PUSHPIN_PORT --publish-url http://127.0.0.1:$PUSHPIN_PUB_PORT" ;;
        centrifugo) echo "--url http://127.0.0.1:$CFUGO_PORT" ;;
    esac
}

# run SYSTEM SCENARIO TRANSPORT ARGS...: fresh server, one load generator run.
run() {
    local system=$1 scenario=$2 transport=$3
    shift 3
    local name="$scenario-$transport"
    log "$system $name"
    "start_$system"
    sleep 1
    # shellcheck disable=SC2046
    local cmd=("$LT" run --system "$system" $(urls "$system") --transport "$transport"
        --scenario "$name" --server-pid "$SERVER_PIDS" --max-secs 600
        --json "$OUT/$system-$name.json" --svg "$OUT/$system-$name.svg" "$@")
    echo "${cmd[*]#$ROOT/}" | sed "s#$ROOT/##g; s#$OUT/#\$OUT/#g" >>"$OUT/commands.txt"
    "${cmd[@]}" 2>&1 | tee -a "$OUT/$system-$name.log" | grep -E --line-buffered 'step|connected|idle:|best|latency over|error' >&2 || true
    stop_all
    sleep 2
}

transports() { case $1 in pushpin) echo sse ;; pushgate) echo "sse ws grpc" ;; *) echo "sse ws" ;; esac; }

for scenario in $SCENARIOS; do
    for system in $SYSTEMS; do
        for t in $(transports "$system"); do
            case $scenario in
                idle) run "$system" idle "$t" --connections "$IDLE_CONNS" --dist uniform --keys 1000 \
                        --settle-secs "$SETTLE" --connect-timeout-secs 180 ;;
                broadcast) run "$system" broadcast "$t" --connections "$SUBS" --dist hot \
                        --settle-secs 3 --rates "$RATES" --step-secs "$STEP_SECS" --stop-p99-ms 100 \
                        --repeat 2 --steps-past-failure 1 ;;
                fanout) [ "$t" = ws ] && [ "$system" != pushpin ] && \
                    run "$system" fanout "$t" --connections "$FANOUT_CONNS" --dist uniform --keys 10000 \
                        --publish-dist uniform --settle-secs 3 --rates 10000 --step-secs "$FILTERED_SECS" \
                        --connect-timeout-secs 180 ;;
                filtered) run "$system" filtered "$t" --connections "$SUBS" --dist zipf --keys 1000 \
                        --publish-dist uniform --settle-secs 3 --rates "$FILTERED_RATE" --step-secs "$FILTERED_SECS" ;;
                resume) case $system in pushgate|centrifugo) [ "$t" != grpc ] && \
                    run "$system" resume "$t" --connections "$SUBS" --dist zipf --keys 1000 \
                        --publish-dist uniform --settle-secs 3 --rates "$((FILTERED_RATE / 4))" \
                        --step-secs "$FILTERED_SECS" --drain-secs 3 \
                        --resume-every-ms "$RESUME_EVERY_MS" --resume-away-ms "$RESUME_AWAY_MS" ;; esac ;;
            esac
        done
    done
done

# --- machine, versions, table ----------------------------------------------
{
    echo "- load: the machine was shared with other work while this ran (loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
    echo "- open-file limit: $NOFILE (hard limit of this container, which cannot be raised without CAP_SYS_RESOURCE), so the idle scenario used $IDLE_CONNS connections"
    echo "- pushgate: ${PUSHGATE_REV:-$(git -C "$ROOT" rev-parse --short HEAD)}, release build, config loadtest/bench.toml"
    echo "- nginx: $(nginx -v 2>&1 | sed 's/.*: //'), libnginx-mod-nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null), config loadtest/peers/nchan/nginx.conf"
    echo "- Pushpin: $(dpkg-query -W -f='${Version}' pushpin 2>/dev/null), zurl $(dpkg-query -W -f='${Version}' zurl 2>/dev/null), configs loadtest/peers/pushpin/"
    has centrifugo && echo "- Centrifugo: $(go version -m "$CFUGO_DIR/centrifugo" 2>/dev/null | awk '$1=="mod"{print $3; exit}') ($(go version -m "$CFUGO_DIR/centrifugo" 2>/dev/null | head -1 | awk '{print $2}')), config loadtest/peers/centrifugo/config.json"
    echo "- $(rustc --version)"
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
} >"$OUT/notes.md"
"$LT" report --dir "$OUT" --markdown "$OUT/RESULTS.md" --commands-file "$OUT/commands.txt" --notes-file "$OUT/notes.md"
# WRITE_RESULTS=0: leave loadtest/RESULTS.md and loadtest/results/ alone.
if [ "$QUICK" != 1 ] && [ "${WRITE_RESULTS:-1}" = 1 ]; then
    cp "$OUT/RESULTS.md" "$ROOT/loadtest/RESULTS.md"
    mkdir -p "$ROOT/loadtest/results"
    cp "$OUT"/*.json "$OUT"/*.svg "$ROOT/loadtest/results/"
    log "wrote loadtest/RESULTS.md and loadtest/results/"
fi
log "results in $OUT"
