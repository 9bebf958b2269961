//! Error codes, close codes and decode-error classification, checked against the spec's tables
//! (parsed from the compiled-in `spec/fluxy-v1.md`, so the spec and the code cannot drift).

use std::collections::BTreeMap;

use fluxy_protocol::codes::{CloseAction, CloseCode, ErrorCode, ALL_CLOSE_CODES, ALL_ERROR_CODES};
use fluxy_protocol::common::MAX_FRAME_BYTES;
use fluxy_protocol::decode::{decode_body, DecodeError, FieldProblem};
use fluxy_protocol::http::TokenRequest;
use fluxy_protocol::server::ErrorFrame;
use fluxy_protocol::spec::SPEC_MARKDOWN;
use fluxy_protocol::{ClientFrame, ServerFrame};
use serde_json::Value;

/// The rows of the Markdown table that follows the line `heading`, as trimmed cells with
/// backticks removed.
fn table(heading: &str) -> Vec<Vec<String>> {
    let mut lines = SPEC_MARKDOWN
        .lines()
        .skip_while(|l| l.trim() != heading)
        .skip(1)
        .skip_while(|l| l.trim().is_empty());
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no table after `{heading}` in the spec"));
    assert!(
        header.starts_with('|'),
        "`{heading}` is not followed by a table"
    );
    lines
        .skip(1) // |---|---|
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn error_codes_serialize_as_their_wire_strings() {
    for &code in ALL_ERROR_CODES {
        let v = serde_json::to_value(code).unwrap();
        assert_eq!(v, Value::String(code.as_str().into()), "{code:?}");
        assert_eq!(serde_json::from_value::<ErrorCode>(v).unwrap(), code);
        assert_eq!(code.to_string(), code.as_str());
        assert!(!code.meaning().is_empty());
    }
    assert!(serde_json::from_str::<ErrorCode>("\"rate_limit_exceeded\"").is_err());
}

#[test]
fn all_error_codes_lists_every_variant_once() {
    // The schema is derived from the enum itself, so it names every variant.
    let files = fluxy_protocol::schema::generate();
    let schema: Value = serde_json::from_str(&files["ErrorCode.schema.json"]).unwrap();
    let from_schema: Vec<&str> = schema["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["const"].as_str().unwrap())
        .collect();
    let listed: Vec<&str> = ALL_ERROR_CODES.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, from_schema);
}

#[test]
fn error_code_table_matches_the_spec() {
    let rows = table("Error codes:");
    let spec: BTreeMap<String, (u16, bool)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r.len(), 4, "error table row {r:?}");
            let retryable = match r[2].as_str() {
                "yes" => true,
                "no" => false,
                other => panic!("retryable column `{other}` in {r:?}"),
            };
            (r[0].clone(), (r[1].parse().unwrap(), retryable))
        })
        .collect();
    assert_eq!(
        spec.len(),
        rows.len(),
        "duplicate code in the spec's error table"
    );
    for &code in ALL_ERROR_CODES {
        let Some(&(status, retryable)) = spec.get(code.as_str()) else {
            panic!("{} is missing from the spec's error table", code.as_str());
        };
        assert_eq!(
            code.http_status(),
            status,
            "HTTP status of {}",
            code.as_str()
        );
        assert_eq!(
            code.retryable(),
            retryable,
            "retryable of {}",
            code.as_str()
        );
    }
    for name in spec.keys() {
        assert!(
            ALL_ERROR_CODES.iter().any(|c| c.as_str() == name),
            "the spec's error table lists `{name}`, which ErrorCode lacks"
        );
    }
    // FX-ERR-3: retryable exactly for these three.
    let retryable: Vec<&str> = ALL_ERROR_CODES
        .iter()
        .filter(|c| c.retryable())
        .map(|c| c.as_str())
        .collect();
    assert_eq!(retryable, ["rate_limited", "internal_error", "unavailable"]);
}

