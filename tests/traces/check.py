#!/usr/bin/env python3
"""Traces end to end (run by tests/traces/run.sh): a producer that is not pushgate starts a
trace, pushgate continues it, and Jaeger's query API shows the spans.

  check.py deliver GATEWAY TOPIC KEY MODE [BROKERS]
      Subscribes a WebSocket (Python `websockets`), an SSE stream (urllib) and a gRPC stream
      (grpcio: tests/grpc/client.py in tests/grpc/.venv) to TOPIC/KEY on GATEWAY, then
      produces one record with a W3C traceparent whose trace id this script picks: MODE "publish" POSTs it to the publish API with a `traceparent` header; MODE
      "kafka" sends it to Kafka with kafka-python (tests/kafka_common/kafka_tool.py raw) with
      a `traceparent` record header. Waits until the three clients received it; prints the JSON
      {"trace_id", "parent_span_id"} the producer used.
  check.py jaeger JAEGER SERVICE TRACE_ID PARENT_SPAN_ID
      Polls Jaeger's /api/traces/TRACE_ID (at most 60 s) and asserts: service SERVICE;
      one pushgate.ingest span whose parent is the producer's span; one pushgate.fanout span
      child of it; one pushgate.deliver span per transport (grpc, sse, ws), children of the
      fan-out span. Then /api/traces?service=SERVICE&operation=pushgate.catch_up must list a
      catch-up span inside a pushgate.connection span of the same trace.
Prints "N passed, N failed" and exits non-zero on any failure.
"""
import asyncio, json, os, secrets, subprocess, sys, threading, time, urllib.request

passed = failed = 0


def ok(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")
    return cond


def done():
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


def sse_reader(url, got, ready):
    """Reads SSE events: sets `ready` at `live`, then keeps the first record in got["sse"]."""
    req = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line == "event: live":
                ready.set()
            elif line.startswith("data:"):
                msg = json.loads(line[5:].strip())
                if msg.get("type") == "record":
                    got["sse"] = msg
                    return


HERE = os.path.dirname(os.path.abspath(__file__))


def grpc_subscriber(host, topic, key):
    """tests/grpc/client.py subscribe, until one record; returns the process."""
    python = os.path.join(HERE, "..", "grpc", ".venv", "bin", "python")
    request = json.dumps({"topic": topic, "keys": [key], "snapshot": False})
    return subprocess.Popen(
        [python, os.path.join(HERE, "..", "grpc", "client.py"), "subscribe", host, request,
         "--records", "1", "--timeout", "30"],
        stdout=subprocess.PIPE, text=True)


def grpc_wait(proc, kind):
    """The first event of type `kind` the gRPC subscriber prints (None if it ends first)."""
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("type") == kind:
            return event
        if "end" in event:
            return None
    return None


async def deliver(gateway, topic, key, mode, brokers):
    import websockets

    trace_id = secrets.token_hex(16)
    parent = secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{parent}-01"
    got, ready = {}, threading.Event()
    host = gateway.split("//", 1)[1]
    sse = threading.Thread(
        target=sse_reader,
        args=(f"{gateway}/sse?topic={topic}&key={key}&snapshot=false", got, ready),
        daemon=True,
    )
    sse.start()
    async with websockets.connect(f"ws://{host}/ws", open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "topic": topic, "keys": [key], "snapshot": False}))
        while True:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if reply.get("type") == "live":
                break
            if reply.get("type") == "error":
                raise SystemExit(f"subscribe failed: {reply}")
        ok(True, "WebSocket subscription live")
        ok(ready.wait(10), "SSE subscription live")
        grpc = grpc_subscriber(host, topic, key)
        ok(grpc_wait(grpc, "live") is not None, "gRPC subscription live")
        value = {"traced": trace_id}
        if mode == "publish":
            body = json.dumps({"key": key, "data": value}).encode()
            req = urllib.request.Request(
                f"{gateway}/topics/{topic}", data=body, method="POST",
                headers={"Content-Type": "application/json", "traceparent": traceparent})
            with urllib.request.urlopen(req, timeout=10) as resp:
                ok(resp.status == 200, f"publish with traceparent {traceparent}: {resp.status}")
        else:
            tool = os.path.join(os.path.dirname(__file__), "..", "kafka_common", "kafka_tool.py")
            line = json.dumps({"key_raw": key, "value": value, "headers": {"traceparent": traceparent}})
            out = subprocess.run([sys.executable, tool, "raw", "--brokers", brokers, "--topic", topic],
                                 input=line + "\n", capture_output=True, text=True, timeout=60)
            ok(out.returncode == 0, f"kafka-python produced with traceparent {traceparent}: {out.stdout.strip()} {out.stderr.strip()[-300:]}")
        deadline = time.time() + 15
        while time.time() < deadline:
            msg = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.time())))
            if msg.get("type") == "record":
                ok(msg.get("data") == value, "WebSocket client received the record")
                break
    sse.join(15)
    ok(got.get("sse", {}).get("data") == value, "SSE client received the record")
    record = grpc_wait(grpc, "record")
    grpc.wait(15)
    ok(record is not None and record.get("data") == value, f"gRPC client received the record ({record})")
    print(json.dumps({"trace_id": trace_id, "parent_span_id": parent}))


