#!/usr/bin/env bash
# Builds the Kotlin client and runs its tests (JUnit 5): every conformance
# vector of api/conformance, then the client against the real gateway binary,
# PUSHGATE_BIN (default: target/debug/pushgate of this repository; build it
# first with `cargo build`). Maven's local repository is the default
# (~/.m2): the first run downloads the plugins and libraries from Maven
# Central, later runs use the cache. Needs java (17) and mvn
# (scripts/kafka-setup installs both). MVN_TIMEOUT bounds the run (seconds).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${PUSHGATE_BIN:-$root/target/debug/pushgate}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
for tool in java mvn; do
  command -v "$tool" >/dev/null 2>&1 || { echo "clients/kotlin: $tool is missing (scripts/kafka-setup installs java and maven)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "clients/kotlin: no gateway binary at $bin (cargo build, or set PUSHGATE_BIN)" >&2; exit 1; }
cd "$here"
start=$SECONDS
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
run_mvn() {
  set +e
  timeout "${MVN_TIMEOUT:-900}" mvn -B -q "$@" -Dpushgate.bin="$bin" test 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
}
# Offline once a run has cached every artifact in ~/.m2 (no network, faster);
# online when the cache lacks something (a first run, a new pom, a wiped ~/.m2).
if [ -f target/.deps-resolved ] && [ target/.deps-resolved -nt pom.xml ]; then
  run_mvn -o
  if [ $rc -ne 0 ] && grep -q "offline mode" "$log"; then run_mvn; fi
else
  run_mvn
fi
if [ $rc -eq 0 ]; then mkdir -p target && touch target/.deps-resolved; fi
# Surefire's counts (quiet Maven prints none on success).
python3 - "$here/target/surefire-reports" <<'PY' || true
import glob, sys, xml.etree.ElementTree as ET
t = f = e = s = 0
for path in glob.glob(sys.argv[1] + "/TEST-*.xml"):
    r = ET.parse(path).getroot()
    t += int(r.get("tests", 0)); f += int(r.get("failures", 0)); e += int(r.get("errors", 0)); s += int(r.get("skipped", 0))
print(f"Tests run: {t}, Failures: {f}, Errors: {e}, Skipped: {s}")
PY
echo "clients/kotlin: mvn test exit $rc in $((SECONDS - start)) s"
exit $rc
