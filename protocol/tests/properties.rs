//! Property tests over the `fluxy_protocol::arbitrary` strategies: round trips, schema
//! conformance of every generated frame, decoder robustness, timestamps and cursors.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fluxy_protocol::arbitrary::{
    client_frame, id, mutated_frame_text, server_frame, timeline_event, timestamp_ms,
    MAX_TIMESTAMP_MS,
};
use fluxy_protocol::common::{format_timestamp, parse_timestamp};
use fluxy_protocol::cursor::{Cursor, CursorError};
use fluxy_protocol::http::Direction;
use fluxy_protocol::{ClientFrame, ErrorCode, ServerFrame, TimelineEvent};
use jsonschema::Validator;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value};

/// Validators for the three unions, from the schemas generated in memory, compiled once.
static VALIDATORS: LazyLock<BTreeMap<&'static str, Validator>> = LazyLock::new(|| {
    let files = fluxy_protocol::schema::generate();
    ["ClientFrame", "ServerFrame", "TimelineEvent"]
        .into_iter()
        .map(|name| {
            let schema: Value =
                serde_json::from_str(&files[&format!("{name}.schema.json")]).unwrap();
            let v = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap();
            (name, v)
        })
        .collect()
});

/// Frame type → names of its optional properties, per union, from the generated bundle.
static OPTIONAL: LazyLock<BTreeMap<(String, String), Vec<String>>> = LazyLock::new(|| {
    let files = fluxy_protocol::schema::generate();
    let bundle: Value = serde_json::from_str(&files[fluxy_protocol::schema::BUNDLE_FILE]).unwrap();
    let defs = &bundle["$defs"];
    let mut out = BTreeMap::new();
    for union in ["ClientFrame", "ServerFrame"] {
        for v in defs[union]["oneOf"].as_array().unwrap() {
            let def = &defs[v["$ref"].as_str().unwrap().trim_start_matches("#/$defs/")];
            let tag = def["properties"]["type"]["const"]
                .as_str()
                .unwrap()
                .to_owned();
            let required: Vec<&Value> = def["required"].as_array().unwrap().iter().collect();
            let optional = def["properties"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| !required.contains(&&Value::String((*k).clone())))
                .cloned()
                .collect();
            out.insert((union.to_owned(), tag), optional);
        }
    }
    out
});

fn assert_valid(schema: &str, text: &str) -> Result<(), TestCaseError> {
    let value: Value = serde_json::from_str(text).unwrap();
    let errors: Vec<String> = VALIDATORS[schema]
        .iter_errors(&value)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    prop_assert!(
        errors.is_empty(),
        "{text}\ninvalid against {schema}: {errors:?}"
    );
    Ok(())
}

/// Every optional property that the encoding omits, sent as `null`, decodes to the same frame
/// `[FX-FRM-12]`; an unknown property is ignored `[FX-FRM-4]`.
fn with_nulls_and_unknown(union: &str, encoded: &str, unknown: (&str, Value)) -> String {
    let mut obj: Map<String, Value> = serde_json::from_str(encoded).unwrap();
    let tag = obj["type"].as_str().unwrap().to_owned();
    for k in &OPTIONAL[&(union.to_owned(), tag)] {
        obj.entry(k.clone()).or_insert(Value::Null);
    }
    obj.insert(unknown.0.to_owned(), unknown.1);
    Value::Object(obj).to_string()
}

fn unknown_key() -> impl Strategy<Value = (String, Value)> {
    ("zz[a-zA-Z]{0,8}", fluxy_protocol::arbitrary::json_value())
}

