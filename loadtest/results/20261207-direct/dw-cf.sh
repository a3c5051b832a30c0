#!/usr/bin/env bash
cd /work/main
export PUSHGATE_BIN=target/release/pushgate LOADTEST_BIN=target/release/pushgate-loadtest FLOOR_BIN=target/release/pushgate-floor
SYSTEMS="floor pushgate centrifugo" SCENARIOS="broadcast fanout" RATES="10,20" WRITE_RESULTS=0 OUT=/tmp/dw/cf loadtest/compare.sh > /tmp/dw-cf.log 2>&1
echo "cf exit=$?" >> /tmp/dw-done.log
