//! JSON Schema (draft 2020-12) export for every frame, event and HTTP body.
//!
//! `cargo run -p fluxy-protocol --bin fluxy-schema -- spec/schema` regenerates the committed
//! files; a test fails when they drift from the Rust types.

use std::collections::{BTreeMap, BTreeSet};

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

/// Base of every schema `$id`.
pub const SCHEMA_BASE: &str = "https://fluxy.dev/schema/v1/";
/// File name of the bundle holding every definition.
pub const BUNDLE_FILE: &str = "fluxy-v1.schema.json";

fn gen_into<T: JsonSchema>(defs: &mut Map<String, Value>, roots: &mut Vec<String>) {
    let settings = SchemaSettings::draft2020_12();
    let generator = settings.into_generator();
    let schema = generator.into_root_schema_for::<T>();
    let mut v = schema.to_value();
    let name = T::schema_name().to_string();
    if let Some(obj) = v.as_object_mut() {
        if let Some(Value::Object(d)) = obj.remove("$defs") {
            for (k, val) in d {
                defs.insert(k, val);
            }
        }
        obj.remove("$schema");
    }
    defs.insert(name.clone(), v);
    roots.push(name);
}

/// Move each tagged-union variant's `type` const into the variant's named definition, so every
/// frame is one named object schema with a discriminating `type` property.
///
/// A struct used by several variants (`MemberPresenceEvent` for `member_joined` and
/// `member_left`) is split into one definition per tag, named after the tag
/// (`MemberJoinedEvent`, `MemberLeftEvent`), so that every definition has exactly one `const`.
fn hoist_tags(defs: &mut Map<String, Value>) {
    // def name -> [(tag, variant description)], in first-seen order, without duplicates.
    let mut tags: BTreeMap<String, Vec<(String, Option<Value>)>> = BTreeMap::new();
    for def in defs.values() {
        let Some(one_of) = def.get("oneOf").and_then(Value::as_array) else {
            continue;
        };
        for variant in one_of {
            let r = variant.get("$ref").and_then(Value::as_str);
            let t = variant
                .pointer("/properties/type/const")
                .and_then(Value::as_str);
            if let (Some(r), Some(t)) = (r, t) {
                let name = r.trim_start_matches("#/$defs/").to_owned();
                let entry = tags.entry(name).or_default();
                if !entry.iter().any(|(x, _)| x == t) {
                    entry.push((t.to_owned(), variant.get("description").cloned()));
                }
            }
        }
    }
    // (def name, tag) -> name of the definition that carries that tag.
    let mut target: BTreeMap<(String, String), String> = BTreeMap::new();
    for (name, list) in &tags {
        let Some(base) = defs.get(name).cloned() else {
            continue;
        };
        if list.len() == 1 {
            let (t, _) = &list[0];
            let mut def = base;
            add_tag(&mut def, t);
            defs.insert(name.clone(), def);
            target.insert((name.clone(), t.clone()), name.clone());
            continue;
        }
        defs.remove(name);
        let suffix = ["Event", "Frame"]
            .into_iter()
            .find(|s| name.ends_with(s))
            .unwrap_or_default();
        for (t, desc) in list {
            let split = format!("{}{suffix}", pascal_case(t));
            let mut def = base.clone();
            if let (Some(obj), Some(d)) = (def.as_object_mut(), desc) {
                obj.insert("description".into(), d.clone());
            }
            if let Some(obj) = def.as_object_mut() {
                obj.insert("title".into(), Value::String(split.clone()));
            }
            add_tag(&mut def, t);
            defs.insert(split.clone(), def);
            target.insert((name.clone(), t.clone()), split);
        }
    }
    for def in defs.values_mut() {
        let Some(one_of) = def.get_mut("oneOf").and_then(Value::as_array_mut) else {
            continue;
        };
        for variant in one_of.iter_mut() {
            let r = variant.get("$ref").and_then(Value::as_str);
            let t = variant
                .pointer("/properties/type/const")
                .and_then(Value::as_str);
            if let (Some(r), Some(t)) = (r, t) {
                let name = r.trim_start_matches("#/$defs/").to_owned();
                if let Some(to) = target.get(&(name, t.to_owned())) {
                    *variant = json!({ "$ref": format!("#/$defs/{to}") });
                }
            }
        }
    }
}

