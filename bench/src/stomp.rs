//! The STOMP the tool speaks, without I/O: splitting a byte stream into frames at NUL (with
//! heart-beat EOLs between frames skipped), reading a frame's command and headers, building
//! the few frames the tool sends, and the publish stamp that rides at the start of each body.

/// Why a stream cannot be scanned any further.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StompError {
    #[error("STOMP frame longer than {0} bytes")]
    TooLong(usize),
}

/// Splits a byte stream into frames at NUL. Bytes of a frame split across reads (or across
/// WebSocket messages) wait in `partial`; a frame that arrives whole is handed out in place.
/// Bodies are taken to end at the first NUL: the tool's own bodies never hold one.
#[derive(Debug)]
pub struct Scanner {
    partial: Vec<u8>,
    max: usize,
}

/// A partial-frame buffer grown past this is given back once the frame is complete, so a
/// connection that once saw a large frame does not keep its memory.
const KEEP_PARTIAL: usize = 16 * 1024;

impl Scanner {
    /// `max`: the longest frame accepted, so a peer that never sends NUL cannot grow memory.
    pub fn new(max: usize) -> Scanner {
        Scanner {
            partial: Vec::new(),
            max,
        }
    }

    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut on_frame: impl FnMut(&[u8]),
    ) -> Result<(), StompError> {
        if !self.partial.is_empty() {
            match memchr::memchr(0, data) {
                None => return self.keep(data),
                Some(end) => {
                    self.keep(&data[..end])?;
                    on_frame(&self.partial);
                    self.partial.clear();
                    if self.partial.capacity() > KEEP_PARTIAL {
                        self.partial = Vec::new();
                    }
                    data = &data[end + 1..];
                }
            }
        }
        loop {
            let start = data
                .iter()
                .position(|&b| b != b'\n' && b != b'\r')
                .unwrap_or(data.len());
            data = &data[start..];
            if data.is_empty() {
                return Ok(());
            }
            match memchr::memchr(0, data) {
                Some(end) => {
                    on_frame(&data[..end]);
                    data = &data[end + 1..];
                }
                None => return self.keep(data),
            }
        }
    }

    fn keep(&mut self, data: &[u8]) -> Result<(), StompError> {
        if self.partial.len() + data.len() > self.max {
            return Err(StompError::TooLong(self.max));
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }
}

/// A frame's parts, borrowed from the scanned bytes. Header values are left escaped: the
/// values the tool reads (`destination`, `receipt`, `userid`, `message`) are compared or
/// shown, never written back.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub command: &'a [u8],
    headers: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Splits a frame (without its NUL) into command, headers and body; `None` if the blank
    /// line after the headers is missing.
    pub fn parse(frame: &'a [u8]) -> Option<Frame<'a>> {
        let line_end = memchr::memchr(b'\n', frame)?;
        let command = trim_cr(&frame[..line_end]);
        let rest = &frame[line_end + 1..];
        let mut at = 0;
        loop {
            let end = at + memchr::memchr(b'\n', &rest[at..])?;
            if trim_cr(&rest[at..end]).is_empty() {
                return Some(Frame {
                    command,
                    headers: &rest[..at],
                    body: &rest[end + 1..],
                });
            }
            at = end + 1;
        }
    }

    /// The first value of header `name` (STOMP: a repeated header's first value wins).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.split(|&b| b == b'\n').find_map(|line| {
            let line = trim_cr(line);
            let colon = memchr::memchr(b':', line)?;
            (&line[..colon] == name.as_bytes()).then(|| &line[colon + 1..])
        })
    }

    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Escapes a header value as STOMP 1.1/1.2 require outside CONNECT.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            ':' => out.push_str("\\c"),
            c => out.push(c),
        }
    }
    out
}

/// CONNECT with `headers` in order (values unescaped, as STOMP wants for CONNECT), plus
/// `accept-version:1.2` and `heart-beat:0,0` unless given.
pub fn connect_frame(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = b"CONNECT\n".to_vec();
    let has = |name: &str| headers.iter().any(|(n, _)| n == name);
    if !has("accept-version") {
        out.extend_from_slice(b"accept-version:1.2\n");
    }
    if !has("heart-beat") {
        out.extend_from_slice(b"heart-beat:0,0\n");
    }
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}:{value}\n").as_bytes());
    }
    out.extend_from_slice(b"\n\0");
    out
}

/// The one subscription every subscriber makes: id `0`, auto ack, and a receipt that tells the
/// tool the broker has filed it.
pub fn subscribe_frame(destination: &str) -> Vec<u8> {
    format!(
        "SUBSCRIBE\nid:0\ndestination:{}\nack:auto\nreceipt:sub-0\n\n\0",
        escape(destination)
    )
    .into_bytes()
}

/// Everything of a SEND frame before its body.
pub fn send_head(destination: &str) -> Vec<u8> {
    format!("SEND\ndestination:{}\n\n", escape(destination)).into_bytes()
}

/// What the publisher writes at the start of every body: when it was sent (nanoseconds since
/// the tool started), by which publisher, and that publisher's sequence number (from 1), so
/// subscribers can measure latency and notice duplicates without any shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_ns: u64,
    pub publisher: u32,
    pub seq: u64,
}

/// Appends a body: `"{sent_ns} {publisher}:{seq} "`, then `x` up to `body_bytes` in all. No
/// NUL, no newline, nothing JSON would escape: the body travels as is through SEND and the API.
pub fn write_body(out: &mut Vec<u8>, stamp: Stamp, body_bytes: usize) {
    let start = out.len();
    write_decimal(out, stamp.sent_ns);
    out.push(b' ');
    write_decimal(out, stamp.publisher as u64);
    out.push(b':');
    write_decimal(out, stamp.seq);
    out.push(b' ');
    let written = out.len() - start;
    if body_bytes > written {
        out.resize(start + body_bytes, b'x');
    }
}

