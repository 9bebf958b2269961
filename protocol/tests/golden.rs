//! Golden vectors in `spec/examples/`.
//!
//! - `client/`, `server/`, `http/`: valid examples. Each must validate against its JSON Schema
//!   (checked with the independent `jsonschema` crate, draft 2020-12, formats asserted), decode
//!   with the Rust types, and re-encode to exactly the example's canonical form (the file is
//!   pretty-printed; with insignificant whitespace removed it must equal the encoder's output).
//! - `invalid/`: frames every decoder must reject with the listed error code (and field).
//!
//! File names are `<type>.json` or `<type>.<variant>.json` (client and server, `<type>` being
//! the frame's `type`) and `<Body>.json` or `<Body>.<variant>.json` (HTTP, `<Body>` the type
//! name of the schema).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::LazyLock;

use fluxy_protocol::client::CLIENT_TYPES;
use fluxy_protocol::common::{MAX_BODY_BYTES, MAX_FRAME_BYTES};
use fluxy_protocol::decode::{decode_body, DecodeError};
use fluxy_protocol::events::TIMELINE_TYPES;
use fluxy_protocol::http::*;
use fluxy_protocol::schema::HTTP_BODY_TYPES;
use fluxy_protocol::server::SERVER_TYPES;
use fluxy_protocol::{ClientFrame, ServerFrame, TimelineEvent};
use jsonschema::Validator;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Example {
    /// Path relative to the repository root, for messages.
    path: String,
    /// File stem up to the first dot: the frame type or body name.
    key: String,
    text: String,
    value: Value,
}

fn load(sub: &str) -> Vec<Example> {
    let dir = repo().join("spec/examples").join(sub);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.ends_with(".json"),
                "spec/examples/{sub}/{name}: not a .json file"
            );
            let text = std::fs::read_to_string(&p).unwrap();
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("spec/examples/{sub}/{name}: not JSON: {e}"));
            Example {
                path: format!("spec/examples/{sub}/{name}"),
                key: name.split('.').next().unwrap().to_owned(),
                text,
                value,
            }
        })
        .collect()
}

/// The JSON text without insignificant whitespace (string contents untouched).
fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

fn validator_options() -> jsonschema::ValidationOptions {
    // Assert formats (date-time is checked); formats unknown to the validator (`uint64`,
    // `uint32`) are ignored, which is the crate's default and what the schemas expect.
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .should_ignore_unknown_formats(true)
}

/// Validators for the committed schema files, compiled once.
static VALIDATORS: LazyLock<BTreeMap<String, Validator>> = LazyLock::new(|| {
    let dir = repo().join("spec/schema");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".schema.json") else {
            continue;
        };
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let v = validator_options()
            .build(&schema)
            .unwrap_or_else(|e| panic!("{name}: does not compile: {e}"));
        out.insert(stem.to_owned(), v);
    }
    out
});

/// Frame type → the schema definition that carries it, per union.
fn tag_to_definition(union: &str) -> BTreeMap<String, String> {
    let bundle: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("spec/schema/fluxy-v1.schema.json")).unwrap(),
    )
    .unwrap();
    bundle["$defs"][union]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let def = v["$ref"].as_str().unwrap().trim_start_matches("#/$defs/");
            let tag = bundle["$defs"][def]["properties"]["type"]["const"]
                .as_str()
                .unwrap();
            (tag.to_owned(), def.to_owned())
        })
        .collect()
}

fn check_schema(schema: &str, ex: &Example) {
    let v = VALIDATORS
        .get(schema)
        .unwrap_or_else(|| panic!("{}: no schema {schema}.schema.json", ex.path));
    let errors: Vec<String> = v
        .iter_errors(&ex.value)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{}: invalid against {schema}.schema.json:\n  {}",
        ex.path,
        errors.join("\n  ")
    );
}

fn check_canonical(ex: &Example, encoded: &str) {
    assert_eq!(
        minify(&ex.text),
        encoded,
        "{}: not in canonical form (field order as encoded, absent optionals omitted)",
        ex.path
    );
}

#[test]
fn unknown_formats_are_ignored_and_date_time_is_asserted() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "n": {"type": "integer", "format": "uint64", "minimum": 0},
            "t": {"type": "string", "format": "date-time"}
        }
    });
    let v = validator_options().build(&schema).unwrap();
    assert!(v.is_valid(
        &serde_json::json!({"n": 18446744073709551615u64, "t": "2026-11-26T16:19:14.677Z"})
    ));
    assert!(!v.is_valid(&serde_json::json!({"t": "yesterday"})));
    assert!(!v.is_valid(&serde_json::json!({"n": -1})));
}

