//! Fuzz target for the publish API body (`publish::PublishRequest`): any body must be parsed
//! and checked without a panic, and a body that passes must make a MESSAGE frame that keeps the
//! promise the checks make: in every STOMP version, it decodes under the same limits clients'
//! frames obey, to the headers and body the publisher gave (plus `content-type` when none was
//! given), with no header the broker reserves.
//!
//! A destination no client speaking a version could have subscribed to (one whose SUBSCRIBE
//! would not decode to it under the limits) is left out of that version's promise: such a
//! message reaches none of its subscribers.
//!
//! Input: two bytes of frame limit, one of header count, two of header line limit (all
//! big-endian, each added to the least the configuration accepts), then the body. A channel
//! code is taken to resolve to itself, so codes reach the same checks destinations do.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stompbox::broker::destination::{self, Target};
use stompbox::broker::message::RESERVED_HEADERS;
use stompbox::broker::{Message, Position};
use stompbox::publish::{Address, PublishRequest};
use stompbox::stomp::{decode, encode, Command, Decoded, Frame, Limits, Version};

/// The head a subscriber's delivery gets before the shared tail, in client acknowledgement
/// mode (the longest the broker writes, with an `ack` header in 1.2) for a subscription id of
/// one character and a session id of 16.
fn head(version: Version) -> Vec<(&'static str, &'static str)> {
    let id = "0123456789abcdef-18446744073709551615";
    let mut head = vec![("subscription", "0"), ("message-id", id)];
    if version == Version::V1_2 {
        head.push(("ack", id));
    }
    head
}

/// A header name or value as a subscriber speaking `version` reads it: a NUL, and a line
/// break where the version cannot escape it, become spaces; a CR ending a value the version
/// cannot escape is taken for part of the line end.
fn as_read(s: &str, version: Version) -> String {
    let mut s = s.replace('\0', " ");
    if version == Version::V1_0 {
        s = s.replace(['\r', '\n'], " ");
    }
    if version == Version::V1_1 && s.ends_with('\r') {
        s.pop();
    }
    s
}

/// Whether a client speaking `version` can subscribe to `dest` within `limits`.
fn subscribable(dest: &str, version: Version, limits: &Limits) -> bool {
    let subscribe = Frame::new(Command::Subscribe)
        .header("id", "0")
        .header("destination", dest);
    let mut wire = BytesMut::new();
    encode(&subscribe, version, &mut wire);
    decode(&mut wire, version, limits) == Ok(Some(Decoded::Frame(subscribe)))
}

fuzz_target!(|data: &[u8]| {
    let [f0, f1, headers, l0, l1, body @ ..] = data else {
        return;
    };
    // The least values `config` accepts (server.max_frame_bytes, max_headers, max_header_line).
    let limits = Limits {
        max_frame_bytes: 256 + usize::from(u16::from_be_bytes([*f0, *f1])),
        max_headers: 8 + usize::from(*headers),
        max_header_line: 64 + usize::from(u16::from_be_bytes([*l0, *l1])),
    };
    let Ok(request) = PublishRequest::parse(body) else {
        return;
    };
    let dest = match request.address() {
        Ok(Address::Destination(d) | Address::ChannelCode(d)) => d.to_owned(),
        Err(_) => return,
    };
    let given = request.headers.clone();
    let raw = request.content.get().to_owned();
    let Ok((target, content)) = request.check(&dest, &limits) else {
        return;
    };

    // What was checked is what travels.
    if raw.starts_with('"') {
        let text: String = serde_json::from_str(&raw).expect("content passed as a JSON string");
        assert_eq!(content.body, text.as_bytes());
    } else {
        assert_eq!(content.body, raw.as_bytes());
    }
    let content_types = content
        .headers
        .iter()
        .filter(|(n, _)| n == "content-type")
        .count();
    assert_eq!(content_types, 1);
    for (name, value) in &content.headers {
        assert!(!RESERVED_HEADERS.contains(&name.as_str()), "{name}");
        assert!(
            !name.is_empty() && !name.contains([':', '\r', '\n']),
            "{name:?}"
        );
        assert!(!value.contains(['\r', '\n']), "{value:?}");
        if name != "content-type" || given.contains_key(name) {
            assert_eq!(given.get(name), Some(value));
        }
    }

    // Delivered as the broker would: the destination the subscribers used, then the content.
    let subscribed = match &target {
        Target::Topic(d) | Target::Queue(d) => d.clone(),
        Target::User { dest, .. } => destination::user_facing(dest),
    };
    // A user message is stored first and carries its offset, the largest there can be.
    let stored = matches!(target, Target::User { .. }).then_some(Position {
        epoch: u64::MAX,
        offset: u64::MAX,
    });
    let message = Message::stored_at(subscribed.clone(), content.clone(), stored);
    for version in Version::ALL {
        if !subscribable(&subscribed, version, &limits) {
            continue;
        }
        let mut wire = BytesMut::from(&b"MESSAGE\n"[..]);
        let mut expected = Frame::new(Command::Message);
        for (name, value) in head(version) {
            wire.extend_from_slice(format!("{name}:{value}\n").as_bytes());
            expected = expected.header(name, value);
        }
        wire.extend_from_slice(message.tail(version));
        let decoded = decode(&mut wire, version, &limits);
        let Ok(Some(Decoded::Frame(frame))) = decoded else {
            panic!("{version}: a publish that passed makes a frame the limits refuse: {decoded:?}");
        };
        assert!(wire.is_empty());
        expected = expected.header("destination", as_read(&subscribed, version));
        if let Some(at) = stored {
            expected = expected.header("x-stream-offset", at.offset.to_string());
        }
        for (name, value) in &content.headers {
            expected = expected.header(as_read(name, version), as_read(value, version));
        }
        expected = expected
            .header("content-length", content.body.len().to_string())
            .body(content.body.clone());
        assert_eq!(frame, expected, "{version}");
    }
});
