"""Every documented HTTP answer of api/openapi.yaml, provoked on a live gateway and checked against the document.

schemathesis' generated run (tests/contract/run.sh) mostly reaches 200, 400,
404 and 415 of the publish API on an anonymous gateway. This script runs
against a second gateway with authentication on, a cookie, an origin list and
small limits, and provokes each other status on purpose: 401, 403 `forbidden`
and `forbidden_origin`, 413, 429, the SSE refusals, the WebSocket handshake
refusals, and the operations endpoints. Each response is checked by
schemathesis (status documented, content type, headers and body schema) and
for the exact status and `error` code. The SSE stream itself is read until
its `live` event: the retry line, the event names, ids and every event's
JSON (against api/schemas/messages.json).

    python http_cases.py BASE_URL HMAC_SECRET
"""

import base64
import hashlib
import hmac
import json
import pathlib
import socket
import sys
import time

import jsonschema
import referencing
import requests
import schemathesis

API = pathlib.Path(__file__).resolve().parents[2] / "api"
BASE = sys.argv[1].rstrip("/")
SECRET = sys.argv[2].encode()
TIMEOUT = 10

schema = schemathesis.openapi.from_path(str(API / "openapi.yaml"))
messages = json.loads((API / "schemas" / "messages.json").read_text())
registry = referencing.Registry().with_resource(
    "messages.json", referencing.Resource.from_contents(messages)
)
failures = []
checked = []


def message_validator(name):
    return jsonschema.Draft202012Validator(
        {"$ref": f"messages.json#/$defs/{name}"}, registry=registry
    )


