#!/usr/bin/env bash
# WebSocket conformance: the Autobahn|Testsuite fuzzing client against the
# gateway's WebSocket stack, with its production framing settings (buffer
# sizes and so on from config/pushgate.toml defaults) and the test-only /echo
# endpoint, with websocket.compression = "shared". By default sections 1-7, 9
# and 10 (these offer no extension). The permessage-deflate sections 12 and 13
# run with AUTOBAHN_CASES='"9.*", "10.*", "12.*", "13.*"' (about ten minutes on
# a release build: PUSHGATE_BIN=target/release/pushgate; they are not in CI's
# run for that reason). Fails on any FAILED, UNCLEAN or WRONG CODE result, and
# on any difference from the lines of tests/autobahn/expected.txt whose cases
# the run covered (expected.txt holds every section, 12 and 13 included).
#
#   tests/autobahn/run.sh            run and compare
#   tests/autobahn/run.sh --update   run and rewrite expected.txt's lines of the cases run
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/autobahn
py2="${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin"
if [ ! -x "$py2/wstest" ]; then
  echo "autobahn: installing autobahntestsuite under Python 2.7.18"
  "$py2/python" -m pip install --quiet autobahntestsuite
fi
bin=${PUSHGATE_BIN:-target/debug/pushgate}
[ -x "$bin" ] || cargo build -q -p pushgate

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
[limits]
# Section 9 sends messages of up to 16 MiB; every other framing setting is the production default.
max_message_bytes = 20000000
[websocket]
compression = "shared"
[testing]
echo_endpoint = true
[[topics]]
name = "t"
TOML
"$bin" --config "$work/pushgate.toml" --listen 127.0.0.1:0 2> "$work/pushgate.log" &
pid=$!
for _ in $(seq 1 100); do
  port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/pushgate.log" | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "${port:-}" ] || { cat "$work/pushgate.log"; echo "autobahn: gateway did not start"; exit 1; }

# Outside the here-document: there, the quotes of a ${...:-...} default stay in the text.
extra_cases=${AUTOBAHN_CASES:-'"9.*", "10.*"'}
cat > "$work/spec.json" <<JSON
{
  "outdir": "$work/reports",
  "servers": [{"agent": "pushgate", "url": "ws://127.0.0.1:$port/echo"}],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", $extra_cases],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
echo "autobahn: running the fuzzing client against ws://127.0.0.1:$port/echo"
(cd "$work" && timeout 1200 "$py2/wstest" -m fuzzingclient -s spec.json > wstest.log 2>&1) || {
  tail -20 "$work/wstest.log"; echo "autobahn: wstest failed"; exit 1; }

python3 - "$work/reports/index.json" "$work/results.txt" <<'PY'
import json, sys
index = json.load(open(sys.argv[1]))["pushgate"]
def key(case):
    return [int(p) for p in case.split(".")]
lines = []
for case in sorted(index, key=key):
    r = index[case]
    lines.append("%s %s %s" % (case, r["behavior"], r["behaviorClose"]))
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
bad=$(grep -E " (FAILED|UNCLEAN|WRONG CODE)" "$work/results.txt" || true)
total=$(wc -l < "$work/results.txt")
# The expected outcomes of the cases this run covered (the spec's patterns), and
# with --update, expected.txt with those lines replaced by this run's.
python3 - "$work/spec.json" "$here/expected.txt" "$work/results.txt" "$work/expected-run.txt" "${1:-}" <<'PY'
import fnmatch, json, sys
spec, expected, results, out, mode = sys.argv[1:6]
patterns = json.load(open(spec))["cases"]
def covered(line):
    return any(fnmatch.fnmatch(line.split(" ")[0], p) for p in patterns)
def key(line):
    return [int(p) for p in line.split(" ")[0].split(".")]
old = [l for l in open(expected).read().splitlines() if l]
ran = [l for l in open(results).read().splitlines() if l]
open(out, "w").write("".join(l + "\n" for l in old if covered(l)))
if mode == "--update":
    merged = sorted([l for l in old if not covered(l)] + ran, key=key)
    open(expected, "w").write("".join(l + "\n" for l in merged))
PY
if [ "${1:-}" = "--update" ]; then
  echo "autobahn: wrote $here/expected.txt ($total cases of this run, $(wc -l < "$here/expected.txt") in all)"
  cp "$work/results.txt" "$work/expected-run.txt"
fi
if [ -n "$bad" ]; then
  echo "$bad"
  echo "autobahn: $(echo "$bad" | wc -l) cases FAILED, UNCLEAN or WRONG CODE"
  echo "0 passed, 1 failed"
  exit 1
fi
if ! diff -u "$work/expected-run.txt" "$work/results.txt"; then
  echo "autobahn: results differ from $here/expected.txt"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "autobahn: $total cases match $here/expected.txt; none FAILED, UNCLEAN or WRONG CODE"
