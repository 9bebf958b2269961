// Golden-vector round trip for the generated TypeScript types (fluxy.ts) with codec.ts.
// Compiled with `tsc --strict` and run with node by scripts/ci-codegen.
import { readFileSync, readdirSync } from "fs";
import { join } from "path";
import type { ClientFrame, ServerFrame, TimelineEvent, MessageRecord, Timestamp } from "./fluxy";
import { SchemaError, UnknownTypeError, decodeAs, decodeClientFrame, decodeServerFrame, encode } from "./codec";

// FLUXY_SPEC_DIR: the spec/ directory (the compiled test runs from elsewhere).
const examples = join(process.env["FLUXY_SPEC_DIR"] ?? join(__dirname, "..", ".."), "examples");
const problems: string[] = [];
let passed = 0;
let failed = 0;

/** The file without whitespace outside strings: a vector's canonical form. */
function minify(text: string): string {
  let out = "";
  let inString = false;
  let escaped = false;
  for (const c of text) {
    if (inString) {
      out += c;
      if (escaped) escaped = false;
      else if (c === "\\") escaped = true;
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
      out += c;
    } else if (!" \t\r\n".includes(c)) out += c;
  }
  return out;
}

const expand = (frame: string): string =>
  frame.replace(/\{\{repeat:(\d+):([^}]*)\}\}/g, (_m, n: string, t: string) => t.repeat(Number(n)));

/** Exhaustive over the union: the compiler proves every `type` is handled (narrowing works). */
function describe(frame: ServerFrame): string {
  switch (frame.type) {
    case "message":
    case "edit":
    case "delete":
    case "reaction":
    case "read":
    case "agentRun":
    case "tool_call":
    case "tool_result":
    case "tool_error":
    case "approval_request":
    case "approval_decision":
      return `event ${frame.seq}`;
    case "welcome":
      return `welcome ${frame.currentSeq}`;
    case "history":
    case "replay":
      return `${frame.type} ${frame.events.length}`;
    case "batch":
      return `batch ${frame.events.map((e: TimelineEvent) => e.seq).join(",")}`;
    case "ack":
      return `ack ${frame.seq ?? "-"}`;
    case "error":
      return `error ${frame.code}`;
    case "subscription_succeeded":
    case "pong":
    case "token_refreshed":
    case "typing":
    case "agentTyping":
    case "presence":
    case "member_joined":
    case "member_left":
      return frame.type;
    default: {
      const never: never = frame;
      return String(never);
    }
  }
}

function decode(dir: string, key: string, text: string): { value: unknown; type: string } {
  if (dir === "client") {
    const f: ClientFrame = decodeClientFrame(text);
    return { value: f, type: f.type };
  }
  if (dir === "server") {
    const f: ServerFrame = decodeServerFrame(text);
    describe(f);
    return { value: f, type: f.type };
  }
  return { value: decodeAs<unknown>(key, text), type: key };
}

const jsonFiles = (dir: string): string[] =>
  readdirSync(join(examples, dir))
    .filter((f) => f.endsWith(".json"))
    .sort();

let valid = 0;
let decoded = 0;
let exact = 0;
for (const dir of ["client", "server", "http"]) {
  for (const f of jsonFiles(dir)) {
    valid++;
    const text = readFileSync(join(examples, dir, f), "utf8");
    const key = f.split(".")[0] ?? "";
    let got: { value: unknown; type: string };
    try {
      got = decode(dir, key, text);
    } catch (e) {
      problems.push(`${dir}/${f}: not decoded: ${(e as Error).message}`);
      continue;
    }
    if (got.type !== key) {
      problems.push(`${dir}/${f}: decoded as ${got.type}`);
      continue;
    }
    decoded++;
    if (encode(got.value) !== minify(text)) {
      problems.push(`${dir}/${f}: re-encoded differently`);
      continue;
    }
    exact++;
  }
}

let schemaLevel = 0;
let rejected = 0;
let decoderOnly = 0;
for (const f of jsonFiles("invalid")) {
  const vec = JSON.parse(readFileSync(join(examples, "invalid", f), "utf8")) as {
    direction: "client" | "server";
    frame: string;
    schemaValid?: boolean;
  };
  let accepted = true;
  try {
    decode(vec.direction, "", expand(vec.frame));
  } catch (e) {
    if (!(e instanceof SchemaError)) throw e;
    accepted = false;
  }
  if (vec.schemaValid) {
    decoderOnly++;
    if (!accepted) problems.push(`invalid/${f}: marked schemaValid but rejected`);
    continue;
  }
  schemaLevel++;
  if (accepted) problems.push(`invalid/${f}: accepted`);
  else rejected++;
}

function wireDetails(): boolean {
  let ok = true;
  const row =
    '{"id":1,"roomId":"r","userId":"u","senderId":"u","content":"c","createdAt":"2026-11-26T16:19:14.670Z",' +
    '"parentId":null,"editedAt":null,"seq":1,"version":1,"attachments":[]}';
  const rec = decodeAs<MessageRecord>("MessageRecord", row);
  const ts: Timestamp = rec.createdAt;
  if (encode(rec) !== row || ts !== "2026-11-26T16:19:14.670Z" || rec.parentId !== null) {
    problems.push(`MessageRecord: ${encode(rec)}`);
    ok = false;
  }
  for (const bad of ['"2026-11-26T16:19:14.67Z"', '"2026-13-26T16:19:14.677Z"']) {
    try {
      decodeAs<Timestamp>("Timestamp", bad);
      problems.push(`Timestamp accepted ${bad}`);
      ok = false;
    } catch {
      // expected
    }
  }
  try {
    decodeServerFrame('{"type":"future_frame"}');
    ok = false;
  } catch (e) {
    if (!(e instanceof UnknownTypeError) || e.type !== "future_frame") {
      problems.push(`unknown type: ${String(e)}`);
      ok = false;
    }
  }
  return ok;
}

for (const [ok, what] of [
  [decoded === valid, "every valid vector decodes into its type"],
  [exact === valid, "every valid vector re-encodes byte-exact"],
  [rejected === schemaLevel, "every schema-level invalid vector is rejected"],
  [wireDetails(), "null, absent, timestamps, unknown types"],
] as const) {
  if (ok) passed++;
  else {
    failed++;
    problems.push(`FAILED: ${what}`);
  }
}
for (const p of problems) console.log(p);
console.log(
  `MEASURE typescript: valid decoded ${decoded}/${valid}, re-encoded byte-exact ${exact}/${valid}, ` +
    `schema-level invalid rejected ${rejected}/${schemaLevel} (${decoderOnly} decoder-only vectors accepted by the schema, as marked)`,
);
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;
