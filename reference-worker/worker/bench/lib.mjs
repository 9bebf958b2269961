// Shared helpers of the bench/test scripts: HTTP calls and a small WebSocket client.
import WebSocket from "ws";

export function devLine(arg) {
  const s = arg ?? process.env.FLUXY_DEV_JSON;
  if (!s) throw new Error("pass the dev JSON line (scripts/worker-dev prints it) as the first argument");
  return JSON.parse(s.split("\n").find((l) => l.trim().startsWith("{")));
}

export async function http(base, method, path, { token, apiKey, body } = {}) {
  const h = {};
  if (token) h.authorization = `Bearer ${token}`;
  if (apiKey) h["x-fluxy-api-key"] = apiKey;
  if (body !== undefined) h["content-type"] = "application/json";
  const r = await fetch(base + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: r.status, json };
}

export async function token(dev, userId, { apiKey = dev.apiKey, roles, ttlSeconds } = {}) {
  const r = await http(dev.endpoint, "POST", "/auth/token", { apiKey, body: { userId, roles, ttlSeconds } });
  if (r.status !== 200) throw new Error(`token ${userId}: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json.token;
}

export class Client {
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

export function checker() {
  let failures = 0;
  const check = (ok, what) => {
    console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
    if (!ok) failures++;
  };
  check.failures = () => failures;
  return check;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
