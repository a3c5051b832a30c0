import json, sys, glob, os, re, collections
out = sys.argv[1]
rows = collections.defaultdict(list)
for f in sorted(glob.glob(out + '/*.json')):
    n = os.path.basename(f)[:-5]
    sc, b, r = re.match(r'(.*)-(\w+)-r(\d+)$', n).groups()
    d = json.load(open(f))
    if sc == 'fanout':
        s = d['steps'][0]
        per_rec_user = s['user_us_per_delivery'] * s['deliveries'] / max(s['generated'], 1)
        rows[(sc, b)].append((int(r), f"user {s['user_us_per_delivery']:.2f} sys {s['sys_us_per_delivery']:.2f} us/delivery, {s['deliveries_per_cpu_sec']:.0f} del/CPU-s, {s['deliveries_per_sec']:.0f} del/s, ratio {s['delivery_ratio']:.4f}, p50 {s['latency']['p50_ms']:.1f} p99 {s['latency']['p99_ms']:.1f} ms, user/record {per_rec_user:.2f}", s['user_us_per_delivery'], s['sys_us_per_delivery']))
    else:
        rows[(sc, b)].append((int(r), f"{d['rss_per_conn_bytes']:.0f} B/conn ready {d['ready']}", d['rss_per_conn_bytes'], 0))
for k in sorted(rows):
    for r, text, u, s in sorted(rows[k]):
        print(k[0], k[1], f"r{r}", text)
    us = [x[2] for x in rows[k]]
    print(k[0], k[1], 'mean', f"{sum(us)/len(us):.2f}")
