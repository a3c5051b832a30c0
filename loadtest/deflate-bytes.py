"""Bytes on the WebSocket wire for the 20-field CDC row of issue 11's
delta-bytes run (same row and update shape as loadtest/src/delta.rs, 1-2 of
20 columns changing per update), for whole values and deltas, with and
without permessage-deflate, side by side: four raw-socket subscribers on one
gateway that has websocket.compression = "shared", two of them offering the
extension. Bytes are whole frames (header + payload) of record messages.
Usage: deflate-bytes.py http://127.0.0.1:PORT [keys] [updates]"""
import json, os, random, socket, struct, sys, threading, urllib.request, zlib, base64

BASE = sys.argv[1]
KEYS = int(sys.argv[2]) if len(sys.argv) > 2 else 100
UPDATES = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
HOST, PORT = BASE.split("//")[1].split(":")
PORT = int(PORT)
PREFIX = f"order-{os.getpid()}-"


def row(i, rng):
    return {"id": i, "customer_id": 10_000 + i * 7, "status": "open", "currency": "EUR",
            "amount_cents": rng.randrange(1_000, 500_000), "tax_cents": rng.randrange(100, 50_000),
            "discount_cents": 0, "items": rng.randrange(1, 20), "warehouse": "FRA-2", "carrier": "DHL",
            "tracking_number": f"JD{i * 7919:016}", "shipping_name": "Ada Lovelace",
            "shipping_street": "12 Analytical Engine Way", "shipping_city": "London",
            "shipping_postcode": "NW1 2DB", "shipping_country": "GB", "payment_method": "card",
            "created_at": "2026-11-27T10:00:00.000Z", "updated_at": "2026-11-27T10:00:00.000Z", "version": 1}


FIELDS = ["status", "amount_cents", "tax_cents", "discount_cents", "items", "carrier", "updated_at"]


def update(r, rng, seq):
    first = rng.randrange(len(FIELDS))
    second = (first + rng.randrange(1, len(FIELDS))) % len(FIELDS)
    for i in ([first] if rng.random() < 0.5 else [first, second]):
        f = FIELDS[i]
        r[f] = {"status": ["open", "paid", "packed", "shipped"][seq % 4], "carrier": ["DHL", "UPS", "GLS"][seq % 3],
                "updated_at": f"2026-11-27T10:{(seq // 60000) % 60:02}:{(seq // 1000) % 60:02}.{seq % 1000:03}Z"
                }.get(f, seq * 7 % 500_000)


def recv_exact(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return bytes(b)


class Sub(threading.Thread):
    def __init__(self, delta, deflate):
        super().__init__(daemon=True)
        self.delta, self.deflate, self.bytes, self.records = delta, deflate, 0, 0
        s = socket.create_connection((HOST, PORT), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert ("permessage-deflate" in head.decode().lower()) == deflate, head
        sub = {"type": "subscribe", "id": 1, "topic": "posts", "snapshot": False, "prefix": PREFIX}
        if delta:
            sub["delta"] = "json-patch"
        payload, mask = json.dumps(sub).encode(), os.urandom(4)
        n = len(payload)
        s.sendall(bytes([0x81, 0x80 | 126]) + struct.pack(">H", n) + mask
                  + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n >= 126 else
                  bytes([0x81, 0x80 | n]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        self.s = s
        self.frame()  # subscribed

    def frame(self):
        b0, b1 = recv_exact(self.s, 2)
        n, extra = b1 & 0x7F, 0
        if n == 126:
            n, extra = struct.unpack(">H", recv_exact(self.s, 2))[0], 2
        elif n == 127:
            n, extra = struct.unpack(">Q", recv_exact(self.s, 8))[0], 8
        p = recv_exact(self.s, n)
        if b0 & 0x40:
            p = zlib.decompressobj(wbits=-15).decompress(p + b"\x00\x00\xff\xff")
        return json.loads(p), 2 + extra + n

    def run(self):
        while self.records < KEYS + UPDATES:
            msg, n = self.frame()
            if "data" in msg or "patch" in msg:
                self.records += 1
                self.bytes += n


subs = {(d, z): Sub(d, z) for d in (False, True) for z in (False, True)}
for s in subs.values():
    s.start()
rng = random.Random(11)
rows = [row(i, rng) for i in range(KEYS)]
sent = 0
while sent < KEYS + UPDATES:
    records = []
    for _ in range(min(50, KEYS + UPDATES - sent)):
        if sent < KEYS:
            k = sent
        else:
            k = rng.randrange(KEYS)
            update(rows[k], rng, sent)
        records.append({"key": f"{PREFIX}{k}", "data": dict(rows[k])})
        sent += 1
    req = urllib.request.Request(f"{BASE}/topics/posts", data=json.dumps({"records": records}).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=30).read()
for s in subs.values():
    s.join(120)
    assert s.records == KEYS + UPDATES, (s.delta, s.deflate, s.records)
base = subs[(False, False)].bytes
print(f"CDC row, {KEYS} keys, {UPDATES} updates ({KEYS + UPDATES} records per subscriber)")
print("| values | compression | bytes/record | vs whole uncompressed |")
print("|---|---|---:|---:|")
for (d, z), s in subs.items():
    print(f"| {'delta' if d else 'whole'} | {'shared' if z else 'off'} | {s.bytes / s.records:.1f} | {base / s.bytes:.2f}x |")
