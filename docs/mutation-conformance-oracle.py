#!/usr/bin/env python3
"""Mutation testing of fluxy-room with the conformance suite alone as the oracle.

cargo-mutants 27.1.0 always runs the mutated package's own tests, so this script does the
loop by hand. For each mutant it applies the diff in a private clone, rebuilds
fluxy-conformance (which embeds fluxy-server and therefore fluxy-room), runs
`fluxy-conformance run --format json` against the embedded server and reverts:
exit 0 = MISSED, exit 1 = caught (the failing case ids are recorded), build failure =
unviable. With --also-faults, a mutant the run misses is also given the suite's self-test
(`fluxy-conformance faults --verify`: each of the reference server's deliberate faults must
still be caught); a mutant that breaks a fault is then "caught-by-selftest". Results are appended to a JSON-lines file, so an interrupted run resumes.

With --external RUNNER (a `fluxy-conformance` binary built once from unmutated code), the
runner itself is never mutated: for each mutant only the `fluxy-server` binary is rebuilt,
started as a separate process on a SQLite file (`--dev`), and judged by RUNNER with
`--restart-cmd` (so the durability group restarts the mutated process for real) and
`--fail-fast`. This is the right oracle for fluxy_protocol mutants, which the embedded mode
would also apply to the runner's own decoding. A mutated server that never prints its --dev
line is "caught-startup" (the suite cannot start against it). Touch /tmp/mut-pause to make
every worker pause between mutants (each writes /tmp/mut-worker-I.state: running|paused).

    cargo mutants --list --json --diff -p fluxy-room > /tmp/mall.json
    git clone -q --local /work/main /tmp/fluxy-mutc
    python3 docs/mutation-conformance-oracle.py --clone /tmp/fluxy-mutc \
        --list /tmp/mall.json --out /tmp/moracle.jsonl --worker 0/2
    # fluxy-protocol / fluxy-server mutants against the unmutated runner:
    (cd /work/main && cargo build -q -p fluxy-conformance && cp target/debug/fluxy-conformance /tmp/runner)
    (cd /tmp/fluxy-mutc && CARGO_PROFILE_DEV_DEBUG=0 cargo build -q -p fluxy-server --bin fluxy-server)
    python3 docs/mutation-conformance-oracle.py --clone /tmp/fluxy-mutc --external /tmp/runner \
        --list /tmp/mprot.json --out /tmp/mprot.jsonl --strict --worker 0/2
"""
import argparse
import json
import os
import shlex
import socket
import subprocess
import time

ap = argparse.ArgumentParser()
ap.add_argument("--clone", required=True, help="private clone to mutate")
ap.add_argument("--list", required=True, help="output of cargo mutants --list --json --diff")
ap.add_argument("--out", required=True, help="JSON-lines results (appended; reruns skip done mutants)")
ap.add_argument("--worker", default="0/1", help="i/n: take every n-th mutant starting at i")
ap.add_argument("--only", help="file with mutant names to (re)test, one per line")
ap.add_argument("--timeout", type=float, default=180)
ap.add_argument("--strict", action="store_true",
                help="run the suite with --strict: a SHOULD violation fails the run too (the "
                     "reference implements every SHOULD)")
ap.add_argument("--external", metavar="RUNNER",
                help="judge a separately started fluxy-server with this unmutated runner binary")
ap.add_argument("--server-arg", action="append", default=[],
                help="extra fluxy-server argument in --external mode (repeatable), e.g. "
                     "--server-arg=--room-idle-unload-ms=1 to make every case cross room unloads")
ap.add_argument("--timeout-scale", default="3",
                help="the runner's --timeout-scale in --external mode (the machine is shared)")
ap.add_argument("--also-faults", action="store_true",
                help="when the run passes, also run `fluxy-conformance faults --verify` (the suite's "
                     "self-test: every deliberate fault must still be caught)")
a = ap.parse_args()

wi, wn = (int(x) for x in a.worker.split("/"))
mutants = json.load(open(a.list))
only = set(l.strip() for l in open(a.only)) if a.only else None
done = set()
if os.path.exists(a.out):
    done = {json.loads(l)["name"] for l in open(a.out) if l.strip()}
os.chdir(a.clone)
# No debug info: the binaries link much faster (prepare the clone's target with the same env).
env = dict(os.environ, CARGO_PROFILE_DEV_DEBUG="0")
report = os.path.join(a.clone, "target", f"moracle-{wi}")


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def set_state(state):
    with open(f"/tmp/mut-worker-{wi}.state", "w") as f:
        f.write(state + "\n")


