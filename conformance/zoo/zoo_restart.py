#!/usr/bin/env python3
"""Restart a running fluxy_zoo.py on the same port, keys and storage: the conformance runner's
`--restart-cmd` for the zoo (the durability group, `dur/*`).

    python3 zoo_restart.py [--graceful] PIDFILE OUT_FILE -- ZOO_ARGS...

Kills the zoo whose pid is in PIDFILE (SIGKILL, a crash, unless --graceful: SIGTERM), waits for it
to exit, starts `fluxy_zoo.py ZOO_ARGS --pidfile PIDFILE` again with its stdout in OUT_FILE, and
returns 0 once the new server printed its dev line. ZOO_ARGS must name a fixed `--port` (and
`--db` plus `--seed` for the storage and keys to survive; with `--memory` everything is lost,
which the durability cases must catch).
"""

import os
import signal
import subprocess
import sys
import time


def main():
    args = sys.argv[1:]
    graceful = False
    if args and args[0] == "--graceful":
        graceful, args = True, args[1:]
    if len(args) < 3 or args[2] != "--":
        sys.exit(__doc__)
    pidfile, out_file, zoo_args = args[0], args[1], args[3:]
    try:
        old = int(open(pidfile).read().strip())
    except (OSError, ValueError):
        old = None
    if old:
        try:
            os.kill(old, signal.SIGTERM if graceful else signal.SIGKILL)
            for _ in range(200):
                os.kill(old, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            pass
    here = os.path.dirname(os.path.abspath(__file__))
    with open(out_file, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(here, "fluxy_zoo.py"), *zoo_args, "--pidfile", pidfile],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit("the restarted zoo exited with %s" % proc.returncode)
        with open(out_file, "rb") as f:
            if f.read().strip().startswith(b"{"):
                return
        time.sleep(0.05)
    sys.exit("the restarted zoo printed no dev line within 30 s")


if __name__ == "__main__":
    main()
