//! The STOMP wire codec: incremental, limit-enforcing decoding of frames and heart-beats from a
//! byte buffer, and encoding of frames, with the header escaping rules of STOMP 1.0, 1.1 and 1.2.

use std::fmt::Write as _;
use std::ops::Range;

use bytes::{Buf, BufMut, BytesMut};

use super::frame::{Command, Frame, Version};

/// Size limits enforced while decoding, before more input is buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, counted from the first byte of the command through the
    /// terminating NUL (so including headers and line ends).
    pub max_frame_bytes: usize,
    /// Most header lines accepted in one frame; repeated headers each count.
    pub max_headers: usize,
    /// Longest command or header line accepted, not counting its LF or CRLF.
    pub max_header_line: usize,
}

impl Default for Limits {
    /// 64 KiB frames, 64 headers, 8 KiB lines.
    ///
    /// Each connection may hold one partial frame in memory and, because decoding is stateless,
    /// re-scans it on every read, so the frame cap bounds both memory and CPU per connection;
    /// 64 KiB is far above the notification-sized messages a push broker carries. 64 headers and
    /// 8 KiB per line comfortably fit real clients (the longest common header is a bearer token
    /// in `CONNECT`) while stopping a peer from making us scan or store unbounded header data.
    fn default() -> Limits {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_headers: 64,
            max_header_line: 8 * 1024,
        }
    }
}

/// One item read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame.
    Frame(Frame),
    /// One or more end-of-line sequences between frames (a heart-beat, or the optional EOLs
    /// after a frame's NUL).
    HeartBeat,
}

/// Why a frame could not be decoded.
///
/// Every error is fatal for the connection: the stream can no longer be framed reliably. The
/// messages are written for the peer, since they are sent back in STOMP `ERROR` frames; any
/// peer-supplied text they quote is truncated.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame is, or would become, larger than [`Limits::max_frame_bytes`].
    #[error("frame exceeds the maximum size of {limit} bytes")]
    FrameTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The frame has more than [`Limits::max_headers`] header lines.
    #[error("frame has more than the maximum of {limit} headers")]
    TooManyHeaders {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A command or header line is longer than [`Limits::max_header_line`].
    #[error("command or header line exceeds the maximum length of {limit} bytes")]
    HeaderLineTooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The command line is not a STOMP command (commands are upper case).
    #[error("unknown command \"{name}\"")]
    UnknownCommand {
        /// The command as received, lossily decoded and truncated.
        name: String,
    },
    /// A header line has no `:` separating name and value.
    #[error("header line \"{line}\" has no ':' between name and value")]
    MissingColon {
        /// The line as received, lossily decoded and truncated.
        line: String,
    },
    /// A header contains a backslash sequence the version does not define.
    #[error(
        "invalid escape sequence \"{sequence}\" in a header; STOMP {version} allows only {}",
        allowed_escapes(*.version)
    )]
    InvalidEscape {
        /// The offending sequence, e.g. `\t`, or a lone `\` at the end of a name or value.
        sequence: String,
        /// The version whose escaping rules were applied.
        version: Version,
    },
    /// The command or a header name or value is not valid UTF-8.
    #[error("the {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which part of the frame: `"command"`, `"header name"` or `"header value"`.
        field: &'static str,
    },
    /// The first `content-length` header is not a decimal byte count.
    #[error("content-length \"{value}\" is not a decimal number of bytes")]
    InvalidContentLength {
        /// The value as received, lossily decoded and truncated.
        value: String,
    },
    /// The byte after the `content-length` bytes of body is not the NUL that ends the frame.
    #[error(
        "frame body is not followed by a NUL byte after the {content_length} bytes given by \
         content-length"
    )]
    MissingNul {
        /// The body length the frame declared.
        content_length: usize,
    },
    /// A NUL byte appeared before the end of the headers; rejected because peers that split
    /// frames at NUL bytes would see a different frame boundary than we do.
    #[error("NUL byte in the command or header lines")]
    NulInHeaders,
}

fn allowed_escapes(version: Version) -> &'static str {
    match version {
        Version::V1_0 => "no escapes",
        Version::V1_1 => "\\n, \\c and \\\\",
        Version::V1_2 => "\\r, \\n, \\c and \\\\",
    }
}

/// Longest piece of peer-supplied text quoted in an error, so an `ERROR` frame cannot be made
/// to echo kilobytes back.
const ECHO_MAX: usize = 64;

fn echo(raw: &[u8]) -> String {
    match raw.get(..ECHO_MAX) {
        Some(cut) if cut.len() < raw.len() => format!("{}...", String::from_utf8_lossy(cut)),
        _ => String::from_utf8_lossy(raw).into_owned(),
    }
}

/// Decodes the next item from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (or nothing, or a lone `\r` that
/// may begin a CRLF): `buf` is left untouched, and the call should be repeated once more bytes
/// are appended. Leading EOLs are consumed together and reported as one
/// [`Decoded::HeartBeat`]. A complete frame is split off the front of `buf`; its body shares
/// that allocation rather than being copied.
///
/// This function keeps nothing between calls, so a frame that arrives in many pieces is
/// scanned again from its start each time; a connection uses a [`Decoder`], which resumes
/// where the last call stopped, so that decoding is linear in the bytes received.
///
/// # Errors
///
/// Any [`FrameError`]. Limits are checked against what is buffered so far, so an oversized
/// frame is rejected without waiting for the rest of it. After an `Err` the contents of `buf`
/// are unspecified and the connection should be closed.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Option<Decoded>, FrameError> {
    Decoder::default().decode(buf, version, limits)
}

/// An incremental decoder for one connection: [`decode`] that remembers how far it scanned a
/// partial frame, so each byte of a frame is looked at a bounded number of times however the
/// frame is cut into reads (a 60 KB frame sent one byte per write used to cost a full re-scan
/// per byte). Between frames it holds nothing.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Boxed: an idle connection (no partial frame) keeps only the pointer's worth.
    progress: Option<Box<Progress>>,
}

impl Decoder {
    /// True while a frame has begun and not ended (its first bytes are buffered).
    pub fn in_frame(&self) -> bool {
        self.progress.is_some()
    }

