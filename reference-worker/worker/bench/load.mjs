// Load generator: C clients in one room, every client sends at RATE/C messages per second for
// DURATION seconds. Measures accepted (acked) messages/s, delivered messages/s over all clients,
// ack and delivery latency (p50/p99, same clock: send -> ack / send -> broadcast received), and
// checks that every client received every seq exactly once, in order, with no gap.
//
//   node bench/load.mjs '<dev JSON>' [--clients 100] [--rate 1000] [--duration 10] [--drain 30] [--batch]
// --drain: seconds to wait after sending for the last acks and deliveries (an overloaded room
// queues, it does not drop: give it time to show that nothing is lost).
// --batch: connect with `batch=1` (FX-TRN-9): timeline events may arrive coalesced in `batch`
// frames; every event inside one is counted and timed like a standalone one.
import { devLine, token, http, sleep } from "./lib.mjs";
import WebSocket from "ws";

const args = process.argv.slice(3);
const opt = (name, d) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : d;
};
const dev = devLine(process.argv[2]);
const C = opt("clients", 100);
const RATE = opt("rate", 1000);
const DURATION = opt("duration", 10);
const DRAIN = opt("drain", 30);
const BATCH = args.includes("--batch");
const ws = dev.endpoint.replace(/^http/, "ws");
const run = Date.now().toString(36);
const room = `load_${run}`;
const owner = await token(dev, `load_owner_${run}`);
let r = await http(dev.endpoint, "POST", "/rooms", { token: owner, body: { id: room, name: "load", type: "public" } });
if (r.status !== 201) throw new Error(`room: ${r.status} ${JSON.stringify(r.json)}`);

const tokens = [];
for (let i = 0; i < C; i++) tokens.push(await token(dev, `load_${run}_${i}`));

const sentAt = new Map(); // "client:n" -> ms
const ackLat = [];
const delLat = [];
let acks = 0;
let errors = 0;
const errorCodes = {};
let firstAck = 0;
let lastAck = 0;
let delivered = 0;
let frames = 0;
let batchFrames = 0;
let batchedEvents = 0;
const clients = [];
let startSeq = 0;

function makeClient(i) {
  return new Promise((resolve, reject) => {
    const c = { i, next: startSeq + 1, bad: 0, count: 0, welcomed: false };
    c.ws = new WebSocket(`${ws}/ws/room/${room}?token=${tokens[i]}&replay=off${BATCH ? "&batch=1" : ""}`);
    const event = (seq, ref, now) => {
      if (seq !== c.next) c.bad++;
      c.next = seq + 1;
      c.count++;
      delivered++;
      if (ref !== undefined && i % 10 === 0) {
        const t = sentAt.get(ref);
        if (t !== undefined) delLat.push(now - t);
      }
    };
    c.ws.on("message", (d) => {
      const s = d.toString();
      const now = performance.now();
      frames++;
      if (s.startsWith('{"type":"message"')) {
        const m = /"content":"L (\d+:\d+)"/.exec(s);
        event(Number(/"seq":(\d+)/.exec(s)[1]), m?.[1], now);
      } else if (s.startsWith('{"type":"batch"')) {
        if (!BATCH) c.bad++; // FX-TRN-9: never without batch=1
        batchFrames++;
        for (const e of JSON.parse(s).events) {
          batchedEvents++;
          event(e.seq, /^L (\d+:\d+)$/.exec(e.content ?? "")?.[1], now);
        }
      } else if (s.startsWith('{"type":"ack"')) {
        const f = JSON.parse(s);
        const t = sentAt.get(f.ref);
        if (t !== undefined) ackLat.push(now - t);
        acks++;
        if (!firstAck) firstAck = now;
        lastAck = now;
      } else if (s.startsWith('{"type":"error"')) {
        errors++;
        const code = JSON.parse(s).code;
        errorCodes[code] = (errorCodes[code] ?? 0) + 1;
      } else if (s.startsWith('{"type":"welcome"')) {
        c.welcomed = true;
        c.next = JSON.parse(s).currentSeq + 1;
        resolve(c);
      }
    });
    c.ws.on("error", reject);
  });
}
for (let i = 0; i < C; i += 20) {
  const batch = [];
  for (let j = i; j < Math.min(C, i + 20); j++) batch.push(makeClient(j));
  clients.push(...(await Promise.all(batch)));
}
await sleep(500);
console.log(`${C} clients connected to ${room}; sending ${RATE} msg/s for ${DURATION}s`);

const perClient = RATE / C;
const t0 = performance.now();
let sent = 0;
const total = RATE * DURATION;
await new Promise((resolve) => {
  const tick = () => {
    const elapsed = (performance.now() - t0) / 1000;
    const due = Math.min(total, Math.floor(elapsed * RATE));
    while (sent < due) {
      const c = clients[sent % C];
      const n = Math.floor(sent / C);
      const ref = `${c.i}:${n}`;
      sentAt.set(ref, performance.now());
      c.ws.send(`{"type":"message","content":"L ${ref}","ref":"${ref}"}`);
      sent++;
    }
    if (sent >= total) resolve();
    else setTimeout(tick, 5);
  };
  tick();
});
const sendEnd = performance.now();
const ackedBySendEnd = acks;
// Drain: wait until every ack and every delivery arrived, or DRAIN seconds.
const drainDeadline = performance.now() + DRAIN * 1000;
while ((acks + errors < total || delivered < total * C) && performance.now() < drainDeadline) await sleep(50);
const end = performance.now();
const pct = (a, p) => {
  if (!a.length) return NaN;
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const gaps = clients.reduce((n, c) => n + c.bad, 0);
const missing = clients.filter((c) => c.count !== acks).length;
const res = {
  clients: C,
  offeredRate: RATE,
  durationS: DURATION,
  sent,
  accepted: acks,
  errors,
  errorCodes,
  sendSeconds: +((sendEnd - t0) / 1000).toFixed(2),
  acceptedPerSec: +(acks / ((lastAck - t0) / 1000)).toFixed(0),
  acceptedPerSecWhileSending: +(ackedBySendEnd / ((sendEnd - t0) / 1000)).toFixed(0),
  deliveredPerSec: +(delivered / ((end - t0) / 1000)).toFixed(0),
  batch: BATCH,
  framesPerSec: +(frames / ((end - t0) / 1000)).toFixed(0),
  batchFrames,
  eventsPerBatch: batchFrames ? +(batchedEvents / batchFrames).toFixed(1) : 0,
  deliveriesExpected: acks * C,
  deliveries: delivered,
  clientsWithGapOrReorder: clients.filter((c) => c.bad).length,
  seqGapsSeen: gaps,
  clientsMissingMessages: missing,
  ackLatencyMs: { p50: +pct(ackLat, 50).toFixed(1), p99: +pct(ackLat, 99).toFixed(1), max: +pct(ackLat, 100).toFixed(1) },
  deliveryLatencyMs: { p50: +pct(delLat, 50).toFixed(1), p99: +pct(delLat, 99).toFixed(1), max: +pct(delLat, 100).toFixed(1) },
};
console.log(JSON.stringify(res, null, 2));
for (const c of clients) c.ws.close(1000);
await sleep(200);
const ok = errors === 0 && acks === total && gaps === 0 && missing === 0;
console.log(ok ? "LOAD OK: nothing lost, seq gap-free on every client"
  : gaps === 0 && errors === 0 ? `LOAD INCOMPLETE: ${total - acks} not acked within the ${DRAIN}s drain (queued, not reordered)` : "LOAD FAILED");
process.exit(ok ? 0 : 1);
