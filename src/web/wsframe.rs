//! WebSocket framing (RFC 6455) for every WebSocket endpoint (`/ws` and SockJS's websocket
//! transports, through [`super::websocket`]), as pure functions: the handshake's accept key,
//! parsing client frames (which must be masked) and writing server frame headers.
//!
//! stompbox frames WebSocket itself rather than through a general WebSocket library so that a
//! batch of STOMP frames leaves as one WebSocket message straight from the shared message bytes
//! (a frame header plus a vectored write, no copy per subscriber) and an idle connection holds
//! no buffers at all. A general library keeps a read and a write buffer per connection for its
//! whole life; that is what the SockJS websocket transport cost while it went through axum's
//! WebSocket (tungstenite), measured as resident memory of a release node per idle connection,
//! 2,000 connections each CONNECTed and SUBSCRIBEd, on a 2-core machine:
//!
//! | endpoint | through tungstenite | on this framing |
//! | --- | --- | --- |
//! | `/ws` | (already in-house) 7.07 KiB | 7.10 KiB |
//! | `/sockjs/<server>/<session>/websocket` | 147.7 KiB | 9.30 KiB |
//!
//! The rest of the SockJS figure is the SockJS session itself and the one more task that
//! carries it over the socket, not framing. Measured with
//! `cargo build --release --bin stompbox --example idle_memory`, then
//! `target/release/stompbox serve &` and
//! `target/release/examples/idle_memory ws|sockjs 127.0.0.1:8080 2000 $!` (see BENCHMARKS.md).

use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the client's key.
const HANDSHAKE_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(HANDSHAKE_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether a `Sec-WebSocket-Key` is what RFC 6455 requires: 16 bytes, base64-encoded.
pub fn valid_key(key: &[u8]) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16)
}

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// A further fragment of the current message.
    Continuation,
    /// A text message (UTF-8).
    Text,
    /// A binary message.
    Binary,
    /// Close, with an optional code and reason.
    Close,
    /// Ping: answered with a pong carrying the same payload.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Control frames may not be fragmented and carry at most 125 bytes.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A protocol violation, with the close code RFC 6455 assigns to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Violation {
    /// The close code to send.
    pub code: u16,
    /// What was wrong.
    pub reason: &'static str,
}

const PROTOCOL_ERROR: u16 = 1002;
/// Close code: a message too big to process.
pub const TOO_BIG: u16 = 1009;

fn violation(reason: &'static str) -> Violation {
    Violation {
        code: PROTOCOL_ERROR,
        reason,
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The last fragment of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// The client's masking key.
    pub mask: [u8; 4],
    /// Bytes of header before the payload.
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
}

/// Parses the header at the start of `buf`: `Ok(None)` until it is complete. Frames over
/// `max_payload` are refused before their payload is read.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, Violation> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(violation(
            "reserved bits set without a negotiated extension",
        ));
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or_else(|| violation("unknown opcode"))?;
    if b1 & 0x80 == 0 {
        return Err(violation("client frames must be masked"));
    }
    let fin = b0 & 0x80 != 0;
    let (len, at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(violation(
            "control frames must be whole and at most 125 bytes",
        ));
    }
    if len > max_payload as u64 {
        return Err(Violation {
            code: TOO_BIG,
            reason: "message too big",
        });
    }
    if buf.len() < at + 4 {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[at..at + 4]);
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len: at + 4,
        payload_len: len as usize,
    }))
}

/// Removes the client's mask from a payload that starts at offset `start` of its frame's
/// payload (payloads may be unmasked in pieces).
pub fn unmask(payload: &mut [u8], mask: [u8; 4], start: usize) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[(start + i) & 3];
    }
}

/// Writes the header of an unmasked, final server frame of `len` payload bytes into `out`;
/// returns how many bytes it took (2, 4 or 10).
pub fn server_header(opcode: Opcode, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode.bits();
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A whole server control or small frame, for pongs and closes.
pub fn server_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 10];
    let n = server_header(opcode, payload.len(), &mut header);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&header[..n]);
    frame.extend_from_slice(payload);
    frame
}

/// The payload of a close frame.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    // Control payloads are limited to 125 bytes; cut the reason at a character boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"short"));
    }

    #[test]
    fn parses_masked_frames_of_every_length_form() {
        for len in [0, 5, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            let frame = client_frame(true, 0x1, &payload, [1, 2, 3, 4]);
            let header = parse_header(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(header.payload_len, len);
            assert_eq!(header.opcode, Opcode::Text);
            let mut body = frame[header.header_len..].to_vec();
            // Unmasking in two pieces gives the same result as in one.
            let (a, b) = body.split_at_mut(len / 3);
            unmask(a, header.mask, 0);
            unmask(b, header.mask, len / 3);
            assert_eq!(body, payload);
            // Incomplete headers ask for more.
            assert_eq!(
                parse_header(&frame[..header.header_len - 1], 1 << 20),
                Ok(None)
            );
        }
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let unmasked = [0x81, 0x01, b'a'];
        assert_eq!(parse_header(&unmasked, 100).unwrap_err().code, 1002);
        let reserved = client_frame(true, 0x41, b"a", [0; 4]);
        assert!(parse_header(&reserved, 100).is_err());
        let fragmented_ping = client_frame(false, 0x9, b"a", [0; 4]);
        assert!(parse_header(&fragmented_ping, 100).is_err());
        let big = client_frame(true, 0x2, &[0; 200], [0; 4]);
        assert_eq!(parse_header(&big, 100).unwrap_err().code, TOO_BIG);
        let unknown = client_frame(true, 0x3, b"a", [0; 4]);
        assert!(parse_header(&unknown, 100).is_err());
    }

    #[test]
    fn server_headers() {
        let mut h = [0u8; 10];
        assert_eq!(server_header(Opcode::Text, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 5]);
        assert_eq!(server_header(Opcode::Binary, 300, &mut h), 4);
        assert_eq!(&h[..4], &[0x82, 126, 1, 44]);
        assert_eq!(server_header(Opcode::Text, 70_000, &mut h), 10);
        assert_eq!(h[1], 127);
        assert_eq!(close_payload(1000, "bye"), vec![3, 232, b'b', b'y', b'e']);
        assert_eq!(close_payload(1000, &"é".repeat(100)).len(), 2 + 122);
    }
}
