// Hibernation test: two connected clients go idle until workerd evicts the room's object
// (about 10-15 s after the last event locally), then traffic resumes: identity intact, seq continues without a gap,
// replay from storage still exact. Check the wrangler log for a second
// "loaded ... 3 hibernated socket(s) restored" line to see that eviction happened.
//
//   node bench/hibernate.mjs '<dev JSON line>' [idle seconds, default 30]
import crypto from "node:crypto";
import { devLine, token, http, Client, checker, sleep } from "./lib.mjs";

// An HS256 token signed with the dev tenant secret, expiring in `ttl` seconds.
function craft(dev, sub, ttl) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const input = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, tid: dev.tenant, roles: ["member"], exp: now + ttl, iat: now })}`;
  return `${input}.${crypto.createHmac("sha256", dev.jwtSecret).update(input).digest("base64url")}`;
}

const dev = devLine(process.argv[2]);
const idle = Number(process.argv[3] ?? 30);
const check = checker();
const ws = dev.endpoint.replace(/^http/, "ws");
const run = Date.now().toString(36);
const [ua, ub] = [`hib_a_${run}`, `hib_b_${run}`];
const [ta, tb] = [await token(dev, ua), await token(dev, ub)];
const room = `hib_${run}`;
let r = await http(dev.endpoint, "POST", "/rooms", { token: ta, body: { id: room, name: "hibernate", members: [{ userId: ub }] } });
check(r.status === 201, "room created");
const A = new Client("A", `${ws}/ws/room/${room}?token=${ta}`);
const B = new Client("B", `${ws}/ws/room/${room}?token=${tb}`);
await Promise.all([A.opened, B.opened]);
await A.wait((f) => f.type === "presence" && f.online === 2, 5000, "presence 2");
// D connects with a token that expires in 3 s and refreshes it in-band before idling: the new
// expiry must survive the eviction (otherwise the reloaded object closes D with 4005).
const D = new Client("D", `${ws}/ws/room/${room}?token=${craft(dev, ub, 3)}`);
await D.wait((f) => f.type === "welcome");
D.send({ type: "auth", token: craft(dev, ub, 3600), ref: "refresh" });
const tr = await D.wait((f) => f.type === "token_refreshed", 5000, "token_refreshed");
check(tr.ref === "refresh", "in-band refresh before idling");
await A.wait((f) => f.type === "presence" && f.online === 3, 5000, "presence 3");
for (let i = 1; i <= 3; i++) A.send({ type: "message", content: `before ${i}` });
await B.wait((f) => f.type === "message" && f.seq === 3, 5000, "seq 3");
console.log(`idle for ${idle}s (object should be evicted)...`);
await sleep(idle * 1000);
const framesBefore = B.frames.length;
A.send({ type: "message", content: "after idle", ref: "x" });
const ack = await A.wait((f) => f.type === "ack" && f.ref === "x", 10000, "ack after idle");
const m = await B.wait((f) => f.type === "message" && f.content === "after idle", 10000, "broadcast after idle");
check(ack.seq === 4 && m.seq === 4, `seq continues without a gap after eviction (ack ${ack.seq}, broadcast ${m.seq})`);
check(m.userId === ua, "identity of A intact (userId from the attachment)");
B.send({ type: "message", content: "B replies", ref: "y" });
const m2 = await A.wait((f) => f.type === "message" && f.content === "B replies", 10000);
check(m2.seq === 5 && m2.userId === ub, "B's identity intact, seq 5");
check(!B.frames.slice(framesBefore).some((f) => f.type === "welcome" || f.type === "presence"), "no spurious welcome/presence after eviction");
B.send({ type: "resume", lastSeq: 0, ref: "rs" });
const rep = await B.wait((f) => f.type === "replay" && f.ref === "rs");
check(rep.events.map((e) => e.seq).join() === "1,2,3,4,5", "replay from 0 after reload is exact");
A.send({ type: "ping", ts: 1 });
check((await A.wait((f) => f.type === "pong")).echo === 1, "ping/pong after eviction");
const C = new Client("C", `${ws}/ws/room/${room}?token=${tb}`);
const wc = await C.wait((f) => f.type === "welcome");
const pc = await C.wait((f) => f.type === "presence");
check(wc.connectionId !== B.frames.find((f) => f.type === "welcome").connectionId && wc.connectionId !== A.frames.find((f) => f.type === "welcome").connectionId, `new connection id ${wc.connectionId} does not collide`);
check(pc.online === 4 && pc.users.length === 2, `presence counts restored sockets (online ${pc.online})`);
await sleep(1500);
D.send({ type: "ping", ts: 2 });
const dp = await D.wait((f) => f.type === "pong" || f.type === "error", 5000, "pong on D").catch(() => null);
check(dp?.type === "pong" && !D.frames.some((f) => f.code === "token_expired"), "refreshed expiry survived the eviction (D still open past its first token's expiry)");
for (const c of [A, B, C, D]) c.ws.close(1000);
console.log(check.failures() ? `${check.failures()} check(s) FAILED` : "all checks passed");
process.exit(check.failures() ? 1 : 0);
