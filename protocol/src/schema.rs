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
fn hoist_tags(defs: &mut Map<String, Value>) {
    let mut tags: Vec<(String, String)> = Vec::new();
    for def in defs.values_mut() {
        let Some(one_of) = def.get_mut("oneOf").and_then(Value::as_array_mut) else {
            continue;
        };
        for variant in one_of.iter_mut() {
            let r = variant
                .get("$ref")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let t = variant
                .pointer("/properties/type/const")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let (Some(r), Some(t)) = (r, t) {
                let name = r.trim_start_matches("#/$defs/").to_owned();
                tags.push((name, t));
                *variant = json!({ "$ref": r });
            }
        }
    }
    for (name, t) in tags {
        let Some(def) = defs.get_mut(&name).and_then(Value::as_object_mut) else {
            continue;
        };
        let mut props = Map::new();
        props.insert(
            "type".into(),
            json!({"type": "string", "const": t, "description": format!("Frame type, always `{t}`.")}),
        );
        if let Some(Value::Object(old)) = def.remove("properties") {
            for (k, v) in old {
                props.insert(k, v);
            }
        }
        def.insert("properties".into(), Value::Object(props));
        let mut req = vec![Value::String("type".into())];
        if let Some(Value::Array(old)) = def.remove("required") {
            req.extend(old.into_iter().filter(|v| v != "type"));
        }
        def.insert("required".into(), Value::Array(req));
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
    ensure_titles(&mut defs);
    (defs, roots)
}

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
    files.insert(BUNDLE_FILE.to_string(), pretty(&bundle));
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
        files.insert(format!("{name}.schema.json"), pretty(&Value::Object(doc)));
    }
    files
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}