def get(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def jaeger(base, service, trace_id, parent):
    want = {"pushgate.ingest", "pushgate.fanout", "pushgate.deliver"}
    spans, trace = [], {}
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            data = get(f"{base}/api/traces/{trace_id}").get("data") or []
        except Exception:  # 404 until the trace arrives
            data = []
        if data:
            trace = data[0]
            spans = trace["spans"]
            names = [s["operationName"] for s in spans]
            if want <= set(names) and names.count("pushgate.deliver") >= 3:
                break
        time.sleep(1)
    by_name = {}
    for s in spans:
        by_name.setdefault(s["operationName"], []).append(s)
    print(f"     trace {trace_id}: {sorted((s['operationName'], s['spanID']) for s in spans)}")
    procs = {s["processID"] for s in spans}
    services = {trace.get("processes", {}).get(p, {}).get("serviceName") for p in procs}
    ok(services == {service}, f"the spans come from service {service} ({services})")

    def parent_of(span):
        refs = [r for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
        return refs[0]["spanID"] if refs else None

    def tag(span, key):
        return next((t["value"] for t in span.get("tags", []) if t["key"] == key), None)

    ingest = by_name.get("pushgate.ingest", [])
    if ok(len(ingest) == 1, f"one ingest span in the producer's trace ({len(ingest)})"):
        ok(parent_of(ingest[0]) == parent,
           f"the ingest span's parent is the producer's span {parent} ({parent_of(ingest[0])})")
    fanout = by_name.get("pushgate.fanout", [])
    if ok(len(fanout) == 1, f"one fan-out span ({len(fanout)})") and ingest:
        ok(parent_of(fanout[0]) == ingest[0]["spanID"], "the fan-out span is a child of the ingest span")
        ok((tag(fanout[0], "pushgate.deliveries") or 0) >= 3,
           f"the fan-out reached the three subscriptions (pushgate.deliveries={tag(fanout[0], 'pushgate.deliveries')})")
    deliver = by_name.get("pushgate.deliver", [])
    transports = sorted(tag(s, "pushgate.transport") for s in deliver)
    ok(transports == ["grpc", "sse", "ws"], f"one delivery span per transport: {transports}")
    if fanout:
        ok(all(parent_of(s) == fanout[0]["spanID"] for s in deliver),
           "the delivery spans are children of the fan-out span")


def catch_up(base, service):
    # A catch-up span inside its connection's span, same trace.
    found = False
    deadline = time.time() + 30
    while time.time() < deadline and not found:
        try:
            data = get(f"{base}/api/traces?service={service}&operation=pushgate.catch_up&limit=50").get("data") or []
        except Exception:
            data = []
        for trace in data:
            ids = {s["spanID"]: s["operationName"] for s in trace["spans"]}
            for s in trace["spans"]:
                refs = [r["spanID"] for r in s.get("references", []) if r["refType"] == "CHILD_OF"]
                if s["operationName"] == "pushgate.catch_up" and refs and ids.get(refs[0]) == "pushgate.connection":
                    found = True
        if not found:
            time.sleep(1)
    ok(found, "a pushgate.catch_up span is a child of a pushgate.connection span")


def main():
    cmd = sys.argv[1]
    if cmd == "deliver":
        gateway, topic, key, mode = sys.argv[2:6]
        brokers = sys.argv[6] if len(sys.argv) > 6 else ""
        asyncio.run(deliver(gateway, topic, key, mode, brokers))
    elif cmd == "jaeger":
        base, service, trace_id, parent = sys.argv[2:6]
        jaeger(base, service, trace_id, parent)
        catch_up(base, service)
    done()


if __name__ == "__main__":
    main()
