//! Fuzz target for the STOMP codec: arbitrary bytes must never panic the decoder, and every
//! frame it yields must survive re-encoding and decoding again.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stompbox::stomp::{decode, encode, Decoded, Frame, Limits, Version};

/// A re-encoded frame may be larger than the input (escaping, an added content-length), so
/// re-decoding must not trip limits the original input met.
const UNLIMITED: Limits = Limits {
    max_frame_bytes: usize::MAX,
    max_headers: usize::MAX,
    max_header_line: usize::MAX,
};

/// What decoding `encode(frame)` yields: where the version cannot escape CR, a value ending in
/// CR loses it to CRLF stripping; a non-empty body without content-length gains one.
fn after_round_trip(frame: &Frame, version: Version) -> Frame {
    let mut expected = frame.clone();
    if !(version == Version::V1_2 && frame.command.escapes_headers()) {
        for (_, value) in &mut expected.headers {
            if value.ends_with('\r') {
                value.pop();
            }
        }
    }
    if !frame.body.is_empty() && frame.get("content-length").is_none() {
        expected
            .headers
            .push(("content-length".into(), frame.body.len().to_string()));
    }
    expected
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    for version in Version::ALL {
        let mut buf = BytesMut::from(data);
        // Every Ok(Some(_)) consumes at least one byte, so this ends.
        loop {
            let before = buf.len();
            match decode(&mut buf, version, &limits) {
                Ok(Some(Decoded::Frame(frame))) => {
                    assert!(buf.len() < before);
                    let mut out = BytesMut::new();
                    encode(&frame, version, &mut out);
                    let again = decode(&mut out, version, &UNLIMITED);
                    assert_eq!(
                        again,
                        Ok(Some(Decoded::Frame(after_round_trip(&frame, version)))),
                        "{version}: {frame:?}"
                    );
                    assert!(out.is_empty(), "encode wrote exactly one frame");
                }
                Ok(Some(Decoded::HeartBeat)) => assert!(buf.len() < before),
                Ok(None) => {
                    assert_eq!(buf.len(), before, "incomplete input is left in place");
                    break;
                }
                Err(_) => break,
            }
        }
    }
});
