#!/usr/bin/env python3
"""Summarise a mutation run of docs/mutation-conformance-oracle.py and classify survivors.

    python3 docs/mutation/classify.py RESULTS.jsonl [RERUN.jsonl ...] > table.md

A later file's verdict for a mutant replaces an earlier one (reruns with a newer runner).
Every MISSED mutant must match a rule below (file, line range or function, why); an
unmatched survivor is printed as UNCLASSIFIED so nobody can publish a run without reading it.
"""
import collections
import json
import re
import sys

# (file suffix, function regex or None, line range or None, class, reason)
RULES = [
    ("protocol/src/request.rs", r"unsigned_cursor|decode_cursor", None, "fault-only",
     "reads a cursor without its signature for the deliberate `cursor-unsigned` fault; servers pass `false`"),
    ("protocol/src/request.rs", r"legacy_before_time", (150, 151), "equivalent",
     "the `||` swaps: a wrong main length or a non-digit fraction still fails `parse_timestamp` of the rebuilt text. "
     "(The `frac.len() > 9` bound was the reference being stricter than FX-HIS-11; removed, and the case now sends 9 and 12 digits)"),
    ("protocol/src/request.rs", r"handshake_close_code", None, "dead in the native shell",
     "ws.rs rejects a bad `v` with an explicit CloseCode::UnsupportedVersion, so this arm is never reached there"),
    ("protocol/src/codes.rs", r"as_str|fmt|meaning", None, "not on the wire",
     "the wire form comes from serde; as_str/Display/meaning feed logs and docs only"),
    ("protocol/src/codes.rs", r"from_code", None, "not used by fluxy-server",
     "parses a close code received by a client (the runner, SDKs); the server only sends codes"),
    ("protocol/src/jwt.rs", r"peek_tenant", None, "equivalent",
     "a `tid` outside the id pattern names no tenant, so the secret lookup fails with the same `unauthorized`"),
    ("protocol/src/jwt.rs", r"verify", (202, 202), "allowed either way",
     "`nbf` exactly at now + 5 s: FX-AUTH-4/5 let a server allow up to 5 s of skew, so both answers conform"),
    ("reference-worker/server/src/http.rs", r"bump_membership", None, "race-only",
     "membership versions close the handshake race (issue 13); only a kick racing a handshake shows it, which fluxy-server's own race tests do (a black-box suite cannot schedule that interleaving)"),
    ("reference-worker/server/src/http.rs", r"history", (766, 785), "fault-only / equivalent",
     "the `repeat-row`/`skip-row` fault branches; `u64::MAX >> 1` vs `<< 1`: both are past every seq after `sql_int` saturates"),
    ("reference-worker/server/src/http.rs", r"legacy_messages", (827, 827), "equivalent",
     "`u64::MAX >> 1` vs `<< 1`: both are past every id after `sql_int` saturates"),
    ("reference-worker/server/src/http.rs", r"sse", None, "equivalent",
     "the SSE catch-up loop `<` vs `<=`: one more, empty, page read"),
    ("reference-worker/server/src/http.rs", r"router", None, "equivalent",
     "axum's body limit `MAX_BODY_BYTES * 2` vs `+ 2`: `body_text` still answers 413 past 1 MiB"),
    ("reference-worker/server/src/limiter.rs", None, (34, 47), "allowed alternative",
     "HTTP rate limiting is optional (FX-LIM-7 'where applied'); disabling it, or sweeping idle buckets differently (only after 4,096 keys), changes nothing the spec requires"),
    ("reference-worker/server/src/limiter.rs", None, (52, 57), "allowed alternative",
     "a faster refill or a cheaper token makes the limit looser, which the spec allows; a slower one shows only as FX-LIM-12 when the client outpaces the refill"),
    ("reference-worker/server/src/ws.rs", None, (25, 42), "performance only",
     "tungstenite read/write buffer sizes: frames and order are the same"),
    ("reference-worker/server/src/ws.rs", r"write_loop", None, "allowed alternative",
     "batching is opt-in and even then a server MAY send single frames (FX-TRN-10)"),
    ("reference-worker/server/src/main.rs", None, None, "not observable by a process restart",
     "`--synchronous full` vs `normal`: the difference shows only on power loss, not when the process is killed"),
    ("reference-worker/server/src/rooms.rs", r"ConnTx::push|ConnTx::kill", None, "server-internal bound",
     "the per-connection queue bound (4,096 frames, 8 MiB) and the slow-consumer close; no clause asks for them, fluxy-server's limits tests cover them"),
    ("reference-worker/server/src/rooms.rs", r"SseGone", None, "server-internal",
     "releasing an SSE listener whose client left (issue 13): not visible to a client; fluxy-server's SSE release test covers it"),
    ("reference-worker/server/src/rooms.rs", r"fmt", None, "not on the wire", "Debug output"),
    ("reference-worker/server/src/rooms.rs", r"try_unload", None, "unload timing",
     "when an idle room unloads; with the default 60 s no room unloads during a run (see the unload pass)"),
    ("reference-worker/server/src/rooms.rs", r"policy", None, "allowed alternative",
     "the 4010/4008 close policies are MAYs (FX-FRM-11, FX-LIM-3): disabling them or closing one frame earlier both conform"),
    ("reference-worker/server/src/rooms.rs", r"TaskCount", None, "not observable", "a counter of running room tasks"),
    ("reference-worker/server/src/rooms.rs", r"room_task", None, "equivalent",
     "wake-up instants of the room task: the engine reads the clock itself, so waking early only costs a loop turn; the generation counter matters only after a storage failure resets the room"),
    ("reference-worker/server/src/http.rs", r"poll", None, "equivalent",
     "the long-poll wait: a waiter registered while events exist is answered by the room at once, and `timeoutMs=0` waits 0 ms either way"),
    ("reference-worker/server/src/rooms.rs", r"Shell::drop|prune_sse|count_sse|<impl Drop for Shell>", None, "not observable",
     "the SSE listener gauge (`App::sse_listeners`, read by fluxy-server's tests and benches) and forgetting closed listeners early or late"),
    ("reference-worker/server/src/rooms.rs", r"idleness", None, "unload timing",
     "whether an idle room may unload; with the default 60 s no room unloads during a run (see the unload pass)"),
    ("reference-worker/server/src/rooms.rs", r"drop_slow", None, "server-internal bound",
     "closing a connection whose queue is full (slow consumer); no clause asks for it, fluxy-server's limits tests cover it"),
    ("reference-worker/server/src/lib.rs", r"fmt", None, "not on the wire", "Debug output"),
    ("reference-worker/server/src/lib.rs", r"shutdown", None, "not required",
     "the graceful stop (1001 close handshakes, bounded waits): without it a restart looks like a crash-stop to clients, which the spec allows; FX-ERR-5 governs the closes a server does make"),
    ("reference-worker/server/src/lib.rs", r"loaded_rooms|room_tasks|room_loads|room_lookups|sse_listeners", None, "not observable",
     "counters `RunningServer` exposes to fluxy-server's own tests and benches"),
    ("reference-worker/server/src/lib.rs", r"cursor_key", None, "not observable without the key",
     "a fixed cursor key still signs and verifies, across restarts and per room and tenant; only someone who knows the scheme and the key can tell (a security weakness a black-box suite cannot see)"),
    ("protocol/src/common.rs", r"json_schema|schema_name", None, "not on the wire",
     "JSON Schema generation; the committed schemas are drift-tested by `cargo test`"),
    ("protocol/src/common.rs", r"format_timestamp", None, "today's date only",
     "civil-from-days terms that are zero or equal for dates of this era and month (the century terms, one month's day offset): a black-box run only sees the server's timestamps of now; fluxy-protocol's unit tests round-trip the whole range"),
    ("reference-worker/server/src/limiter.rs", r"59:51: replace / with %", None, "load-dependent",
     "a 1 ms `retryAfterMs`: FX-LIM-12 catches it when the client outpaces the refill (10 ms a token here), as in an unloaded run; under this run's load the request after 1 ms already found a refilled token"),
    ("reference-worker/server/src/limiter.rs", None, (59, 59), "allowed (longer wait)",
     "a `retryAfterMs` longer than needed (or over 30 s, which the case does not wait for): FX-LIM-12 only asks that it be long enough"),
    ("reference-worker/server/src/db.rs", r"delete field messages", None, "equivalent",
     "the streaming messages loaded at wake-up: without them the engine looks the message up on demand (`Effect::Fetch`) and gets the same state; dur/agent-state-across-restart continues a stream across a restart either way"),
    ("reference-worker/server/src/lib.rs", r"RunningServer::wait", None, "not used by the binary",
     "fluxy-server's main waits for SIGTERM/SIGINT, not for the server task to end"),
    ("reference-worker/server/src/rooms.rs", r"on_msg", (700, 705), "unreachable",
     "the storage-failure branch of a connection opening (`reset || is_failed`): no storage fails in a run"),
    ("reference-worker/server/src/rooms.rs", r"on_msg", (745, 755), "equivalent",
     "a long-poll registered while events exist was already answered from storage; `>` vs `<` differ only for a position ahead of the room, which `decode_cursor` refuses"),
    ("reference-worker/server/src/rooms.rs", r"run_effects_once", (885, 890), "equivalent",
     "pruning expired idempotency keys on every commit instead of once a minute: same answers (keys are 24 h old when pruned)"),
    ("reference-worker/server/src/rooms.rs", r"run_effects_once", (895, 925), "unload timing",
     "the in-flight commit and lookup counters only decide whether an idle room may unload (see the unload pass)"),
    ("protocol/src/common.rs", r"parse_timestamp", (136, 138), "today's date only",
     "the March-based month and day-of-year arithmetic: wrong only for some months, and the only `before` values whose exact day matters are the messages' own, all of today (a `before` in another month is far from every message)"),
    ("protocol/src/common.rs", r"parse_timestamp", (124, 130), "caught by the final runner",
     "separator and range checks: `his/legacy-before-timestamp` now sends `T`/`Z` replaced, month 13, day 32 (verified on these mutants after the second pass; FX-HIS-11 is a SHOULD, so they fail under `--strict`)"),
    ("reference-worker/server/src/rooms.rs", r"run_effects_once", (865, 872), "caught by the final runner",
     "long-poll waiters never (or wrongly) woken by a commit: `trn/poll` now makes the poll wait before the commit; on the current code (rooms.rs after the chunked-queue merge, same lines as 989/992) 3 of these 4 are caught; `s > after` → `>=` stays equivalent (a waiter's position is below every new seq)"),
    ("reference-worker/server/src/rooms.rs", r"OutRx::try_recv", None, "performance only",
     "the writer drains further queued chunks before one flush; without it, one flush per chunk: same frames, same order"),
    ("reference-worker/server/src/rooms.rs", r"Shell::deliver", None, "equivalent",
     "a connection listed twice for the end-of-batch flush: the second flush finds nothing staged"),
    ("reference-worker/server/src/rooms.rs", r"on_msg", (799, 803), "unreachable",
     "the storage-failure branch of a connection opening (`reset || is_failed`), current code"),
    ("reference-worker/server/src/rooms.rs", r"on_msg", (847, 851), "equivalent",
     "as at 745–755 before the chunked queue: a poll registered while events exist was already answered from storage"),
    ("reference-worker/server/src/rooms.rs", r"run_effect_list", (959, 963), "equivalent",
     "a connection listed twice for the end-of-batch flush: the second flush finds nothing staged"),
    ("reference-worker/server/src/rooms.rs", r"run_effect_list", (992, 992), "equivalent",
     "`s > after` → `>=`: a waiter's position is below every new seq"),
    ("reference-worker/server/src/rooms.rs", r"run_effect_list", (1008, 1012), "equivalent",
     "pruning expired idempotency keys on every commit instead of once a minute (current code)"),
    ("reference-worker/server/src/rooms.rs", r"run_effect_list", (1017, 1045), "unload timing",
     "the in-flight commit and lookup counters only decide whether an idle room may unload (current code)"),
]


