// Compare two conformance JSON reports (native fluxy-server vs the worker).
// Exit 1 when a case passes natively but not on the worker, or is missing on the worker.
//   node bench/compare-verdicts.mjs NATIVE.json WORKER.json
import fs from "node:fs";

const load = (f) => {
  const r = JSON.parse(fs.readFileSync(f, "utf8"));
  return new Map((r.cases ?? []).map((c) => [c.id, String(c.verdict).toLowerCase()]));
};
const [native, worker] = process.argv.slice(2).map(load);
// Cases allowed to be skipped on the worker although they pass natively, with the reason.
const allowedSkips = new Map([
  ["lim/http-rate-limit", "the worker does no HTTP rate limiting; FX-LIM-7 applies only where it is applied (docs/worker.md)"],
]);
let worse = 0;
let same = 0;
const diffs = [];
for (const [id, v] of native) {
  const w = worker.get(id) ?? "missing";
  if (w === v) { same++; continue; }
  diffs.push(`${id}: native ${v}, worker ${w}`);
  if (v === "pass" && w === "skipped" && allowedSkips.has(id)) {
    diffs[diffs.length - 1] += ` (allowed: ${allowedSkips.get(id)})`;
    continue;
  }
  if (v === "pass" && w !== "pass") worse++;
}
for (const id of worker.keys()) if (!native.has(id)) diffs.push(`${id}: only on the worker (${worker.get(id)})`);
console.log(`conformance: ${same} of ${native.size} cases have the same verdict on the worker as on fluxy-server`);
for (const d of diffs) console.log(`  differs: ${d}`);
process.exit(worse ? 1 : 0);