def token(subscribe, publish, seconds=600):
    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {
        "sub": "contract",
        "exp": int(time.time()) + seconds,
        "pushgate": {"subscribe": subscribe, "publish": publish},
    }
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(SECRET, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


PUBLISHER = token(["prices"], ["prices:A*"])
ALL = token(["*"], ["*"])


def expect(name, path, method, response, status, code=None):
    """Checks `response` against the document and the expected status/code."""
    operation = schema[path][method]
    problems = []
    try:
        operation.Case(path_parameters={"topic": "t"} if "{topic}" in path else None).validate_response(response)
    except BaseException as e:  # schemathesis raises an exception group
        problems.append(str(e).strip().splitlines()[0:12])
    if response.status_code != status:
        problems.append(f"status {response.status_code}, expected {status}: {response.text[:200]}")
    if code is not None:
        try:
            got = response.json().get("error")
        except ValueError:
            got = None
        if got != code:
            problems.append(f"error code {got!r}, expected {code!r}: {response.text[:200]}")
    checked.append((method, path, status, code))
    if problems:
        failures.append((name, problems))
        print(f"FAIL  {name}: {problems}")
    else:
        print(f"ok    {name}: {status} {code or ''}")


def post(topic, body=None, data=None, content_type="application/json", headers=None, cookies=None):
    h = dict(headers or {})
    if content_type is not None:
        h["Content-Type"] = content_type
    if body is not None:
        data = json.dumps(body)
    return requests.post(f"{BASE}/topics/{topic}", data=data, headers=h, cookies=cookies, timeout=TIMEOUT)


def bearer(t):
    return {"Authorization": f"Bearer {t}"}


P = "/topics/{topic}"

# Publish refusals first (none of them uses up the rate budget).
expect("publish without a token", P, "POST", post("prices", {"key": "A1", "data": 1}), 401, "unauthorized")
expect("publish with a bad token", P, "POST",
       post("prices", {"key": "A1", "data": 1}, headers=bearer(PUBLISHER[:-4] + "AAAA")), 401, "unauthorized")
expect("publish with an expired token", P, "POST",
       post("prices", {"key": "A1", "data": 1}, headers=bearer(token([], ["*"], seconds=-3600))), 401, "unauthorized")
expect("publish by cookie without Origin", P, "POST",
       post("prices", {"key": "A1", "data": 1}, cookies={"pushgate_token": PUBLISHER}), 403, "forbidden_origin")
expect("publish by cookie from a foreign Origin", P, "POST",
       post("prices", {"key": "A1", "data": 1}, cookies={"pushgate_token": PUBLISHER},
            headers={"Origin": "https://evil.example"}), 403, "forbidden_origin")
expect("publish outside the grants", P, "POST",
       post("prices", {"key": "B1", "data": 1}, headers=bearer(PUBLISHER)), 403, "forbidden")
expect("publish to an unknown topic", P, "POST",
       post("nope", {"key": "A1", "data": 1}, headers=bearer(ALL)), 404, "unknown_topic")
expect("publish as text/plain", P, "POST",
       post("prices", data='{"key":"A1","data":1}', content_type="text/plain", headers=bearer(PUBLISHER)),
       415, "unsupported_media_type")
expect("publish without Content-Type", P, "POST",
       post("prices", data='{"key":"A1","data":1}', content_type=None, headers=bearer(PUBLISHER)),
       415, "unsupported_media_type")
expect("publish a body over max_publish_bytes", P, "POST",
       post("prices", {"key": "A1", "data": "x" * 5000}, headers=bearer(PUBLISHER)), 413, "too_large")
for label, raw in [
    ("not JSON", "{"),
    ("not an object", "[1]"),
    ("no data", '{"key":"A1"}'),
    ("a number key", '{"key":5,"data":1}'),
    ("a key over max_key_bytes", json.dumps({"key": "A" * 17, "data": 1})),
    ("empty records", '{"records":[]}'),
    ("a bad record in a batch", '{"records":[{"key":"A1","data":1},{"key":"A2"}]}'),
    ("too many records", json.dumps({"records": [{"key": "A1", "data": i} for i in range(11)]})),
]:
    expect(f"publish {label}", P, "POST", post("prices", data=raw, headers=bearer(PUBLISHER)), 400, "bad_request")

R = "/topics/{topic}/records"


def records(topic, query="", headers=None):
    return requests.get(f"{BASE}/topics/{topic}/records?{query}", headers=headers or {}, timeout=TIMEOUT)


# Catch-up pages: the head's cursor before the appends below, a page after them.
head = records("prices", headers=bearer(ALL))
expect("records at the head", R, "GET", head, 200)
HEAD_CURSOR = head.json()["cursor"]

# Appends: 1 + 2 records of the burst of 5.
expect("publish one record", P, "POST", post("prices", {"key": "A1", "data": {"n": 1}}, headers=bearer(PUBLISHER)), 200)
expect("publish a batch", P, "POST",
       post("prices", {"records": [{"key": "A2", "data": None}, {"key": "A1", "data": [1, "two"]}]},
            headers=bearer(PUBLISHER)), 200)
expect("publish by cookie from an allowed Origin", P, "POST",
       post("prices", {"key": "A3", "data": "s"}, cookies={"pushgate_token": PUBLISHER},
            headers={"Origin": "https://app.example"}), 200)

# Topics and operations.
expect("list topics without a token", "/topics", "GET", requests.get(f"{BASE}/topics", timeout=TIMEOUT), 401, "unauthorized")
expect("list topics", "/topics", "GET", requests.get(f"{BASE}/topics", headers=bearer(PUBLISHER), timeout=TIMEOUT), 200)
health = requests.get(f"{BASE}/healthz", timeout=TIMEOUT)
expect("healthz", "/healthz", "GET", health, 200)
if health.text != "ok\n":  # schemathesis checks JSON bodies only
    failures.append(("healthz body", [repr(health.text)]))
    print(f"FAIL  healthz body: {health.text!r}")
expect("readyz", "/readyz", "GET", requests.get(f"{BASE}/readyz", timeout=TIMEOUT), 200)
expect("metrics", "/metrics", "GET", requests.get(f"{BASE}/metrics", timeout=TIMEOUT), 200)

expect("records without a token", R, "GET", records("prices"), 401, "unauthorized")
expect("records outside the grants", R, "GET", records("posts", headers=bearer(PUBLISHER)), 403, "forbidden")
expect("records from a bad cursor", R, "GET", records("prices", "cursor=!!", bearer(ALL)), 400, "bad_cursor")
expect("records with limit=0", R, "GET", records("prices", "limit=0", bearer(ALL)), 400, "bad_message")
expect("records of an unknown topic", R, "GET", records("nope", "", bearer(ALL)), 404, "unknown_topic")
page = records("prices", f"cursor={HEAD_CURSOR}&limit=1", bearer(ALL))
expect("records, a page below the head", R, "GET", page, 200)
if not page.json().get("more") or not page.headers.get("Cache-Control", "").startswith("private, max-age="):
    failures.append(("records below the head", [page.text[:200], dict(page.headers)]))
    print(f"FAIL  records below the head: {page.headers}")
expect("records, revalidated", R, "GET",
       records("prices", f"cursor={HEAD_CURSOR}&limit=1", {**bearer(ALL), "If-None-Match": page.headers.get("ETag", "")}),
       304)

# SSE refusals.
def sse(query, headers=None):
    return requests.get(f"{BASE}/sse?{query}", headers=headers or {}, timeout=TIMEOUT, stream=True)


def sse_refusal(name, query, status, code, headers=None):
    r = sse(query, headers)
    r.content  # a refusal has a body and ends
    expect(name, "/sse", "GET", r, status, code)


sse_refusal("SSE without a token", "topic=prices", 401, "unauthorized")
sse_refusal("SSE with a bad access_token", f"topic=prices&access_token={ALL[:-4]}AAAA", 401, "unauthorized")
sse_refusal("SSE without a topic", f"access_token={ALL}", 400, "bad_message")
sse_refusal("SSE with snapshot=maybe", f"topic=prices&snapshot=maybe&access_token={ALL}", 400, "bad_message")
sse_refusal("SSE with a bad cursor", f"topic=prices&cursor=!!&access_token={ALL}", 400, "bad_cursor")
sse_refusal("SSE with a bad Last-Event-ID", f"topic=prices&access_token={ALL}", 400, "bad_cursor",
            headers={"Last-Event-ID": "zz"})
sse_refusal("SSE with an empty prefix", f"topic=prices&prefix=&access_token={ALL}", 400, "bad_filter")
sse_refusal("SSE with a key over max_key_bytes", f"topic=prices&key={'A' * 17}&access_token={ALL}", 400, "bad_filter")
sse_refusal("SSE with too many keys", "topic=prices&" + "&".join(f"key=k{i}" for i in range(9)) + f"&access_token={ALL}",
            400, "too_many_keys")
sse_refusal("SSE outside the grants", f"topic=posts&access_token={PUBLISHER}", 403, "forbidden")
sse_refusal("SSE to an unknown topic", f"topic=nope&access_token={ALL}", 404, "unknown_topic")


class SseReader:
    """Parses SSE blocks from a streamed response."""

    def __init__(self, response):
        self.chunks = response.iter_content(chunk_size=None)
        self.buf = ""
        self.retries = 0

    def until(self, event, limit=50):
        """Events (with data) up to and including the first named `event`."""
        events = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and len(events) < limit:
            while "\n\n" in self.buf:
                block, self.buf = self.buf.split("\n\n", 1)
                ev = {"event": "message", "id": None, "data": []}
                for line in block.split("\n"):
                    if line.startswith("retry: "):
                        self.retries += 1
                    elif line.startswith("event: "):
                        ev["event"] = line[7:]
                    elif line.startswith("id: "):
                        ev["id"] = line[4:]
                    elif line.startswith("data: "):
                        ev["data"].append(line[6:])
                if ev["data"]:
                    events.append(ev)
                    if ev["event"] == event:
                        return events
            self.buf += next(self.chunks).decode()
        raise AssertionError(f"no `{event}` event within {TIMEOUT}s: {events}")


# A stream: retry line, subscribed, the snapshot (the last one with an id), live, then a live record.
r = sse(f"topic=prices&key=A1&key=A2&key=A3&access_token={ALL}")
problems = []
if r.status_code != 200:
    problems.append(f"status {r.status_code}: {r.text[:200]}")
else:
    if r.headers.get("Content-Type") != "text/event-stream":
        problems.append(f"Content-Type {r.headers.get('Content-Type')!r}")
    if r.headers.get("Cache-Control") != "no-cache, no-transform":
        problems.append(f"Cache-Control {r.headers.get('Cache-Control')!r}")
    reader = SseReader(r)
    events = reader.until("live")
    if reader.retries != 1:
        problems.append(f"{reader.retries} retry lines before `live`, expected 1")
    kinds = {"subscribed": "Subscribed", "message": "Record", "live": "Live", "gap": "Gap"}
    for ev in events:
        data = json.loads("\n".join(ev["data"]))
        if ev["event"] not in kinds:
            problems.append(f"unknown event {ev['event']!r}")
            continue
        errors = [e.message for e in message_validator(kinds[ev["event"]]).iter_errors(data)]
        if errors:
            problems.append(f"{ev['event']} {data}: {errors}")
    names = [ev["event"] for ev in events]
    # A1 and A3 exist; A2's last record was `"data": null`, a tombstone, which
    # takes the key out of the view, so the snapshot has two records.
    if names != ["subscribed", "message", "message", "live"]:
        problems.append(f"events {names}, expected subscribed, 2 snapshot records, live")
    else:
        snapshot = [json.loads(ev["data"][0]) for ev in events[1:3]]
        if not all(s.get("snapshot") is True for s in snapshot):
            problems.append("snapshot records without snapshot: true")
        # Streamed snapshots: every snapshot event's id is its record's cursor
        # (Last-Event-ID resumes mid-snapshot); the last one's is the live position.
        if [ev["id"] for ev in events[1:3]] != [s["cursor"] for s in snapshot]:
            problems.append(f"snapshot ids {[ev['id'] for ev in events[1:3]]}: each should be its record's cursor")
        elif snapshot[0]["cursor"] == snapshot[1]["cursor"]:
            problems.append("two snapshot records with the same cursor: the first should resume after its key")
    post("prices", {"key": "A2", "data": {"live": True}}, headers=bearer(PUBLISHER))
    live = reader.until("message")
    record = json.loads(live[-1]["data"][0])
    errors = [e.message for e in message_validator("Record").iter_errors(record)]
    if errors or live[-1]["id"] != record["cursor"] or record["data"] != {"live": True}:
        problems.append(f"live record {live[-1]}: {errors}")
print(("FAIL  " if problems else "ok    ") + f"SSE stream: {problems or 'events match messages.json'}")
checked.append(("GET", "/sse", 200, None))
if problems:
    failures.append(("SSE stream", problems))

# Publish rate: the burst (5) is spent after at most two more records.
statuses = []
for i in range(4):
    resp = post("prices", {"key": "A1", "data": i}, headers=bearer(PUBLISHER))
    statuses.append(resp.status_code)
    if resp.status_code == 429:
        expect("publish over the rate", P, "POST", resp, 429, "rate_limited")
        break
else:
    failures.append(("publish over the rate", [f"no 429 in {statuses}"]))
    print(f"FAIL  publish over the rate: statuses {statuses}")


# WebSocket handshake refusals (the open stream above holds one of two slots).
def handshake(headers):
    h = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
    }
    h.update(headers)
    return requests.get(f"{BASE}/ws", headers=h, timeout=TIMEOUT)


expect("WebSocket without a token", "/ws", "GET", handshake({}), 401, "unauthorized")
expect("WebSocket from a foreign Origin", "/ws", "GET",
       handshake({**bearer(ALL), "Origin": "https://evil.example"}), 403, "forbidden_origin")
expect("WebSocket without upgrade headers", "/ws", "GET",
       requests.get(f"{BASE}/ws", headers=bearer(ALL), timeout=TIMEOUT), 400)

# Connections per address (limits.max_connections_per_ip = 2): hold a second stream, the third is refused.
held = sse(f"topic=prices&access_token={ALL}")
assert held.status_code == 200, held.status_code
sse_refusal("SSE over max_connections_per_ip", f"topic=prices&access_token={ALL}", 429, "too_many_connections")
expect("WebSocket over max_connections_per_ip", "/ws", "GET", handshake(bearer(ALL)), 429, "too_many_connections")
held.close()
r.close()

print(f"\n{len(checked)} requests checked, {len(failures)} failed")
sys.exit(1 if failures else 0)
