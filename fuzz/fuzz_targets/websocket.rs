//! Fuzz target for WebSocket message reassembly (`web::wsmessage::Reassembler`): client bytes
//! cut into pieces the way a socket might deliver them must never panic it, and what it yields
//! must be what a plain reference parser, reading the whole input at once, yields: the same
//! messages (text ones valid UTF-8, none over the limit), the same pings in the same order, the
//! same close or violation code, whatever the cuts.
//!
//! Input: two bytes of message limit (big-endian), one byte of mode and cut seed (bit 0: byte
//! stream rather than whole messages), then the client's bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stompbox::web::wsmessage::{Parsed, Reassembler};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Message { text: bool, data: Vec<u8> },
    Ping(Vec<u8>),
    Closed,
    Violation(u16),
}

/// What the reference parser makes of the whole input.
#[derive(Debug, Default)]
struct Model {
    /// Events in message mode.
    events: Vec<Event>,
    /// Every payload byte accepted, in order, whole messages or not (what byte-stream mode
    /// hands over when no violation stops it).
    stream: Vec<u8>,
    /// Payload bytes of the frame whose text turned out invalid: byte-stream mode may have
    /// handed over any prefix of them before it saw the bad byte.
    slack: Vec<u8>,
}

/// RFC 6455 as the server reads it, written for clarity and not speed, sharing no code with
/// the reassembler. A check that needs more bytes than there are stops the parse silently,
/// exactly where a reader would wait for more.
fn model(wire: &[u8], max: usize) -> Model {
    let mut m = Model::default();
    let mut message: Option<(bool, Vec<u8>)> = None;
    let mut rest = wire;
    let violation = |m: &mut Model, code| m.events.push(Event::Violation(code));
    loop {
        if rest.len() < 2 {
            return m;
        }
        let (b0, b1) = (rest[0], rest[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 || !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) || b1 & 0x80 == 0 {
            violation(&mut m, 1002);
            return m;
        }
        let (len, at): (u64, usize) = match b1 & 0x7F {
            126 if rest.len() >= 4 => (u64::from(rest[2]) << 8 | u64::from(rest[3]), 4),
            127 if rest.len() >= 10 => (
                rest[2..10].iter().fold(0u64, |n, &b| n << 8 | u64::from(b)),
                10,
            ),
            126 | 127 => return m,
            n => (u64::from(n), 2),
        };
        let control = opcode >= 8;
        if control && (!fin || len > 125) {
            violation(&mut m, 1002);
            return m;
        }
        if len > max as u64 {
            violation(&mut m, 1009);
            return m;
        }
        let len = len as usize;
        if rest.len() < at + 4 {
            return m;
        }
        let mask = [rest[at], rest[at + 1], rest[at + 2], rest[at + 3]];
        let body = &rest[at + 4..];
        let available = len.min(body.len());
        let payload: Vec<u8> = body[..available]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        if control {
            if available < len {
                return m;
            }
            match opcode {
                8 => {
                    m.events.push(Event::Closed);
                    return m;
                }
                9 => m.events.push(Event::Ping(payload)),
                _ => {}
            }
            rest = &body[len..];
            continue;
        }
        match (opcode, message.is_some()) {
            (0, true) => {}
            (0, false) | (_, true) => {
                violation(&mut m, 1002);
                return m;
            }
            (opcode, false) => message = Some((opcode == 1, Vec::new())),
        }
        let Some((text, data)) = message.as_mut() else {
            unreachable!("a message was just checked or started")
        };
        let text = *text;
        if data.len() + len > max {
            violation(&mut m, 1009);
            return m;
        }
        data.extend_from_slice(&payload);
        if text {
            if let Err(e) = std::str::from_utf8(data) {
                if e.error_len().is_some() {
                    m.slack = payload;
                    violation(&mut m, 1007);
                    return m;
                }
            }
        }
        m.stream.extend_from_slice(&payload);
        if available < len {
            return m;
        }
        rest = &body[len..];
        if fin {
            let (text, data) = message.take().unwrap_or_default();
            if text && std::str::from_utf8(&data).is_err() {
                violation(&mut m, 1007);
                return m;
            }
            m.events.push(Event::Message { text, data });
        }
    }
}

/// Cut sizes from a seed: mostly small, now and then large, never zero.
fn cuts(seed: u8) -> impl Iterator<Item = usize> {
    let mut x = u32::from(seed) | 0x100;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if x % 8 == 0 {
            1 + (x >> 3) as usize % 512
        } else {
            1 + (x >> 3) as usize % 16
        }
    })
}

/// Feeds `wire` to a reassembler in pieces; the events and, in byte-stream mode, the bytes.
fn run(wire: &[u8], max: usize, whole: bool, seed: u8) -> (Vec<Event>, Vec<u8>) {
    let mut r = Reassembler::new(max);
    let mut events = Vec::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut sizes = cuts(seed);
    while fed < wire.len() {
        let piece = sizes.next().unwrap_or(1).min(wire.len() - fed);
        r.input().extend_from_slice(&wire[fed..fed + piece]);
        fed += piece;
        loop {
            let before = buf.len();
            match r.parse(&mut buf, whole) {
                Ok(Parsed::More(n)) => {
                    assert_eq!(buf.len() - before, n, "More counts what it added");
                    break;
                }
                Ok(Parsed::Ping { payload, added }) => {
                    assert_eq!(buf.len() - before, added, "Ping counts what came before");
                    events.push(Event::Ping(payload.to_vec()));
                }
                Ok(Parsed::End(text)) => {
                    assert!(whole, "only message mode stops at a message's end");
                    let data = std::mem::take(&mut buf).to_vec();
                    assert!(
                        data.len() <= max,
                        "a message over the limit was let through"
                    );
                    if text {
                        assert!(std::str::from_utf8(&data).is_ok(), "text is UTF-8");
                    }
                    events.push(Event::Message { text, data });
                }
                Ok(Parsed::Closed) => {
                    events.push(Event::Closed);
                    return (events, buf.to_vec());
                }
                Err(v) => {
                    events.push(Event::Violation(v.code));
                    return (events, buf.to_vec());
                }
            }
        }
        r.release();
    }
    (events, buf.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let [hi, lo, mode, wire @ ..] = data else {
        return;
    };
    let max = usize::from(u16::from_be_bytes([*hi, *lo]));
    let whole = mode & 1 == 0;
    let expected = model(wire, max);
    let (events, stream) = run(wire, max, whole, *mode >> 1);
    if whole {
        assert_eq!(events, expected.events);
        return;
    }
    // Byte-stream mode yields no message events: the pings and the end must match.
    let keep = |e: &&Event| !matches!(e, Event::Message { .. });
    let expected_events: Vec<&Event> = expected.events.iter().filter(keep).collect();
    assert_eq!(events.iter().collect::<Vec<_>>(), expected_events);
    if expected.slack.is_empty() {
        assert_eq!(stream, expected.stream);
    } else {
        let most = [&expected.stream[..], &expected.slack[..]].concat();
        assert!(stream.len() >= expected.stream.len() && most.starts_with(&stream));
    }
});
