// Usage: node reference-worker/worker/bench/rtt.mjs "$(cat dev.json)"   (any server's --dev JSON line)
// Lock-step round trips: send a message, wait for its ack, repeat. Prints p50/p99 ms.
import WebSocket from "ws";
const dev = JSON.parse(process.argv[2]);
const base = dev.endpoint.replace(/^http/, "ws");
const http = dev.endpoint;
const tok = async (u) => (await (await fetch(`${http}/auth/token`, {method: "POST", headers: {"x-fluxy-api-key": dev.apiKey, "content-type": "application/json"}, body: JSON.stringify({userId: u})})).json()).token;
const t = await tok("rtt");
const room = "rtt" + Date.now();
await fetch(`${http}/rooms`, {method: "POST", headers: {authorization: `Bearer ${t}`, "content-type": "application/json"}, body: JSON.stringify({id: room, name: "rtt"})});
const ws = new WebSocket(`${base}/ws/room/${room}?token=${t}&replay=off`);
await new Promise((r) => ws.on("open", r));
const waiters = new Map();
ws.on("message", (d) => {  const f = JSON.parse(d); if (f.type === "ack" && waiters.has(f.ref)) { waiters.get(f.ref)(); waiters.delete(f.ref); } });
const lat = [];
for (let i = 0; i < 200; i++) {
  const t0 = performance.now();
  await new Promise((r) => { waiters.set("r" + i, r); ws.send(JSON.stringify({type: "message", content: "x" + i, ref: "r" + i})); });
  lat.push(performance.now() - t0);
}
lat.sort((a, b) => a - b);
console.log(`lock-step message->ack, 200 rounds: p50 ${lat[100].toFixed(2)} ms, p99 ${lat[198].toFixed(2)} ms`);
ws.close();