#[test]
fn close_code_table_matches_the_spec() {
    let rows = table("Close codes:");
    assert_eq!(
        rows.len(),
        ALL_CLOSE_CODES.len(),
        "close codes in spec vs CloseCode"
    );
    for r in &rows {
        assert_eq!(r.len(), 4, "close table row {r:?}");
        let n: u16 = r[0].parse().unwrap();
        let code = CloseCode::from_code(n)
            .unwrap_or_else(|| panic!("the spec's close code {n} is not a CloseCode"));
        assert_eq!(code.code(), n);
        assert_eq!(code.reason(), r[1], "reason of {n}");
        let action = serde_json::to_value(code.action()).unwrap();
        assert_eq!(action, Value::String(r[2].clone()), "action of {n}");
    }
    for &c in ALL_CLOSE_CODES {
        assert_eq!(CloseCode::from_code(c.code()), Some(c));
        assert!(
            rows.iter().any(|r| r[0] == c.code().to_string()),
            "{c:?} not in the spec"
        );
        // Codes a server may choose must be in the registered (1000-1015) or private range.
        assert!((1000..=1015).contains(&c.code()) || (4000..=4999).contains(&c.code()));
    }
    assert_eq!(CloseCode::from_code(1006), None);
    for (a, s) in [
        (CloseAction::Reconnect, "reconnect"),
        (CloseAction::Reauthenticate, "reauthenticate"),
        (CloseAction::Stop, "stop"),
    ] {
        assert_eq!(
            serde_json::from_value::<CloseAction>(Value::String(s.into())).unwrap(),
            a
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Decode error classification (FX-FRM-3)

fn client(text: &str) -> DecodeError {
    ClientFrame::decode(text).expect_err(text)
}

#[test]
fn syntax_and_shape_errors_are_malformed_frame() {
    for text in [
        "",
        "{",
        "{\"type\":\"ping\",}",
        "hello",
        "{\"type\":'ping'}",
    ] {
        let e = client(text);
        assert!(matches!(e, DecodeError::Syntax(_)), "{text}: {e:?}");
        assert_eq!(e.code(), ErrorCode::MalformedFrame);
        assert_eq!(e.field(), None);
    }
    for text in [
        "[]",
        "null",
        "1",
        "\"ping\"",
        "true",
        "[{\"type\":\"ping\"}]",
    ] {
        assert_eq!(client(text), DecodeError::NotObject, "{text}");
        assert_eq!(client(text).code(), ErrorCode::MalformedFrame);
    }
}

#[test]
fn a_missing_field_is_named() {
    assert_eq!(client("{}"), DecodeError::MissingField("type".into()));
    assert_eq!(
        client(r#"{"type":"message"}"#),
        DecodeError::MissingField("content".into())
    );
    assert_eq!(
        client(r#"{"type":"tool_call","runId":"r","name":"n"}"#),
        DecodeError::MissingField("toolCallId".into())
    );
    assert_eq!(
        client(r#"{"type":"stream","op":"delta","content":"x"}"#),
        DecodeError::MissingField("messageId".into())
    );
    let e = client(r#"{"type":"resume"}"#);
    assert_eq!(e.code(), ErrorCode::InvalidFrame);
    assert_eq!(e.field(), Some("lastSeq"));
    let f = ErrorFrame::from_decode(&e);
    assert_eq!(
        (f.code, f.field.as_deref(), f.retryable),
        (ErrorCode::InvalidFrame, Some("lastSeq"), false)
    );
}

#[test]
fn a_wrong_json_type_is_wrong_type_naming_the_field() {
    for (text, field) in [
        (r#"{"type":7}"#, "type"),
        (r#"{"type":null}"#, "type"),
        (
            r#"{"type":"edit","messageId":"42","content":"x"}"#,
            "messageId",
        ),
        (
            r#"{"type":"edit","content":"x","messageId":-4}"#,
            "messageId",
        ),
        (r#"{"type":"delete","messageId":1.5}"#, "messageId"),
        (r#"{"type":"message","content":42}"#, "content"),
        (r#"{"type":"message","content":null}"#, "content"),
        (r#"{"type":"typing","isTyping":"yes"}"#, "isTyping"),
        (
            r#"{"type":"reaction","messageId":1,"emoji":"x","op":"toggle"}"#,
            "op",
        ),
        (
            r#"{"type":"message","content":"hi","attachments":{}}"#,
            "attachments",
        ),
        (
            r#"{"type":"message","content":"hi","attachments":[{"url":5}]}"#,
            "attachments",
        ),
        (
            r#"{"type":"edit","messageId":1,"content":"x","expectedVersion":4294967296}"#,
            "expectedVersion",
        ),
        (
            r#"{"type":"message","content":"hi","zzz":1,"parentId":"7"}"#,
            "parentId",
        ),
    ] {
        let e = client(text);
        assert!(matches!(e, DecodeError::WrongType { .. }), "{text}: {e:?}");
        assert_eq!(e.field(), Some(field), "{text}: {e:?}");
        assert_eq!(e.code(), ErrorCode::InvalidFrame, "{text}");
    }
}

#[test]
fn an_unknown_type_is_unknown_type() {
    assert_eq!(
        client(r#"{"type":"shout"}"#),
        DecodeError::UnknownType("shout".into())
    );
    assert_eq!(
        client(r#"{"type":"welcome"}"#).code(),
        ErrorCode::UnknownType
    );
    assert_eq!(client(r#"{"type":""}"#).code(), ErrorCode::UnknownType);
    assert_eq!(
        ServerFrame::decode(r#"{"type":"ping"}"#),
        Err(DecodeError::UnknownType("ping".into()))
    );
}

#[test]
fn invalid_values_name_their_field_and_problem() {
    let cases: &[(&str, &str, ErrorCode)] = &[
        (
            r#"{"type":"message","content":"  "}"#,
            "content",
            ErrorCode::InvalidContent,
        ),
        (
            r#"{"type":"edit","messageId":1,"content":""}"#,
            "content",
            ErrorCode::InvalidContent,
        ),
        (
            r#"{"type":"message","content":"hi","clientMessageId":"short"}"#,
            "clientMessageId",
            ErrorCode::InvalidFrame,
        ),
        (
            r#"{"type":"reaction","messageId":1,"emoji":" x"}"#,
            "emoji",
            ErrorCode::InvalidFrame,
        ),
        (
            r#"{"type":"read","messageId":1,"ref":""}"#,
            "ref",
            ErrorCode::InvalidFrame,
        ),
        (
            r#"{"type":"tool_error","runId":"r","toolCallId":"c","error":""}"#,
            "error",
            ErrorCode::InvalidFrame,
        ),
        (
            r#"{"type":"message","content":"hi","attachments":[{"url":"ftp://x"}]}"#,
            "attachments",
            ErrorCode::InvalidFrame,
        ),
    ];
    for (text, field, code) in cases {
        let e = client(text);
        assert!(
            matches!(e, DecodeError::InvalidValue { .. }),
            "{text}: {e:?}"
        );
        assert_eq!(e.field(), Some(*field), "{text}");
        assert_eq!(e.code(), *code, "{text}");
    }
    let long = format!(r#"{{"type":"message","content":"{}"}}"#, "é".repeat(4001));
    assert_eq!(
        client(&long),
        DecodeError::InvalidValue {
            field: "content".into(),
            problem: FieldProblem::Content(4000)
        }
    );
    // 4000 characters after trimming are fine, however many bytes and surrounding spaces.
    let ok = format!(
        r#"{{"type":"message","content":"  {}  "}}"#,
        "é".repeat(4000)
    );
    assert!(ClientFrame::decode(&ok).is_ok());
}

#[test]
fn size_is_checked_before_parsing() {
    let big = format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "a".repeat(MAX_FRAME_BYTES)
    );
    let e = client(&big);
    assert_eq!(
        e,
        DecodeError::TooLarge {
            size: big.len(),
            limit: MAX_FRAME_BYTES
        }
    );
    assert_eq!(e.code(), ErrorCode::PayloadTooLarge);
    // Even garbage of that size is payload_too_large, not malformed_frame.
    assert_eq!(
        client(&"{".repeat(MAX_FRAME_BYTES + 1)).code(),
        ErrorCode::PayloadTooLarge
    );
    // Exactly at the limit is accepted. Server frames have no limit.
    let pad = MAX_FRAME_BYTES - r#"{"type":"ping","pad":""}"#.len();
    let at = format!(r#"{{"type":"ping","pad":"{}"}}"#, "a".repeat(pad));
    assert_eq!(at.len(), MAX_FRAME_BYTES);
    assert!(ClientFrame::decode(&at).is_ok());
    let server = format!(
        r#"{{"type":"pong","ts":1,"pad":"{}"}}"#,
        "a".repeat(MAX_FRAME_BYTES)
    );
    assert!(ServerFrame::decode(&server).is_ok());
}

#[test]
fn null_and_unknown_fields_are_tolerated() {
    // FX-FRM-12: null is an absent optional field; FX-FRM-4: unknown fields are ignored.
    let f = ClientFrame::decode(
        r#"{"type":"message","content":"hi","clientMessageId":null,"parentId":null,"attachments":null,"ref":null,"userId":"mallory","extra":{"a":[1]}}"#,
    )
    .unwrap();
    assert_eq!(f.encode(), r#"{"type":"message","content":"hi"}"#);
    let r =
        ClientFrame::decode(r#"{"type":"reaction","messageId":1,"emoji":"x","op":null}"#).unwrap();
    assert_eq!(
        r.encode(),
        r#"{"type":"reaction","messageId":1,"emoji":"x","op":"add"}"#
    );
    let s = ServerFrame::decode(r#"{"type":"ack","duplicate":null,"seq":null}"#).unwrap();
    assert_eq!(s.encode(), r#"{"type":"ack"}"#);
}

#[test]
fn bodies_classify_like_frames() {
    let limit = 1024;
    assert_eq!(
        decode_body::<TokenRequest>("[]", limit),
        Err(DecodeError::NotObject)
    );
    assert!(matches!(
        decode_body::<TokenRequest>("{", limit),
        Err(DecodeError::Syntax(_))
    ));
    assert_eq!(
        decode_body::<TokenRequest>("{}", limit),
        Err(DecodeError::MissingField("userId".into()))
    );
    let e = decode_body::<TokenRequest>(r#"{"userId":"a","ttlSeconds":"60"}"#, limit).unwrap_err();
    assert_eq!(e.field(), Some("ttlSeconds"));
    assert_eq!(e.code(), ErrorCode::InvalidFrame);
    assert_eq!(
        decode_body::<TokenRequest>(&format!(r#"{{"userId":"{}"}}"#, "a".repeat(limit)), limit)
            .unwrap_err()
            .code(),
        ErrorCode::PayloadTooLarge
    );
    let ok: TokenRequest = decode_body(r#"{"userId":"a","roles":null}"#, limit).unwrap();
    assert!(ok.roles.is_empty());
}
