// Third independent validator: ajv (draft 2020-12, strict mode) over every schema file and
// every golden vector, beside the Rust `jsonschema` crate (protocol/tests/golden.rs) and the
// Go and Python checks.
//
//   node spec/codegen/validate-schemas.mjs
//
// - every spec/schema/*.schema.json compiles in strict mode (unknown keywords, ambiguous
//   types, unknown formats are errors);
// - every valid vector validates against its schemas (client: ClientFrame and its frame
//   definition; server: ServerFrame, its definition, and TimelineEvent for timeline events;
//   http: <Body>.schema.json);
// - every invalid vector that breaks the schema is rejected by ClientFrame or ServerFrame, and
//   every vector marked `schemaValid` is accepted.
//
// Prints a MEASURE line and a closing `N passed, M failed` line; exits 1 on any failure.
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats").default;

const here = dirname(fileURLToPath(import.meta.url));
const schemaDir = join(here, "..", "schema");
const examples = join(here, "..", "examples");

/** An ajv instance as SDKs should configure it: strict, no coercion, no defaults inserted. */
export function makeAjv() {
  const ajv = new Ajv2020({
    strict: true,
    allErrors: false,
    discriminator: true,
    useDefaults: false,
    coerceTypes: false,
    removeAdditional: false,
  });
  addFormats(ajv);
  // The integer formats of schemars: range-checked, not just annotations.
  ajv.addFormat("uint32", { type: "number", validate: (n) => Number.isInteger(n) && n >= 0 && n <= 4294967295 });
  ajv.addFormat("uint64", { type: "number", validate: (n) => Number.isInteger(n) && n >= 0 });
  return ajv;
}

const minify = (text) => JSON.stringify(JSON.parse(text));
const expand = (frame) => frame.replace(/\{\{repeat:(\d+):([^}]*)\}\}/g, (_, n, t) => t.repeat(Number(n)));

let passed = 0;
let failed = 0;
const fail = (msg) => {
  failed++;
  console.log(`FAIL ${msg}`);
};

const ajv = makeAjv();
const validators = {};
const schemaFiles = readdirSync(schemaDir).filter((f) => f.endsWith(".schema.json")).sort();
for (const f of schemaFiles) {
  const schema = JSON.parse(readFileSync(join(schemaDir, f), "utf8"));
  try {
    // Each file is self-contained; compile it in its own instance so `$defs` never clash.
    validators[f.replace(".schema.json", "")] = makeAjv().compile(schema);
    passed++;
  } catch (e) {
    fail(`${f}: does not compile in strict mode: ${e.message}`);
  }
}
// The bundle too, as one document with every definition.
try {
  ajv.addSchema(JSON.parse(readFileSync(join(schemaDir, "fluxy-v1.schema.json"), "utf8")));
  passed++;
} catch (e) {
  fail(`bundle: ${e.message}`);
}

const bundle = JSON.parse(readFileSync(join(schemaDir, "fluxy-v1.schema.json"), "utf8"));
const tagToDef = (union) =>
  Object.fromEntries(
    bundle.$defs[union].oneOf.map((v) => {
      const def = v.$ref.replace("#/$defs/", "");
      return [bundle.$defs[def].properties.type.const, def];
    }),
  );
const clientDefs = tagToDef("ClientFrame");
const serverDefs = tagToDef("ServerFrame");
const timelineDefs = tagToDef("TimelineEvent");

function check(name, value, path) {
  const v = validators[name];
  if (!v) return fail(`${path}: no schema ${name}`);
  if (v(value)) passed++;
  else fail(`${path}: invalid against ${name}: ${ajv.errorsText(v.errors)}`);
}

let valid = 0;
for (const dir of ["client", "server", "http"]) {
  for (const f of readdirSync(join(examples, dir)).filter((x) => x.endsWith(".json")).sort()) {
    valid++;
    const path = `${dir}/${f}`;
    const value = JSON.parse(readFileSync(join(examples, dir, f), "utf8"));
    const key = f.split(".")[0];
    if (dir === "client") {
      check("ClientFrame", value, path);
      check(clientDefs[value.type], value, path);
    } else if (dir === "server") {
      check("ServerFrame", value, path);
      check(serverDefs[value.type], value, path);
      if (timelineDefs[value.type]) check("TimelineEvent", value, path);
    } else {
      check(key, value, path);
    }
  }
}

let schemaLevel = 0;
let rejected = 0;
for (const f of readdirSync(join(examples, "invalid")).filter((x) => x.endsWith(".json")).sort()) {
  const vec = JSON.parse(readFileSync(join(examples, "invalid", f), "utf8"));
  let doc;
  try {
    doc = JSON.parse(expand(vec.frame));
  } catch {
    doc = undefined; // not JSON: nothing for a schema to say; the decoder rejects it
  }
  const union = vec.direction === "client" ? "ClientFrame" : "ServerFrame";
  const ok = doc !== undefined && validators[union](doc);
  if (vec.schemaValid) {
    if (ok) passed++;
    else fail(`invalid/${f}: marked schemaValid but rejected: ${ajv.errorsText(validators[union].errors)}`);
    continue;
  }
  if (doc === undefined) continue;
  schemaLevel++;
  if (ok) fail(`invalid/${f}: accepted by ${union}`);
  else {
    rejected++;
    passed++;
  }
}

console.log(
  `MEASURE ajv: ${schemaFiles.length} schema files + the bundle compiled in strict mode, ${valid} valid vectors validated, ` +
    `schema-level invalid rejected ${rejected}/${schemaLevel}`,
);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
