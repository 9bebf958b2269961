//! Server frame decoding never panics; whatever decodes re-encodes and decodes to the same value.
#![no_main]
use fluxy_protocol::ServerFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = ServerFrame::decode(text) {
        let encoded = frame.encode();
        let again = ServerFrame::decode(&encoded).expect("re-encoded frame must decode");
        assert_eq!(frame, again, "round trip changed the frame");
    }
});