def classify(m):
    f, name = m["file"], m["name"]
    line = int(name.split(":")[1])
    for suffix, fn, lines, cls, why in RULES:
        if not f.endswith(suffix):
            continue
        if fn and not re.search(fn, f"{m.get('function') or ''} {name}"):
            continue
        if lines and not (lines[0] <= line <= lines[1]):
            continue
        return cls, why
    return "UNCLASSIFIED", ""


def main():
    res = {}
    for path in sys.argv[1:]:
        for l in open(path):
            if l.strip():
                r = json.loads(l)
                res[r["name"]] = r
    by = collections.defaultdict(collections.Counter)
    for r in res.values():
        v = r["verdict"]
        v = "caught" if v in ("caught", "caught-startup", "timeout") or v.startswith("error") else v
        by[r["file"]][v] += 1
    print("| file | mutants | unviable | line changed since | caught | missed | score (caught / viable) |")
    print("|---|---|---|---|---|---|---|")
    tot = collections.Counter()
    for f in sorted(by):
        c = by[f]
        tot.update(c)
        viable = c["caught"] + c["MISSED"]
        n = sum(c.values())
        print(f"| `{f}` | {n} | {c['unviable']} | {c['patch-failed']} | {c['caught']} | {c['MISSED']} | "
              f"{100 * c['caught'] / viable:.0f} % |" if viable else f"| `{f}` | {n} | {c['unviable']} | {c['patch-failed']} | 0 | 0 | – |")
    viable = tot["caught"] + tot["MISSED"]
    print(f"| **all** | {sum(tot.values())} | {tot['unviable']} | {tot['patch-failed']} | {tot['caught']} | {tot['MISSED']} | "
          f"**{100 * tot['caught'] / max(1, viable):.0f} %** |")
    print()
    classes = collections.Counter(classify(r)[0] for r in res.values() if r["verdict"] == "MISSED")
    print("Survivors by class: " + ", ".join(f"{k} {v}" for k, v in classes.most_common()) + ".")
    print()
    groups = collections.defaultdict(list)
    for r in sorted(res.values(), key=lambda r: (r["file"], int(r["name"].split(":")[1]))):
        if r["verdict"] == "MISSED":
            groups[classify(r)].append(r)
    print("| survivors | class | why |")
    print("|---|---|---|")
    for (cls, why), rs in sorted(groups.items(), key=lambda kv: kv[0][0] == "UNCLASSIFIED"):
        names = "<br>".join("`" + r["name"].replace("|", "\\|") + "`" for r in rs)
        print(f"| {names} | {cls} | {why} |")


if __name__ == "__main__":
    main()
