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
/// Limits are checked against what is buffered so far, so an oversized frame is rejected
/// without waiting for the rest of it. After an `Err` the contents of `buf` are unspecified and
/// the connection should be closed.
///
/// Decoding is stateless, so an incomplete frame is re-scanned on each call; the limits are
/// what bound that cost.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Option<Decoded>, FrameError> {
    let eols = leading_eols(buf);
    if eols > 0 {
        buf.advance(eols);
        return Ok(Some(Decoded::HeartBeat));
    }
    if buf.is_empty() || buf[..] == b"\r"[..] {
        return Ok(None);
    }
    let Some(layout) = scan(buf, limits)? else {
        return Ok(None);
    };
    let headers = parse_headers(buf, &layout, version)?;
    // The NUL is included so the next call starts at whatever follows the frame.
    let frame_bytes = buf.split_to(layout.body.end + 1).freeze();
    let body = frame_bytes.slice(layout.body);
    Ok(Some(Decoded::Frame(Frame {
        command: layout.command,
        headers,
        body,
    })))
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
    /// belong to a CRLF.
    Partial { content_len: usize },
}

/// Locates the line starting at `start`, rejecting it as soon as it is known to be too long.
fn next_line(data: &[u8], start: usize, limits: &Limits) -> Result<LineScan, FrameError> {
    let rest = data.get(start..).unwrap_or_default();
    // Content, optional CR and LF: anything longer without an LF is already too long, so the
    // search never runs past the limit.
    let window = rest
        .get(..limits.max_header_line.saturating_add(2))
        .unwrap_or(rest);
    let too_long = FrameError::HeaderLineTooLong {
        limit: limits.max_header_line,
    };
    match window.iter().position(|&b| b == b'\n' || b == 0) {
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
            Ok(LineScan::Partial { content_len })
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
/// limits without allocating, so that a partial frame costs nothing but the scan.
fn scan(data: &[u8], limits: &Limits) -> Result<Option<Layout>, FrameError> {
    let too_large = FrameError::FrameTooLarge {
        limit: limits.max_frame_bytes,
    };
    let (command, headers_start) = match next_line(data, 0, limits)? {
        LineScan::Complete { content, next } => {
            (parse_command(data.get(content).unwrap_or_default())?, next)
        }
        LineScan::Partial { .. } => return need_more(data.len(), limits),
    };
    if headers_start >= limits.max_frame_bytes {
        return Err(too_large);
    }

    let mut pos = headers_start;
    let mut header_count = 0;
    let mut content_length = None;
    let (headers_end, body_start) = loop {
        let (content, next) = match next_line(data, pos, limits)? {
            LineScan::Complete { content, next } => (content, next),
            LineScan::Partial { content_len } => {
                // Any content means another header line is under way, not the blank line.
                if content_len > 0 && header_count >= limits.max_headers {
                    return Err(FrameError::TooManyHeaders {
                        limit: limits.max_headers,
                    });
                }
                return need_more(data.len(), limits);
            }
        };
        if next >= limits.max_frame_bytes {
            return Err(too_large);
        }
        if content.is_empty() {
            break (pos, next);
        }
        header_count += 1;
        if header_count > limits.max_headers {
            return Err(FrameError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        let line = data.get(content).unwrap_or_default();
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(FrameError::MissingColon { line: echo(line) });
        };
        if content_length.is_none() {
            let (name, value) = line.split_at(colon);
            // Escapes only ever produce `\r \n : \`, so a raw name equal to
            // `content-length` is exactly the names that unescape to it, in every version.
            if name == b"content-length" {
                let value = value.get(1..).unwrap_or_default();
                content_length = Some(
                    parse_content_length(value)
                        .ok_or_else(|| FrameError::InvalidContentLength { value: echo(value) })?,
                );
            }
        }
        pos = next;
    };

    let body_end = match content_length {
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
            let searchable = data
                .get(body_start..limits.max_frame_bytes.min(data.len()))
                .unwrap_or_default();
            match searchable.iter().position(|&b| b == 0) {
                Some(i) => body_start + i,
                None => return need_more(data.len(), limits),
            }
        }
    };
    Ok(Some(Layout {
        command,
        headers: headers_start..headers_end,
        header_count,
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
/// 1.2 escapes `\r`, `\n`, `:` and `\`; 1.1 escapes `\n`, `:` and `\` (a CR stays raw, so a
/// trailing one is lost to CRLF stripping). A NUL, and an LF where the version cannot escape
/// it, is replaced by a space: written raw they would end the line or the frame early, letting
/// header content forge headers or whole frames.
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
