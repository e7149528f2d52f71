//! RFC 6455 for both ends, without I/O: the opening handshake (client request and check,
//! server parse and answer), frame encoding (client frames masked, server frames not) and a
//! streaming decoder that keeps only a partial header between reads, so a connection needs no
//! read buffer of its own.

use base64::Engine as _;

/// The GUID RFC 6455 §1.3 appends to the client's key before hashing it.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The largest HTTP head either side accepts during the handshake; real heads are a few
/// hundred bytes, and a peer sending more is not speaking WebSocket to us.
pub const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("websocket protocol: {0}")]
    Protocol(&'static str),
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// A fresh `Sec-WebSocket-Key` from 16 random bytes.
pub fn client_key(rng: &mut Rng) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&rng.next().to_le_bytes());
    raw[8..].copy_from_slice(&rng.next().to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// xorshift64*: masking keys and handshake nonces need to vary, not to be secret (RFC 6455
/// §10.3 guards against proxies caching, which a load test on loopback does not meet).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn mask(&mut self) -> [u8; 4] {
        (self.next() as u32).to_le_bytes()
    }
}

/// The client's upgrade request. `protocols` empty sends no `Sec-WebSocket-Protocol`.
pub fn client_request(host: &str, path: &str, key: &str, protocols: &[String]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if !protocols.is_empty() {
        req.push_str("Sec-WebSocket-Protocol: ");
        req.push_str(&protocols.join(", "));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// The length of the HTTP head at the start of `buf` (through the blank line), once complete.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|at| at + 4)
}

/// Iterates over `name: value` lines of an HTTP head (after its first line).
fn header_lines(head: &str) -> impl Iterator<Item = (&str, &str)> {
    head.split("\r\n").skip(1).filter_map(|line| {
        let (name, value) = line.split_once(':')?;
        Some((name.trim(), value.trim()))
    })
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    header_lines(head).find_map(|(n, v)| n.eq_ignore_ascii_case(name).then_some(v))
}

/// Checks the server's answer to [`client_request`]; returns the chosen subprotocol.
pub fn check_response(head: &[u8], key: &str) -> Result<Option<String>, WsError> {
    let head = std::str::from_utf8(head)
        .map_err(|_| WsError::Handshake("response head is not UTF-8".into()))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(WsError::Handshake(format!("expected 101, got {status:?}")));
    }
    match header(head, "sec-websocket-accept") {
        Some(accept) if accept == accept_key(key) => {}
        Some(other) => {
            return Err(WsError::Handshake(format!(
                "wrong Sec-WebSocket-Accept {other:?}"
            )))
        }
        None => return Err(WsError::Handshake("no Sec-WebSocket-Accept".into())),
    }
    Ok(header(head, "sec-websocket-protocol").map(str::to_string))
}

/// What the server needs from an upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub key: String,
    /// The first subprotocol the client offered, which the null broker always chooses.
    pub protocol: Option<String>,
}

/// Parses a client's upgrade request (any path).
pub fn parse_upgrade(head: &[u8]) -> Result<Upgrade, WsError> {
    let head = std::str::from_utf8(head)
        .map_err(|_| WsError::Handshake("request head is not UTF-8".into()))?;
    if !head.starts_with("GET ") {
        return Err(WsError::Handshake("not a GET".into()));
    }
    let upgrade = header(head, "upgrade").unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(WsError::Handshake("no Upgrade: websocket".into()));
    }
    let key = header(head, "sec-websocket-key")
        .ok_or_else(|| WsError::Handshake("no Sec-WebSocket-Key".into()))?
        .to_string();
    let protocol = header(head, "sec-websocket-protocol")
        .and_then(|offer| offer.split(',').map(str::trim).find(|p| !p.is_empty()))
        .map(str::to_string);
    Ok(Upgrade { key, protocol })
}

/// The server's 101 answer to `upgrade`.
pub fn server_response(upgrade: &Upgrade) -> String {
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(&upgrade.key)
    );
    if let Some(protocol) = &upgrade.protocol {
        resp.push_str("Sec-WebSocket-Protocol: ");
        resp.push_str(protocol);
        resp.push_str("\r\n");
    }
    resp.push_str("\r\n");
    resp
}

/// Appends the header of a final frame carrying `len` payload bytes.
pub fn write_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
}

/// Appends an unmasked (server) frame.
pub fn encode_server(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    write_header(out, opcode, payload.len(), None);
    out.extend_from_slice(payload);
}

