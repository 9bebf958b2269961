//! Cursor decoding never panics; only cursors signed with our key for our room are accepted.
#![no_main]
use fluxy_protocol::cursor::{Cursor, CursorError};
use fluxy_protocol::http::Direction;
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzz-cursor-key";

fuzz_target!(|input: (String, u64, bool, u8)| {
    let (text, seq, forward, flip) = input;
    // Arbitrary text: must never panic; if accepted it must re-encode to the same string.
    if let Ok(c) = Cursor::decode_any(&text, KEY) {
        assert_eq!(c.encode(KEY), text, "accepted a non-canonical cursor");
    }
    // A genuine cursor with one byte flipped must be rejected.
    let c = Cursor {
        tenant: "t1".into(),
        room: "r1".into(),
        seq,
        direction: if forward {
            Direction::Forward
        } else {
            Direction::Backward
        },
    };
    let s = c.encode(KEY);
    assert_eq!(Cursor::decode(&s, KEY, "t1", "r1"), Ok(c.clone()));
    assert_eq!(
        Cursor::decode(&s, KEY, "t2", "r1"),
        Err(CursorError::Foreign)
    );
    assert!(Cursor::decode(&s, b"other-key", "t1", "r1").is_err());
    // Every proper prefix (a truncated cursor) is rejected.
    let cut = flip as usize % s.len();
    assert!(
        Cursor::decode(&s[..cut], KEY, "t1", "r1").is_err(),
        "truncated cursor accepted"
    );
    // A cursor of another tenant's room, even with the same room id, is foreign.
    let other = Cursor {
        tenant: "t2".into(),
        ..c.clone()
    }
    .encode(KEY);
    assert_eq!(
        Cursor::decode(&other, KEY, "t1", "r1"),
        Err(CursorError::Foreign)
    );
    let mut bytes = s.into_bytes();
    let i = flip as usize % bytes.len();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    if let Ok(t) = String::from_utf8(bytes) {
        if let Ok(d) = Cursor::decode(&t, KEY, "t1", "r1") {
            // base64 has no slack bits at most positions; any accepted variant must be the same cursor.
            assert_eq!(d, c);
        }
    }
});