def wait_while_paused():
    set_state("paused" if os.path.exists("/tmp/mut-pause") else "running")
    while os.path.exists("/tmp/mut-pause"):
        time.sleep(2)  # an operator's flag file, not a synchronisation between our own parts
    set_state("running")


def run_embedded():
    """Rebuild the embedded runner+server and run it; returns (verdict, failed)."""
    if subprocess.run(["cargo", "build", "-q", "-p", "fluxy-conformance"],
                      capture_output=True, env=env).returncode != 0:
        return "unviable", []
    return judge(["target/debug/fluxy-conformance", "run", "--format", "json", "--out", report]
                 + (["--strict"] if a.strict else []), "target/debug/fluxy-conformance")


def run_external():
    """Rebuild only fluxy-server, start it on a file, judge it with the unmutated runner."""
    if subprocess.run(["cargo", "build", "-q", "-p", "fluxy-server", "--bin", "fluxy-server"],
                      capture_output=True, env=env).returncode != 0:
        return "unviable", []
    work = os.path.join(a.clone, "target", f"mext-{wi}")
    subprocess.run(["rm", "-rf", work])
    os.makedirs(work)
    port = free_port()
    q = shlex.quote
    binary, db = os.path.join(a.clone, "target/debug/fluxy-server"), os.path.join(work, "db.sqlite")
    pid, out, dev = (os.path.join(work, n) for n in ("pid", "out", "dev.json"))
    extra = " ".join(q(x) for x in a.server_arg)
    start = (f"nohup {q(binary)} --listen 127.0.0.1:{port} --db {q(db)} --dev "
             f"--idle-timeout-ms 4000 {extra} >{q(out)} 2>/dev/null & echo $! >{q(pid)}")
    # Bounded: a mutant can break the graceful shutdown; SIGKILL after 5 s.
    stop = (f"p=$(cat {q(pid)}); kill $p 2>/dev/null; i=0; while kill -0 $p 2>/dev/null && [ $i -lt 100 ]; "
            f"do sleep 0.05; i=$((i+1)); done; kill -9 $p 2>/dev/null; true")
    subprocess.run(["sh", "-c", start])
    try:
        deadline = time.time() + 30
        line = None
        while time.time() < deadline and line is None:
            try:
                line = next((l for l in open(out) if l.lstrip().startswith("{")), None)
            except OSError:
                pass
            if line is None:
                time.sleep(0.05)  # polling the server's stdout file for its --dev line, with a deadline
        if line is None:
            return "caught-startup", []
        open(dev, "w").write(line)
        return judge([a.external, "run", "--dev-json-file", dev, "--restart-cmd", f"{stop}; {start}",
                      "--fail-fast", "--timeout-scale", a.timeout_scale, "--format", "json",
                      "--out", report] + (["--strict"] if a.strict else []), a.external)
    finally:
        subprocess.run(["sh", "-c", stop])


def judge(cmd, runner):
    failed = []
    subprocess.run(["rm", "-rf", report])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return "timeout", []
    verdict = {0: "MISSED", 1: "caught"}.get(r.returncode, f"error(rc{r.returncode})")
    try:
        rep = json.load(open(os.path.join(report, "report.json")))
        failed = [c["id"] for c in rep.get("cases", [])
                  if c.get("verdict") in ("fail", "non-strict", "blocked", "error")]
    except (OSError, ValueError, KeyError):
        pass
    if verdict == "MISSED" and a.also_faults:
        f = subprocess.run([runner, "faults", "--verify"], capture_output=True, text=True,
                           timeout=a.timeout)
        if f.returncode != 0:
            verdict = "caught-by-selftest"
            failed = [l.split()[0] for l in f.stdout.splitlines() if " NO " in l]
    return verdict, failed


for i, m in enumerate(mutants):
    if i % wn != wi or m["name"] in done or (only is not None and m["name"] not in only):
        continue
    wait_while_paused()
    first = m["diff"].split("\n")[1]
    diff = m["diff"].replace(first, "+++ " + m["file"], 1)
    t = time.time()
    failed = []
    p = subprocess.run(["patch", "-p0", "--quiet"], input=diff, text=True, capture_output=True)
    if p.returncode != 0:
        verdict = "patch-failed"
    else:
        verdict, failed = run_external() if a.external else run_embedded()
    subprocess.run(["git", "checkout", "-q", "--", "."])
    rec = {"i": i, "name": m["name"], "file": m["file"],
           "function": m.get("function", {}).get("function_name") if isinstance(m.get("function"), dict) else None,
           "verdict": verdict, "failed": failed, "secs": round(time.time() - t, 1)}
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"{i:3} {verdict:14} {rec['secs']:5.0f}s {m['name']}  {' '.join(failed[:4])}", flush=True)
set_state("done")