/// Put `type: {const: tag}` first among the properties and first in `required`.
fn add_tag(def: &mut Value, t: &str) {
    let Some(def) = def.as_object_mut() else {
        return;
    };
    let mut props = Map::new();
    props.insert(
        "type".into(),
        json!({"type": "string", "const": t, "description": format!("Frame type, always `{t}`.")}),
    );
    if let Some(Value::Object(old)) = def.remove("properties") {
        for (k, v) in old {
            if k != "type" {
                props.insert(k, v);
            }
        }
    }
    def.insert("properties".into(), Value::Object(props));
    let mut req = vec![Value::String("type".into())];
    if let Some(Value::Array(old)) = def.remove("required") {
        req.extend(old.into_iter().filter(|v| v != "type"));
    }
    def.insert("required".into(), Value::Array(req));
}

fn pascal_case(tag: &str) -> String {
    let mut out = String::new();
    let mut upper = true;
    for c in tag.chars() {
        if c == '_' || c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// String properties that hold a tenant, room or user id `[FX-FRM-6]`.
const ID_PROPERTIES: &[&str] = &[
    "id",
    "roomId",
    "userId",
    "senderId",
    "agentId",
    "createdBy",
    "sub",
    "tid",
];
/// Array properties whose items are user ids.
const ID_LIST_PROPERTIES: &[&str] = &["users"];

fn has_type(schema: &Value, t: &str) -> bool {
    match schema.get("type") {
        Some(Value::String(s)) => s == t,
        Some(Value::Array(a)) => a.iter().any(|x| x == t),
        _ => false,
    }
}

/// Tighten each property of each object definition so the schema says what the decoder checks:
///
/// - integer formats `uint8`..`uint64` get their full `minimum`/`maximum` range;
/// - lists of user ids (`users`) reference a named `UserId` definition;
/// - id properties get [`ID_PATTERN`](crate::common::ID_PATTERN) and `clientMessageId` gets
///   [`CLIENT_MESSAGE_ID_PATTERN`](crate::common::CLIENT_MESSAGE_ID_PATTERN);
/// - every optional (not `required`) property also accepts `null`, which decoders treat like an
///   absent field `[FX-FRM-12]`;
/// - a property that references a definition loses its `default` (kept in the description).
fn refine(defs: &mut Map<String, Value>) {
    use crate::common::{CLIENT_MESSAGE_ID_PATTERN, ID_PATTERN};
    let mut uses_user_id = false;
    for def in defs.values_mut() {
        let Some(obj) = def.as_object_mut() else {
            continue;
        };
        let required: BTreeSet<String> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let Some(Value::Object(props)) = obj.get_mut("properties") else {
            continue;
        };
        for (name, prop) in props.iter_mut() {
            integer_range(prop);
            if let Some(items) = prop.get_mut("items") {
                integer_range(items);
            }
            let Some(p) = prop.as_object_mut() else {
                continue;
            };
            let is_string = has_type(&Value::Object(p.clone()), "string");
            if is_string && !p.contains_key("pattern") {
                if ID_PROPERTIES.contains(&name.as_str()) {
                    p.insert("pattern".into(), json!(ID_PATTERN));
                } else if name == "clientMessageId" {
                    p.insert("pattern".into(), json!(CLIENT_MESSAGE_ID_PATTERN));
                }
            }
            if ID_LIST_PROPERTIES.contains(&name.as_str()) && p.contains_key("items") {
                // A named item type: generators name an inline constrained item after the
                // property (pydantic got a `User` class for a user id).
                p.insert("items".into(), json!({ "$ref": "#/$defs/UserId" }));
                uses_user_id = true;
            }
            if !required.contains(name) && name != "type" {
                make_nullable(p);
            }
            // A `default` beside a reference (`op: "add"` of a `ReactionOp`) is copied by
            // generators as a raw value of the wrong type (pydantic: a `str` assigned to a
            // `RootModel` field, which `mypy --strict` rejects). The description says it.
            if p.contains_key("$ref")
                || p.get("anyOf")
                    .is_some_and(|a| a.to_string().contains("$ref"))
            {
                p.remove("default");
            }
        }
    }
    if uses_user_id {
        defs.insert(
            "UserId".into(),
            json!({
                "type": "string",
                "pattern": ID_PATTERN,
                "description": "A user id `[FX-FRM-6]`.",
            }),
        );
    }
}

fn integer_range(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let max: Option<u64> = match obj.get("format").and_then(Value::as_str) {
        Some("uint8") => Some(u8::MAX.into()),
        Some("uint16") => Some(u16::MAX.into()),
        Some("uint32") => Some(u32::MAX.into()),
        Some("uint64") => Some(u64::MAX),
        _ => None,
    };
    if let Some(max) = max {
        obj.entry("minimum").or_insert_with(|| json!(0));
        obj.entry("maximum").or_insert_with(|| json!(max));
    }
}

fn make_nullable(p: &mut Map<String, Value>) {
    match p.get_mut("type") {
        Some(Value::String(t)) => {
            let t = t.clone();
            p.insert("type".into(), json!([t, "null"]));
            return;
        }
        Some(Value::Array(a)) => {
            if !a.iter().any(|x| x == "null") {
                a.push(json!("null"));
            }
            return;
        }
        _ => {}
    }
    if let Some(r) = p.remove("$ref") {
        p.insert("anyOf".into(), json!([{ "$ref": r }, { "type": "null" }]));
    }
}

/// Turn `{"$ref": R, "description": D, …}` into `{"allOf": [{"$ref": R}], "description": D, …}`.
///
/// Both mean the same in draft 2020-12, but generators that inline a `$ref` with sibling
/// keywords create a copy of the referenced type for every use (json-schema-to-typescript
/// emitted `Timestamp1` … `Timestamp18`); a lone `$ref` inside `allOf` is resolved to the one
/// named type, and the description still documents the property.
fn wrap_annotated_refs(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.len() > 1 {
                if let Some(r) = o.remove("$ref") {
                    o.insert("allOf".into(), json!([{ "$ref": r }]));
                }
            }
            o.values_mut().for_each(wrap_annotated_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(wrap_annotated_refs),
        _ => {}
    }
}

/// Join the hard-wrapped lines of doc comments: a single newline becomes a space, paragraph
/// breaks stay.
fn unwrap_descriptions(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, val) in o.iter_mut() {
                match val {
                    Value::String(s) if k == "description" => {
                        *s = s
                            .split("\n\n")
                            .map(|para| {
                                para.split('\n')
                                    .map(str::trim)
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(val),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

fn ensure_titles(defs: &mut Map<String, Value>) {
    for (name, def) in defs.iter_mut() {
        if let Some(obj) = def.as_object_mut() {
            obj.entry("title")
                .or_insert_with(|| Value::String(name.clone()));
        }
    }
}

fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, val) in o {
                if k == "$ref" {
                    if let Some(s) = val.as_str() {
                        out.insert(s.trim_start_matches("#/$defs/").to_owned());
                    }
                } else {
                    collect_refs(val, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn all_defs() -> (Map<String, Value>, Vec<String>) {
    use crate::{client::*, events::*, http::*, server::*};
    let mut defs = Map::new();
    let mut roots = Vec::new();
    gen_into::<ClientFrame>(&mut defs, &mut roots);
    gen_into::<ServerFrame>(&mut defs, &mut roots);
    gen_into::<TimelineEvent>(&mut defs, &mut roots);
    gen_into::<crate::codes::ErrorCode>(&mut defs, &mut roots);
    gen_into::<ErrorBody>(&mut defs, &mut roots);
    gen_into::<TokenRequest>(&mut defs, &mut roots);
    gen_into::<TokenResponse>(&mut defs, &mut roots);
    gen_into::<CreateRoomRequest>(&mut defs, &mut roots);
    gen_into::<RoomResponse>(&mut defs, &mut roots);
    gen_into::<RoomListResponse>(&mut defs, &mut roots);
    gen_into::<MemberSpec>(&mut defs, &mut roots);
    gen_into::<MembersResponse>(&mut defs, &mut roots);
    gen_into::<MemberResponse>(&mut defs, &mut roots);
    gen_into::<PostMessageRequest>(&mut defs, &mut roots);
    gen_into::<PostMessageResponse>(&mut defs, &mut roots);
    gen_into::<HistoryPage>(&mut defs, &mut roots);
    gen_into::<LegacyMessagesResponse>(&mut defs, &mut roots);
    gen_into::<HealthResponse>(&mut defs, &mut roots);
    hoist_tags(&mut defs);
    refine(&mut defs);
    for def in defs.values_mut() {
        wrap_annotated_refs(def);
    }
    for def in defs.values_mut() {
        unwrap_descriptions(def);
    }
    ensure_titles(&mut defs);
    (defs, roots)
}

/// Every definition of the bundle (`$defs` of [`BUNDLE_FILE`]), by name, with references in
/// the form `#/$defs/<Name>`.
pub fn definitions() -> Map<String, Value> {
    all_defs().0
}

/// Names of the exported root types, in export order: `ClientFrame`, `ServerFrame`,
/// `TimelineEvent`, `ErrorCode`, then every HTTP body ([`HTTP_BODY_TYPES`]). Each root, and each
/// definition it references, has its own `<Name>.schema.json`.
pub fn root_names() -> Vec<String> {
    all_defs().1
}

/// Names of the exported HTTP request and response bodies (spec areas AUTH, TEN, HIS, MSG, ERR).
pub const HTTP_BODY_TYPES: &[&str] = &[
    "ErrorBody",
    "TokenRequest",
    "TokenResponse",
    "CreateRoomRequest",
    "RoomResponse",
    "RoomListResponse",
    "MemberSpec",
    "MembersResponse",
    "MemberResponse",
    "PostMessageRequest",
    "PostMessageResponse",
    "HistoryPage",
    "LegacyMessagesResponse",
    "HealthResponse",
];

/// Every generated file: name → pretty JSON text (with a trailing newline).
pub fn generate() -> BTreeMap<String, String> {
    let (defs, _roots) = all_defs();
    let mut files = BTreeMap::new();
    let bundle = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{SCHEMA_BASE}{BUNDLE_FILE}"),
        "title": "Fluxy protocol v1",
        "description": "Every frame, timeline event and HTTP body of Fluxy protocol v1. Validate a client frame against #/$defs/ClientFrame, a server frame against #/$defs/ServerFrame.",
        "$defs": Value::Object(defs.clone()),
    });
    files.insert(BUNDLE_FILE.to_string(), pretty(&bundle, None));
    for (name, def) in &defs {
        // Transitive closure of referenced definitions.
        let mut needed = BTreeSet::new();
        let mut frontier = BTreeSet::new();
        collect_refs(def, &mut frontier);
        while let Some(n) = frontier.pop_first() {
            if n == *name || !needed.insert(n.clone()) {
                continue;
            }
            if let Some(d) = defs.get(&n) {
                collect_refs(d, &mut frontier);
            }
        }
        let mut doc = Map::new();
        doc.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        doc.insert(
            "$id".into(),
            json!(format!("{SCHEMA_BASE}{name}.schema.json")),
        );
        if let Some(obj) = def.as_object() {
            for (k, v) in obj {
                doc.insert(k.clone(), v.clone());
            }
        }
        if !needed.is_empty() {
            let mut sub = Map::new();
            for n in &needed {
                if let Some(d) = defs.get(n) {
                    sub.insert(n.clone(), d.clone());
                }
            }
            doc.insert("$defs".into(), Value::Object(sub));
        }
        files.insert(
            format!("{name}.schema.json"),
            pretty(&Value::Object(doc), Some(name)),
        );
    }
    files
}

/// Pretty JSON (two-space indent, as `serde_json::to_string_pretty`) with every object's keys
/// sorted, except the `properties` of a definition: those keep the wire order (`type` first,
/// then [`field_orders`]), which generators copy into the field order of the classes and
/// structs they emit, so that their encoders write the canonical field order.
///
/// `name` is the definition the document describes (`None` for the bundle).
fn pretty(v: &Value, name: Option<&str>) -> String {
    let orders = field_orders();
    let mut out = String::new();
    write_value(v, Ctx::Def(name), &orders, 0, &mut out);
    out.push('\n');
    out
}

/// Where a value sits in a schema document, for [`write_value`].
#[derive(Clone, Copy)]
enum Ctx<'a> {
    /// A definition (or the document root) named so.
    Def(Option<&'a str>),
    /// A `$defs` object: its keys name definitions.
    Defs,
    /// The `properties` of the named definition.
    Props(Option<&'a str>),
    /// Anything else.
    Other,
}

fn write_value(
    v: &Value,
    ctx: Ctx<'_>,
    orders: &BTreeMap<&'static str, Vec<&'static str>>,
    indent: usize,
    out: &mut String,
) {
    let pad = |n: usize, out: &mut String| out.extend(std::iter::repeat_n("  ", n));
    match v {
        Value::Object(o) if !o.is_empty() => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            if let Ctx::Props(def) = ctx {
                let order = def.and_then(|d| orders.get(d));
                // A frame's `type` tag is no struct field: it comes first. A `type` field
                // (a room's type) keeps its declared place.
                let rank = |k: &str| -> usize {
                    match order.and_then(|o| o.iter().position(|x| *x == k)) {
                        Some(i) => i + 1,
                        None if k == "type" => 0,
                        None => usize::MAX,
                    }
                };
                keys.sort_by_key(|k| rank(k));
            }
            out.push_str("{\n");
            for (i, k) in keys.iter().enumerate() {
                let child = match (ctx, k.as_str()) {
                    (Ctx::Defs, _) => Ctx::Def(Some(k.as_str())),
                    (Ctx::Def(_), "$defs") => Ctx::Defs,
                    (Ctx::Def(d), "properties") => Ctx::Props(d),
                    _ => Ctx::Other,
                };
                pad(indent + 1, out);
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push_str(": ");
                write_value(&o[k.as_str()], child, orders, indent + 1, out);
                if i + 1 < keys.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            pad(indent, out);
            out.push('}');
        }
        Value::Array(a) if !a.is_empty() => {
            out.push_str("[\n");
            for (i, item) in a.iter().enumerate() {
                pad(indent + 1, out);
                write_value(item, Ctx::Other, orders, indent + 1, out);
                if i + 1 < a.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            pad(indent, out);
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Records the field names a derived `Deserialize` passes to `deserialize_struct`: the wire
/// names in declaration order (serde's `FIELDS`, which also lists aliases).
struct FieldProbe<'a>(&'a mut Vec<&'static str>);

impl<'de> serde::Deserializer<'de> for FieldProbe<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.extend_from_slice(fields);
        Err(serde::de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The wire field names of a struct, in declaration order (including serde aliases).
fn wire_fields<'de, T: serde::Deserialize<'de>>() -> Vec<&'static str> {
    let mut fields = Vec::new();
    // The probe always fails after recording the names; the error carries nothing.
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

/// Definition name → wire field order, for every object definition.
///
/// `serde_json` here keeps object keys sorted, so schemars' property order is lost; this list
/// restores the declaration order that the encoders use. A test fails when an object definition
/// is missing here: add its type to the list.
pub fn field_orders() -> BTreeMap<&'static str, Vec<&'static str>> {
    use crate::{client::*, common::*, events::*, http::*, server::*};
    macro_rules! orders {
        ($($t:ty),* $(,)?) => {{
            let mut m = BTreeMap::new();
            $( m.insert(stringify!($t), wire_fields::<$t>()); )*
            m
        }};
    }
    let mut m = orders!(
        // client frames
        PingFrame,
        SendMessageFrame,
        EditFrame,
        DeleteFrame,
        ReactionFrame,
        ReadFrame,
        TypingFrame,
        ResumeFrame,
        StreamFrame,
        AgentRunFrame,
        ToolCallFrame,
        ToolResultFrame,
        ToolErrorFrame,
        ApprovalRequestFrame,
        ApprovalDecisionFrame,
        AgentTypingFrame,
        AuthFrame,
        // server frames
        WelcomeFrame,
        HistoryFrame,
        ReplayFrame,
        AckFrame,
        ErrorFrame,
        PongFrame,
        TypingEvent,
        AgentTypingEvent,
        PresenceMember,
        PresenceFrame,
        MemberPresenceEvent,
        SubscriptionSucceededFrame,
        TokenRefreshedFrame,
        BatchFrame,
        // timeline events
        MessageEvent,
        EditEvent,
        DeleteEvent,
        ReactionEvent,
        ReadEvent,
        AgentRunEvent,
        ToolCallEvent,
        ToolResultEvent,
        ToolErrorEvent,
        ApprovalRequestEvent,
        ApprovalDecisionEvent,
        // shared and HTTP
        Attachment,
        Limits,
        ErrorBody,
        TokenRequest,
        TokenClaimsSummary,
        TokenResponse,
        MemberSpec,
        CreateRoomRequest,
        Room,
        RoomResponse,
        RoomListResponse,
        Member,
        MembersResponse,
        MemberResponse,
        PostMessageRequest,
        PostMessageResponse,
        HistoryPage,
        MessageRecord,
        LegacyMessagesResponse,
        HealthResponse,
    );
    // `member_joined` and `member_left` are split out of one Rust type (see `hoist_tags`).
    if let Some(o) = m.get("MemberPresenceEvent").cloned() {
        m.insert("MemberJoinedEvent", o.clone());
        m.insert("MemberLeftEvent", o);
    }
    m
}