    /// As [`decode`], resuming the scan of a partial frame where the last call stopped. `buf`
    /// must hold what the last call left, with new bytes appended.
    ///
    /// # Errors
    ///
    /// As [`decode`]; after an `Err` the decoder must not be used again.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        version: Version,
        limits: &Limits,
    ) -> Result<Option<Decoded>, FrameError> {
        if self.progress.is_none() {
            let eols = leading_eols(buf);
            if eols > 0 {
                buf.advance(eols);
                return Ok(Some(Decoded::HeartBeat));
            }
            if buf.is_empty() || buf[..] == b"\r"[..] {
                return Ok(None);
            }
        }
        // A frame that is whole in the buffer is scanned with progress on the stack; only one
        // that is left partial keeps its progress (boxed) for the next call.
        let mut fresh = Progress::default();
        let progress = match self.progress.as_deref_mut() {
            Some(progress) => progress,
            None => &mut fresh,
        };
        let scanned = scan(buf, limits, progress);
        let layout = match scanned {
            Ok(Some(layout)) => layout,
            Ok(None) => {
                if self.progress.is_none() {
                    self.progress = Some(Box::new(fresh));
                }
                return Ok(None);
            }
            Err(e) => {
                self.progress = None;
                return Err(e);
            }
        };
        self.progress = None;
        let headers = parse_headers(buf, &layout, version)?;
        // `scan` found the NUL at `body.end`, so this is in bounds; taking the NUL too leaves
        // `buf` at whatever follows the frame.
        let frame_bytes = buf.split_to(layout.body.end + 1).freeze();
        let body = frame_bytes.slice(layout.body);
        Ok(Some(Decoded::Frame(Frame {
            command: layout.command,
            headers,
            body,
        })))
    }
}

/// How far the scan of a partial frame got: enough to go on from there.
#[derive(Debug, Default, Clone)]
struct Progress {
    /// The command, once its line is complete, and where the header lines start.
    command: Option<(Command, usize)>,
    /// Where the line being scanned starts.
    line_start: usize,
    /// How much of that line was already searched for its end.
    line_searched: usize,
    header_count: usize,
    content_length: Option<usize>,
    /// Once the blank line was found: where the headers end and the body starts.
    body: Option<(usize, usize)>,
    /// Without content-length: how far the body was searched for its NUL.
    nul_searched: usize,
}

/// Number of bytes at the front of `data` made of complete `\n` / `\r\n` sequences.
fn leading_eols(data: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match data.get(i) {
            Some(b'\n') => i += 1,
            Some(b'\r') if data.get(i + 1) == Some(&b'\n') => i += 2,
            _ => return i,
        }
    }
}

/// Where the parts of a complete frame lie in the buffer.
struct Layout {
    command: Command,
    /// The header lines, each still ending in its LF; excludes the blank line.
    headers: Range<usize>,
    header_count: usize,
    /// The body; the frame's NUL is at `body.end`.
    body: Range<usize>,
}

enum LineScan {
    /// A complete line: `content` excludes the LF and one CR before it; `next` follows the LF.
    Complete { content: Range<usize>, next: usize },
    /// No LF yet; `content_len` bytes of the line so far, not counting a trailing CR that may
    /// belong to a CRLF; `searched` of them hold no LF (the next search starts there).
    Partial { content_len: usize, searched: usize },
}

/// Locates the line starting at `start`, rejecting it as soon as it is known to be too long.
/// The first `searched` bytes of the line are known to hold no LF or NUL (an earlier call
/// looked at them), so the search starts after them.
fn next_line(
    data: &[u8],
    start: usize,
    searched: usize,
    limits: &Limits,
) -> Result<LineScan, FrameError> {
    let rest = data.get(start..).unwrap_or_default();
    // Content, optional CR and LF: anything longer without an LF is already too long, so the
    // search never runs past the limit.
    let window = rest
        .get(..limits.max_header_line.saturating_add(2))
        .unwrap_or(rest);
    let too_long = FrameError::HeaderLineTooLong {
        limit: limits.max_header_line,
    };
    let from = searched.min(window.len());
    let found = window
        .get(from..)
        .unwrap_or_default()
        .iter()
        .position(|&b| b == b'\n' || b == 0)
        .map(|i| from + i);
    match found {
        Some(i) => {
            if window.get(i) == Some(&0) {
                return Err(FrameError::NulInHeaders);
            }
            let len = i - usize::from(i > 0 && window.get(i - 1) == Some(&b'\r'));
            if len > limits.max_header_line {
                return Err(too_long);
            }
            Ok(LineScan::Complete {
                content: start..start + len,
                next: start + i + 1,
            })
        }
        None => {
            let content_len = window.len() - usize::from(window.last() == Some(&b'\r'));
            if content_len > limits.max_header_line {
                return Err(too_long);
            }
            Ok(LineScan::Partial {
                content_len,
                searched: window.len(),
            })
        }
    }
}

/// The verdict on an incomplete frame of which `buffered` bytes have arrived: it still needs
/// at least its NUL, so it is already too large once `buffered` reaches the limit.
fn need_more(buffered: usize, limits: &Limits) -> Result<Option<Layout>, FrameError> {
    if buffered >= limits.max_frame_bytes {
        Err(FrameError::FrameTooLarge {
            limit: limits.max_frame_bytes,
        })
    } else {
        Ok(None)
    }
}

