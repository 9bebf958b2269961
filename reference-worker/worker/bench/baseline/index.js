// Platform baseline for bench/load.mjs: a minimal JavaScript Durable Object that does only
// what the fan-out needs (no auth, no storage, no validation): seq++, ack the sender,
// broadcast to every hibernatable socket. Its delivered messages/s is the ceiling of
// workerd + wrangler dev + this machine, whatever the Rust worker does.
export class Room {
  constructor(state) {
    this.state = state;
    this.seq = 0;
  }
  async fetch() {
    const pair = new WebSocketPair();
    this.state.acceptWebSocket(pair[1]);
    pair[1].send(JSON.stringify({ type: "welcome", currentSeq: this.seq }));
    return new Response(null, { status: 101, webSocket: pair[0] });
  }
  webSocketMessage(ws, msg) {
    const f = JSON.parse(msg);
    const seq = ++this.seq;
    ws.send(JSON.stringify({ type: "ack", ref: f.ref, seq, id: seq }));
    const out = JSON.stringify({ type: "message", seq, id: seq, roomId: "r", userId: "u", content: f.content, createdAt: new Date().toISOString(), version: 1 });
    for (const s of this.state.getWebSockets()) s.send(out);
  }
  webSocketClose(ws) {
    try { ws.close(1000, "normal"); } catch {}
  }
}
export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    if (url.pathname === "/health") return new Response("{}");
    if (url.pathname === "/auth/token") return Response.json({ token: "x" });
    if (url.pathname === "/rooms") return new Response("{}", { status: 201 });
    return env.ROOM.get(env.ROOM.idFromName("r")).fetch(req);
  },
};
