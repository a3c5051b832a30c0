#!/usr/bin/env bash
# Checks deploy/grafana/pushgate.json against a real Prometheus: starts a gateway
# (tests/prometheus/pushgate.toml) on 127.0.0.1, puts load on it (load.py: SSE
# subscribers, publishes, catch-up resumes, partial snapshots, a revocation),
# starts Debian's prometheus scraping its /metrics every second into a temporary
# storage directory, then evaluates every `expr` of the dashboard through
# /api/v1/query and fails, naming it, on any query that returns no data (no
# series, or only NaN).
# Bounded in time; every process it starts is gone when it returns.
#
#   PUSHGATE_BIN   gateway binary (default: target/debug/pushgate)
#   PROMETHEUS     prometheus binary (default: /usr/bin/prometheus; apt-get install prometheus)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin=${PUSHGATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/pushgate}
prom=${PROMETHEUS:-/usr/bin/prometheus}
dashboard=$root/deploy/grafana/pushgate.json
token=prometheus-test-admin-token-0123456789
[ -x "$bin" ] || { echo "prometheus: no gateway binary at $bin (cargo build first)" >&2; exit 2; }
[ -x "$prom" ] || { echo "prometheus: no prometheus at $prom (apt-get install prometheus)" >&2; exit 2; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "prometheus: $1 did not answer within $2 s" >&2
  return 1
}

gw_port=$(free_port)
(cd "$work" && exec timeout 300 "$bin" --config "$root/tests/prometheus/pushgate.toml" \
  --listen "127.0.0.1:$gw_port" --data-dir "$work/data") >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$gw_port/metrics" 30 || { cat "$work/gateway.log" >&2; exit 1; }

prom_port=$(free_port)
cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pushgate
    static_configs:
      - targets: ["127.0.0.1:$gw_port"]
YML
timeout 300 "$prom" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$prom_port/-/ready" 30 || { cat "$work/prometheus.log" >&2; exit 1; }

# Load for 25 s; rate()s over [1m] need two scrapes of the counters, which
# 1 s scrapes give well within that.
timeout 60 python3 tests/prometheus/load.py "http://127.0.0.1:$gw_port" "$token" 25 &
load=$!
pids+=($load)
sleep 20
queries=$(jq -r '.. | objects | select(has("expr")) | .expr' "$dashboard")
[ -n "$queries" ] || { echo "prometheus: no expr in $dashboard" >&2; exit 1; }
failed=0 passed=0
while IFS= read -r expr; do
  answer=$(curl -fsS --max-time 10 "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$expr") || answer='{}'
  # Series with a number (histogram_quantile over an empty window gives NaN: no data).
  series=$(jq -r 'if .status == "success" then ([.data.result[] | select(.value[1] != "NaN")] | length) else -1 end' <<<"$answer")
  if [ "$series" -gt 0 ] 2>/dev/null; then
    passed=$((passed + 1))
    echo "ok   $series series  $expr"
  else
    failed=$((failed + 1))
    echo "FAIL no data      $expr  ($answer)"
  fi
done <<<"$queries"
wait "$load" || { echo "prometheus: load.py failed" >&2; failed=$((failed + 1)); }
echo "prometheus: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
