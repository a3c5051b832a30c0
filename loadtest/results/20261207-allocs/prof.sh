#!/usr/bin/env bash
# prof.sh BIN TAG : fan-out WS 19,000 clients, perf record 10 s of pushgate mid-step
set -u
BIN=$1; TAG=$2; PORT=${PORT:-18191}
D=/tmp/allocs-run/$TAG; rm -rf $D; mkdir -p $D
ulimit -n "$(ulimit -Hn)"
$BIN --config /work/wt-allocs/loadtest/bench.toml --listen 127.0.0.1:$PORT --data-dir $D/data 2>$D/server.log &
SP=$!
for i in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
timeout 300 /tmp/allocs-bin/pushgate-loadtest run --system pushgate --url http://127.0.0.1:$PORT --transport ws \
  --scenario fanout-ws --server-pid $SP --max-secs 280 --connections 19000 --dist uniform --keys 10000 \
  --publish-dist uniform --settle-secs 3 --rates 10000 --step-secs ${SECS:-25} --connect-timeout-secs 180 \
  --json $D/run.json >$D/lt.out 2>$D/lt.err &
LP=$!
# wait until the step starts
for i in $(seq 1 600); do grep -q 'rate   10000' $D/lt.err 2>/dev/null && break; sleep 0.5; done
sleep 3
if [ "${COUNT:-0}" = 1 ]; then
  curl -s http://127.0.0.1:$PORT/metrics | grep -E '^pushgate_(records_in|deliveries)_total' > $D/m0
  perf stat -e probe_libc:malloc,probe_libc:calloc,probe_libc:realloc -p $SP -- sleep 10 2>$D/count.txt
  curl -s http://127.0.0.1:$PORT/metrics | grep -E '^pushgate_(records_in|deliveries)_total' > $D/m1
elif [ "${ALLOCREC:-0}" = 1 ]; then
  perf record -e probe_libc:malloc,probe_libc:realloc,probe_libc:calloc -c 200 --call-graph dwarf,8192 -p $SP -o $D/perf.data -- sleep 5 2>$D/perf.err
elif [ "${PERF:-1}" = 1 ]; then perf record -e cpu-clock ${PERFARGS:--g} -p $SP -o $D/perf.data -- sleep 10 2>$D/perf.err; fi
wait $LP
kill $SP; wait $SP
cat /proc/loadavg > $D/loadavg
