#!/usr/bin/env bash
# Starts a schema registry (scripts/registry), runs the confluent-kafka smoke check against
# it and stops it again, whatever the check's outcome. Needs scripts/registry-setup first.
# Ends with smoke.py's 'N passed, N failed' line; exits non-zero if a check failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
url=$(scripts/registry start)
port=${url#http://127.0.0.1:}
port=${port%%/*}
trap 'scripts/registry stop "$port"' EXIT
timeout 300 tests/registry/.venv/bin/python tests/registry/smoke.py "$url"
