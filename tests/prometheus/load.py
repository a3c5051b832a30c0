"""Load for tests/prometheus/run.sh (standard library only, no code shared with the gateway).

Holds SSE subscriptions open on two topics, publishes records through
POST /topics/{topic} at a steady rate, resumes an SSE stream from an old
cursor now and then (a catch-up read: the ring holds 16 records), subscribes
with a snapshot over more keys than max_snapshot_records (a partial snapshot)
and posts one revocation. Runs for the given number of seconds.

    python3 load.py BASE_URL ADMIN_TOKEN SECONDS
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse
import urllib.request

base, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
host = urllib.parse.urlparse(base)
stop = time.monotonic() + seconds
errors = []


def post(path, body, headers=None):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def sse(path, until):
    """Reads an SSE stream until `until` (monotonic), counting data lines."""
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=5)
    try:
        conn.request("GET", path, headers={"accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            errors.append(f"GET {path}: {resp.status}")
            return
        while time.monotonic() < until:
            try:
                if not resp.fp.readline():
                    return
            except TimeoutError:
                continue
    except OSError as e:
        errors.append(f"GET {path}: {e}")
    finally:
        conn.close()


def publisher():
    n = 0
    while time.monotonic() < stop:
        records = [{"key": f"k{(n + i) % 40}", "data": {"n": n + i}} for i in range(10)]
        try:
            post("/topics/prices", {"records": records})
            post("/topics/posts", {"key": f"p{n % 7}", "data": {"n": n}})
        except OSError as e:
            errors.append(f"publish: {e}")
        n += 10
        time.sleep(0.05)


threads = [threading.Thread(target=publisher)]
for topic in ("prices", "prices", "posts"):
    threads.append(threading.Thread(target=sse, args=(f"/sse?topic={topic}&snapshot=false", stop)))
for t in threads:
    t.start()

# A first record's cursor, to resume from once the ring has moved past it.
_, first = post("/topics/prices", {"key": "old", "data": 0})
cursor = first["cursor"]
status, _ = post("/admin/revocations", {"subject": "prometheus-test"},
                 {"authorization": f"Bearer {token}"})
if status != 201:
    errors.append(f"POST /admin/revocations: {status}")
while time.monotonic() < stop - 2:
    time.sleep(1)
    # Snapshot over 40 keys with max_snapshot_records = 5: partial.
    sse("/sse?topic=prices", time.monotonic() + 0.5)
    # Resume from the old cursor: the ring no longer holds it, the log does.
    sse(f"/sse?topic=prices&cursor={urllib.parse.quote(cursor)}", time.monotonic() + 0.5)
for t in threads:
    t.join()
if errors:
    print("load.py: " + "; ".join(errors[:5]), file=sys.stderr)
    sys.exit(1)
print("load.py: done")