/// Appends a masked (client) frame.
pub fn encode_client(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    write_header(out, opcode, payload.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// XORs `data` with `mask`, `data` starting `offset` bytes into the payload. Works a word at
/// a time: the publisher masks every byte it sends.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let m: [u8; 4] = std::array::from_fn(|k| mask[(offset + k) % 4]);
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (k, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[k % 4];
    }
}

/// What the decoder hands out. Data payloads come as they arrive (a frame may be handed out in
/// several pieces); control payloads (at most 125 bytes) come whole.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Data(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    Close,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    Payload {
        remaining: u64,
        control: Option<u8>,
        mask: Option<[u8; 4]>,
        pos: usize,
    },
}

/// Streaming frame decoder. Message boundaries (FIN, continuation) are not reported: STOMP
/// over WebSocket treats the data as one byte stream in which frames may span messages.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    head: [u8; 14],
    head_len: usize,
    control: Vec<u8>,
    /// A server must refuse unmasked client frames and a client masked server frames.
    expect_masked: bool,
}

impl Decoder {
    /// `expect_masked`: true on the server side (client frames are masked), false on a client.
    pub fn new(expect_masked: bool) -> Decoder {
        Decoder {
            state: State::Header,
            head: [0; 14],
            head_len: 0,
            control: Vec::new(),
            expect_masked,
        }
    }

