#!/usr/bin/env python3
# Writes RATE records/s to random keys of the `view` topic (keys k0000000..,
# values like view-bench's) for SECS seconds and prints the server's RSS
# every 10 s: RSS growth per write with no subscriber or with one started
# beside it (RESULTS.md, "Snapshots that move on").
# Usage: view-writes.py HOST:PORT SERVER_PID KEYS RATE SECS
import json, random, sys, time, urllib.request
addr, pid, keys, rate, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
r0 = rss(); print("start RSS MiB", r0, flush=True)
t0 = time.time(); n = 0; nxt = t0; last = t0
pad = "x" * 180
while time.time() - t0 < secs:
    batch = [{"key": f"k{random.randrange(keys):07}", "data": {"v": 1, "p": pad}} for _ in range(rate // 10)]
    req = urllib.request.Request(f"http://{addr}/topics/view", data=json.dumps({"records": batch}).encode(), headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=60).read()
    n += len(batch)
    nxt += 0.1
    d = nxt - time.time()
    if d > 0: time.sleep(d)
    if time.time() - last >= 10:
        last = time.time(); r = rss()
        print(f"t={last-t0:.0f}s written={n} RSS={r} MiB growth={r-r0} MiB ({(r-r0)*1048576/max(n,1):.0f} B/write)", flush=True)
print("end written", n, "RSS", rss(), flush=True)