/// Finds the boundaries of the frame at the front of `data` and validates its structure and
/// limits without allocating, so that a partial frame costs nothing but the scan. It starts
/// where `p` says an earlier call on the same frame stopped, and records where it stops.
fn scan(data: &[u8], limits: &Limits, p: &mut Progress) -> Result<Option<Layout>, FrameError> {
    let too_large = FrameError::FrameTooLarge {
        limit: limits.max_frame_bytes,
    };
    let (command, headers_start) = match p.command {
        Some(known) => known,
        None => match next_line(data, 0, p.line_searched, limits)? {
            LineScan::Complete { content, next } => {
                let command = parse_command(data.get(content).unwrap_or_default())?;
                if next >= limits.max_frame_bytes {
                    return Err(too_large);
                }
                p.command = Some((command, next));
                p.line_start = next;
                p.line_searched = 0;
                (command, next)
            }
            LineScan::Partial { searched, .. } => {
                p.line_searched = searched;
                return need_more(data.len(), limits);
            }
        },
    };

    let (headers_end, body_start) = match p.body {
        Some(known) => known,
        None => loop {
            let pos = p.line_start;
            let (content, next) = match next_line(data, pos, p.line_searched, limits)? {
                LineScan::Complete { content, next } => (content, next),
                LineScan::Partial {
                    content_len,
                    searched,
                } => {
                    // Any content means another header line is under way, not the blank line.
                    if content_len > 0 && p.header_count >= limits.max_headers {
                        return Err(FrameError::TooManyHeaders {
                            limit: limits.max_headers,
                        });
                    }
                    p.line_searched = searched;
                    return need_more(data.len(), limits);
                }
            };
            if next >= limits.max_frame_bytes {
                return Err(too_large);
            }
            p.line_start = next;
            p.line_searched = 0;
            if content.is_empty() {
                p.body = Some((pos, next));
                p.nul_searched = next;
                break (pos, next);
            }
            p.header_count += 1;
            if p.header_count > limits.max_headers {
                return Err(FrameError::TooManyHeaders {
                    limit: limits.max_headers,
                });
            }
            let line = data.get(content).unwrap_or_default();
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(FrameError::MissingColon { line: echo(line) });
            };
            if p.content_length.is_none() {
                let (name, value) = line.split_at(colon);
                // Escapes only ever produce `\r \n : \`, so a raw name equal to
                // `content-length` is exactly the names that unescape to it, in every version.
                if name == b"content-length" {
                    let value = value.get(1..).unwrap_or_default();
                    p.content_length =
                        Some(parse_content_length(value).ok_or_else(|| {
                            FrameError::InvalidContentLength { value: echo(value) }
                        })?);
                }
            }
        },
    };

    let body_end = match p.content_length {
        Some(len) => {
            let frame_len = body_start.checked_add(len).and_then(|n| n.checked_add(1));
            if frame_len.is_none_or(|n| n > limits.max_frame_bytes) {
                return Err(too_large);
            }
            let body_end = body_start + len;
            match data.get(body_end) {
                None => return Ok(None),
                Some(0) => body_end,
                Some(_) => {
                    return Err(FrameError::MissingNul {
                        content_length: len,
                    })
                }
            }
        }
        None => {
            // A NUL past the limit would make the frame too large anyway, so stop looking there.
            let end = limits.max_frame_bytes.min(data.len());
            let from = p.nul_searched.max(body_start).min(end);
            let searchable = data.get(from..end).unwrap_or_default();
            match searchable.iter().position(|&b| b == 0) {
                Some(i) => from + i,
                None => {
                    p.nul_searched = end;
                    return need_more(data.len(), limits);
                }
            }
        }
    };
    Ok(Some(Layout {
        command,
        headers: headers_start..headers_end,
        header_count: p.header_count,
        body: body_start..body_end,
    }))
}

fn parse_command(raw: &[u8]) -> Result<Command, FrameError> {
    if let Some(command) = Command::parse(raw) {
        return Ok(command);
    }
    if std::str::from_utf8(raw).is_err() {
        return Err(FrameError::InvalidUtf8 { field: "command" });
    }
    Err(FrameError::UnknownCommand { name: echo(raw) })
}

/// Parses a `content-length` value: decimal digits, optionally padded with spaces or tabs
/// (tolerated because some 1.0 clients write `content-length: 5`). Values too big for `usize`
/// saturate, which the size limit then rejects.
fn parse_content_length(raw: &[u8]) -> Option<usize> {
    let start = raw.iter().position(|&b| b != b' ' && b != b'\t')?;
    let end = raw.iter().rposition(|&b| b != b' ' && b != b'\t')?;
    let digits = raw.get(start..=end)?;
    digits.iter().try_fold(0usize, |acc, &b| {
        b.is_ascii_digit()
            .then(|| acc.saturating_mul(10).saturating_add(usize::from(b - b'0')))
    })
}

fn parse_headers(
    data: &[u8],
    layout: &Layout,
    version: Version,
) -> Result<Vec<(String, String)>, FrameError> {
    let unescape = if layout.command.escapes_headers() {
        version
    } else {
        Version::V1_0
    };
    let mut headers = Vec::with_capacity(layout.header_count);
    let section = data.get(layout.headers.clone()).unwrap_or_default();
    let Some(section) = section.strip_suffix(b"\n") else {
        return Ok(headers);
    };
    for line in section.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(FrameError::MissingColon { line: echo(line) });
        };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default();
        headers.push((
            header_field(name, unescape, "header name")?,
            header_field(value, unescape, "header value")?,
        ));
    }
    Ok(headers)
}

/// Decodes one header name or value, applying `version`'s escapes (pass `V1_0` for none).
fn header_field(raw: &[u8], version: Version, field: &'static str) -> Result<String, FrameError> {
    let text = std::str::from_utf8(raw).map_err(|_| FrameError::InvalidUtf8 { field })?;
    if version == Version::V1_0 || !text.contains('\\') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let unescaped = match chars.next() {
            Some('n') => '\n',
            Some('c') => ':',
            Some('\\') => '\\',
            Some('r') if version == Version::V1_2 => '\r',
            Some(other) => {
                return Err(FrameError::InvalidEscape {
                    sequence: format!("\\{other}"),
                    version,
                })
            }
            None => {
                return Err(FrameError::InvalidEscape {
                    sequence: "\\".to_owned(),
                    version,
                })
            }
        };
        out.push(unescaped);
    }
    Ok(out)
}