#[test]
fn valid_client_examples() {
    let defs = tag_to_definition("ClientFrame");
    let examples = load("client");
    for ex in &examples {
        let tag = ex.value["type"].as_str().unwrap_or_default();
        assert_eq!(
            ex.key, tag,
            "{}: file name must start with its type",
            ex.path
        );
        check_schema("ClientFrame", ex);
        check_schema(&defs[tag], ex);
        let frame = ClientFrame::decode(&ex.text)
            .unwrap_or_else(|e| panic!("{}: rejected by ClientFrame::decode: {e}", ex.path));
        assert_eq!(frame.type_name(), tag, "{}", ex.path);
        check_canonical(ex, &frame.encode());
        assert_eq!(
            ClientFrame::decode(&frame.encode()),
            Ok(frame),
            "{}",
            ex.path
        );
    }
    let covered: BTreeSet<&str> = examples.iter().map(|e| e.key.as_str()).collect();
    let missing: Vec<&&str> = CLIENT_TYPES
        .iter()
        .filter(|t| !covered.contains(**t))
        .collect();
    assert!(
        missing.is_empty(),
        "client frame types without a valid example in spec/examples/client/: {missing:?}"
    );
}

#[test]
fn valid_server_examples() {
    let defs = tag_to_definition("ServerFrame");
    let examples = load("server");
    for ex in &examples {
        let tag = ex.value["type"].as_str().unwrap_or_default();
        assert_eq!(
            ex.key, tag,
            "{}: file name must start with its type",
            ex.path
        );
        check_schema("ServerFrame", ex);
        check_schema(&defs[tag], ex);
        let frame = ServerFrame::decode(&ex.text)
            .unwrap_or_else(|e| panic!("{}: rejected by ServerFrame::decode: {e}", ex.path));
        assert_eq!(frame.type_name(), tag, "{}", ex.path);
        check_canonical(ex, &frame.encode());
        assert_eq!(
            ServerFrame::decode(&frame.encode()),
            Ok(frame.clone()),
            "{}",
            ex.path
        );
        if TIMELINE_TYPES.contains(&tag) {
            check_schema("TimelineEvent", ex);
            let event = TimelineEvent::decode(&ex.text)
                .unwrap_or_else(|e| panic!("{}: rejected by TimelineEvent::decode: {e}", ex.path));
            check_canonical(ex, &event.encode());
            assert_eq!(frame.into_timeline(), Some(event), "{}", ex.path);
        } else {
            assert!(frame.into_timeline().is_none(), "{}", ex.path);
            // FX-ORD-6 lists `ack` among the frames without a top-level `seq`, but FX-ACK-1
            // requires the ack to carry the event's `seq`; the types follow FX-ACK-1.
            assert!(
                tag == "ack" || ex.value.get("seq").is_none(),
                "{}: ephemeral frames carry no top-level seq [FX-ORD-6]",
                ex.path
            );
        }
    }
    let covered: BTreeSet<&str> = examples.iter().map(|e| e.key.as_str()).collect();
    let missing: Vec<&&str> = SERVER_TYPES
        .iter()
        .filter(|t| !covered.contains(**t))
        .collect();
    assert!(
        missing.is_empty(),
        "server frame types without a valid example in spec/examples/server/: {missing:?}"
    );
}

/// Decode `text` as the HTTP body named `name` and re-encode it.
fn body_round_trip(name: &str, text: &str) -> Result<String, DecodeError> {
    macro_rules! bodies {
        ($($t:ident),* $(,)?) => {
            match name {
                $(stringify!($t) => {
                    let v: $t = decode_body(text, MAX_BODY_BYTES)?;
                    Ok(serde_json::to_string(&v).unwrap())
                })*
                other => panic!("golden.rs has no decoder for HTTP body {other}; add it to body_round_trip"),
            }
        };
    }
    bodies!(
        ErrorBody,
        TokenRequest,
        TokenResponse,
        CreateRoomRequest,
        RoomResponse,
        RoomListResponse,
        MemberSpec,
        MembersResponse,
        MemberResponse,
        PostMessageRequest,
        PostMessageResponse,
        HistoryPage,
        LegacyMessagesResponse,
        HealthResponse,
    )
}

#[test]
fn valid_http_examples() {
    let examples = load("http");
    for ex in &examples {
        assert!(
            HTTP_BODY_TYPES.contains(&ex.key.as_str()),
            "{}: `{}` is not an exported HTTP body ({HTTP_BODY_TYPES:?})",
            ex.path,
            ex.key
        );
        check_schema(&ex.key, ex);
        let encoded = body_round_trip(&ex.key, &ex.text)
            .unwrap_or_else(|e| panic!("{}: rejected by the {} decoder: {e}", ex.path, ex.key));
        check_canonical(ex, &encoded);
    }
    let covered: BTreeSet<&str> = examples.iter().map(|e| e.key.as_str()).collect();
    let missing: Vec<&&str> = HTTP_BODY_TYPES
        .iter()
        .filter(|t| !covered.contains(**t))
        .collect();
    assert!(
        missing.is_empty(),
        "HTTP bodies without a valid example in spec/examples/http/: {missing:?}"
    );
}

