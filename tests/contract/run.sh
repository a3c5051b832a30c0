#!/usr/bin/env bash
# API contract checks: api/openapi.yaml, api/asyncapi.yaml and
# api/schemas/messages.json against themselves and against the real gateway.
#
#  1. syntax: openapi-spec-validator, the AsyncAPI parser (with the $refs into
#     messages.json resolved), JSON Schema 2020-12 meta-validation, and every
#     example in the three files against its schema (check_documents.py);
#  2. schemathesis, bounded, on POST /topics/{topic} and GET /topics of the
#     debug binary (anonymous publish, 127.0.0.1 only), then on the /admin
#     paths with the admin token: no 5xx, no status, content type, header or
#     body outside the document;
#  3. http_cases.py on a second gateway with authentication and small limits:
#     every other documented status (401, 403, 413, 429, SSE and WebSocket
#     handshake refusals), and an SSE stream read event by event against
#     messages.json.
# (The WebSocket and SSE messages of the Rust integration tests are checked
# against messages.json by tests/common/mod.rs.)
#
#   tests/contract/run.sh           run everything
#   tests/contract/run.sh --setup   only install the tools (Python venv, npm packages)
#
#   PUSHGATE_BIN              gateway binary (default: target/debug/pushgate, built if missing)
#   CONTRACT_MAX_EXAMPLES     schemathesis examples per operation and phase (default: 100)
#   CONTRACT_TIMEOUT          seconds for the schemathesis run (default: 300)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
here=$root/tests/contract
venv=$here/.venv

setup() {
  # Python tools in their own venv, reinstalled when requirements.txt changes.
  if ! cmp -s "$here/requirements.txt" "$venv/requirements.txt" 2>/dev/null; then
    echo "contract: installing $(tr '\n' ' ' < "$here/requirements.txt")into tests/contract/.venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/requirements.txt"
  fi
  # The AsyncAPI parser (no browser, no CLI): pinned by package-lock.json.
  if ! cmp -s "$here/package-lock.json" "$here/node_modules/.package-lock.stamp" 2>/dev/null; then
    echo "contract: installing @asyncapi/parser (npm ci)"
    (cd "$here" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
    cp "$here/package-lock.json" "$here/node_modules/.package-lock.stamp"
  fi
}

setup
[ "${1:-}" = "--setup" ] && exit 0

py=$venv/bin/python
bin=${PUSHGATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/pushgate}
[ -x "$bin" ] || cargo build -q -p pushgate
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME CONFIG: runs the gateway on a free 127.0.0.1 port, waits for
# /readyz, and sets $port.
start() {
  local name=$1
  printf '%s\n' "$2" > "$work/$name.toml"
  "$bin" --config "$work/$name.toml" --listen 127.0.0.1:0 2> "$work/$name.log" &
  pids+=($!)
  port=""
  for _ in $(seq 1 100); do
    port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/$name.log" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$work/$name.log"; echo "contract: gateway $name did not start" >&2; exit 1; }
  "$py" - "http://127.0.0.1:$port/readyz" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit("contract: gateway never ready")
PY
}

# no_panics NAME: the gateway is still serving and logged no panic.
no_panics() {
  if grep -q "panicked" "$work/$1.log"; then
    grep -B2 -A10 "panicked" "$work/$1.log" >&2
    echo "contract: gateway $1 panicked" >&2
    exit 1
  fi
  "$py" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "http://127.0.0.1:$2/readyz"
}

echo "== contract: documents"
"$venv/bin/openapi-spec-validator" api/openapi.yaml
node "$here/validate-asyncapi.mjs" api/asyncapi.yaml
"$py" "$here/check_documents.py"

echo "== contract: schemathesis on the publish API"
admin_token="contract-admin-token-0123456789"
start open "$(cat <<TOML
[server]
static_dir = ""
[embedded]
data_dir = "$work/open-data"
[auth]
anonymous_subscribe = true
anonymous_publish = true
[admin]
enabled = true
token = "$admin_token"
[[topics]]
name = "prices"
partitions = 4
[[topics]]
name = "posts"
partitions = 1
TOML
)"
open_port=$port
# From the scratch directory: schemathesis and Hypothesis keep their caches in the working directory.
started=$SECONDS
(cd "$work" && timeout "${CONTRACT_TIMEOUT:-300}" "$venv/bin/schemathesis" --config-file "$here/schemathesis.toml" \
  run "$root/api/openapi.yaml" --url "http://127.0.0.1:$open_port" \
  --include-path-regex '^/topics' --checks all \
  --max-examples "${CONTRACT_MAX_EXAMPLES:-100}" --workers 1 --no-color)
echo "contract: schemathesis took $((SECONDS - started)) s"
echo "== contract: schemathesis on the admin API"
(cd "$work" && timeout "${CONTRACT_TIMEOUT:-300}" "$venv/bin/schemathesis" --config-file "$here/schemathesis.toml" \
  run "$root/api/openapi.yaml" --url "http://127.0.0.1:$open_port" \
  --include-path-regex '^/admin' --checks all -H "Authorization: Bearer $admin_token" \
  --max-examples "${CONTRACT_MAX_EXAMPLES:-100}" --workers 1 --no-color)
no_panics open "$open_port"

echo "== contract: every documented status, on a gateway with authentication"
secret="contract-test-secret-of-at-least-32-bytes"
start auth "$(cat <<TOML
[server]
static_dir = ""
[embedded]
data_dir = "$work/auth-data"
[auth]
cookie = "pushgate_token"
[[auth.keys]]
kind = "hmac"
secret = "$secret"
[websocket]
allowed_origins = ["https://app.example"]
[limits]
max_publish_bytes = 4096
max_publish_records = 10
max_key_bytes = 16
max_keys_per_subscription = 8
max_connections_per_ip = 2
publish_rate = 0.2
publish_burst = 5.0
[[topics]]
name = "prices"
partitions = 4
[[topics]]
name = "posts"
partitions = 1
TOML
)"
timeout 120 "$py" "$here/http_cases.py" "http://127.0.0.1:$port" "$secret"
no_panics auth "$port"
echo "== contract: passed"
