//! The Redis protocol (RESP2) as the subscription connections speak it, without I/O: commands
//! encoded as arrays of bulk strings, and replies cut from a read buffer. Pub/sub pushes are
//! the bulk of what arrives, so a payload is handed on as a slice of the buffer it was read
//! into, not copied.
//!
//! The command connections use redis-rs's multiplexed connection; subscriptions use this,
//! because a sharded subscription (`SSUBSCRIBE`) is confirmed by a push, which redis-rs's
//! connection offers only inside its own cluster client.

use bytes::{Buf, Bytes, BytesMut};

/// Largest bulk string accepted: Redis's own limit (`proto-max-bulk-len`, 512 MB).
const MAX_BULK: usize = 512 << 20;
/// Most elements in one array reply (a pub/sub push has 3 or 4).
const MAX_ARRAY: usize = 1 << 20;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 8;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`: the whole line.
    Error(String),
    /// `:1`.
    Int(i64),
    /// `$n` bulk string; `None` for `$-1`.
    Bulk(Option<Bytes>),
    /// `*n` array; `None` for `*-1`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// A bulk or simple string's bytes.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    /// A bulk or simple string as text.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            Reply::Simple(s) => Some(s),
            _ => None,
        }
    }
}

/// The stream is not RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Redis server sent something that is not RESP: {0}")]
pub struct ProtocolError(String);

/// Encodes a command.
pub fn command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Cuts the first whole reply off `buf`; `Ok(None)` while it is incomplete (nothing is taken).
pub fn decode(buf: &mut BytesMut) -> Result<Option<Reply>, ProtocolError> {
    let Some(end) = measure(buf, 0, 0)? else {
        return Ok(None);
    };
    let mut whole = buf.split_to(end).freeze();
    Ok(Some(parse(&mut whole)))
}

/// The length of the reply starting at `at`, if all of it is in `buf`.
fn measure(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("arrays nested too deep".into()));
    }
    let Some(line_end) = find_crlf(buf, at) else {
        if buf.len() - at > 64 * 1024 {
            return Err(ProtocolError("a line longer than 64 KiB".into()));
        }
        return Ok(None);
    };
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let line = &buf[at + 1..line_end];
    let next = line_end + 2;
    match kind {
        b'+' | b'-' | b':' => Ok(Some(next)),
        b'$' => {
            let len = length(line)?;
            let Some(len) = len else {
                return Ok(Some(next));
            };
            if len > MAX_BULK {
                return Err(ProtocolError(format!("a bulk string of {len} bytes")));
            }
            let end = next + len + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(ProtocolError("a bulk string not ended by CRLF".into()));
            }
            Ok(Some(end))
        }
        b'*' | b'>' => {
            let Some(count) = length(line)? else {
                return Ok(Some(next));
            };
            if count > MAX_ARRAY {
                return Err(ProtocolError(format!("an array of {count} elements")));
            }
            let mut pos = next;
            for _ in 0..count {
                match measure(buf, pos, depth + 1)? {
                    Some(end) => pos = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos))
        }
        other => Err(ProtocolError(format!("a reply starting with byte {other}"))),
    }
}

/// A length line: `None` for -1.
fn length(line: &[u8]) -> Result<Option<usize>, ProtocolError> {
    if line == b"-1" {
        return Ok(None);
    }
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| ProtocolError(format!("a bad length {:?}", String::from_utf8_lossy(line))))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

/// Parses a reply already measured as whole.
fn parse(buf: &mut Bytes) -> Reply {
    let kind = buf[0];
    let line_end = find_crlf(buf, 0).unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[1..line_end]).into_owned();
    buf.advance((line_end + 2).min(buf.len()));
    match kind {
        b'+' => Reply::Simple(line),
        b'-' => Reply::Error(line),
        b':' => Reply::Int(line.parse().unwrap_or(0)),
        b'$' => match line.parse::<usize>() {
            Ok(len) => {
                let body = buf.split_to(len);
                buf.advance(2);
                Reply::Bulk(Some(body))
            }
            Err(_) => Reply::Bulk(None),
        },
        _ => match line.parse::<usize>() {
            Ok(count) => Reply::Array(Some((0..count).map(|_| parse(buf)).collect())),
            Err(_) => Reply::Array(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            command(&["SSUBSCRIBE", "a b"]),
            b"*2\r\n$10\r\nSSUBSCRIBE\r\n$3\r\na b\r\n"
        );
    }

    #[test]
    fn pushes_are_cut_whole_and_in_order() {
        let wire = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$5\r\nhe\r\nl\r\n:7\r\n-MOVED 1 h:1\r\n+OK\r\n$-1\r\n*-1\r\n";
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some(Reply::Array(Some(vec![
                bulk("smessage"),
                bulk("ch"),
                bulk("he\r\nl")
            ])))
        );
        assert_eq!(decode(&mut buf).unwrap(), Some(Reply::Int(7)));
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some(Reply::Error("MOVED 1 h:1".into()))
        );
        assert_eq!(decode(&mut buf).unwrap(), Some(Reply::Simple("OK".into())));
        assert_eq!(decode(&mut buf).unwrap(), Some(Reply::Bulk(None)));
        assert_eq!(decode(&mut buf).unwrap(), Some(Reply::Array(None)));
        assert_eq!(decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn an_incomplete_reply_waits_at_every_cut() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$3\r\nabc\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decode(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing taken at {cut}");
            buf.extend_from_slice(&wire[cut..]);
            assert!(matches!(decode(&mut buf).unwrap(), Some(Reply::Array(_))));
        }
    }

    #[test]
    fn what_is_not_resp_is_an_error() {
        for bad in [
            &b"?x\r\n"[..],
            b"$abc\r\n",
            b"$3\r\nabcde\r\n",
            b"*99999999\r\n",
            b"$999999999999\r\n",
        ] {
            assert!(decode(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(decode(&mut BytesMut::from(deep.as_bytes())).is_err());
    }
}
