// Which client behaviour makes workerd log "Uncaught Error: Network connection lost"?
// (docs/worker.md, "Network connection lost" in the dev log). Runs each behaviour a few times
// against a running `scripts/worker-dev` and counts the new lines in its log.
// usage: node nle-probe.mjs DEV_JSON LOGFILE
import { readFileSync } from "node:fs";
import net from "node:net";
import WebSocket from "ws";
import { devLine, http, token, Client } from "./lib.mjs";
const dev = devLine(process.argv[2]);
const log = process.argv[3];
const count = () => (readFileSync(log, "utf8").match(/Network connection lost/g) || []).length;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const owner = await token(dev, "nle-owner");
const room = `nle-${Date.now()}`;
let r = await http(dev.endpoint, "POST", "/rooms", { token: owner, body: { id: room, name: "nle", type: "group" } });
if (r.status >= 300) throw new Error(JSON.stringify(r));
await http(dev.endpoint, "POST", "/messages", { token: owner, body: { roomId: room, content: "hi" } });
async function trial(name, fn, n = 3) {
  const before = count();
  for (let i = 0; i < n; i++) await fn();
  await sleep(4000);
  console.log(`${name}: ${count() - before} new "Network connection lost" in ${n} trials`);
}
const base = dev.endpoint;
await trial("long poll aborted after 1 s", async () => {
  const ac = new AbortController();
  const p = fetch(`${base}/rooms/${room}/poll?afterSeq=5&timeoutMs=20000`, { headers: { authorization: `Bearer ${owner}` }, signal: ac.signal }).catch(() => {});
  await sleep(1000); ac.abort(); await p;
});
await trial("long poll completed (timeoutMs=1000)", async () => {
  await fetch(`${base}/rooms/${room}/poll?afterSeq=5&timeoutMs=1000`, { headers: { authorization: `Bearer ${owner}` } }).then((x) => x.text());
});
await trial("SSE aborted after 1 s", async () => {
  const ac = new AbortController();
  const res = await fetch(`${base}/rooms/${room}/stream`, { headers: { authorization: `Bearer ${owner}`, accept: "text/event-stream" }, signal: ac.signal });
  const rd = res.body.getReader(); await rd.read().catch(() => {});
  await sleep(1000); ac.abort();
});
await trial("SSE aborted, then a message is broadcast", async () => {
  const ac = new AbortController();
  const res = await fetch(`${base}/rooms/${room}/stream`, { headers: { authorization: `Bearer ${owner}`, accept: "text/event-stream" }, signal: ac.signal });
  const rd = res.body.getReader(); await rd.read().catch(() => {});
  ac.abort(); await sleep(500);
  await http(base, "POST", "/messages", { token: owner, body: { roomId: room, content: "after sse abort" } });
});
await trial("WebSocket closed cleanly", async () => {
  const c = new Client("a", `${base.replace("http", "ws")}/ws/room/${room}?token=${owner}`);
  await c.opened; await c.wait((f) => f.type === "welcome"); c.ws.close(1000); await c.closed;
});
await trial("WebSocket TCP dropped (terminate)", async () => {
  const c = new Client("a", `${base.replace("http", "ws")}/ws/room/${room}?token=${owner}`);
  await c.opened; await c.wait((f) => f.type === "welcome"); c.ws.terminate();
});
await trial("WebSocket TCP dropped, then a message is broadcast", async () => {
  const c = new Client("a", `${base.replace("http", "ws")}/ws/room/${room}?token=${owner}`);
  await c.opened; await c.wait((f) => f.type === "welcome"); c.ws.terminate(); await sleep(300);
  await http(base, "POST", "/messages", { token: owner, body: { roomId: room, content: "after ws drop" } });
});
await trial("upgrade aborted before the 101", async () => {
  const s = net.connect(new URL(base).port, "127.0.0.1");
  await new Promise((res) => s.on("connect", res));
  s.write(`GET /ws/room/${room}?token=${owner} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  s.destroy();
});
await trial("POST /messages aborted mid-request", async () => {
  const ac = new AbortController();
  const p = fetch(`${base}/messages`, { method: "POST", headers: { authorization: `Bearer ${owner}`, "content-type": "application/json" }, body: JSON.stringify({ roomId: room, content: "x" }), signal: ac.signal }).catch(() => {});
  setTimeout(() => ac.abort(), 5); await p;
}, 5);
await trial("in-band handshake refusal (bad token), close handshake completed", async () => {
  const ws = new WebSocket(`${base.replace("http", "ws")}/ws/room/${room}?token=garbage`, ["fluxy.v1"]);
  await new Promise((res) => { ws.on("close", res); ws.on("error", res); });
});
await trial("in-band refusal (non-member) from the room object", async () => {
  const stranger = await token(dev, "nle-stranger");
  const ws = new WebSocket(`${base.replace("http", "ws")}/ws/room/${room}?token=${stranger}`, ["fluxy.v1"]);
  await new Promise((res) => { ws.on("close", res); ws.on("error", res); });
});