    /// Consumes all of `input` (unmasking in place), calling `sink` for each event.
    pub fn feed(
        &mut self,
        mut input: &mut [u8],
        mut sink: impl FnMut(Event<'_>),
    ) -> Result<(), WsError> {
        while !input.is_empty() {
            match self.state {
                State::Header => {
                    let mut need = if self.head_len >= 2 {
                        header_size(self.head[1])
                    } else {
                        2
                    };
                    while self.head_len < need && !input.is_empty() {
                        let take = (need - self.head_len).min(input.len());
                        self.head[self.head_len..self.head_len + take]
                            .copy_from_slice(&input[..take]);
                        self.head_len += take;
                        input = &mut input[take..];
                        if self.head_len >= 2 {
                            need = header_size(self.head[1]);
                        }
                    }
                    if self.head_len < need {
                        return Ok(());
                    }
                    self.start_frame(&mut sink)?;
                }
                State::Payload {
                    remaining,
                    control,
                    mask,
                    pos,
                } => {
                    let n = remaining.min(input.len() as u64) as usize;
                    let (chunk, rest) = std::mem::take(&mut input).split_at_mut(n);
                    input = rest;
                    if let Some(mask) = mask {
                        apply_mask(chunk, mask, pos);
                    }
                    let remaining = remaining - n as u64;
                    match control {
                        None => sink(Event::Data(chunk)),
                        Some(_) => self.control.extend_from_slice(chunk),
                    }
                    self.state = if remaining == 0 {
                        if let Some(opcode) = control {
                            self.finish_control(opcode, &mut sink);
                        }
                        State::Header
                    } else {
                        State::Payload {
                            remaining,
                            control,
                            mask,
                            pos: pos + n,
                        }
                    };
                }
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, sink: &mut impl FnMut(Event<'_>)) -> Result<(), WsError> {
        let head = &self.head[..self.head_len];
        self.head_len = 0;
        let (b0, b1) = (head[0], head[1]);
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        if masked != self.expect_masked {
            return Err(WsError::Protocol(if masked {
                "masked frame from a server"
            } else {
                "unmasked frame from a client"
            }));
        }
        let (len, at) = match b1 & 0x7F {
            126 => (u16::from_be_bytes([head[2], head[3]]) as u64, 4),
            127 => {
                let len = u64::from_be_bytes(head[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(WsError::Protocol("64-bit length with the top bit set"));
                }
                (len, 10)
            }
            short => (short as u64, 2),
        };
        let mask = masked.then(|| [head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let control = match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => None,
            OP_CLOSE | OP_PING | OP_PONG => {
                if b0 & 0x80 == 0 || len > 125 {
                    return Err(WsError::Protocol("fragmented or oversized control frame"));
                }
                Some(opcode)
            }
            _ => return Err(WsError::Protocol("unknown opcode")),
        };
        if len == 0 {
            if let Some(opcode) = control {
                self.finish_control(opcode, sink);
            }
            self.state = State::Header;
        } else {
            self.state = State::Payload {
                remaining: len,
                control,
                mask,
                pos: 0,
            };
        }
        Ok(())
    }

    fn finish_control(&mut self, opcode: u8, sink: &mut impl FnMut(Event<'_>)) {
        match opcode {
            OP_PING => sink(Event::Ping(&self.control)),
            OP_PONG => sink(Event::Pong),
            _ => sink(Event::Close),
        }
        self.control.clear();
    }
}

/// The size of a frame header whose second byte is `b1`.
fn header_size(b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes and collects what comes out.
    fn decode(wire: &[u8], masked: bool, step: usize) -> (Vec<u8>, Vec<String>) {
        let mut dec = Decoder::new(masked);
        let mut data = Vec::new();
        let mut control = Vec::new();
        let mut wire = wire.to_vec();
        for piece in wire.chunks_mut(step) {
            dec.feed(piece, |ev| match ev {
                Event::Data(d) => data.extend_from_slice(d),
                Event::Ping(p) => control.push(format!("ping {}", String::from_utf8_lossy(p))),
                Event::Pong => control.push("pong".into()),
                Event::Close => control.push("close".into()),
            })
            .unwrap();
        }
        (data, control)
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshake_round_trip() {
        let mut rng = Rng::new(7);
        let key = client_key(&mut rng);
        let protocols = vec!["v12.stomp".to_string(), "v11.stomp".to_string()];
        let req = client_request("127.0.0.1:8080", "/ws", &key, &protocols);
        let upgrade = parse_upgrade(req.as_bytes()).unwrap();
        assert_eq!(upgrade.key, key);
        assert_eq!(upgrade.protocol.as_deref(), Some("v12.stomp"));
        let resp = server_response(&upgrade);
        assert_eq!(head_len(resp.as_bytes()), Some(resp.len()));
        assert_eq!(
            check_response(resp.as_bytes(), &key).unwrap().as_deref(),
            Some("v12.stomp")
        );
        assert!(check_response(resp.as_bytes(), "other").is_err());
        assert!(check_response(b"HTTP/1.1 403 Forbidden\r\n\r\n", &key).is_err());
    }

    #[test]
    fn lengths_7_16_and_64_bit_at_every_split() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut server = Vec::new();
            encode_server(&mut server, OP_TEXT, &payload);
            let expected_header = match len {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(server.len(), expected_header + len);
            let mut client = Vec::new();
            encode_client(&mut client, OP_BINARY, &payload, [1, 2, 3, 4]);
            for step in [1, 3, 7, 4096, usize::MAX] {
                assert_eq!(
                    decode(&server, false, step.min(server.len().max(1))).0,
                    payload
                );
                assert_eq!(
                    decode(&client, true, step.min(client.len().max(1))).0,
                    payload
                );
            }
        }
    }

    #[test]
    fn fragmented_message_and_interleaved_control() {
        // "Hel" + ping + "lo" (continuation, FIN), as RFC 6455 §5.4 allows.
        let wire = [
            &[0x01, 0x03][..],
            b"Hel",
            &[0x89, 0x02],
            b"hi",
            &[0x80, 0x02],
            b"lo",
            &[0x8A, 0x00, 0x88, 0x02, 0x03, 0xE8],
        ]
        .concat();
        for step in [1, 2, 5, wire.len()] {
            let (data, control) = decode(&wire, false, step);
            assert_eq!(data, b"Hello");
            assert_eq!(control, vec!["ping hi", "pong", "close"]);
        }
    }

    #[test]
    fn refuses_bad_frames() {
        let mut dec = Decoder::new(false);
        assert!(dec.feed(&mut [0x81, 0x81, 0, 0, 0, 0, 0], |_| {}).is_err());
        let mut dec = Decoder::new(true);
        assert!(dec.feed(&mut [0x81, 0x01, b'x'], |_| {}).is_err());
        let mut dec = Decoder::new(false);
        assert!(dec.feed(&mut [0x09, 0x00], |_| {}).is_err());
        let mut dec = Decoder::new(false);
        assert!(dec.feed(&mut [0xC1, 0x00], |_| {}).is_err());
    }

    #[test]
    fn mask_at_any_offset() {
        let data: Vec<u8> = (0..37).collect();
        let mask = [9, 8, 7, 6];
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        for split in 0..data.len() {
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(parts, whole);
        }
        let naive: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(whole, naive);
    }
}
