#!/usr/bin/env bash
# permessage-deflate (websocket.compression = "shared") against the gateway,
# with Python's `websockets` library and a raw socket (tests/deflate/check.py).
#   PUSHGATE_BIN  gateway binary (default: target/debug/pushgate)
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -c 'import websockets' 2>/dev/null || python3 -m pip install --quiet websockets
bin=${PUSHGATE_BIN:-target/debug/pushgate}
work=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/pushgate.toml" <<TOML
[server]
static_dir = ""
[embedded]
data_dir = "$work/data"
[auth]
anonymous_subscribe = true
anonymous_publish = true
[limits]
max_message_bytes = 1000000
[websocket]
compression = "shared"
[[topics]]
name = "posts"
TOML
"$bin" --config "$work/pushgate.toml" --listen 127.0.0.1:0 2> "$work/log" &
pid=$!
for _ in $(seq 100); do
  port=$(sed 's/\x1b\[[0-9;]*m//g' "$work/log" | grep -oE 'listening on http://127.0.0.1:[0-9]+' | grep -oE '[0-9]+$' || true)
  [ -n "$port" ] && break; sleep 0.1
done
[ -n "$port" ] || { cat "$work/log"; exit 1; }
${DEFLATE_SCRIPT:-timeout 120 python3 tests/deflate/check.py} "http://127.0.0.1:$port"
