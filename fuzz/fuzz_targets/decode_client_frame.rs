//! Client frame decoding never panics; whatever decodes re-encodes and decodes to the same value.
#![no_main]
use fluxy_protocol::ClientFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = ClientFrame::decode(text) {
        let encoded = frame.encode();
        let again = ClientFrame::decode(&encoded).expect("re-encoded frame must decode");
        assert_eq!(frame, again, "round trip changed the frame");
        assert_eq!(encoded, again.encode(), "encoding is not canonical");
    }
});
