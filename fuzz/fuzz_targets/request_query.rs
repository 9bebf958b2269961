//! The shells' shared request parsing (`fluxy_protocol::request`) never panics on hostile
//! query strings, headers or timestamps, and what it accepts stays within the spec's bounds.
#![no_main]
use fluxy_protocol::common::{format_timestamp, parse_timestamp, MAX_PAGE_LIMIT};
use fluxy_protocol::http::Direction;
use fluxy_protocol::request::{self, HandshakeQuery, HistoryQuery, PollQuery, Query};
use libfuzzer_sys::fuzz_target;

/// Parameter names the parsers read, so that arbitrary values reach them often.
const NAMES: &[&str] = &[
    "limit", "direction", "afterSeq", "cursor", "timeoutMs", "roomId", "lastEventId", "replay",
    "replayLimit", "historyLimit", "lastSeq", "batch", "token", "before", "v",
];

fuzz_target!(|input: (Vec<(u8, String)>, Option<String>, Option<String>, String)| {
    let (pairs, header, auth, before) = input;
    let mut q = Query::new();
    for (k, v) in pairs {
        let name = NAMES.get(usize::from(k) % (NAMES.len() + 1)).copied();
        q.insert(name.map_or_else(|| v.clone(), str::to_owned), v);
    }
    // [FX-HIS-5]: an accepted limit is 1..=500, and 50 when absent.
    match request::parse_limit(&q) {
        Ok(n) => {
            assert!((1..=MAX_PAGE_LIMIT).contains(&n), "limit {n}");
            if !q.contains_key("limit") {
                assert_eq!(n, 50);
            }
        }
        Err(e) => assert_eq!(e.field.as_deref(), Some("limit")),
    }
    if let Ok(h) = HistoryQuery::parse(&q) {
        assert!((1..=MAX_PAGE_LIMIT).contains(&h.limit));
        assert_eq!(h.start.is_some(), h.direction == Direction::Forward);
        assert!(h.cursor.is_none_or(|c| !c.is_empty()));
    }
    if let Ok(p) = PollQuery::parse(&q) {
        assert!(p.timeout_ms <= 30_000 && (1..=MAX_PAGE_LIMIT).contains(&p.limit));
    }
    let hs = HandshakeQuery::parse(&q);
    assert!(hs.replay_limit <= MAX_PAGE_LIMIT);
    let _ = request::last_event_id(header.as_deref(), &q);
    let _ = request::legacy_room_id(&q);
    let _ = request::check_version(&q);
    let _ = request::accepts_event_stream(header.as_deref());
    let _ = request::request_token(auth.as_deref(), &q);
    let _ = request::check_user_id(&before);
    // [FX-HIS-11]: an accepted timestamp is a real instant that formats and parses back.
    if let Some(ms) = request::legacy_before_time(&before) {
        assert_eq!(parse_timestamp(&format_timestamp(ms)), Some(ms), "{before:?}");
    }
});
