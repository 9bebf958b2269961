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

    cargo mutants --list --json --diff -p fluxy-room > /tmp/mall.json
    git clone -q --local /work/main /tmp/fluxy-mutc
    python3 docs/mutation-conformance-oracle.py --clone /tmp/fluxy-mutc \
        --list /tmp/mall.json --out /tmp/moracle.jsonl --worker 0/2
"""
import argparse
import json
import os
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
env = dict(os.environ, CARGO_PROFILE_DEV_DEBUG="0")
report = os.path.join(a.clone, "target", f"moracle-{wi}")

for i, m in enumerate(mutants):
    if i % wn != wi or m["name"] in done or (only is not None and m["name"] not in only):
        continue
    first = m["diff"].split("\n")[1]
    diff = m["diff"].replace(first, "+++ " + m["file"], 1)
    t = time.time()
    failed = []
    p = subprocess.run(["patch", "-p0", "--quiet"], input=diff, text=True, capture_output=True)
    if p.returncode != 0:
        verdict = "patch-failed"
    elif subprocess.run(["cargo", "build", "-q", "-p", "fluxy-conformance"],
                        capture_output=True, env=env).returncode != 0:
        verdict = "unviable"
    else:
        try:
            r = subprocess.run(["target/debug/fluxy-conformance", "run", "--format", "json",
                                "--out", report] + (["--strict"] if a.strict else []),
                               capture_output=True, text=True, timeout=a.timeout)
            verdict = {0: "MISSED", 1: "caught"}.get(r.returncode, f"error(rc{r.returncode})")
            try:
                rep = json.load(open(os.path.join(report, "report.json")))
                failed = [c["id"] for c in rep.get("cases", [])
                          if c.get("verdict") in ("fail", "non-strict")]
            except (OSError, ValueError, KeyError):
                pass
            if verdict == "MISSED" and a.also_faults:
                f = subprocess.run(["target/debug/fluxy-conformance", "faults", "--verify"],
                                   capture_output=True, text=True, timeout=a.timeout)
                if f.returncode != 0:
                    verdict = "caught-by-selftest"
                    failed = [l.split()[0] for l in f.stdout.splitlines() if " NO " in l]
        except subprocess.TimeoutExpired:
            verdict = "timeout"
    subprocess.run(["git", "checkout", "-q", "--", "."])
    rec = {"i": i, "name": m["name"], "file": m["file"], "function": m.get("function", {}).get("function_name") if isinstance(m.get("function"), dict) else None,
           "verdict": verdict, "failed": failed, "secs": round(time.time() - t, 1)}
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"{i:3} {verdict:12} {rec['secs']:5.0f}s {m['name']}  {' '.join(failed[:4])}", flush=True)
