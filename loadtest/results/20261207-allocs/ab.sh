#!/usr/bin/env bash
# ab.sh OUTDIR ROUNDS "bins" "scenarios": fresh server per run, bins alternated within each round.
set -u
OUT=$1; ROUNDS=$2; BINS=$3; SCEN=$4; PORT=${PORT:-18192}
mkdir -p $OUT
ulimit -n "$(ulimit -Hn)"
LT=/tmp/allocs-bin/pushgate-loadtest
for r in $(seq 1 $ROUNDS); do
 for sc in $SCEN; do
  for b in $BINS; do
    D=$(mktemp -d /tmp/allocs-run/data.XXXXXX)
    /tmp/allocs-bin/pushgate-$b --config /work/wt-allocs/loadtest/bench.toml --listen 127.0.0.1:$PORT --data-dir $D 2>$OUT/$sc-$b-r$r.server.log &
    SP=$!
    for i in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
    case $sc in
      fanout) args=(--transport ws --connections 19000 --dist uniform --keys 10000 --publish-dist uniform --settle-secs 3 --rates 10000 --step-secs 15 --connect-timeout-secs 180) ;;
      idle-ws) args=(--transport ws --connections 19500 --dist uniform --keys 1000 --settle-secs 10 --connect-timeout-secs 180) ;;
      idle-sse) args=(--transport sse --connections 19500 --dist uniform --keys 1000 --settle-secs 10 --connect-timeout-secs 180) ;;
    esac
    echo "$(date -u +%T) $sc $b r$r load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/log
    timeout 300 $LT run --system pushgate --url http://127.0.0.1:$PORT --scenario $sc-$b-r$r --server-pid $SP --max-secs 280 --quiet \
       --json $OUT/$sc-$b-r$r.json "${args[@]}" > $OUT/$sc-$b-r$r.out 2>&1
    kill $SP; wait $SP 2>/dev/null; rm -rf $D
    sleep 1
  done
 done
done
echo "$(date -u +%T) end load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/log
