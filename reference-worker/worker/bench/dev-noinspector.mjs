// Start the worker locally through wrangler's unstable_startWorker API with the inspector
// (debugger proxy) disabled. Used by `scripts/worker-dev PORT --no-inspector`.
//
//   node bench/dev-noinspector.mjs --port PORT --persist-to DIR [--var NAME:VALUE ...]
import path from "node:path";
import { fileURLToPath } from "node:url";
import { unstable_startWorker } from "wrangler";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
let port = 8787;
let persist = path.join(here, "..", ".wrangler", "state");
const bindings = {};
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--port") port = Number(args[++i]);
  else if (args[i] === "--persist-to") persist = args[++i];
  else if (args[i] === "--var") {
    const [k, ...v] = args[++i].split(":");
    bindings[k] = { type: "plain_text", value: v.join(":") };
  } else {
    console.error(`dev-noinspector: unsupported argument ${args[i]}`);
    process.exit(2);
  }
}
const worker = await unstable_startWorker({
  config: path.join(here, "..", "wrangler.toml"),
  bindings,
  dev: {
    inspector: false,
    remote: false,
    server: { hostname: "127.0.0.1", port },
    persist,
    watch: false,
    liveReload: false,
  },
});
await worker.ready;
console.error(`dev-noinspector: ready on ${await worker.url}`);
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  try { await worker.dispose(); } finally { process.exit(0); }
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
setInterval(() => {}, 1 << 30);
