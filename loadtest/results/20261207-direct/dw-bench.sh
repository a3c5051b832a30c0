#!/usr/bin/env bash
# direct_writes off, then on, then off again: floor + pushgate, broadcast at 10 and 20 msg/s, fan-out.
cd /work/main
export PUSHGATE_BIN=target/release/pushgate LOADTEST_BIN=target/release/pushgate-loadtest FLOOR_BIN=target/release/pushgate-floor
export SYSTEMS="floor pushgate" SCENARIOS="broadcast fanout" RATES="10,20" WRITE_RESULTS=0
for v in off on off2 on2; do
  case $v in off*) cfg=/tmp/bench-off.toml ;; *) cfg=loadtest/bench.toml ;; esac
  OUT=/tmp/dw/$v PG_CONFIG=$cfg loadtest/compare.sh > /tmp/dw-$v.log 2>&1
  echo "$v exit=$?" >> /tmp/dw-done.log
done
