// Restart test, in two phases around a `wrangler dev` restart on the same --persist-to state.
//   node bench/restart.mjs before '<dev JSON>' STATE_FILE   # room, 10 messages, client stays connected
//   (stop scripts/worker-dev, start it again)
//   node bench/restart.mjs after  '<dev JSON>' STATE_FILE   # history intact, resume, seq continues
// `before` keeps its client open until killed, like a real client that sees the drop.
import fs from "node:fs";
import { devLine, token, http, Client, checker, sleep } from "./lib.mjs";

const [phase, line, file] = process.argv.slice(2);
const dev = devLine(line);
const check = checker();
const ws = dev.endpoint.replace(/^http/, "ws");
if (phase === "before") {
  const run = Date.now().toString(36);
  const user = `rs_${run}`;
  const tok = await token(dev, user, { ttlSeconds: 3600 });
  const room = `restart_${run}`;
  const r = await http(dev.endpoint, "POST", "/rooms", { token: tok, body: { id: room, name: "restart" } });
  check(r.status === 201, "room created");
  const A = new Client("A", `${ws}/ws/room/${room}?token=${tok}`);
  await A.opened;
  for (let i = 1; i <= 10; i++) A.send({ type: "message", content: `m${i}`, clientMessageId: `restart_${run}_${i}` });
  await A.wait((f) => f.type === "message" && f.seq === 10, 10000, "seq 10");
  fs.writeFileSync(file, JSON.stringify({ room, user, tok, run, lastSeq: 10 }));
  check(true, "10 messages committed; waiting for the server to go away");
  const closed = await A.closed;
  console.log(`client saw close ${closed.code}`);
  process.exit(check.failures() ? 1 : 0);
} else {
  const st = JSON.parse(fs.readFileSync(file, "utf8"));
  let r = await http(dev.endpoint, "GET", `/rooms/${st.room}/history?limit=50`, { token: st.tok });
  check(r.status === 200 && r.json.events.map((e) => e.seq).join() === "1,2,3,4,5,6,7,8,9,10" && r.json.currentSeq === 10, "history intact after restart");
  const A = new Client("A", `${ws}/ws/room/${st.room}?token=${st.tok}&lastSeq=${st.lastSeq}`);
  const rep = await A.wait((f) => f.type === "replay", 10000);
  check(rep.events.length === 0 && rep.currentSeq === 10 && !rep.hasMore, "resume with lastSeq=10: empty replay, currentSeq 10");
  A.send({ type: "message", content: "after restart", ref: "n" });
  const ack = await A.wait((f) => f.type === "ack" && f.ref === "n", 10000);
  check(ack.seq === 11, `seq continues at 11 (${ack.seq})`);
  A.send({ type: "message", content: "dup", clientMessageId: `restart_${st.run}_3`, ref: "d" });
  const dup = await A.wait((f) => f.type === "ack" && f.ref === "d", 10000);
  check(dup.duplicate === true && dup.seq === 3, "idempotency key from before the restart still honoured");
  A.ws.close(1000);
  await sleep(100);
  console.log(check.failures() ? `${check.failures()} check(s) FAILED` : "all checks passed");
  process.exit(check.failures() ? 1 : 0);
}
