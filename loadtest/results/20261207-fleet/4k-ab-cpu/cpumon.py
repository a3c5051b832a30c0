# Usage: python3 cpumon.py SECONDS > cpu-per-second.txt  (machine busy cores, then the top commands by CPU)
# Per second: machine busy cores, and per-command CPU (cores) for the top processes.
import os,time,sys
hz=os.sysconf('SC_CLK_TCK')
def snap():
    d={}
    for p in os.listdir('/proc'):
        if not p.isdigit(): continue
        try:
            s=open(f'/proc/{p}/stat').read()
            comm=s[s.index('(')+1:s.rindex(')')]
            f=s[s.rindex(')')+2:].split()
            d[p]=(comm,int(f[11])+int(f[12]))
        except Exception: pass
    t=open('/proc/stat').readline().split()[1:]
    t=list(map(int,t)); idle=t[3]+t[4]; tot=sum(t[:8])
    return d,idle,tot
end=time.time()+float(sys.argv[1])
a,ia,ta=snap()
while time.time()<end:
    time.sleep(1)
    b,ib,tb=snap()
    busy=(1-(ib-ia)/max(1,tb-ta))*2
    per={}
    for p,(c,v) in b.items():
        if p in a and a[p][0]==c: per[c]=per.get(c,0)+(v-a[p][1])/hz
    top=sorted(per.items(),key=lambda x:-x[1])[:6]
    print(time.strftime('%H:%M:%S'),"%.2f"%busy," ".join(f"{c}={v:.2f}" for c,v in top),flush=True)
    a,ia,ta=b,ib,tb
