// Wake-up benchmark of the Durable Object shell: time from a WebSocket connect to a room whose
// object is not in memory (never loaded since wrangler started, or evicted by workerd after its
// last socket closed) until `welcome` and until the `history` snapshot, plus the workerd
// process's RSS before and after (process-level, not per object: workerd does not report
// per-object memory). The room must already be stored in local D1 (scripts/worker-wakebench
// fills it with `fluxy-bench gen-room`); this script only connects and measures.
//
//   node bench/wakeup.mjs '<dev JSON line>' --events N [--room wake] [--owner wake-owner]
//        [--reps 5] [--idle 15] [--log WRANGLER_LOG] [--pid ROOT_PID]
//
// --log   wrangler's stderr: each wake must add one "room <tenant>/<room> loaded at seq" line,
//         which proves the object was cold (a warm repetition is retried after a longer idle).
// --pid   a process whose workerd descendants are measured (scripts/worker-wakebench passes
//         the worker-dev pid).
// Prints one JSON line per repetition and a summary JSON line ({"summary": …}) at the end.
import fs from "node:fs";
import WebSocket from "ws";
import { devLine, token, sleep } from "./lib.mjs";

const dev = devLine(process.argv[2]);
const opt = { room: "wake", owner: "wake-owner", reps: 5, idle: 15, log: null, pid: null, events: null };
for (let i = 3; i < process.argv.length; i += 2) {
  const k = process.argv[i].replace(/^--/, "");
  if (!(k in opt)) throw new Error(`unknown option --${k}`);
  opt[k] = process.argv[i + 1];
}
const reps = Number(opt.reps);
const idle = Number(opt.idle);

// workerd processes under `root` (by parent pid), read from /proc.
function workerdPids(root) {
  if (!root) return [];
  const parent = new Map();
  const comm = new Map();
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      const close = stat.lastIndexOf(")");
      comm.set(+d, stat.slice(stat.indexOf("(") + 1, close));
      parent.set(+d, +stat.slice(close + 2).split(" ")[1]);
    } catch {}
  }
  const under = (p) => {
    for (let q = p, n = 0; q > 1 && n < 64; q = parent.get(q), n++) if (q === +root) return true;
    return false;
  };
  return [...comm].filter(([p, c]) => c.startsWith("workerd") && under(p)).map(([p]) => p);
}

// Sum of a /proc/<pid>/status field (kB) over pids, in MiB.
function statusMiB(pids, field) {
  let kb = 0;
  for (const p of pids) {
    try {
      const m = fs.readFileSync(`/proc/${p}/status`, "utf8").match(new RegExp(`^${field}:\\s+(\\d+)`, "m"));
      if (m) kb += +m[1];
    } catch {}
  }
  return kb / 1024;
}

const loadLine = new RegExp(`room ${dev.tenant}/${opt.room} loaded at seq (\\d+)`, "g");
const loads = () => (opt.log ? [...fs.readFileSync(opt.log, "utf8").matchAll(loadLine)].length : null);

async function wakeOnce(tok) {
  const pids = workerdPids(opt.pid);
  const rssBefore = statusMiB(pids, "VmRSS");
  const loadsBefore = loads();
  const url = `${dev.endpoint.replace(/^http/, "ws")}/ws/room/${opt.room}?token=${tok}`;
  const t0 = performance.now();
  const ws = new WebSocket(url, ["fluxy.v1"]);
  const r = await new Promise((resolve, reject) => {
    const out = {};
    const timer = setTimeout(() => reject(new Error("no history within 600 s")), 600_000);
    ws.on("open", () => (out.openMs = performance.now() - t0));
    ws.on("message", (d) => {
      const ms = performance.now() - t0;
      const f = JSON.parse(d.toString());
      if (f.type === "welcome") out.welcomeMs = ms;
      else if (f.type === "history") {
        out.historyMs = ms;
        out.historyEvents = f.events?.length;
        clearTimeout(timer);
        resolve(out);
      } else if (f.type === "error") reject(new Error(`error frame ${JSON.stringify(f)}`));
    });
    ws.on("unexpected-response", (_req, res) => reject(new Error(`handshake refused: HTTP ${res.statusCode}`)));
    ws.on("close", (code) => reject(new Error(`closed ${code} before history`)));
    ws.on("error", reject);
  });
  r.rssBefore = rssBefore;
  r.rssAfter = statusMiB(pids, "VmRSS");
  r.hwmAfter = statusMiB(pids, "VmHWM");
  ws.removeAllListeners("close");
  ws.close(1000);
  // A cold wake logs one "loaded" line; give the log a moment to be flushed.
  await sleep(300);
  r.cold = loadsBefore === null ? null : loads() > loadsBefore;
  return r;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const spread = (xs) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });

const tok = await token(dev, opt.owner, { ttlSeconds: 86400 });
const samples = [];
let warm = 0;
for (let rep = 0; samples.length < reps; rep++) {
  if (samples.length > 0 || warm > 0) {
    // Wait for workerd to evict the object (no socket, no alarm) before the next wake.
    await sleep((idle + 10 * Math.min(warm, 3)) * 1000);
  }
  const r = await wakeOnce(tok);
  const first = samples.length === 0 && warm === 0;
  console.log(JSON.stringify({ events: Number(opt.events), rep: rep + 1, firstSinceStart: first, ...r }));
  if (r.cold === false) {
    if (++warm > 6) throw new Error("the object never got evicted; raise --idle");
    continue;
  }
  samples.push({ ...r, first });
}
const firstWake = samples.find((s) => s.first);
console.log(
  JSON.stringify({
    summary: {
      events: Number(opt.events),
      reps: samples.length,
      warmRetries: warm,
      welcomeMs: spread(samples.map((s) => s.welcomeMs)),
      historyMs: spread(samples.map((s) => s.historyMs)),
      rssDeltaMiB: spread(samples.map((s) => s.rssAfter - s.rssBefore)),
      rssAfterMiB: spread(samples.map((s) => s.rssAfter)),
      firstWake: firstWake && {
        rssDeltaMiB: firstWake.rssAfter - firstWake.rssBefore,
        peakDeltaMiB: firstWake.hwmAfter - firstWake.rssBefore,
      },
      loadavg: fs.readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" "),
    },
  }),
);
process.exit(0);
