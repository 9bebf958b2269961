//! The committed JSON Schemas in `spec/schema/` must be exactly what the Rust types generate.

use std::collections::BTreeSet;
use std::path::PathBuf;

const REGENERATE: &str = "cargo run -p fluxy-protocol --bin fluxy-schema -- spec/schema";

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/schema")
}

#[test]
fn committed_schemas_match_the_rust_types() {
    let generated = fluxy_protocol::schema::generate();
    let dir = schema_dir();
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; run `{REGENERATE}`", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    let expected: BTreeSet<String> = generated.keys().cloned().collect();

    let mut problems = Vec::new();
    for missing in expected.difference(&on_disk) {
        problems.push(format!("missing: spec/schema/{missing}"));
    }
    for extra in on_disk.difference(&expected) {
        problems.push(format!("extra (no longer generated): spec/schema/{extra}"));
    }
    for (name, text) in &generated {
        if let Ok(committed) = std::fs::read_to_string(dir.join(name)) {
            if committed != *text {
                let line = committed
                    .lines()
                    .zip(text.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or_else(|| committed.lines().count().min(text.lines().count()));
                problems.push(format!(
                    "differs: spec/schema/{name} (first difference at line {})",
                    line + 1
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "spec/schema/ is out of date with the fluxy-protocol types:\n  {}\n\nRegenerate from the repository root with:\n  {REGENERATE}\n",
        problems.join("\n  ")
    );
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(
        fluxy_protocol::schema::generate(),
        fluxy_protocol::schema::generate()
    );
}

#[test]
fn every_root_and_body_has_a_schema_file() {
    let files = fluxy_protocol::schema::generate();
    let roots = fluxy_protocol::schema::root_names();
    let mut expected = vec![
        "ClientFrame".to_string(),
        "ServerFrame".into(),
        "TimelineEvent".into(),
        "ErrorCode".into(),
    ];
    expected.extend(
        fluxy_protocol::schema::HTTP_BODY_TYPES
            .iter()
            .map(|s| s.to_string()),
    );
    assert_eq!(
        roots, expected,
        "schema::HTTP_BODY_TYPES is out of sync with the export list"
    );
    for r in &roots {
        assert!(files.contains_key(&format!("{r}.schema.json")), "{r}");
    }
    assert!(files.contains_key(fluxy_protocol::schema::BUNDLE_FILE));
}

/// What SDK generators need: named, titled, described definitions; a `const` tag in every
/// frame; described enum values; no anonymous nested objects; ranges and formats.
#[test]
fn schemas_are_fit_for_sdk_generation() {
    use serde_json::Value;
    let files = fluxy_protocol::schema::generate();
    let bundle: Value = serde_json::from_str(&files[fluxy_protocol::schema::BUNDLE_FILE]).unwrap();
    let defs = bundle["$defs"].as_object().unwrap();
    let mut problems = Vec::new();

    for (name, def) in defs {
        if def["title"] != Value::String(name.clone()) {
            problems.push(format!("{name}: title is not the definition name"));
        }
        if def["description"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{name}: no description"));
        }
        if let Some(variants) = def["oneOf"].as_array() {
            for v in variants {
                let is_ref = v.get("$ref").is_some() && v.as_object().unwrap().len() == 1;
                let is_value = v.get("const").is_some()
                    && v["description"].as_str().is_some_and(|d| !d.is_empty());
                if !is_ref && !is_value {
                    problems.push(format!(
                        "{name}: oneOf entry is neither a $ref nor a described const: {v}"
                    ));
                }
            }
        }
        let Some(props) = def["properties"].as_object() else {
            continue;
        };
        for (pname, p) in props {
            let at = format!("{name}.{pname}");
            if p["description"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{at}: no description"));
            }
            if p.get("properties").is_some()
                || p["items"].get("properties").is_some()
                || p["additionalProperties"].get("properties").is_some()
            {
                problems.push(format!(
                    "{at}: anonymous nested object; give it a named type"
                ));
            }
            let is_int = |s: &Value| match &s["type"] {
                Value::String(t) => t == "integer",
                Value::Array(a) => a.iter().any(|t| t == "integer"),
                _ => false,
            };
            for s in [p, &p["items"]] {
                if is_int(s) && (s.get("minimum").is_none() || s.get("maximum").is_none()) {
                    problems.push(format!("{at}: integer without minimum/maximum"));
                }
            }
            if p["format"] == "date-time" && p.get("pattern").is_none() {
                problems.push(format!("{at}: date-time without the FX-FRM-5 pattern"));
            }
        }
    }

    let tags = |union: &str| -> Vec<String> {
        defs[union]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let target = v["$ref"].as_str().unwrap().trim_start_matches("#/$defs/");
                let def = &defs[target];
                assert_eq!(
                    def["required"][0], "type",
                    "{target}: `type` not required first"
                );
                assert_eq!(def["properties"]["type"]["type"], "string", "{target}");
                def["properties"]["type"]["const"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{target}: `type` is not a const"))
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(tags("ClientFrame"), fluxy_protocol::client::CLIENT_TYPES);
    assert_eq!(tags("ServerFrame"), fluxy_protocol::server::SERVER_TYPES);
    assert_eq!(
        tags("TimelineEvent"),
        fluxy_protocol::events::TIMELINE_TYPES
    );

    assert!(
        problems.is_empty(),
        "schema quality problems:\n  {}",
        problems.join("\n  ")
    );
}

/// A frame definition (one with a `type` const) may only be used through its tagged union, or
/// by a field whose serialization emits the tag (`PostMessageResponse.message`).
#[test]
fn tagged_definitions_are_encoded_with_their_tag() {
    use fluxy_protocol::events::*;
    use fluxy_protocol::http::PostMessageResponse;
    let m = MessageEvent {
        seq: 7,
        id: 7,
        room_id: "r".into(),
        user_id: "u".into(),
        sender_id: "u".into(),
        content: "hi".into(),
        created_at: "2026-11-26T16:19:14.677Z".into(),
        parent_id: None,
        client_message_id: None,
        attachments: vec![],
        version: 1,
        streaming: false,
    };
    let body = PostMessageResponse {
        message: m.clone(),
        duplicate: false,
    };
    let text = serde_json::to_string(&body).unwrap();
    let event = TimelineEvent::Message(m).encode();
    assert_eq!(text, format!("{{\"message\":{event}}}"));
    assert_eq!(
        serde_json::from_str::<PostMessageResponse>(&text).unwrap(),
        body
    );
    // The tag may be absent on input, but must not name another event.
    let untagged = text.replace("\"type\":\"message\",", "");
    assert_eq!(
        serde_json::from_str::<PostMessageResponse>(&untagged).unwrap(),
        body
    );
    let wrong = text.replace("\"type\":\"message\"", "\"type\":\"edit\"");
    assert!(serde_json::from_str::<PostMessageResponse>(&wrong).is_err());

    // Every other reference to a tagged definition comes from a union's oneOf.
    let files = fluxy_protocol::schema::generate();
    let bundle: serde_json::Value =
        serde_json::from_str(&files[fluxy_protocol::schema::BUNDLE_FILE]).unwrap();
    let defs = bundle["$defs"].as_object().unwrap();
    let tagged: Vec<&String> = defs
        .iter()
        .filter(|(_, d)| d["properties"]["type"].get("const").is_some())
        .map(|(n, _)| n)
        .collect();
    for (name, def) in defs {
        if ["ClientFrame", "ServerFrame", "TimelineEvent"].contains(&name.as_str()) {
            continue;
        }
        let text = def.to_string();
        for t in &tagged {
            if text.contains(&format!("\"#/$defs/{t}\"")) {
                assert!(
                    name == "PostMessageResponse" && t.as_str() == "MessageEvent",
                    "{name} references the tagged definition {t}; make sure its encoding carries `type`"
                );
            }
        }
    }
}

/// Generators copy the schema's property order into the classes and structs they emit, and
/// their encoders write fields in that order: it must be the wire order (`type` first, then
/// the Rust declaration order), for every object definition.
#[test]
fn properties_are_in_wire_order() {
    use serde_json::Value;
    let files = fluxy_protocol::schema::generate();
    let text = &files[fluxy_protocol::schema::BUNDLE_FILE];
    let orders = fluxy_protocol::schema::field_orders();
    let mut problems = Vec::new();
    // Read the bundle with its key order preserved: the printed text is the source of truth.
    let bundle: Value = serde_json::from_str(text).unwrap();
    for (name, def) in bundle["$defs"].as_object().unwrap() {
        let Some(props) = def["properties"].as_object() else {
            continue;
        };
        let Some(order) = orders.get(name.as_str()) else {
            problems.push(format!(
                "{name}: object definition missing from schema::field_orders(); add its type"
            ));
            continue;
        };
        let mut expected: Vec<&str> = Vec::new();
        if props.contains_key("type") && !order.contains(&"type") {
            expected.push("type");
        }
        expected.extend(order.iter().copied().filter(|f| props.contains_key(*f)));
        let mut printed: Vec<(usize, &str)> = Vec::new();
        // Positions of each property key inside this definition's printed `properties` block.
        let start = text
            .find(&format!("\n    \"{name}\": {{"))
            .unwrap_or_else(|| panic!("{name} not printed"));
        let block = &text[start..];
        let props_at = block.find("\n      \"properties\": {").unwrap();
        for k in props.keys() {
            let pos = block[props_at..]
                .find(&format!("\n        \"{k}\": "))
                .unwrap_or(usize::MAX);
            printed.push((pos, k.as_str()));
        }
        printed.sort();
        let printed: Vec<&str> = printed.into_iter().map(|(_, k)| k).collect();
        if printed != expected {
            problems.push(format!(
                "{name}: printed {printed:?}, wire order {expected:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every timestamp is one named `Timestamp` string with the FX-FRM-5 pattern and no
/// `format: date-time` (which generators turn into native dates that lose the three digits);
/// unions carry `discriminator`; no `$ref` has sibling keywords.
#[test]
fn timestamps_unions_and_refs_are_generator_friendly() {
    use serde_json::Value;
    let files = fluxy_protocol::schema::generate();
    let bundle: Value = serde_json::from_str(&files[fluxy_protocol::schema::BUNDLE_FILE]).unwrap();
    let defs = bundle["$defs"].as_object().unwrap();
    assert_eq!(
        defs["Timestamp"]["pattern"],
        fluxy_protocol::common::TIMESTAMP_PATTERN
    );
    assert!(defs["Timestamp"].get("format").is_none());
    let ts_ref = Value::String("#/$defs/Timestamp".into());
    let mut timestamp_fields = 0;
    for (name, def) in defs {
        for (pname, p) in def["properties"].as_object().into_iter().flatten() {
            let text = p.to_string();
            if pname.ends_with("At") {
                assert!(
                    p["allOf"][0]["$ref"] == ts_ref || p["anyOf"][0]["$ref"] == ts_ref,
                    "{name}.{pname}: not a Timestamp: {p}"
                );
                timestamp_fields += 1;
            }
            assert!(!text.contains("date-time"), "{name}.{pname}: {p}");
        }
    }
    assert!(timestamp_fields >= 19, "{timestamp_fields}");
    for union in ["ClientFrame", "ServerFrame", "TimelineEvent"] {
        assert_eq!(
            defs[union]["discriminator"]["propertyName"], "type",
            "{union}"
        );
    }
    fn lone_refs(v: &Value, at: &str) {
        match v {
            Value::Object(o) => {
                if o.contains_key("$ref") {
                    assert_eq!(o.len(), 1, "{at}: $ref with siblings: {v}");
                }
                o.iter()
                    .for_each(|(k, x)| lone_refs(x, &format!("{at}/{k}")));
            }
            Value::Array(a) => a.iter().for_each(|x| lone_refs(x, at)),
            _ => {}
        }
    }
    lone_refs(&bundle, "");
    // The legacy row always carries these two, as `null` when unset.
    let req = defs["MessageRecord"]["required"].as_array().unwrap();
    for f in ["parentId", "editedAt"] {
        assert!(req.iter().any(|r| r == f), "MessageRecord.{f} not required");
    }
}

/// `spec/asyncapi.yaml` and `spec/openapi.yaml` must be exactly what the Rust types generate.
#[test]
fn committed_api_documents_match_the_rust_types() {
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec");
    for (name, text) in fluxy_protocol::api::generate() {
        let committed = std::fs::read_to_string(spec.join(name)).unwrap_or_default();
        assert!(
            committed == text,
            "spec/{name} is out of date with the fluxy-protocol types; regenerate with `{REGENERATE}`"
        );
    }
}
