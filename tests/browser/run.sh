#!/usr/bin/env bash
# Browser tests for the dashboard (static/) and the JS client (static/pushgate.js).
#
# Assumes Debian's chromium is installed (apt-get install -y chromium) and the
# gateway is built (cargo build). Installs playwright-core with `npm ci` (it
# never downloads a browser) and runs `node --test`. Exits non-zero on
# failure; bounded in time; every process it starts is gone when it returns.
#
#   PUSHGATE_BIN   gateway binary (default: target/debug/pushgate)
#   CHROMIUM       browser binary (default: /usr/bin/chromium)
#   BROWSER_TESTS_TIMEOUT  seconds for the whole run (default: 600)
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(cd ../.. && pwd)"
export PUSHGATE_BIN="${PUSHGATE_BIN:-$ROOT/target/debug/pushgate}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
limit="${BROWSER_TESTS_TIMEOUT:-600}"

[ -x "$PUSHGATE_BIN" ] || { echo "run.sh: no gateway binary at $PUSHGATE_BIN (cargo build first)" >&2; exit 2; }
[ -x "$CHROMIUM" ] || { echo "run.sh: no Chromium at $CHROMIUM (apt-get install -y chromium)" >&2; exit 2; }

timeout 300 npm ci --no-audit --no-fund --loglevel=error

# Run the tests in their own process group so that, whatever happens, the
# whole group (test processes, gateways) can be stopped at the end.
setsid node --test --test-concurrency=1 --test-timeout=120000 --test-reporter=spec ./*.test.mjs &
pid=$!
cleanup() {
  kill -TERM -- "-$pid" 2>/dev/null || true
  sleep 1
  kill -KILL -- "-$pid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
(
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  sleep "$limit" & nap=$!
  wait "$nap"
  echo "run.sh: browser tests took longer than ${limit}s; stopping them" >&2
  kill -TERM -- "-$pid" 2>/dev/null
) &
watchdog=$!
set +e
wait "$pid"
rc=$?
set -e
kill "$watchdog" 2>/dev/null || true
wait "$watchdog" 2>/dev/null || true
exit "$rc"