proptest! {
    #[test]
    fn client_frames_round_trip_validate_and_match_the_schema(
        f in client_frame(),
        (k, v) in unknown_key(),
    ) {
        prop_assert_eq!(f.validate(), Ok(()));
        let text = f.encode();
        let back = ClientFrame::decode(&text);
        prop_assert_eq!(back.as_ref(), Ok(&f), "{}", text);
        prop_assert_eq!(back.unwrap().encode(), text.clone(), "encoding is not stable");
        assert_valid("ClientFrame", &text)?;
        let lenient = with_nulls_and_unknown("ClientFrame", &text, (&k, v));
        prop_assert_eq!(ClientFrame::decode(&lenient), Ok(f), "{}", lenient);
    }

    #[test]
    fn server_frames_round_trip_and_match_the_schema(
        f in server_frame(),
        (k, v) in unknown_key(),
    ) {
        let text = f.encode();
        let back = ServerFrame::decode(&text);
        prop_assert_eq!(back.as_ref(), Ok(&f), "{}", text);
        prop_assert_eq!(back.unwrap().encode(), text.clone(), "encoding is not stable");
        assert_valid("ServerFrame", &text)?;
        let lenient = with_nulls_and_unknown("ServerFrame", &text, (&k, v));
        prop_assert_eq!(ServerFrame::decode(&lenient), Ok(f), "{}", lenient);
    }

    #[test]
    fn timeline_events_round_trip_and_are_identical_as_server_frames(e in timeline_event()) {
        let text = e.encode();
        prop_assert_eq!(TimelineEvent::decode(&text), Ok(e.clone()), "{}", text);
        assert_valid("TimelineEvent", &text)?;
        assert_valid("ServerFrame", &text)?;
        // FX-ORD-5: one JSON representation whichever way the event is delivered.
        let frame = ServerFrame::from(e.clone());
        prop_assert_eq!(frame.encode(), text);
        prop_assert_eq!(frame.type_name(), e.type_name());
        prop_assert_eq!(frame.into_timeline(), Some(e));
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_text(s in any::<String>()) {
        check_decoders(&s)?;
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_decoders(&String::from_utf8_lossy(&b))?;
    }

    #[test]
    fn decoders_never_panic_on_mutated_frames(s in mutated_frame_text()) {
        check_decoders(&s)?;
    }

    #[test]
    fn timestamps_round_trip(ms in 0..=MAX_TIMESTAMP_MS) {
        let s = format_timestamp(ms);
        prop_assert_eq!(s.len(), 24);
        prop_assert_eq!(parse_timestamp(&s), Some(ms), "{}", s);
    }

    #[test]
    fn timestamps_sort_like_their_instants(a in timestamp_ms(), b in timestamp_ms()) {
        prop_assert_eq!(format_timestamp(a).cmp(&format_timestamp(b)), a.cmp(&b));
    }

    #[test]
    fn timestamp_parser_rejects_garbage_without_panicking(s in "\\PC{0,30}") {
        if let Some(ms) = parse_timestamp(&s) {
            // Only the canonical form parses, so formatting gives the input back.
            prop_assert_eq!(format_timestamp(ms), s);
        }
    }

    #[test]
    fn cursors_round_trip(c in cursor(), key in proptest::collection::vec(any::<u8>(), 1..40)) {
        let s = c.encode(&key);
        prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(Cursor::decode(&s, &key, &c.tenant, &c.room), Ok(c.clone()));
        prop_assert_eq!(Cursor::decode(&s, &key, &c.tenant, "another-room"), Err(CursorError::Foreign));
    }

    #[test]
    fn any_text_mutation_of_a_cursor_is_rejected(
        c in cursor(),
        m in text_mutation(),
    ) {
        let key = b"cursor-key";
        let s = c.encode(key);
        let mutated = m.apply(&s);
        match Cursor::decode_any(&mutated, key) {
            Ok(d) => prop_assert!(mutated == s && d == c, "mutated cursor {mutated} accepted as {d:?}"),
            Err(_) => prop_assert_ne!(mutated, s),
        }
    }

    #[test]
    fn any_bit_flip_in_a_cursor_is_rejected(c in cursor(), byte in any::<Index>(), bit in 0u8..8) {
        let key = b"cursor-key";
        let mut raw = URL_SAFE_NO_PAD.decode(c.encode(key)).unwrap();
        let i = byte.index(raw.len());
        raw[i] ^= 1 << bit;
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        prop_assert!(Cursor::decode_any(&forged, key).is_err());
    }
}

fn check_decoders(s: &str) -> Result<(), TestCaseError> {
    let frame_codes = [
        ErrorCode::MalformedFrame,
        ErrorCode::InvalidFrame,
        ErrorCode::UnknownType,
        ErrorCode::PayloadTooLarge,
        ErrorCode::InvalidContent,
    ];
    match ClientFrame::decode(s) {
        Ok(f) => {
            prop_assert_eq!(f.validate(), Ok(()));
            prop_assert_eq!(ClientFrame::decode(&f.encode()), Ok(f));
        }
        Err(e) => {
            prop_assert!(frame_codes.contains(&e.code()), "{e:?}");
            let _ = e.to_string();
        }
    }
    match ServerFrame::decode(s) {
        Ok(f) => prop_assert_eq!(ServerFrame::decode(&f.encode()), Ok(f)),
        Err(e) => prop_assert!(frame_codes.contains(&e.code()), "{e:?}"),
    }
    match TimelineEvent::decode(s) {
        Ok(e) => prop_assert_eq!(TimelineEvent::decode(&e.encode()), Ok(e)),
        Err(e) => prop_assert!(frame_codes.contains(&e.code()), "{e:?}"),
    }
    Ok(())
}

fn cursor() -> impl Strategy<Value = Cursor> {
    (id(), id(), any::<u64>(), any::<bool>()).prop_map(|(tenant, room, seq, fwd)| Cursor {
        tenant,
        room,
        seq,
        direction: if fwd {
            Direction::Forward
        } else {
            Direction::Backward
        },
    })
}

/// A mutation of a cursor string (which is ASCII).
#[derive(Debug, Clone)]
enum TextMutation {
    Replace(Index, char),
    Insert(Index, char),
    Delete(Index),
    Truncate(Index),
    Append(String),
    Swap(Index, Index),
}

impl TextMutation {
    fn apply(&self, s: &str) -> String {
        let mut b: Vec<char> = s.chars().collect();
        match self {
            TextMutation::Replace(i, c) => {
                let i = i.index(b.len());
                b[i] = *c;
            }
            TextMutation::Insert(i, c) => b.insert(i.index(b.len() + 1), *c),
            TextMutation::Delete(i) => {
                b.remove(i.index(b.len()));
            }
            TextMutation::Truncate(i) => b.truncate(i.index(b.len())),
            TextMutation::Append(t) => b.extend(t.chars()),
            TextMutation::Swap(i, j) => {
                let (i, j) = (i.index(b.len()), j.index(b.len()));
                b.swap(i, j);
            }
        }
        b.into_iter().collect()
    }
}

fn text_mutation() -> impl Strategy<Value = TextMutation> {
    let c = prop_oneof![
        proptest::char::range('A', 'Z'),
        proptest::char::range('a', 'z'),
        proptest::char::range('0', '9'),
        Just('-'),
        Just('_'),
        Just('='),
        Just('+'),
        Just('/'),
        any::<char>(),
    ];
    prop_oneof![
        (any::<Index>(), c.clone()).prop_map(|(i, c)| TextMutation::Replace(i, c)),
        (any::<Index>(), c).prop_map(|(i, c)| TextMutation::Insert(i, c)),
        any::<Index>().prop_map(TextMutation::Delete),
        any::<Index>().prop_map(TextMutation::Truncate),
        "[A-Za-z0-9_-]{1,8}".prop_map(TextMutation::Append),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| TextMutation::Swap(i, j)),
    ]
}
