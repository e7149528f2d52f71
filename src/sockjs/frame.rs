//! SockJS framing: the `o`, `h`, `a[...]` and `c[...]` frames, the JSON string escaping the
//! protocol asks of servers, and decoding of what clients send (a JSON array of strings, or one
//! string), including the form encoding of `jsonp_send`.

use serde::Deserialize;

/// The open frame.
pub const OPEN: &str = "o";
/// The heartbeat frame.
pub const HEARTBEAT: &str = "h";

/// Why a client's payload was refused; the texts are the protocol's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// No data at all.
    Missing,
    /// Not JSON, or JSON that is neither a string nor an array of strings.
    Broken,
}

impl PayloadError {
    /// The answer body the protocol specifies.
    pub fn message(self) -> &'static str {
        match self {
            PayloadError::Missing => "Payload expected.",
            PayloadError::Broken => "Broken JSON encoding.",
        }
    }
}

/// Whether a character must travel as a `\uXXXX` escape. Besides JSON's control characters,
/// the protocol lists characters that browsers or proxies mangle in transit (joiners, line and
/// paragraph separators, invisible operators, specials).
fn must_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{200c}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}'
        | '\u{2060}'..='\u{206f}'
        | '\u{fff0}'..='\u{ffff}')
}

/// Appends `s` as a JSON string literal. With `for_html`, `<` is escaped too, so a message
/// holding `</script>` cannot end the script block of the htmlfile transport.
pub fn push_json_string(out: &mut String, s: &str, for_html: bool) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' if for_html => out.push_str("\\u003c"),
            c if must_escape(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A string as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_string(&mut out, s, false);
    out
}

/// An array frame carrying `messages`.
pub fn messages<S: AsRef<str>>(messages: &[S]) -> String {
    let mut out =
        String::with_capacity(3 + messages.iter().map(|m| m.as_ref().len() + 3).sum::<usize>());
    out.push_str("a[");
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, message.as_ref(), false);
    }
    out.push(']');
    out
}

/// A close frame.
pub fn close(code: u16, reason: &str) -> String {
    format!("c[{code},{}]", json_string(reason))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Payload {
    Many(Vec<String>),
    One(String),
}

/// The messages in a client's payload.
pub fn decode(payload: &[u8]) -> Result<Vec<String>, PayloadError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Missing);
    }
    match serde_json::from_slice::<Payload>(payload) {
        Ok(Payload::Many(messages)) => Ok(messages),
        Ok(Payload::One(message)) => Ok(vec![message]),
        Err(_) => Err(PayloadError::Broken),
    }
}

/// The messages of an `xhr_send` or `jsonp_send` body, which the protocol wants as a JSON array
/// of strings (a bare string is broken JSON encoding there; only the websocket transport
/// takes one).
pub fn decode_array(payload: &[u8]) -> Result<Vec<String>, PayloadError> {
    match decode(payload)? {
        messages if payload.trim_ascii_start().first() == Some(&b'[') => Ok(messages),
        _ => Err(PayloadError::Broken),
    }
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The value of `key` in form-encoded `text` (a query string or a form body).
pub fn form_value(text: &str, key: &str) -> Option<String> {
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

/// Whether a JSONP callback name is safe to put in a script: letters, digits, `-`, `_`, `.`.
pub fn valid_callback(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_frame_escapes_what_the_protocol_lists() {
        assert_eq!(messages(&["a", "b\"c"]), r#"a["a","b\"c"]"#);
        assert_eq!(
            messages(&["\u{0}\n\u{2028}\u{ffff}é"]),
            r#"a["\u0000\n\u2028\uffffé"]"#
        );
        assert_eq!(messages::<&str>(&[]), "a[]");
    }

    #[test]
    fn close_frame() {
        assert_eq!(close(3000, "Go away!"), r#"c[3000,"Go away!"]"#);
    }

    #[test]
    fn html_escaping_keeps_script_blocks_closed() {
        let mut out = String::new();
        push_json_string(&mut out, "</script>", true);
        assert_eq!(out, r#""\u003c/script>""#);
    }

    #[test]
    fn decodes_arrays_and_single_strings() {
        assert_eq!(decode(br#"["a","b"]"#), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(decode(br#""a""#), Ok(vec!["a".into()]));
        assert_eq!(decode_array(br#""a""#), Err(PayloadError::Broken));
        assert_eq!(decode_array(br#" ["a"]"#), Ok(vec!["a".into()]));
        assert_eq!(decode_array(b""), Err(PayloadError::Missing));
        assert_eq!(decode(b""), Err(PayloadError::Missing));
        assert_eq!(decode(br#"["a"#), Err(PayloadError::Broken));
        assert_eq!(decode(b"[1]"), Err(PayloadError::Broken));
        assert_eq!(
            decode(br#"["\ufff0\u0000"]"#),
            Ok(vec!["\u{fff0}\u{0}".into()])
        );
    }

    #[test]
    fn form_values() {
        assert_eq!(
            form_value("d=%5B%22x%22%5D", "d").as_deref(),
            Some(r#"["x"]"#)
        );
        assert_eq!(form_value("a=1&d=x+y%", "d").as_deref(), Some("x y%"));
        assert_eq!(form_value("p=p", "d"), None);
        assert_eq!(form_value("c=%63allback", "c").as_deref(), Some("callback"));
    }

    #[test]
    fn callbacks() {
        assert!(valid_callback("jQuery_1.2-x"));
        assert!(!valid_callback(""));
        assert!(!valid_callback("a(b)"));
        assert!(!valid_callback("a<b"));
    }
}
