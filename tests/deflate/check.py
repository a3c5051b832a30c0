"""permessage-deflate against a running gateway, with clients that share no
code with it: the `websockets` library (negotiates and inflates on its own)
and a raw socket (looks at RSV1 and the bytes on the wire, and sends broken
compressed frames). Usage: check.py http://127.0.0.1:PORT"""
import asyncio, json, os, socket, struct, sys, urllib.request, zlib, base64

import websockets

BASE = sys.argv[1]
HOST, PORT = BASE.split("//")[1].split(":")
PORT = int(PORT)
checks = 0


def ok(cond, what):
    global checks
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    checks += 1
    print(f"ok {checks} - {what}")


def row(i):
    return {f"field_{f}": f"value {f} of row {i}" for f in range(20)}


def publish(records):
    req = urllib.request.Request(f"{BASE}/topics/posts", data=json.dumps({"records": records}).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status < 300


async def with_library():
    async with websockets.connect(f"ws://{HOST}:{PORT}/ws", open_timeout=10) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        ok(ext == "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
           f"negotiated: {ext!r}")
        # Sent compressed by the library: the gateway inflates it.
        keys = [f"lib{i}" for i in range(5)] + [f"padding-key-{i}" for i in range(300)]
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "topic": "posts", "snapshot": False, "keys": keys}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        ok(reply.get("type") == "subscribed", f"compressed subscribe answered: {reply}")
        sent = [row(i) for i in range(4)] + [{"n": 1}]
        publish([{"key": f"lib{i}", "data": d} for i, d in enumerate(sent)])
        got = []
        while len(got) < len(sent):
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if "data" in msg:
                got.append(msg["data"])
        ok(got == sent, "records arrive intact through the library's inflater")


def raw_connect(offer):
    s = socket.create_connection((HOST, PORT), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    ext = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    return s, head.decode()


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b


def read_frame(s):
    """(rsv1, opcode, payload, bytes on the wire)"""
    b0, b1 = recv_exact(s, 2)
    n = b1 & 0x7F
    extra = 0
    if n == 126:
        n = struct.unpack(">H", recv_exact(s, 2))[0]; extra = 2
    elif n == 127:
        n = struct.unpack(">Q", recv_exact(s, 8))[0]; extra = 8
    return bool(b0 & 0x40), b0 & 0x0F, recv_exact(s, n), 2 + extra + n


def send_frame(s, payload, opcode=1, rsv1=False):
    mask = os.urandom(4)
    head = bytes([0x80 | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 \
        else bytes([0x80 | 127]) + struct.pack(">Q", n)
    s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def deflate(data):
    c = zlib.compressobj(wbits=-15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def inflate(data):
    return zlib.decompressobj(wbits=-15).decompress(data + b"\x00\x00\xff\xff")


def raw_wire():
    totals = {}
    for offer in ("permessage-deflate; client_max_window_bits", None):
        s, head = raw_connect(offer)
        negotiated = "permessage-deflate" in head.lower()
        ok(negotiated == bool(offer), f"raw handshake, offer {offer!r}: negotiated={negotiated}")
        send_frame(s, json.dumps({"type": "subscribe", "id": 1, "topic": "posts", "snapshot": False,
                                  "keys": ["raw"]}).encode())
        rsv1, op, payload, _ = read_frame(s)
        reply = json.loads(inflate(payload) if rsv1 else payload)
        ok(reply["type"] == "subscribed", "raw subscribe answered")
        publish([{"key": "raw", "data": row(i)} for i in range(10)])
        wire, flags, i = 0, set(), 0
        while i < 10:
            rsv1, op, payload, n = read_frame(s)
            msg = json.loads(inflate(payload) if rsv1 else payload)
            if "data" not in msg:
                continue  # a control message (e.g. `live`)
            assert msg["data"] == row(i), msg
            flags.add(rsv1)
            wire += n
            i += 1
        ok(flags == {bool(offer)}, f"records {'compressed (RSV1)' if offer else 'plain'} when {'' if offer else 'not '}negotiated")
        totals[bool(offer)] = wire
        s.close()
    print(f"# wire bytes for 10 20-field records: plain {totals[False]}, deflated {totals[True]}")
    ok(totals[True] * 2 < totals[False], "compressed records take less than half the bytes")


def raw_broken(payload, rsv1, expect, what):
    s, head = raw_connect("permessage-deflate")
    send_frame(s, payload, rsv1=rsv1)
    try:
        while True:
            r, op, p, _ = read_frame(s)
            if op == 8:
                code = struct.unpack(">H", p[:2])[0]
                ok(code == expect, f"{what}: close {code}")
                return
    except (EOFError, ConnectionResetError):
        raise SystemExit(f"FAIL: {what}: closed without a close frame")
    finally:
        s.close()


asyncio.run(with_library())
raw_wire()
raw_broken(b"\xff\xff\xff\xff garbage", True, 1002, "malformed deflate data")
# Inflates to 30 MB, over the limit of the gateway below (max_message_bytes = 1 MB).
raw_broken(deflate(b"a" * 30_000_000), True, 1009, "inflated size over max_message_bytes")
print(f"{checks} checks passed")
