// End-to-end test of the worker with real WebSocket clients (no Rust needed):
// two users, ordered broadcast, ack before own broadcast, history from D1, resume after a
// disconnect, SSE with Last-Event-ID, long-poll, tenant isolation.
//
//   node reference-worker/worker/bench/e2e.mjs '<dev JSON line>'
import WebSocket from "ws";

const dev = JSON.parse(process.argv[2] ?? process.env.FLUXY_DEV_JSON);
const base = dev.endpoint;
const wsBase = base.replace(/^http/, "ws");
let failures = 0;
const check = (ok, what) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures++;
};

async function http(method, path, { token, apiKey, body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  if (apiKey) h["x-fluxy-api-key"] = apiKey;
  if (body !== undefined) h["content-type"] = "application/json";
  const r = await fetch(base + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: r.status, json };
}

async function token(userId, apiKey = dev.apiKey, roles) {
  const r = await http("POST", "/auth/token", { apiKey, body: { userId, roles } });
  if (r.status !== 200) throw new Error(`token ${userId}: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json.token;
}

class Client {
  constructor(name, url) {
    this.name = name;
    this.frames = [];
    this.waiters = [];
    this.ws = new WebSocket(url, ["fluxy.v1"]);
    this.closed = new Promise((res) => this.ws.on("close", (code, reason) => res({ code, reason: reason.toString() })));
    this.ws.on("message", (d) => {
      const f = JSON.parse(d.toString());
      this.frames.push(f);
      this.waiters = this.waiters.filter((w) => !w(f));
    });
    this.opened = new Promise((res, rej) => { this.ws.on("open", res); this.ws.on("error", rej); });
  }
  send(f) { this.ws.send(JSON.stringify(f)); }
  wait(pred, ms = 5000, what = "frame") {
    const found = this.frames.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error(`${this.name}: timeout waiting for ${what}`)), ms);
      this.waiters.push((f) => { if (pred(f)) { clearTimeout(t); res(f); return true; } return false; });
    });
  }
  timeline() { return this.frames.filter((f) => typeof f.seq === "number"); }
}

const run = Date.now().toString(36);
const alice = await token(`alice_${run}`);
const bob = await token(`bob_${run}`);
const roomId = `e2e_${run}`;
let r = await http("POST", "/rooms", { token: alice, body: { id: roomId, name: "e2e", members: [{ userId: `bob_${run}` }] } });
check(r.status === 201, `POST /rooms 201 (${r.status})`);
r = await http("POST", "/rooms", { token: alice, body: { id: roomId, name: "again" } });
check(r.status === 409 && r.json.error === "conflict", "POST /rooms twice -> 409 conflict");

const A = new Client("A", `${wsBase}/ws/room/${roomId}?token=${alice}`);
const B = new Client("B", `${wsBase}/ws/room/${roomId}?token=${bob}`);
await Promise.all([A.opened, B.opened]);
check(A.ws.protocol === "fluxy.v1", `subprotocol fluxy.v1 selected (${A.ws.protocol})`);
const wA = await A.wait((f) => f.type === "welcome");
await B.wait((f) => f.type === "welcome");
check(wA.userId === `alice_${run}` && wA.currentSeq === 0, "welcome: identity from token, currentSeq 0");
await A.wait((f) => f.type === "subscription_succeeded");
await A.wait((f) => f.type === "presence" && f.online === 2, 5000, "presence online=2");

const N = 20;
for (let i = 0; i < N; i++) A.send({ type: "message", content: `hello ${i}`, clientMessageId: `cmid_${run}_${i}`, ref: `r${i}` });
await A.wait((f) => f.type === "message" && f.content === `hello ${N - 1}`, 10000, "last broadcast on A");
await B.wait((f) => f.type === "message" && f.content === `hello ${N - 1}`, 10000, "last broadcast on B");
const seqB = B.timeline().map((f) => f.seq);
check(JSON.stringify(seqB) === JSON.stringify([...Array(N).keys()].map((i) => i + 1)), `B got seq 1..${N} in order`);
const acks = A.frames.filter((f) => f.type === "ack");
check(acks.length === N && acks.every((a, i) => a.seq === i + 1 && a.id === i + 1 && a.ref === `r${i}`), "A got N acks with seq=id=i+1 and refs");
const ackBeforeOwn = [...Array(N).keys()].every((i) => {
  const ai = A.frames.findIndex((f) => f.type === "ack" && f.ref === `r${i}`);
  const bi = A.frames.findIndex((f) => f.type === "message" && f.seq === i + 1);
  return ai >= 0 && ai < bi;
});
check(ackBeforeOwn, "each ack precedes the sender's copy of the broadcast");
// duplicate
A.send({ type: "message", content: "different", clientMessageId: `cmid_${run}_0`, ref: "dup" });
const dup = await A.wait((f) => f.type === "ack" && f.ref === "dup");
check(dup.duplicate === true && dup.seq === 1, "resend with same clientMessageId -> original ack, duplicate");
// REST post shares idempotency
r = await http("POST", "/messages", { token: alice, body: { roomId, content: "via rest", clientMessageId: `cmid_${run}_rest` } });
check(r.status === 201 && r.json.message.seq === N + 1, `POST /messages 201 seq ${N + 1} (${r.status} ${r.json?.message?.seq})`);
await B.wait((f) => f.type === "message" && f.seq === N + 1, 5000, "REST message broadcast");
r = await http("POST", "/messages", { token: alice, body: { roomId, content: "via rest", clientMessageId: `cmid_${run}_rest` } });
check(r.status === 200 && r.json.duplicate === true && r.json.message.seq === N + 1, "POST /messages repeat -> 200 duplicate");

// history from D1
r = await http("GET", `/rooms/${roomId}/history?limit=10`, { token: bob });
check(r.status === 200 && r.json.events.length === 10 && r.json.events[9].seq === N + 1 && r.json.hasMore && r.json.nextCursor, "history backward page of 10 ending at currentSeq");
const seen = new Set(r.json.events.map((e) => e.seq));
let cursor = r.json.nextCursor;
while (cursor) {
  const p = await http("GET", `/rooms/${roomId}/history?limit=10&cursor=${encodeURIComponent(cursor)}`, { token: bob });
  p.json.events.forEach((e) => seen.add(e.seq));
  cursor = p.json.hasMore ? p.json.nextCursor : null;
}
check(seen.size === N + 1, `backward walk visits all ${N + 1} events once`);
const same = JSON.stringify(r.json.events[0]) === JSON.stringify(B.timeline().find((f) => f.seq === r.json.events[0].seq));
check(same, "history event identical to the live broadcast");
r = await http("GET", `/api/messages?roomId=${roomId}&limit=5`, { token: bob });
check(r.status === 200 && r.json.messages.length === 5 && r.json.messages[0].id === N + 1 && r.json.hasMore, "legacy /api/messages newest first");

// resume after disconnect
B.ws.close(1000);
await B.closed;
await A.wait((f) => f.type === "presence" && f.online === 1, 5000, "presence after B left");
for (let i = 0; i < 5; i++) A.send({ type: "message", content: `while away ${i}` });
await A.wait((f) => f.type === "message" && f.content === "while away 4", 5000);
const B2 = new Client("B2", `${wsBase}/ws/room/${roomId}?token=${bob}&lastSeq=${N + 1}`);
await B2.opened;
const rep = await B2.wait((f) => f.type === "replay");
check(rep.events.length === 5 && rep.events[0].seq === N + 2 && rep.fromSeq === N + 1, "reconnect with lastSeq -> replay of the 5 missed events");
B2.send({ type: "resume", lastSeq: N, ref: "res" });
const rep2 = await B2.wait((f) => f.type === "replay" && f.ref === "res");
check(rep2.events.length === 6 && rep2.events.every((e, i) => e.seq === N + 1 + i), "resume frame -> exact gap-free replay");
A.send({ type: "message", content: "after resume" });
const live = await B2.wait((f) => f.type === "message" && f.content === "after resume");
check(live.seq === N + 7, `live delivery continues at seq ${N + 7}`);

// typing goes to others only
A.send({ type: "typing", isTyping: true });
const ty = await B2.wait((f) => f.type === "typing");
check(ty.userId === `alice_${run}` && ty.intent === "composing", "typing to others with verified userId");

// SSE with Last-Event-ID
const ctl = new AbortController();
const sres = await fetch(`${base}/rooms/${roomId}/stream`, { headers: { authorization: `Bearer ${bob}`, "last-event-id": String(N + 5), accept: "text/event-stream" }, signal: ctl.signal });
check(sres.status === 200 && sres.headers.get("content-type").startsWith("text/event-stream"), "SSE 200 text/event-stream");
const reader = sres.body.getReader();
let sseText = "";
const sseDone = (async () => {
  while (!sseText.includes(`id: ${N + 8}`)) {
    const { value, done } = await reader.read();
    if (done) break;
    sseText += Buffer.from(value).toString();
  }
})();
await new Promise((res) => setTimeout(res, 300));
A.send({ type: "message", content: "sse live" });
await Promise.race([sseDone, new Promise((res) => setTimeout(res, 5000))]);
ctl.abort();
const ids = [...sseText.matchAll(/^id: (\d+)$/gm)].map((m) => +m[1]);
check(JSON.stringify(ids) === JSON.stringify([N + 6, N + 7, N + 8]), `SSE replays after Last-Event-ID then live (${ids})`);

// long-poll
const pollP = http("GET", `/rooms/${roomId}/poll?afterSeq=${N + 8}&timeoutMs=5000`, { token: bob });
await new Promise((res) => setTimeout(res, 300));
A.send({ type: "message", content: "poll wake" });
r = await pollP;
check(r.status === 200 && r.json.events.length === 1 && r.json.events[0].seq === N + 9 && r.json.nextCursor, "long-poll wakes on the next commit");

// tenancy
const eve = await token(`eve_${run}`, dev.apiKey2, ["admin"]);
r = await http("GET", `/rooms/${roomId}/history`, { token: eve });
check(r.status === 404 && r.json.error === "not_found", "other tenant's admin -> 404 not_found");
const E = new Client("E", `${wsBase}/ws/room/${roomId}?token=${eve}`);
const closeE = await E.closed;
check(closeE.code === 4404 && E.frames[0]?.code === "not_found", `other tenant's socket -> error + close 4404 (${closeE.code})`);
const X = new Client("X", `${wsBase}/ws/room/${roomId}?token=garbage`);
const closeX = await X.closed;
check(closeX.code === 4004, `bad token -> close 4004 (${closeX.code})`);

A.ws.close(1000);
B2.ws.close(1000);
console.log(failures ? `${failures} check(s) FAILED` : "all checks passed");
process.exit(failures ? 1 : 0);
