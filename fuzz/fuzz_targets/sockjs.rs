//! Fuzz target for SockJS framing (`sockjs::frame`): whatever a client sends as a websocket
//! message, an `xhr_send` body or a `jsonp_send` form body must never panic the decoding, and
//! what the server encodes must decode to what it encoded. Checked on every input:
//!
//! - `decode` and `decode_array` agree (the array form is `decode` of a body starting with `[`);
//! - the messages decoded, sent back in an `a[...]` frame, decode to the same messages;
//! - a form body's `d` field goes through `form_value` and `decode_array` as `jsonp_send` does;
//! - the input as text survives `json_string` (and the htmlfile form, which leaves no `<`), and
//!   a form encoding of it survives `form_value`; no character the protocol lists travels raw.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stompbox::sockjs::frame::{
    decode, decode_array, form_value, json_string, messages, percent_decode, push_json_string,
    valid_callback, PayloadError,
};

/// Characters the protocol says must travel escaped (its list, written out again here).
fn must_travel_escaped(c: char) -> bool {
    let n = c as u32;
    n < 0x20
        || (0x200c..=0x200f).contains(&n)
        || (0x2028..=0x202f).contains(&n)
        || (0x2060..=0x206f).contains(&n)
        || (0xfff0..=0xffff).contains(&n)
}

/// A form encoding of `s` that escapes every byte but letters and digits.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn check_encoded(encoded: &str, s: &str) {
    assert!(
        !encoded.chars().any(must_travel_escaped),
        "a listed character travels raw in {encoded:?}"
    );
    let back: String = serde_json::from_str(encoded).expect("a JSON string");
    assert_eq!(back, s);
}

fuzz_target!(|data: &[u8]| {
    // As a websocket message or an xhr_send body.
    let decoded = decode(data);
    let array = decode_array(data);
    match (&decoded, &array) {
        (Ok(all), Ok(from_array)) => assert_eq!(all, from_array),
        (Ok(_), Err(e)) => {
            assert_eq!(*e, PayloadError::Broken);
            assert_ne!(data.trim_ascii_start().first(), Some(&b'['));
        }
        (Err(e), Err(f)) => assert_eq!(e, f),
        (Err(_), Ok(_)) => panic!("decode_array took what decode refused"),
    }
    if let Ok(sent) = &decoded {
        let frame = messages(sent);
        let body = frame
            .strip_prefix('a')
            .expect("an array frame starts with a");
        assert_eq!(decode_array(body.as_bytes()).as_ref(), Ok(sent));
        assert!(!frame.chars().any(must_travel_escaped));
    }

    // As a jsonp_send form body.
    let form = String::from_utf8_lossy(data);
    if let Some(d) = form_value(&form, "d") {
        let _ = decode_array(d.as_bytes());
    }
    let _ = percent_decode(&form);
    let _ = valid_callback(&form);

    // Round trips of the input as text.
    if let Ok(s) = std::str::from_utf8(data) {
        check_encoded(&json_string(s), s);
        let mut html = String::new();
        push_json_string(&mut html, s, true);
        assert!(!html.contains('<'), "htmlfile output holds a raw <");
        check_encoded(&html, s);
        let encoded = form_encode(s);
        assert_eq!(percent_decode(&encoded), s);
        let body = format!("c=x&d={encoded}&e=%");
        assert_eq!(form_value(&body, "d").as_deref(), Some(s));
    }
});
