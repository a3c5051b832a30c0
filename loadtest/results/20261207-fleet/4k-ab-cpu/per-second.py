# Per second of scenario (b): records the steady clients received and their latency p50/p99/max.
# Usage: python3 per-second.py FLEET_OUT_DIR   (the folder loadtest/fleet.sh wrote: clients-0.json, events.tsv)
import json,sys,math
d=json.load(open(sys.argv[1]+'/clients-0.json'))
ev=[l.split('\t') for l in open(sys.argv[1]+'/events.tsv')]
lat=d['latency']
def q(h,qq):
    tot=sum(h.values()); want=math.ceil(tot*qq); s=0
    for b in sorted(h,key=int):
        s+=h[b]
        if s>=want: return 0.1*1.05**(int(b)+1)
for e in ev:
    if e[0]!='b': continue
    st=int(e[1])//1000; en=int(e[2])//1000
    for sec in range(st-2,en+8):
        h=lat.get(str(sec),{})
        if h: print(sec-st, sum(h.values()), "p50 %.0f p99 %.0f max %.0f"%(q(h,.5),q(h,.99),q(h,1.0)))
