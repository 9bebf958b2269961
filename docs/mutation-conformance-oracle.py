import json, subprocess, time, os, sys
os.chdir('/tmp/fluxy-mutc')
d = json.load(open('/tmp/mlist.json'))
deadline = time.time() + float(sys.argv[1])
res = []
for i, m in enumerate(d):
    if time.time() > deadline:
        break
    diff = m['diff'].replace('+++ ' + m['diff'].split('\n')[1][4:], '+++ ' + m['file'], 1)
    p = subprocess.run(['patch', '-p0', '--quiet'], input=diff, text=True, capture_output=True)
    if p.returncode != 0:
        res.append((m['name'], 'patch-failed')); subprocess.run(['git', 'checkout', '-q', '--', '.']); continue
    t = time.time()
    b = subprocess.run(['cargo', 'build', '-q', '-p', 'fluxy-conformance'], capture_output=True, text=True, env=dict(os.environ, CARGO_PROFILE_DEV_DEBUG='0'))
    if b.returncode != 0:
        verdict = 'unviable'
    else:
        try:
            r = subprocess.run(['target/debug/fluxy-conformance', 'run', '--format', 'console'], capture_output=True, text=True, timeout=150)
            verdict = {0: 'MISSED', 1: 'caught', 2: 'caught(exit2)'}.get(r.returncode, f'caught(rc{r.returncode})')
        except subprocess.TimeoutExpired:
            verdict = 'timeout'
    subprocess.run(['git', 'checkout', '-q', '--', '.'])
    res.append((m['name'], verdict))
    print(f"{i+1:2} {verdict:12} {time.time()-t:5.0f}s {m['name']}", flush=True)
print(json.dumps(res))