/// Expand `{{repeat:N:TEXT}}` markers (TEXT without `}`) into TEXT repeated N times.
fn expand(frame: &str) -> String {
    let mut out = String::new();
    let mut rest = frame;
    while let Some(start) = rest.find("{{repeat:") {
        out.push_str(&rest[..start]);
        let tail = &rest[start + "{{repeat:".len()..];
        let end = tail.find("}}").expect("unterminated {{repeat:…}} marker");
        let (n, text) = tail[..end]
            .split_once(':')
            .expect("marker is {{repeat:N:TEXT}}");
        out.push_str(&text.repeat(n.parse().expect("N is a number")));
        rest = &tail[end + 2..];
    }
    out.push_str(rest);
    out
}

#[test]
fn invalid_examples_are_rejected_with_their_code() {
    let clause_ids: BTreeSet<String> = fluxy_protocol::spec::clauses()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let allowed: BTreeSet<&str> = [
        "description",
        "direction",
        "frame",
        "expectedError",
        "expectedField",
        "clauses",
        "schemaValid",
    ]
    .into();
    let examples = load("invalid");
    assert!(
        examples.len() >= 20,
        "only {} invalid examples",
        examples.len()
    );
    let mut codes = BTreeSet::new();
    for ex in &examples {
        let o = ex
            .value
            .as_object()
            .unwrap_or_else(|| panic!("{}: not an object", ex.path));
        for k in o.keys() {
            assert!(
                allowed.contains(k.as_str()),
                "{}: unexpected key `{k}`",
                ex.path
            );
        }
        assert!(
            o["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            ex.path
        );
        let frame = expand(
            o["frame"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: frame", ex.path)),
        );
        let expected = o["expectedError"].as_str().unwrap();
        for c in o
            .get("clauses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let c = c.as_str().unwrap();
            assert!(
                clause_ids.contains(c),
                "{}: no clause {c} in the spec",
                ex.path
            );
        }
        let result = match o["direction"].as_str() {
            Some("client") => ClientFrame::decode(&frame).map(|f| f.encode()),
            Some("server") => ServerFrame::decode(&frame).map(|f| f.encode()),
            other => panic!("{}: direction {other:?}", ex.path),
        };
        let err = match result {
            Ok(f) => panic!("{}: accepted, decoded as {f}", ex.path),
            Err(e) => e,
        };
        assert_eq!(
            err.code().as_str(),
            expected,
            "{}: wrong code for {err}",
            ex.path
        );
        if let Some(field) = o.get("expectedField") {
            assert_eq!(
                err.field(),
                field.as_str(),
                "{}: wrong field for {err}",
                ex.path
            );
        }
        // Vectors that parse as JSON objects are also rejected by the schema, except those
        // marked `schemaValid` (rules the schemas cannot state, enforced by decoders only).
        if let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(&frame) {
            let union = if o["direction"] == "client" {
                "ClientFrame"
            } else {
                "ServerFrame"
            };
            let schema_valid = VALIDATORS[union].is_valid(&value);
            let marked = o.get("schemaValid") == Some(&Value::Bool(true));
            assert_eq!(
                schema_valid,
                marked,
                "{}: the {union} schema {} this frame; set `schemaValid` accordingly",
                ex.path,
                if schema_valid { "accepts" } else { "rejects" }
            );
        } else {
            assert!(
                o.get("schemaValid").is_none(),
                "{}: schemaValid on a non-object",
                ex.path
            );
        }
        if ex.key == "oversized-frame" {
            assert!(frame.len() > MAX_FRAME_BYTES);
        }
        codes.insert(expected.to_owned());
    }
    for code in [
        "malformed_frame",
        "invalid_frame",
        "unknown_type",
        "invalid_content",
        "payload_too_large",
    ] {
        assert!(codes.contains(code), "no invalid example expects {code}");
    }
}

#[test]
fn example_tokens_and_cursors_are_genuine() {
    use fluxy_protocol::cursor::Cursor;
    use fluxy_protocol::jwt;
    // Documented in spec/examples/README.md.
    let secret = b"example-tenant-secret".to_vec();
    let now = 1_795_712_954 + 60; // a minute after the examples' clock
    for path in ["client/auth.json", "http/TokenResponse.json"] {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("spec/examples").join(path)).unwrap(),
        )
        .unwrap();
        let claims = jwt::verify(v["token"].as_str().unwrap(), now, |t| {
            (t == "acme").then(|| secret.clone())
        })
        .unwrap_or_else(|e| panic!("{path}: token does not verify: {e}"));
        assert_eq!(
            (claims.sub.as_str(), claims.tid.as_str()),
            ("alice", "acme")
        );
    }
    for path in [
        "http/HistoryPage.json",
        "http/HistoryPage.forward-poll.json",
        "http/LegacyMessagesResponse.json",
    ] {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("spec/examples").join(path)).unwrap(),
        )
        .unwrap();
        Cursor::decode(
            v["nextCursor"].as_str().unwrap(),
            b"example-cursor-key",
            "acme",
            "general",
        )
        .unwrap_or_else(|e| panic!("{path}: cursor does not verify: {e}"));
    }
}
