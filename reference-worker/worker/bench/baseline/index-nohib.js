// Variant of index.js with plain (non-hibernatable) sockets: ws.accept() + event listeners.
export class Room {
  constructor(state) {
    this.state = state;
    this.seq = 0;
    this.socks = new Set();
  }
  async fetch() {
    const pair = new WebSocketPair();
    const ws = pair[1];
    ws.accept();
    this.socks.add(ws);
    ws.addEventListener("message", (ev) => {
      const f = JSON.parse(ev.data);
      const seq = ++this.seq;
      ws.send(JSON.stringify({ type: "ack", ref: f.ref, seq, id: seq }));
      const out = JSON.stringify({ type: "message", seq, id: seq, roomId: "r", userId: "u", content: f.content, createdAt: new Date().toISOString(), version: 1 });
      for (const s of this.socks) s.send(out);
    });
    ws.addEventListener("close", () => this.socks.delete(ws));
    ws.send(JSON.stringify({ type: "welcome", currentSeq: this.seq }));
    return new Response(null, { status: 101, webSocket: pair[0] });
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