/// Appends `frame` in wire format for `version`, with `\n` line ends.
///
/// Headers are escaped when the command [escapes headers](Command::escapes_headers) (see
/// [`escape_into`], which also covers what happens to characters that cannot be escaped). The
/// first `content-length` header is written with the body's real length if its value is wrong,
/// and one is added after the other headers when the body is non-empty and has none, so the
/// receiver's framing can never be desynchronised by the body.
pub fn encode(frame: &Frame, version: Version, out: &mut BytesMut) {
    let escape = if frame.command.escapes_headers() {
        version
    } else {
        Version::V1_0
    };
    // Lengths of data already in memory, so the sum cannot overflow.
    let headers_len: usize = frame
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum();
    // Room for the command, an added content-length header and the terminators.
    out.reserve(headers_len + frame.body.len() + 48);

    out.put_slice(frame.command.as_str().as_bytes());
    out.put_u8(b'\n');
    let mut has_content_length = false;
    for (name, value) in &frame.headers {
        escape_into(name, escape, out);
        out.put_u8(b':');
        if !has_content_length && name == "content-length" {
            has_content_length = true;
            if parse_content_length(value.as_bytes()) == Some(frame.body.len()) {
                escape_into(value, escape, out);
            } else {
                put_decimal(frame.body.len(), out);
            }
        } else {
            escape_into(value, escape, out);
        }
        out.put_u8(b'\n');
    }
    if !has_content_length && !frame.body.is_empty() {
        out.put_slice(b"content-length:");
        put_decimal(frame.body.len(), out);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.put_slice(&frame.body);
    out.put_u8(0);
}

fn put_decimal(n: usize, out: &mut BytesMut) {
    // Writing to a BytesMut grows it and cannot fail.
    let _ = write!(out, "{n}");
}

/// Appends a header name or value escaped for `version`, as used for commands that
/// [escape headers](Command::escapes_headers); `V1_0` writes it unescaped, as for the others.
///
/// 1.2 escapes `\r`, `\n`, `:` and `\`; 1.1 escapes `\n`, `:` and `\`. A NUL, and an LF where
/// the version cannot escape it, is replaced by a space: written raw they would end the line or
/// the frame early, letting header content forge headers or whole frames. Other characters the
/// version cannot escape are written raw and may not survive decoding: a CR ending a value is
/// taken as part of a CRLF, and a `:` in an unescaped name moves the name/value split.
pub fn escape_into(value: &str, version: Version, out: &mut BytesMut) {
    let escapes = version != Version::V1_0;
    let bytes = value.as_bytes();
    let mut copied = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // Only ASCII bytes are rewritten, and those never occur inside a multi-byte UTF-8
        // sequence, so the output stays valid UTF-8.
        let replacement: &[u8] = match b {
            b'\\' if escapes => b"\\\\",
            b':' if escapes => b"\\c",
            b'\n' if escapes => b"\\n",
            b'\r' if version == Version::V1_2 => b"\\r",
            b'\n' | 0 => b" ",
            _ => continue,
        };
        out.put_slice(bytes.get(copied..i).unwrap_or_default());
        out.put_slice(replacement);
        copied = i + 1;
    }
    out.put_slice(bytes.get(copied..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    /// Feeds `wire` to a decoder `step` bytes at a time; the frames it decoded (heart-beats,
    /// which a cut may split in two, left out).
    fn trickle(wire: &[u8], step: usize, limits: &Limits) -> Vec<Frame> {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(item) = decoder.decode(&mut buf, Version::V1_2, limits).unwrap() {
                if let Decoded::Frame(frame) = item {
                    out.push(frame);
                }
            }
        }
        assert!(!decoder.in_frame(), "every frame ended");
        out
    }

    #[test]
    fn a_resumed_scan_finds_the_same_frames_however_the_bytes_are_cut() {
        let wire: &[u8] = b"SEND\r\ndestination:/a\r\ncontent-length:3\r\n\r\na\0b\0\n\nMESSAGE\nx:y\n\nbody\0\r\n";
        let whole = trickle(wire, wire.len(), &Limits::default());
        for step in 1..wire.len() {
            assert_eq!(
                trickle(wire, step, &Limits::default()),
                whole,
                "cut every {step} bytes"
            );
        }
        let frames = whole;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].body.as_ref(), b"a\0b");
        assert_eq!(frames[1].get("x"), Some("y"));
    }

    #[test]
    fn limits_hold_when_a_frame_trickles_in() {
        let limits = Limits {
            max_frame_bytes: 256,
            max_headers: 2,
            max_header_line: 32,
        };
        let mut too_large = b"SEND\n\n".to_vec();
        too_large.extend(std::iter::repeat_n(b'x', 300));
        let cases: [(Vec<u8>, &str); 3] = [
            (b"SEND\na:1\nb:2\nc:3\n\n\0".to_vec(), "too many headers"),
            (
                b"SEND\nlong:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n\n\0".to_vec(),
                "a long line",
            ),
            (too_large, "a large frame"),
        ];
        for (wire, what) in cases {
            let mut decoder = Decoder::default();
            let mut buf = BytesMut::new();
            let failed = wire.iter().any(|b| {
                buf.extend_from_slice(&[*b]);
                decoder.decode(&mut buf, Version::V1_2, &limits).is_err()
            });
            assert!(failed, "{what}: refused while trickling in");
        }
    }

    #[test]
    fn decoding_a_frame_that_arrives_a_byte_at_a_time_is_linear() {
        // 60 KB of body, no content-length, one byte per read: each read used to scan the
        // whole partial frame again (quadratic: seconds even optimized).
        let mut wire = b"SEND\ndestination:/topic/a\n\n".to_vec();
        wire.extend(std::iter::repeat_n(b'x', 60_000));
        wire.push(0);
        let limits = Limits::default();
        let started = std::time::Instant::now();
        assert_eq!(trickle(&wire, 1, &limits).len(), 1);
        let mut headers = b"SEND\ndestination:/topic/a\n".to_vec();
        for i in 0..60 {
            headers.extend_from_slice(format!("h{i}:{}\n", "v".repeat(900)).as_bytes());
        }
        headers.extend_from_slice(b"\n\0");
        assert_eq!(trickle(&headers, 1, &limits).len(), 1);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    const ALL_COMMANDS: [Command; 15] = Command::ALL;

    /// Re-decoding an encoded frame must not trip limits that only the original input met.
    const UNLIMITED: Limits = Limits {
        max_frame_bytes: usize::MAX,
        max_headers: usize::MAX,
        max_header_line: usize::MAX,
    };

    fn decode_once(input: &[u8], version: Version) -> Result<Option<Decoded>, FrameError> {
        decode(&mut BytesMut::from(input), version, &Limits::default())
    }

    fn decode_with(input: &[u8], limits: Limits) -> Result<Option<Decoded>, FrameError> {
        decode(&mut BytesMut::from(input), Version::V1_2, &limits)
    }

    fn decode_frame(input: &[u8], version: Version) -> Frame {
        match decode_once(input, version) {
            Ok(Some(Decoded::Frame(frame))) => frame,
            other => panic!("expected a frame from {input:?}, got {other:?}"),
        }
    }

    /// Decodes everything currently decodable, failing the test on errors.
    fn decode_all(buf: &mut BytesMut, version: Version) -> Vec<Decoded> {
        let mut items = Vec::new();
        while let Some(item) = decode(buf, version, &Limits::default()).unwrap() {
            items.push(item);
        }
        items
    }

    fn encoded(frame: &Frame, version: Version) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(frame, version, &mut out);
        out.to_vec()
    }

    fn pairs(headers: &[(&str, &str)]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|&(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn decodes_a_frame_and_its_body_up_to_the_nul() {
        let frame = decode_frame(b"SEND\ndestination:/queue/a\nx:\n\nhello\0", Version::V1_2);
        assert_eq!(frame.command, Command::Send);
        assert_eq!(
            frame.headers,
            pairs(&[("destination", "/queue/a"), ("x", "")])
        );
        assert_eq!(&frame.body[..], b"hello");
    }

    #[test]
    fn header_splits_at_the_first_colon() {
        let frame = decode_frame(b"SEND\nurl:http://x:80/a\n\n\0", Version::V1_0);
        assert_eq!(frame.get("url"), Some("http://x:80/a"));
    }

    #[test]
    fn v1_2_unescapes_cr_lf_colon_and_backslash_in_names_and_values() {
        let frame = decode_frame(
            b"MESSAGE\nna\\cme\\\\:a\\r\\nb\\cc\\\\d\n\n\0",
            Version::V1_2,
        );
        assert_eq!(frame.headers, pairs(&[("na:me\\", "a\r\nb:c\\d")]));
    }

    #[test]
    fn v1_1_unescapes_lf_colon_and_backslash_but_rejects_cr_escape() {
        let frame = decode_frame(b"SEND\nk\\c:a\\nb\\cc\\\\d\n\n\0", Version::V1_1);
        assert_eq!(frame.headers, pairs(&[("k:", "a\nb:c\\d")]));
        assert_eq!(
            decode_once(b"SEND\nk:a\\rb\n\n\0", Version::V1_1),
            Err(FrameError::InvalidEscape {
                sequence: "\\r".into(),
                version: Version::V1_1
            })
        );
    }

    #[test]
    fn undefined_escapes_are_fatal_in_1_1_and_1_2_but_raw_in_1_0() {
        for version in [Version::V1_1, Version::V1_2] {
            assert_eq!(
                decode_once(b"SEND\nk:a\\tb\n\n\0", version),
                Err(FrameError::InvalidEscape {
                    sequence: "\\t".into(),
                    version
                })
            );
            assert_eq!(
                decode_once(b"SEND\nk\\:v\n\n\0", version),
                Err(FrameError::InvalidEscape {
                    sequence: "\\".into(),
                    version
                }),
                "a trailing lone backslash in a name"
            );
            assert_eq!(
                decode_once(b"SEND\nk:v\\\n\n\0", version),
                Err(FrameError::InvalidEscape {
                    sequence: "\\".into(),
                    version
                }),
                "a trailing lone backslash in a value"
            );
            assert_eq!(
                decode_once("SEND\nk:\\é\n\n\0".as_bytes(), version),
                Err(FrameError::InvalidEscape {
                    sequence: "\\é".into(),
                    version
                })
            );
        }
        let frame = decode_frame(b"SEND\nk\\n:a\\tb\\c\\\n\n\0", Version::V1_0);
        assert_eq!(frame.headers, pairs(&[("k\\n", "a\\tb\\c\\")]));
    }

    #[test]
    fn connection_frames_are_never_unescaped() {
        for version in Version::ALL {
            for command in ["CONNECT", "STOMP", "CONNECTED"] {
                let input = format!("{command}\nlogin:a\\cb\npasscode:p\\w\\\n\n\0");
                let frame = decode_frame(input.as_bytes(), version);
                assert_eq!(
                    frame.headers,
                    pairs(&[("login", "a\\cb"), ("passcode", "p\\w\\")])
                );
            }
        }
    }

    #[test]
    fn connection_frames_are_never_escaped() {
        let frame = Frame::new(Command::Connected).header("server", "a:b\\c");
        assert_eq!(
            encoded(&frame, Version::V1_2),
            b"CONNECTED\nserver:a:b\\c\n\n\0"
        );
    }

    #[test]
    fn repeated_headers_are_all_kept_and_the_first_wins() {
        let frame = decode_frame(b"SEND\nfoo:1\nbar:x\nfoo:2\n\n\0", Version::V1_2);
        assert_eq!(
            frame.headers,
            pairs(&[("foo", "1"), ("bar", "x"), ("foo", "2")])
        );
        assert_eq!(frame.get("foo"), Some("1"));
        assert_eq!(
            encoded(&frame, Version::V1_2),
            b"SEND\nfoo:1\nbar:x\nfoo:2\n\n\0",
            "re-encoding keeps every repetition in order"
        );
    }

    #[test]
    fn content_length_frames_a_body_containing_nul_bytes() {
        let frame = decode_frame(b"SEND\ncontent-length:5\n\na\0b\0c\0", Version::V1_2);
        assert_eq!(&frame.body[..], b"a\0b\0c");
        assert_eq!(frame.get("content-length"), Some("5"));
    }

    #[test]
    fn first_content_length_wins() {
        let frame = decode_frame(
            b"SEND\ncontent-length:2\ncontent-length:9\n\na\0\0",
            Version::V1_2,
        );
        assert_eq!(&frame.body[..], b"a\0");
    }

    #[test]
    fn content_length_may_be_padded_with_blanks() {
        let frame = decode_frame(b"SEND\ncontent-length: 3\t\n\nabc\0", Version::V1_0);
        assert_eq!(&frame.body[..], b"abc");
    }

    #[test]
    fn body_shares_the_input_buffer() {
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:4\n\nbody\0"[..]);
        let input = buf.as_ptr_range();
        let Some(Decoded::Frame(frame)) =
            decode(&mut buf, Version::V1_2, &Limits::default()).unwrap()
        else {
            panic!("expected a frame");
        };
        assert!(input.contains(&frame.body.as_ptr()), "body was copied");
    }

    #[test]
    fn crlf_line_ends_are_accepted() {
        let frame = decode_frame(
            b"SEND\r\ndestination:/q\r\nk:v\r\r\n\r\nbody\0",
            Version::V1_2,
        );
        assert_eq!(frame.command, Command::Send);
        assert_eq!(
            frame.headers,
            pairs(&[("destination", "/q"), ("k", "v\r")]),
            "only one CR is stripped"
        );
        assert_eq!(&frame.body[..], b"body");
    }

    #[test]
    fn eols_between_frames_are_one_heart_beat_per_call() {
        let mut buf = BytesMut::from(&b"\n\r\n\nSEND\n\n\0\r\n\nACK\nid:1\n\n\0\n"[..]);
        let items = decode_all(&mut buf, Version::V1_2);
        assert_eq!(
            items,
            vec![
                Decoded::HeartBeat,
                Decoded::Frame(Frame::new(Command::Send)),
                Decoded::HeartBeat,
                Decoded::Frame(Frame::new(Command::Ack).header("id", "1")),
                Decoded::HeartBeat,
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_trailing_lone_cr_waits_for_its_lf() {
        let mut buf = BytesMut::from(&b"\n\r"[..]);
        let limits = Limits::default();
        assert_eq!(
            decode(&mut buf, Version::V1_2, &limits),
            Ok(Some(Decoded::HeartBeat))
        );
        assert_eq!(&buf[..], b"\r");
        assert_eq!(decode(&mut buf, Version::V1_2, &limits), Ok(None));
        assert_eq!(&buf[..], b"\r");
        buf.extend_from_slice(b"\n");
        assert_eq!(
            decode(&mut buf, Version::V1_2, &limits),
            Ok(Some(Decoded::HeartBeat))
        );
        assert!(buf.is_empty());
        assert_eq!(decode(&mut buf, Version::V1_2, &limits), Ok(None));
    }

    #[test]
    fn several_frames_in_one_buffer_come_out_in_order() {
        let mut buf = BytesMut::from(
            &b"SEND\ndestination:/a\n\none\0SEND\ncontent-length:3\n\nt\0o\0BEGIN\ntransaction:t\n\n\0"
                [..],
        );
        let items = decode_all(&mut buf, Version::V1_2);
        assert_eq!(
            items,
            vec![
                Decoded::Frame(
                    Frame::new(Command::Send)
                        .header("destination", "/a")
                        .body("one")
                ),
                Decoded::Frame(
                    Frame::new(Command::Send)
                        .header("content-length", "3")
                        .body(&b"t\0o"[..])
                ),
                Decoded::Frame(Frame::new(Command::Begin).header("transaction", "t")),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_fed_byte_by_byte_decode_the_same() {
        let input: &[u8] = b"\r\nCONNECT\r\naccept-version:1.2\r\nhost:h\r\n\r\n\0\n\
            SEND\ndestination:/q\\c1\ncontent-length:4\n\n\0\r\n\0\0\n\n\
            SUBSCRIBE\nid:0\ndestination:/t\n\n\0";
        let mut whole = BytesMut::from(input);
        let expected: Vec<Decoded> = decode_all(&mut whole, Version::V1_2)
            .into_iter()
            .filter(|item| matches!(item, Decoded::Frame(_)))
            .collect();
        assert_eq!(expected.len(), 3);

        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in input {
            buf.extend_from_slice(&[byte]);
            loop {
                let before = buf.clone();
                match decode(&mut buf, Version::V1_2, &Limits::default()).unwrap() {
                    None => {
                        assert_eq!(buf, before, "an incomplete frame must not be consumed");
                        break;
                    }
                    Some(Decoded::HeartBeat) => {}
                    Some(frame) => got.push(frame),
                }
            }
        }
        assert_eq!(got, expected);
        assert!(buf.is_empty());
    }

    #[test]
    fn frame_size_limit_applies_to_the_whole_frame() {
        let limits = Limits {
            max_frame_bytes: 100,
            ..Limits::default()
        };
        // "SEND\n\n" + 93 body bytes + NUL is exactly 100 bytes.
        let mut exact = b"SEND\n\n".to_vec();
        exact.extend_from_slice(&[b'x'; 93]);
        assert_eq!(decode_with(&exact, limits), Ok(None));
        exact.push(0);
        assert!(matches!(
            decode_with(&exact, limits),
            Ok(Some(Decoded::Frame(_)))
        ));

        let mut over = b"SEND\n\n".to_vec();
        over.extend_from_slice(&[b'x'; 94]);
        assert_eq!(
            decode_with(&over, limits),
            Err(FrameError::FrameTooLarge { limit: 100 }),
            "rejected before the NUL arrives"
        );
        over.push(0);
        assert_eq!(
            decode_with(&over, limits),
            Err(FrameError::FrameTooLarge { limit: 100 })
        );
    }

    #[test]
    fn oversized_content_length_is_rejected_before_the_body_arrives() {
        let limits = Limits {
            max_frame_bytes: 100,
            ..Limits::default()
        };
        assert_eq!(
            decode_with(b"SEND\ncontent-length:1000\n\n", limits),
            Err(FrameError::FrameTooLarge { limit: 100 })
        );
        assert_eq!(
            decode_with(
                b"SEND\ncontent-length:99999999999999999999999999\n\n",
                limits
            ),
            Err(FrameError::FrameTooLarge { limit: 100 }),
            "a length beyond usize is too large, not malformed"
        );
        // 5 + 18 + 1 + 75 + 1 = 100 bytes.
        let mut exact = b"SEND\ncontent-length:75\n\n".to_vec();
        assert_eq!(decode_with(&exact, limits), Ok(None));
        exact.extend_from_slice(&[0; 76]);
        assert!(matches!(
            decode_with(&exact, limits),
            Ok(Some(Decoded::Frame(_)))
        ));
        assert_eq!(
            decode_with(b"SEND\ncontent-length:76\n\n", limits),
            Err(FrameError::FrameTooLarge { limit: 100 })
        );
    }

    #[test]
    fn oversized_header_section_is_rejected_before_it_ends() {
        let limits = Limits {
            max_frame_bytes: 64,
            max_headers: 1000,
            ..Limits::default()
        };
        let mut input = b"SEND\n".to_vec();
        for _ in 0..20 {
            input.extend_from_slice(b"h:v\n");
        }
        assert_eq!(
            decode_with(&input, limits),
            Err(FrameError::FrameTooLarge { limit: 64 })
        );
    }

    #[test]
    fn long_lines_are_rejected_before_their_eol_arrives() {
        let limits = Limits {
            max_header_line: 16,
            ..Limits::default()
        };
        let too_long = Err(FrameError::HeaderLineTooLong { limit: 16 });
        assert_eq!(decode_with(b"SEND\nh:xxxxxxxxxxxxxxx", limits), too_long);
        assert_eq!(decode_with(b"SENDSENDSENDSENDS", limits), too_long);
        assert_eq!(
            decode_with(b"SEND\nh:xxxxxxxxxxxxxxx\n\n\0", limits),
            too_long
        );
        // 16 bytes of content; the CR belongs to the line end and does not count.
        assert_eq!(decode_with(b"SEND\nh:xxxxxxxxxxxxxx\r", limits), Ok(None));
        assert!(matches!(
            decode_with(b"SEND\nh:xxxxxxxxxxxxxx\r\n\n\0", limits),
            Ok(Some(Decoded::Frame(_)))
        ));
    }

    #[test]
    fn too_many_headers_are_rejected_as_soon_as_one_more_starts() {
        let limits = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        let too_many = Err(FrameError::TooManyHeaders { limit: 2 });
        assert_eq!(decode_with(b"SEND\na:1\nb:2\nc:3\n", limits), too_many);
        assert_eq!(decode_with(b"SEND\na:1\nb:2\nc", limits), too_many);
        assert_eq!(decode_with(b"SEND\na:1\nb:2\n\r", limits), Ok(None));
        assert!(matches!(
            decode_with(b"SEND\na:1\nb:2\n\r\n\0", limits),
            Ok(Some(Decoded::Frame(_)))
        ));
    }

    #[test]
    fn header_line_without_colon_is_an_error() {
        assert_eq!(
            decode_once(b"SEND\ndestination\n\n\0", Version::V1_2),
            Err(FrameError::MissingColon {
                line: "destination".into()
            })
        );
    }

    #[test]
    fn unknown_commands_are_errors() {
        assert_eq!(
            decode_once(b"send\n\n\0", Version::V1_2),
            Err(FrameError::UnknownCommand {
                name: "send".into()
            })
        );
        assert_eq!(
            decode_once(b"\xffSEND\n\n\0", Version::V1_2),
            Err(FrameError::InvalidUtf8 { field: "command" })
        );
        let long = "X".repeat(200);
        let Err(FrameError::UnknownCommand { name }) =
            decode_once(format!("{long}\n\n\0").as_bytes(), Version::V1_2)
        else {
            panic!("expected an unknown command");
        };
        assert!(name.len() < 80, "echoed text is truncated: {name}");
    }

    #[test]
    fn invalid_utf8_in_headers_is_an_error() {
        assert_eq!(
            decode_once(b"SEND\nk\xff:v\n\n\0", Version::V1_2),
            Err(FrameError::InvalidUtf8 {
                field: "header name"
            })
        );
        assert_eq!(
            decode_once(b"CONNECT\nk:\xc3\n\n\0", Version::V1_0),
            Err(FrameError::InvalidUtf8 {
                field: "header value"
            })
        );
        let frame = decode_frame(b"SEND\n\n\xff\xfe\0", Version::V1_2);
        assert_eq!(&frame.body[..], b"\xff\xfe", "bodies are raw bytes");
    }

    #[test]
    fn malformed_content_length_is_an_error() {
        for value in ["abc", "-1", "", " ", "1 2", "+3", "0x10", "\\c"] {
            let input = format!("SEND\ncontent-length:{value}\n\n\0");
            assert_eq!(
                decode_once(input.as_bytes(), Version::V1_2),
                Err(FrameError::InvalidContentLength {
                    value: value.to_owned()
                }),
                "{value:?}"
            );
        }
    }

    #[test]
    fn body_not_followed_by_nul_is_an_error() {
        assert_eq!(
            decode_once(b"SEND\ncontent-length:2\n\nabc\0", Version::V1_2),
            Err(FrameError::MissingNul { content_length: 2 })
        );
        assert_eq!(
            decode_once(b"SEND\ncontent-length:2\n\nab", Version::V1_2),
            Ok(None),
            "the NUL has not arrived yet"
        );
    }

    #[test]
    fn nul_before_the_body_is_an_error() {
        for input in [&b"SEND\0"[..], b"SEND\nk:v\0\n\n\0", b"\0", b"SEND\nk:v\0"] {
            assert_eq!(
                decode_once(input, Version::V1_2),
                Err(FrameError::NulInHeaders),
                "{input:?}"
            );
        }
    }

    #[test]
    fn error_messages_are_readable() {
        let err = FrameError::InvalidEscape {
            sequence: "\\t".into(),
            version: Version::V1_1,
        };
        assert_eq!(
            err.to_string(),
            "invalid escape sequence \"\\t\" in a header; STOMP 1.1 allows only \\n, \\c and \\\\"
        );
        assert_eq!(
            FrameError::FrameTooLarge { limit: 65536 }.to_string(),
            "frame exceeds the maximum size of 65536 bytes"
        );
    }

    #[test]
    fn encode_adds_content_length_for_non_empty_bodies() {
        let frame = Frame::new(Command::Message)
            .header("destination", "/q")
            .body(&b"a\0b"[..]);
        assert_eq!(
            encoded(&frame, Version::V1_2),
            b"MESSAGE\ndestination:/q\ncontent-length:3\n\na\0b\0"
        );
        assert_eq!(
            encoded(&Frame::new(Command::Receipt), Version::V1_2),
            b"RECEIPT\n\n\0"
        );
    }

    #[test]
    fn encode_corrects_a_wrong_content_length_but_keeps_a_right_one() {
        let wrong = Frame::new(Command::Message)
            .header("content-length", "1")
            .header("content-length", "junk")
            .body("hello");
        assert_eq!(
            encoded(&wrong, Version::V1_2),
            b"MESSAGE\ncontent-length:5\ncontent-length:junk\n\nhello\0"
        );
        let padded = Frame::new(Command::Message)
            .header("content-length", " 5")
            .body("hello");
        assert_eq!(
            encoded(&padded, Version::V1_0),
            b"MESSAGE\ncontent-length: 5\n\nhello\0"
        );
        let empty = Frame::new(Command::Message).header("content-length", "7");
        assert_eq!(
            encoded(&empty, Version::V1_2),
            b"MESSAGE\ncontent-length:0\n\n\0"
        );
    }

    #[test]
    fn escape_into_follows_each_version() {
        let escape = |value: &str, version| {
            let mut out = BytesMut::new();
            escape_into(value, version, &mut out);
            out
        };
        let value = "a:b\\c\nd\re";
        assert_eq!(escape(value, Version::V1_2), &b"a\\cb\\\\c\\nd\\re"[..]);
        assert_eq!(escape(value, Version::V1_1), &b"a\\cb\\\\c\\nd\re"[..]);
        assert_eq!(escape(value, Version::V1_0), &b"a:b\\c d\re"[..]);
        assert_eq!(escape("é✓", Version::V1_2), "é✓".as_bytes());
        assert_eq!(escape("", Version::V1_2), &b""[..]);
    }

    #[test]
    fn encode_never_lets_header_text_forge_lines_or_frames() {
        let frame = Frame::new(Command::Message)
            .header("k\n", "v\nSEND\0x")
            .header("a\0", "b");
        for version in Version::ALL {
            let bytes = encoded(&frame, version);
            assert_eq!(bytes.iter().filter(|&&b| b == 0).count(), 1, "{version}");
            let decoded = decode_frame(&bytes, version);
            assert_eq!(decoded.headers.len(), 2, "{version}");
        }
        let connect = Frame::new(Command::Connect).header("login", "x\nevil:1");
        assert_eq!(
            encoded(&connect, Version::V1_2),
            b"CONNECT\nlogin:x evil:1\n\n\0"
        );
    }

    /// What decoding `encode(frame)` yields: one CR is lost from values ending in CR where the
    /// version cannot escape it, and a content-length is added to non-empty bodies without one.
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

    fn field_strategies(
        version: Version,
        command: Command,
    ) -> (BoxedStrategy<String>, BoxedStrategy<String>) {
        // At most 12 chars, so a generated name can never be `content-length`; NUL is left out
        // because encode replaces it.
        match (command.escapes_headers(), version) {
            (true, Version::V1_2) => {
                let s = prop_oneof![r"[^\x00]{0,12}", r"[a:\\\r\n]{0,12}"].boxed();
                (s.clone(), s)
            }
            (true, Version::V1_1) => {
                let s = prop_oneof![r"[^\x00\r]{0,12}", r"[a:\\\n]{0,12}"].boxed();
                (s.clone(), s)
            }
            _ => (
                prop_oneof![r"[^\x00\r\n:]{0,12}", r"[a\\]{0,12}"].boxed(),
                prop_oneof![r"[^\x00\r\n]{0,12}", r"[a:\\]{0,12}"].boxed(),
            ),
        }
    }

    fn arb_frame() -> impl Strategy<Value = (Frame, Version)> {
        (
            proptest::sample::select(Version::ALL.to_vec()),
            proptest::sample::select(ALL_COMMANDS.to_vec()),
        )
            .prop_flat_map(|(version, command)| {
                let (names, values) = field_strategies(version, command);
                (
                    Just(version),
                    Just(command),
                    proptest::collection::vec((names, values), 0..8),
                    proptest::collection::vec(any::<u8>(), 0..256),
                )
            })
            .prop_map(|(version, command, headers, body)| {
                let frame = Frame {
                    command,
                    headers,
                    body: Bytes::from(body),
                };
                (frame, version)
            })
    }

    /// Text made of the pieces the escaping and framing rules care about.
    fn arb_soup() -> impl Strategy<Value = Vec<u8>> {
        let piece = proptest::sample::select(vec![
            &b"a"[..],
            b"b",
            b"/q",
            b"-",
            b"content-length",
            b"3",
            b" ",
            b":",
            b"\\\\",
            b"\\c",
            b"\\n",
            b"\\r",
            b"\\t",
            b"\\",
            b"\r",
            "\u{e9}".as_bytes(),
            b"\xff",
        ]);
        proptest::collection::vec(piece, 0..5).prop_map(|pieces| pieces.concat())
    }

    /// Mostly well-formed frames with corruptions, so random input reaches every stage of
    /// the parser rather than failing on the command line.
    fn arb_wire() -> impl Strategy<Value = Vec<u8>> {
        let command = proptest::sample::select(vec![
            &b"SEND"[..],
            b"MESSAGE",
            b"CONNECT",
            b"CONNECTED",
            b"ERROR",
            b"SUBSCRIBE",
            b"STOMP",
            b"send",
        ]);
        let eol = proptest::sample::select(vec![&b"\n"[..], b"\r\n", b"\r\r\n"]);
        let header = (
            arb_soup(),
            proptest::bool::weighted(0.95),
            arb_soup(),
            eol.clone(),
        );
        let frame = (
            command,
            eol.clone(),
            proptest::collection::vec(header, 0..4),
            proptest::option::of(0usize..6),
            proptest::collection::vec(any::<u8>(), 0..8),
            eol,
            proptest::sample::select(vec![&b""[..], b"\n", b"\r\n\n", b"\r", b"\0"]),
        )
            .prop_map(
                |(command, command_eol, headers, content_length, body, end_eol, trailer)| {
                    let mut out = [command, command_eol].concat();
                    if let Some(len) = content_length {
                        // Usually the true length; otherwise off, to reach MissingNul.
                        let len = if len < 3 { body.len() } else { len };
                        out.extend_from_slice(format!("content-length:{len}\n").as_bytes());
                    }
                    for (name, colon, value, eol) in headers {
                        out.extend_from_slice(&name);
                        if colon {
                            out.push(b':');
                        }
                        out.extend_from_slice(&value);
                        out.extend_from_slice(eol);
                    }
                    out.extend_from_slice(end_eol);
                    out.extend_from_slice(&body);
                    out.push(0);
                    out.extend_from_slice(trailer);
                    out
                },
            );
        let noise = proptest::collection::vec(any::<u8>(), 0..8);
        proptest::collection::vec(prop_oneof![4 => frame, 1 => noise], 0..4)
            .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(
            (frame, version) in arb_frame(),
            split in any::<proptest::sample::Index>(),
        ) {
            let bytes = Bytes::from(encoded(&frame, version));
            let mut expected = frame.clone();
            if !frame.body.is_empty() {
                expected
                    .headers
                    .push(("content-length".into(), frame.body.len().to_string()));
            }
            let limits = Limits::default();

            let mut buf = BytesMut::from(&bytes[..]);
            prop_assert_eq!(
                decode(&mut buf, version, &limits),
                Ok(Some(Decoded::Frame(expected.clone())))
            );
            prop_assert!(buf.is_empty());

            let at = split.index(bytes.len());
            let mut buf = BytesMut::from(&bytes[..at]);
            prop_assert_eq!(decode(&mut buf, version, &limits), Ok(None));
            prop_assert_eq!(buf.len(), at);
            buf.extend_from_slice(&bytes[at..]);
            prop_assert_eq!(
                decode(&mut buf, version, &limits),
                Ok(Some(Decoded::Frame(expected)))
            );
            prop_assert!(buf.is_empty());
        }

        /// The same check as the fuzz target: arbitrary input never panics, and every frame
        /// decoded from it survives re-encoding.
        #[test]
        fn arbitrary_input_decodes_safely_and_re_encodes(
            input in arb_wire(),
            small in any::<bool>(),
        ) {
            let limits = if small {
                Limits { max_frame_bytes: 48, max_headers: 3, max_header_line: 16 }
            } else {
                Limits::default()
            };
            for version in Version::ALL {
                let mut buf = BytesMut::from(&input[..]);
                loop {
                    let before = buf.clone();
                    match decode(&mut buf, version, &limits) {
                        Ok(Some(Decoded::Frame(frame))) => {
                            let mut out = BytesMut::new();
                            encode(&frame, version, &mut out);
                            prop_assert_eq!(
                                decode(&mut out, version, &UNLIMITED),
                                Ok(Some(Decoded::Frame(after_round_trip(&frame, version))))
                            );
                            prop_assert!(out.is_empty());
                        }
                        Ok(Some(Decoded::HeartBeat)) => {
                            prop_assert!(buf.len() < before.len());
                            let eaten = &before[..before.len() - buf.len()];
                            prop_assert!(eaten.iter().all(|&b| b == b'\r' || b == b'\n'));
                        }
                        Ok(None) => {
                            prop_assert_eq!(&buf, &before);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
    }
}
