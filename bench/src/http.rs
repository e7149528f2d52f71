//! The least HTTP/1.1 the publish API needs, without I/O: POST requests with a JSON body built
//! from per-target prefixes, and keep-alive responses parsed one after another out of a
//! buffer, so requests can be pipelined.

/// Why a response cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("response without Content-Length (chunked or close-delimited) is not supported")]
    NoLength,
}

/// Builds `POST` requests for one URL and key.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    /// Everything before the Content-Length value.
    head: Vec<u8>,
}

impl RequestBuilder {
    pub fn new(host: &str, path: &str, api_key: &str) -> RequestBuilder {
        RequestBuilder {
            head: format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n\
                 Content-Type: application/json\r\nContent-Length: "
            )
            .into_bytes(),
        }
    }

    /// Appends a request whose body is `parts` concatenated.
    pub fn write(&self, out: &mut Vec<u8>, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        out.extend_from_slice(&self.head);
        crate::stomp::write_decimal(out, len as u64);
        out.extend_from_slice(b"\r\n\r\n");
        for part in parts {
            out.extend_from_slice(part);
        }
    }
}

/// The JSON body of a publish up to the opening quote of `content`; the caller appends the
/// content (which must need no escaping) and [`JSON_END`].
pub fn json_prefix(destination: &str, receiver: Option<&str>) -> Vec<u8> {
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let mut out = String::from("{");
    if let Some(receiver) = receiver {
        out.push_str(&format!("\"receiver\":{},", quote(receiver)));
    }
    out.push_str(&format!(
        "\"destination\":{},\"content\":\"",
        quote(destination)
    ));
    out.into_bytes()
}

pub const JSON_END: &[u8] = b"\"}";

/// One response read out of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
    /// Bytes of the buffer it took.
    pub len: usize,
    /// The server will close the connection after it.
    pub close: bool,
}

/// Reads the response at the start of `buf`; `None` until it is complete.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response<'_>>, HttpError> {
    let Some(head_len) = crate::ws::head_len(buf) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| HttpError::Malformed("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("no HTTP/1.x status line"));
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed("bad status code"))?;
    let mut length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| HttpError::Malformed("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    // 1xx, 204 and 304 have no body whatever the headers say.
    let length = if status < 200 || status == 204 || status == 304 {
        0
    } else {
        length.ok_or(HttpError::NoLength)?
    };
    if buf.len() < head_len + length {
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        body: &buf[head_len..head_len + length],
        len: head_len + length,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_request_with_length() {
        let b = RequestBuilder::new("127.0.0.1:8080", "/api/v1/tenants/default/publish", "k");
        let prefix = json_prefix("/queue/bench", Some("u\"1"));
        let mut out = Vec::new();
        b.write(&mut out, &[&prefix, b"123 0:1 ", JSON_END]);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /api/v1/tenants/default/publish HTTP/1.1\r\n"));
        assert!(head.contains("Authorization: Bearer k"));
        assert!(head.ends_with(&format!("Content-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["receiver"], "u\"1");
        assert_eq!(json["destination"], "/queue/bench");
        assert_eq!(json["content"], "123 0:1 ");
        let topic: serde_json::Value = serde_json::from_slice(
            &[
                json_prefix("/topic/x", None).as_slice(),
                b"1 0:1 ",
                JSON_END,
            ]
            .concat(),
        )
        .unwrap();
        assert!(topic.get("receiver").is_none());
    }

    #[test]
    fn parses_pipelined_responses() {
        let wire = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"delivered\":1}HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        let first = parse_response(wire).unwrap().unwrap();
        assert_eq!(first.status, 202);
        assert_eq!(first.body, b"{\"delivered\":1}");
        assert!(!first.close);
        let second = parse_response(&wire[first.len..]).unwrap().unwrap();
        assert_eq!(second.status, 401);
        assert!(second.close);
        assert_eq!(first.len + second.len, wire.len());
        for cut in 0..first.len {
            assert_eq!(parse_response(&wire[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn refuses_unsupported_responses() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::NoLength)
        );
        assert!(parse_response(b"SPDY 200\r\n\r\n").is_err());
        let no_body = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(no_body.body, b"");
    }
}
