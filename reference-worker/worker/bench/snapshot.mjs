// Usage: node reference-worker/worker/bench/snapshot.mjs "$(the --dev JSON line)" [rounds]
//
// Cost of FluxyChat's compat snapshot fields (FX-CMP-1): for replayLimit 50 and 500, connect
// with Fluxy's own parameters (`replayLimit=N`) and with FluxyChat's SDK parameters
// (`replay=connect&replayLimit=N`, adds `messages` and `reactions`), alternating, `rounds`
// times each (default 30), and report the `history` frame's size in bytes, the time from
// opening the socket to the first frame (`welcome`) and to the `history` frame (median, p90).
// The room holds 600 messages of 40-90 characters; every 5th has a reaction and every 10th an
// edit, so the rows and counts are not trivial. Works against any server's --dev JSON line
// (fluxy-server --dev, scripts/worker-dev).
import WebSocket from "ws";

const dev = JSON.parse(process.argv[2]);
const rounds = Number(process.argv[3] ?? 30);
const http = dev.endpoint;
const wsBase = http.replace(/^http/, "ws");

async function req(method, path, token, body) {
  const r = await fetch(`${http}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json().catch(() => null) };
}

const tokenBody = await (
  await fetch(`${http}/auth/token`, {
    method: "POST",
    headers: { "x-fluxy-api-key": dev.apiKey, "content-type": "application/json" },
    body: JSON.stringify({ userId: "snapbench" }),
  })
).json();
const token = tokenBody.token;
const room = `snap${Date.now()}`;
await req("POST", "/rooms", token, { id: room, name: room, type: "group" });

// Fill: one socket, pipelined with acks, paced to the advertised rate limit.
async function fill() {
  const ws = new WebSocket(`${wsBase}/ws/room/${room}?token=${token}&replay=off`);
  const acks = new Map();
  let limits = null;
  ws.on("message", (d) => {
    const f = JSON.parse(d);
    if (f.type === "welcome") limits = f.limits;
    if ((f.type === "ack" || f.type === "error") && acks.has(f.ref)) {
      acks.get(f.ref)(f);
      acks.delete(f.ref);
    }
  });
  await new Promise((r) => ws.on("open", r));
  while (!limits) await new Promise((r) => setTimeout(r, 5));
  const rate = Math.max(1, limits.ratePerSecond * 0.8);
  let tokens = Math.max(1, limits.rateBurst * 0.8);
  let last = performance.now();
  let n = 0;
  const send = async (frame) => {
    for (;;) {
      const now = performance.now();
      tokens = Math.min(limits.rateBurst * 0.8, tokens + ((now - last) / 1000) * rate);
      last = now;
      if (tokens < 1) {
        await new Promise((r) => setTimeout(r, ((1 - tokens) / rate) * 1000));
        continue;
      }
      tokens -= 1;
      const ref = `f${n++}`;
      const f = await new Promise((r) => {
        acks.set(ref, r);
        ws.send(JSON.stringify({ ...frame, ref }));
      });
      if (f.type === "error" && f.code === "rate_limited") {
        await new Promise((r) => setTimeout(r, f.retryAfterMs ?? 100));
        continue;
      }
      if (f.type === "error") throw new Error(JSON.stringify(f));
      return f;
    }
  };
  const ids = [];
  const batch = [];
  for (let i = 0; i < 600; i++) {
    const pad = "lorem ipsum dolor sit amet ".repeat(1 + (i % 3));
    batch.push(send({ type: "message", content: `message ${i}: ${pad}`.slice(0, 40 + (i % 50)) }).then((a) => ids.push(a.id)));
    if (batch.length >= 50) await Promise.all(batch.splice(0));
  }
  await Promise.all(batch);
  ids.sort((a, b) => a - b);
  for (let i = 0; i < ids.length; i++) {
    if (i % 5 === 0) batch.push(send({ type: "reaction", messageId: ids[i], emoji: i % 2 ? "👍" : "🎉" }));
    if (i % 10 === 0) batch.push(send({ type: "edit", messageId: ids[i], content: `edited ${i}` }));
    if (batch.length >= 50) await Promise.all(batch.splice(0));
  }
  await Promise.all(batch);
  ws.close();
}
await fill();

function once(query) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const ws = new WebSocket(`${wsBase}/ws/room/${room}?token=${token}&${query}`);
    let first = null;
    const timer = setTimeout(() => reject(new Error(`timeout on ${query}`)), 20000);
    ws.on("message", (d, isBinary) => {
      const now = performance.now();
      if (first === null) first = now - t0;
      const text = isBinary ? "" : d.toString();
      if (text.startsWith('{"type":"history"')) {
        clearTimeout(timer);
        const f = JSON.parse(text);
        resolve({ first, history: now - t0, bytes: Buffer.byteLength(text), rows: f.messages?.length ?? 0, events: f.events.length });
        ws.close();
      }
    });
    ws.on("error", reject);
  });
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const results = {};
for (const limit of [50, 500]) {
  const modes = { fluxy: `replayLimit=${limit}`, compat: `replay=connect&replayLimit=${limit}` };
  for (const m of Object.keys(modes)) results[`${limit}/${m}`] = [];
  await once(modes.fluxy); // warm the room
  for (let i = 0; i < rounds; i++) {
    for (const [m, q] of Object.entries(modes)) results[`${limit}/${m}`].push(await once(q));
  }
}
console.log(`endpoint ${http}, ${rounds} connects per row, room of 600 messages (120 reacted, 60 edited)`);
console.log("replayLimit | params                     | history bytes | events | rows | first frame p50/p90 ms | history frame p50/p90 ms");
for (const [k, xs] of Object.entries(results)) {
  const [limit, m] = k.split("/");
  const q = m === "compat" ? "replay=connect&replayLimit=" + limit : "replayLimit=" + limit;
  console.log(
    `${limit.padStart(11)} | ${q.padEnd(26)} | ${String(pct(xs.map((x) => x.bytes), 50)).padStart(13)} | ${String(xs[0].events).padStart(6)} | ${String(xs[0].rows).padStart(4)} | ${pct(xs.map((x) => x.first), 50).toFixed(2)} / ${pct(xs.map((x) => x.first), 90).toFixed(2)} | ${pct(xs.map((x) => x.history), 50).toFixed(2)} / ${pct(xs.map((x) => x.history), 90).toFixed(2)}`,
  );
}
