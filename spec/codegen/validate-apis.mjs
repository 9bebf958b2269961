// Validate spec/asyncapi.yaml and spec/openapi.yaml with independent, pinned validators:
// @asyncapi/parser (AsyncAPI 3.0, with its Spectral ruleset; errors fail, warnings are
// printed) and @apidevtools/swagger-parser (OpenAPI 3.1 structure and $ref resolution).
// Also checks both documents cover every frame and HTTP body of the schema bundle.
//
//   node spec/codegen/validate-apis.mjs
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { Parser } = require("@asyncapi/parser");
const SwaggerParser = require("@apidevtools/swagger-parser");
const YAML = require("yaml");

const spec = join(dirname(fileURLToPath(import.meta.url)), "..");
let passed = 0;
let failed = 0;
const ok = (cond, what) => {
  if (cond) passed++;
  else {
    failed++;
    console.log(`FAIL ${what}`);
  }
};

const bundle = JSON.parse(readFileSync(join(spec, "schema", "fluxy-v1.schema.json"), "utf8"));
const unionDefs = (u) => bundle.$defs[u].oneOf.map((v) => v.$ref.replace("#/$defs/", ""));

// AsyncAPI
const asyncText = readFileSync(join(spec, "asyncapi.yaml"), "utf8");
const { document, diagnostics } = await new Parser().parse(asyncText);
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics.filter((d) => d.severity === 1)) console.log(`asyncapi warning: ${d.message} at ${d.path.join("/")}`);
for (const e of errors) console.log(`asyncapi error: ${e.message} at ${e.path.join("/")}`);
ok(document && errors.length === 0, "spec/asyncapi.yaml parses without errors (@asyncapi/parser)");
if (document) {
  const room = document.channels().get("room");
  const names = new Set(room.messages().all().map((m) => m.id()));
  for (const def of [...unionDefs("ClientFrame"), ...unionDefs("ServerFrame")]) ok(names.has(def), `asyncapi room channel has ${def}`);
  const sse = new Set(document.channels().get("roomStream").messages().all().map((m) => m.id()));
  for (const def of unionDefs("TimelineEvent")) ok(sse.has(def), `asyncapi SSE channel has ${def}`);
  ok(document.channels().get("roomPoll") !== undefined, "asyncapi has the long-poll channel");
}

// OpenAPI
const openText = readFileSync(join(spec, "openapi.yaml"), "utf8");
try {
  const raw = YAML.parse(openText);
  const api = await SwaggerParser.validate(YAML.parse(openText));
  ok(api.openapi === "3.1.0", "spec/openapi.yaml is valid OpenAPI 3.1 (@apidevtools/swagger-parser)");
  const used = new Set(JSON.stringify(YAML.parse(openText).paths).match(/#\/components\/schemas\/\w+/g).map((r) => r.split("/").pop()));
  for (const body of ["ErrorBody", "TokenRequest", "TokenResponse", "CreateRoomRequest", "RoomResponse", "RoomListResponse", "MemberSpec", "MembersResponse", "MemberResponse", "PostMessageRequest", "PostMessageResponse", "HistoryPage", "LegacyMessagesResponse", "HealthResponse"]) {
    ok(used.has(body) || JSON.stringify(raw.components.responses).includes(`schemas/${body}`), `openapi uses ${body}`);
  }
} catch (e) {
  ok(false, `spec/openapi.yaml: ${e.message}`);
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
