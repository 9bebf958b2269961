// Decode and encode helpers for the generated types in fluxy.ts (hand-written).
//
// TypeScript types vanish at run time, so decoding is JSON.parse plus schema validation with
// ajv (draft 2020-12, strict), after which the value is typed. ajv must not coerce types,
// insert defaults or remove properties: any of these would change what is re-encoded.
import Ajv2020 from "ajv/dist/2020";
import type { ValidateFunction } from "ajv/dist/2020";
import addFormats from "ajv-formats";
import { readFileSync } from "fs";
import { join } from "path";
import type { ClientFrame, ServerFrame } from "./fluxy";

/** A document that breaks the schema of the definition it was decoded as. */
export class SchemaError extends Error {}

/** A frame whose `type` the union does not know; clients skip such server frames (FX-VER-5). */
export class UnknownTypeError extends SchemaError {
  constructor(readonly union: string, readonly type: string) {
    super(`unknown ${union} type ${JSON.stringify(type)}`);
  }
}

const BUNDLE_ID = "https://fluxy.dev/schema/v1/fluxy-v1.schema.json";

function makeAjv(): Ajv2020 {
  const ajv = new Ajv2020({ strict: true, discriminator: true, useDefaults: false, coerceTypes: false });
  addFormats(ajv);
  ajv.addFormat("uint32", { type: "number", validate: (n: number) => Number.isInteger(n) && n >= 0 && n <= 4294967295 });
  ajv.addFormat("uint64", { type: "number", validate: (n: number) => Number.isInteger(n) && n >= 0 });
  return ajv;
}

let ajv: Ajv2020 | undefined;
let tags: Record<string, Set<string>> = {};
const compiled = new Map<string, ValidateFunction>();

/** Load the schema bundle (spec/schema/fluxy-v1.schema.json) once. */
export function loadBundle(
  path: string = join(process.env["FLUXY_SPEC_DIR"] ?? join(__dirname, "..", ".."), "schema", "fluxy-v1.schema.json"),
): void {
  const bundle = JSON.parse(readFileSync(path, "utf8")) as {
    $defs: Record<string, { oneOf?: { $ref?: string }[]; properties?: { type?: { const?: string } } }>;
  };
  ajv = makeAjv();
  ajv.addSchema(bundle);
  tags = {};
  for (const union of ["ClientFrame", "ServerFrame", "TimelineEvent"]) {
    const names = (bundle.$defs[union]?.oneOf ?? []).map(
      (v) => bundle.$defs[(v.$ref ?? "").replace("#/$defs/", "")]?.properties?.type?.const ?? "",
    );
    tags[union] = new Set(names);
  }
}

function validator(def: string): ValidateFunction {
  if (!ajv) loadBundle();
  let v = compiled.get(def);
  if (!v) {
    v = (ajv as Ajv2020).getSchema(`${BUNDLE_ID}#/$defs/${def}`);
    if (!v) throw new Error(`no definition ${def}`);
    compiled.set(def, v);
  }
  return v;
}

/** Parse `text` and validate it against the named definition; the caller names the type. */
export function decodeAs<T>(def: string, text: string): T {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new SchemaError(`not JSON: ${(e as Error).message}`);
  }
  const known = tags[def];
  if (known && doc !== null && typeof doc === "object" && !Array.isArray(doc)) {
    const t = (doc as { type?: unknown }).type;
    if (typeof t === "string" && !known.has(t)) throw new UnknownTypeError(def, t);
  }
  const v = validator(def);
  if (!v(doc)) throw new SchemaError((ajv as Ajv2020).errorsText(v.errors));
  return doc as T;
}

export const decodeClientFrame = (text: string): ClientFrame => decodeAs<ClientFrame>("ClientFrame", text);
export const decodeServerFrame = (text: string): ServerFrame => decodeAs<ServerFrame>("ServerFrame", text);

/** Canonical encoding: JSON.stringify keeps the decoded key order and explicit nulls. */
export const encode = (value: unknown): string => JSON.stringify(value);
