import sys, re, collections
# perf script output: attribute allocator samples to the first "interesting" caller frame
ALLOC = re.compile(r'^(_int_malloc|malloc_consolidate|_int_free|unlink_chunk|malloc|cfree|free|realloc|_int_realloc|sysmalloc|__libc_free|__libc_malloc)')
SKIP = re.compile(r'^(__GI_|__libc_|_mid_memalign|alloc::|core::|<alloc::|<core::|hashbrown::|__rust|__rdl|__rg|std::|<std::|<hashbrown|bytes::|<bytes::|<T as |<\[|\[unknown\]|_int_|malloc|cfree|free|realloc|unlink_chunk|<\w+ as alloc)')
depth = int(sys.argv[1]) if len(sys.argv) > 1 else 1
total = 0; alloc = 0
callers = collections.Counter()
def flush(frames):
    global total, alloc
    if not frames: return
    total += 1
    if ALLOC.match(frames[0]):
        alloc += 1
        chain = []
        for f in frames[1:]:
            if SKIP.match(f): continue
            chain.append(f[:110])
            if len(chain) >= depth: break
        callers[' <- '.join(chain) or '?'] += 1
frames = []
for line in sys.stdin:
    line = line.rstrip('\n')
    if not line.strip():
        flush(frames); frames = []; continue
    if line.startswith(('\t', ' ')):
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            sym = parts[1]
            sym = re.sub(r'\+0x[0-9a-f]+ \(.*\)$', '', sym)
            sym = re.sub(r' \(.*\)$', '', sym)
            frames.append(sym)
    else:
        flush(frames); frames = []
flush(frames)
print(f"samples {total}, allocator {alloc} ({100*alloc/total:.1f}%)")
for c, n in callers.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 40):
    print(f"{100*n/total:5.2f}% {100*n/alloc:5.1f}%a  {c}")
