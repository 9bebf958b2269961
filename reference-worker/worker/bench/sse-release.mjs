// SSE listeners whose client went away are released by the room object within a bound, well
// under the 15 s keep-alive ping (issue 13). Needs the worker started with FLUXY_DEBUG=1 (the
// object's counts at GET /rooms/{id}/debug/stats).
//
//   node reference-worker/worker/bench/sse-release.mjs '<dev JSON line>' [boundMs]
//
// Two listeners; the first client closes its TCP socket (node http, socket destroyed), the
// second aborts its fetch (AbortController). After each, the object's SSE listener count is
// awaited (polled, with a deadline) to drop by one; the time it took must be under boundMs
// (default 12000: workerd notices a closed client only from failed writes, one hop at a time,
// so the object releases it about 3 keep-alive periods, FLUXY_SSE_PING_MS = 3 s, after it
// left). Meanwhile nothing is broadcast, so no event send can reveal it; and the remaining
// listener must keep receiving live events.
import httpModule from "node:http";
import { devLine, http, token, checker } from "./lib.mjs";

const dev = devLine(process.argv[2]);
const bound = Number(process.argv[3] ?? 12000);
const base = dev.endpoint;
const check = checker();
const run = Date.now().toString(36);
const roomId = `sse_release_${run}`;

const alice = await token(dev, `alice_${run}`);
let r = await http(base, "POST", "/rooms", { token: alice, body: { id: roomId, name: "sse release" } });
if (r.status !== 201) throw new Error(`create room: ${r.status} ${JSON.stringify(r.json)}`);

async function stats() {
  const s = await http(base, "GET", `/rooms/${roomId}/debug/stats`, { token: alice });
  if (s.status !== 200) {
    throw new Error(`debug stats: ${s.status} ${JSON.stringify(s.json)} (start the worker with --var FLUXY_DEBUG:1)`);
  }
  return s.json;
}

// Resolves with the time (ms) until pred(stats) holds; rejects after deadlineMs.
async function until(pred, what, deadlineMs = 20000) {
  const t0 = performance.now();
  for (;;) {
    const s = await stats();
    if (pred(s)) return performance.now() - t0;
    if (performance.now() - t0 > deadlineMs) throw new Error(`timed out waiting until ${what}: ${JSON.stringify(s)}`);
    await new Promise((res) => setTimeout(res, 20));
  }
}

// Listener 1: a raw node http request; `text` accumulates what it read.
const raw = { text: "" };
const rawReady = new Promise((res, rej) => {
  const url = new URL(`${base}/rooms/${roomId}/stream`);
  raw.req = httpModule.get(url, { headers: { authorization: `Bearer ${alice}`, accept: "text/event-stream" } }, (resp) => {
    if (resp.statusCode !== 200) return rej(new Error(`raw SSE: ${resp.statusCode}`));
    resp.setEncoding("utf8");
    resp.on("data", (d) => {
      raw.text += d;
      if (raw.text.includes("event: ready")) res();
    });
    resp.on("error", () => {});
  });
  raw.req.on("error", () => {});
});
await rawReady;

// Listener 2: fetch with an AbortController.
const ctl = new AbortController();
const fres = await fetch(`${base}/rooms/${roomId}/stream`, {
  headers: { authorization: `Bearer ${alice}`, accept: "text/event-stream" },
  signal: ctl.signal,
});
check(fres.status === 200, "second SSE listener 200");
const reader = fres.body.getReader();
const dec = new TextDecoder();
let ftext = "";
const readUntil = async (needle, ms = 10000) => {
  const deadline = Date.now() + ms;
  while (!ftext.includes(needle)) {
    if (Date.now() > deadline) throw new Error(`SSE: no ${needle} within ${ms} ms`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`SSE ended before ${needle}`);
    ftext += dec.decode(value, { stream: true });
  }
};
await readUntil("event: ready");

await until((s) => s.sseListeners === 2, "both listeners are registered");
check(true, "the object counts 2 SSE listeners");

// 1. The first client closes its socket.
raw.req.destroy();
raw.req.socket?.destroy();
const t1 = await until((s) => s.sseListeners === 1, "the closed socket's listener is released");
console.log(`sse-release: socket close -> listener released in ${t1.toFixed(0)} ms`);
check(t1 < bound, `socket close released within ${bound} ms (took ${t1.toFixed(0)} ms)`);

// The other listener is untouched.
r = await http(base, "POST", "/messages", { token: alice, body: { roomId, content: "still here" } });
check(r.status === 201, `post 201 (${r.status})`);
await readUntil("still here");
check(true, "the remaining listener gets live events");
check((await stats()).sseListeners === 1, "still 1 listener after a broadcast");

// 2. The second client aborts its fetch.
ctl.abort();
const t2 = await until((s) => s.sseListeners === 0, "the aborted fetch's listener is released");
console.log(`sse-release: fetch abort -> listener released in ${t2.toFixed(0)} ms`);
check(t2 < bound, `fetch abort released within ${bound} ms (took ${t2.toFixed(0)} ms)`);

if (check.failures() > 0) {
  console.log(`${check.failures()} failure(s)`);
  process.exit(1);
}
console.log("sse-release: all checks passed");
process.exit(0);
