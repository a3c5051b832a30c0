import sys, re, collections
# every sample is an allocation call (uprobe); attribute to the first interesting frame
SKIP = re.compile(r'^(__GI_|__libc_|_mid_memalign|alloc::|core::|<alloc::|<core::|hashbrown::|__rust|__rdl|__rg|std::|<std::|<hashbrown|bytes::|<bytes::|<T as |<\[|\[unknown\]|_int_|malloc|calloc|cfree|free|realloc|unlink_chunk|<\w+ as alloc|serde_json::|<serde_json|serde_core|<serde_core|<&mut serde_json|smallvec|<smallvec)')
depth = int(sys.argv[1]); top = int(sys.argv[2]); div = float(sys.argv[3]) if len(sys.argv) > 3 else 0
callers = collections.Counter(); total = 0
frames = []
def flush():
    global total
    if not frames: return
    total += 1
    chain = []
    for f in frames:
        if SKIP.match(f): continue
        chain.append(f[:120])
        if len(chain) >= depth: break
    callers[' <- '.join(chain) or '?'] += 1
for line in sys.stdin:
    line = line.rstrip('\n')
    if not line.strip():
        flush(); frames.clear(); continue
    if line.startswith(('\t', ' ')) and not 'probe_libc' in line:
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            frames.append(re.sub(r' \(.*\)$', '', parts[1]))
    else:
        flush(); frames.clear()
flush()
print(f"allocation calls {total}")
for c, n in callers.most_common(top):
    extra = f" {n/div:6.2f}/rec" if div else ""
    print(f"{100*n/total:5.1f}%{extra}  {c}")
