#!/usr/bin/env bash
cd /work/main
export PUSHGATE_BIN=target/release/pushgate LOADTEST_BIN=target/release/pushgate-loadtest FLOOR_BIN=target/release/pushgate-floor
SYSTEMS="floor pushgate nchan" SCENARIOS="broadcast fanout" RATES="10,20" WRITE_RESULTS=0 OUT=/tmp/dw/nchan loadtest/compare.sh > /tmp/dw-nchan.log 2>&1
echo "nchan exit=$?" >> /tmp/dw-done.log