pub fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Reads the stamp at the start of a body; `None` for a body the tool did not write.
pub fn parse_stamp(body: &[u8]) -> Option<Stamp> {
    let (sent_ns, rest) = take_decimal(body, b' ')?;
    let (publisher, rest) = take_decimal(rest, b':')?;
    let (seq, _) = take_decimal(rest, b' ')?;
    Some(Stamp {
        sent_ns,
        publisher: u32::try_from(publisher).ok()?,
        seq,
    })
}

/// Digits up to `end`, and what follows `end`.
fn take_decimal(data: &[u8], end: u8) -> Option<(u64, &[u8])> {
    let mut n: u64 = 0;
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'0'..=b'9' => n = n.checked_mul(10)?.checked_add((b - b'0') as u64)?,
            b if b == end && i > 0 => return Some((n, &data[i + 1..])),
            _ => return None,
        }
    }
    None
}

/// The body of a MESSAGE as the subscriber reads it on the hot path: everything after the last
/// newline. The tool's bodies hold no newline, so this skips the headers without parsing them.
pub fn message_body(frame: &[u8]) -> Option<&[u8]> {
    memchr::memrchr(b'\n', frame).map(|at| &frame[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut scanner = Scanner::new(1 << 20);
        let mut frames = Vec::new();
        for piece in pieces {
            scanner.feed(piece, |f| frames.push(f.to_vec())).unwrap();
        }
        frames
    }

    #[test]
    fn several_frames_in_one_message_and_heartbeats() {
        let frames =
            scan(&[b"\nCONNECTED\nversion:1.2\n\n\0\r\nRECEIPT\nreceipt-id:sub-0\n\n\0\n"]);
        assert_eq!(
            frames,
            vec![
                b"CONNECTED\nversion:1.2\n\n".to_vec(),
                b"RECEIPT\nreceipt-id:sub-0\n\n".to_vec()
            ]
        );
    }

    #[test]
    fn frame_split_across_messages() {
        let wire =
            b"MESSAGE\ndestination:/topic/a\n\nhello\0MESSAGE\ndestination:/topic/b\n\nworld\0";
        let whole = scan(&[wire]);
        assert_eq!(whole.len(), 2);
        for split in 0..wire.len() {
            assert_eq!(
                scan(&[&wire[..split], &wire[split..]]),
                whole,
                "split at {split}"
            );
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(scan(&bytes), whole);
    }

    #[test]
    fn refuses_endless_frame() {
        let mut scanner = Scanner::new(10);
        assert!(scanner.feed(b"MESSAGE\n", |_| {}).is_ok());
        assert_eq!(
            scanner.feed(b"destination", |_| {}),
            Err(StompError::TooLong(10))
        );
    }

    #[test]
    fn parses_headers_first_wins() {
        let f = Frame::parse(b"SEND\r\ndestination:/topic/a\r\nx:1\nx:2\n\nbody").unwrap();
        assert_eq!(f.command, b"SEND");
        assert_eq!(f.header_str("destination"), Some("/topic/a"));
        assert_eq!(f.header_str("x"), Some("1"));
        assert_eq!(f.header("y"), None);
        assert_eq!(f.body, b"body");
        assert_eq!(Frame::parse(b"SEND\ndestination:/a\n"), None);
        let bare = Frame::parse(b"DISCONNECT\n\n").unwrap();
        assert_eq!(bare.command, b"DISCONNECT");
        assert_eq!(bare.body, b"");
    }

    #[test]
    fn stamp_round_trip_and_padding() {
        let stamp = Stamp {
            sent_ns: 1_234_567_890_123,
            publisher: 3,
            seq: 42,
        };
        let mut body = Vec::new();
        write_body(&mut body, stamp, 0);
        assert_eq!(body, b"1234567890123 3:42 ");
        assert_eq!(parse_stamp(&body), Some(stamp));
        let mut padded = Vec::new();
        write_body(&mut padded, stamp, 100);
        assert_eq!(padded.len(), 100);
        assert!(padded.ends_with(b"xxx"));
        assert_eq!(parse_stamp(&padded), Some(stamp));
        assert_eq!(parse_stamp(b"hello"), None);
        assert_eq!(parse_stamp(b" 1:2 "), None);
        assert_eq!(parse_stamp(b"99999999999999999999999 0:1 "), None);
    }

    #[test]
    fn message_body_skips_headers() {
        let mut frame = b"MESSAGE\ndestination:/topic/a\nmessage-id:7\n\n".to_vec();
        write_body(
            &mut frame,
            Stamp {
                sent_ns: 5,
                publisher: 0,
                seq: 1,
            },
            64,
        );
        let stamp = parse_stamp(message_body(&frame).unwrap()).unwrap();
        assert_eq!(stamp.sent_ns, 5);
    }

    #[test]
    fn builders() {
        let connect = connect_frame(&[("userid".into(), "u1".into())]);
        assert_eq!(
            connect,
            b"CONNECT\naccept-version:1.2\nheart-beat:0,0\nuserid:u1\n\n\0"
        );
        let connect = connect_frame(&[("accept-version".into(), "1.1".into())]);
        assert_eq!(
            connect,
            b"CONNECT\nheart-beat:0,0\naccept-version:1.1\n\n\0"
        );
        assert_eq!(
            subscribe_frame("/topic/a:b"),
            b"SUBSCRIBE\nid:0\ndestination:/topic/a\\cb\nack:auto\nreceipt:sub-0\n\n\0"
        );
        assert_eq!(send_head("/topic/x"), b"SEND\ndestination:/topic/x\n\n");
    }
}
