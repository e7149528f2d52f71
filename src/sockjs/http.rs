//! The SockJS endpoints carried by plain HTTP: the greeting, `/info`, the iframe page, the
//! receiving transports (polling and streaming) and the sending ones (`xhr_send`,
//! `jsonp_send`), with the CORS, caching and cookie headers the protocol prescribes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::frame::{self, PayloadError};
use super::session::{Next, OpenInfo, Receiver, Transport, ANOTHER_CONNECTION};
use super::{entropy, method_not_allowed, not_found, plain, Lookup, SockJs};

const NOT_CACHED: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
const ONE_YEAR: Duration = Duration::from_secs(31_536_000);
const CACHED_A_YEAR: &str = "public, max-age=31536000";
const JAVASCRIPT: &str = "application/javascript; charset=UTF-8";

/// `GET /`: the greeting.
pub fn greeting(req: &Request) -> Response {
    match *req.method() {
        Method::GET | Method::HEAD => plain(StatusCode::OK, "Welcome to SockJS!\n"),
        _ => method_not_allowed("GET"),
    }
}

/// `/info`: what the server offers, and entropy for the client.
pub fn info(service: &SockJs, req: &Request) -> Response {
    match *req.method() {
        Method::GET => {}
        Method::OPTIONS => return options(service, req, "OPTIONS, GET"),
        _ => return method_not_allowed("OPTIONS, GET"),
    }
    let body = json!({
        "websocket": service.options.websocket,
        "cookie_needed": service.options.cookie_needed,
        "origins": ["*:*"],
        "entropy": entropy(),
    });
    let mut response = Response::new(Body::from(body.to_string()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NOT_CACHED));
    cors(
        req.headers(),
        headers,
        service.options.null_origin_credentials,
    );
    response
}

/// `iframe.html`, `iframe-<version>.html`, ...
pub fn is_iframe(name: &str) -> bool {
    name.strip_prefix("iframe")
        .and_then(|rest| rest.strip_suffix(".html"))
        .is_some_and(|middle| {
            middle.bytes().all(|b| {
                b.is_ascii_digit() || b.is_ascii_lowercase() || matches!(b, b'-' | b'.' | b'_')
            })
        })
}

/// The page that bootstraps sockjs-client inside an iframe, for transports that cannot
/// cross origins themselves. Cached for a year, revalidated by its ETag.
pub fn iframe(service: &SockJs, req: &Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET");
    }
    let page = iframe_page(&service.options.client_url);
    let etag = format!("\"{}\"", short_hash(page.as_bytes()));
    let mut response = if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(page));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=UTF-8"),
        );
        r
    };
    let headers = response.headers_mut();
    cached_a_year(headers);
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    response
}

fn iframe_page(client_url: &str) -> String {
    let url = client_url.replace('"', "%22");
    format!(
        "<!DOCTYPE html>\n<html>\n<head>\n  \
         <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  \
         <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n  \
         <script>\n    document.domain = document.domain;\n    \
         _sockjs_onload = function(){{SockJS.bootstrap_iframe();}};\n  </script>\n  \
         <script src=\"{url}\"></script>\n</head>\n<body>\n  <h2>Don't panic!</h2>\n  \
         <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>\n</body>\n</html>"
    )
}

fn short_hash(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A receiving request: answers one frame (polling) or streams frames (streaming) from the
/// session `id`, opening it first when it does not exist.
pub async fn receive(
    service: Arc<SockJs>,
    req: Request,
    id: String,
    transport: Transport,
) -> Response {
    let (allowed, post) = match transport {
        Transport::XhrPolling | Transport::XhrStreaming => ("OPTIONS, POST", true),
        _ => ("GET", false),
    };
    match *req.method() {
        Method::OPTIONS if post => return options(&service, &req, allowed),
        Method::POST if post => {}
        Method::GET if !post => {}
        _ => return method_not_allowed(allowed),
    }
    let callback = match transport {
        Transport::HtmlFile | Transport::JsonpPolling => {
            match req.uri().query().and_then(|q| frame::form_value(q, "c")) {
                None => {
                    return error(
                        req.headers(),
                        &service,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "\"callback\" parameter required",
                    )
                }
                Some(c) if !frame::valid_callback(&c) => {
                    return error(
                        req.headers(),
                        &service,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "invalid \"callback\" parameter",
                    )
                }
                Some(c) => c,
            }
        }
        _ => String::new(),
    };
    let session = match service.session(&id, &req) {
        Lookup::Found(session) => session,
        Lookup::Foreign => return not_found(),
        Lookup::Missing => {
            let info = OpenInfo::of(transport, &req);
            match service.open(Some(&id), info, false) {
                Ok(session) => session,
                Err(refusal) => {
                    let mut response = plain(refusal.status, refusal.message + "\n");
                    cors(
                        req.headers(),
                        response.headers_mut(),
                        service.options.null_origin_credentials,
                    );
                    return response;
                }
            }
        }
    };
    let format = Format {
        transport,
        callback,
    };
    let mut response = match session.attach() {
        Some(receiver) if format.is_polling() => {
            let next = receiver.next(Some(service.options.heartbeat)).await;
            receiver.finish();
            Response::new(Body::from(format.frame(&render(next))))
        }
        Some(receiver) => Response::new(stream(format.clone(), Some(receiver), &service)),
        None => {
            let busy = frame::close(ANOTHER_CONNECTION.0, ANOTHER_CONNECTION.1);
            if format.is_polling() {
                Response::new(Body::from(format.frame(&busy)))
            } else {
                let chunks = [format.prelude(), format.frame(&busy)]
                    .map(|c| Ok::<_, Infallible>(Bytes::from(c)));
                Response::new(Body::from_stream(futures_util::stream::iter(chunks)))
            }
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NOT_CACHED));
    cors(
        req.headers(),
        headers,
        service.options.null_origin_credentials,
    );
    cookie(&service, req.headers(), headers);
    response
}

/// `xhr_send` and `jsonp_send`: messages from the client to an existing session.
pub async fn send(service: Arc<SockJs>, req: Request, id: String, jsonp: bool) -> Response {
    match *req.method() {
        Method::OPTIONS if !jsonp => return options(&service, &req, "OPTIONS, POST"),
        Method::POST => {}
        _ => return method_not_allowed(if jsonp { "POST" } else { "OPTIONS, POST" }),
    }
    let Lookup::Found(session) = service.session(&id, &req) else {
        return not_found();
    };
    let (parts, body) = req.into_parts();
    let req_headers = parts.headers;
    let respond_error = |status, message| error(&req_headers, &service, status, message);
    let body = match axum::body::to_bytes(body, service.options.max_payload_bytes).await {
        Ok(body) => body,
        Err(_) => return respond_error(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large."),
    };
    let form = jsonp
        && req_headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let decoded = if form {
        match frame::form_value(&String::from_utf8_lossy(&body), "d") {
            Some(d) => frame::decode_array(d.as_bytes()),
            None => Err(PayloadError::Missing),
        }
    } else {
        frame::decode_array(&body)
    };
    let messages = match decoded {
        Ok(messages) => messages,
        Err(e) => return respond_error(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
    };
    session.deliver(messages).await;
    let mut response = if jsonp {
        Response::new(Body::from("ok"))
    } else {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NOT_CACHED));
    cors(
        &req_headers,
        headers,
        service.options.null_origin_credentials,
    );
    cookie(&service, &req_headers, headers);
    response
}

/// A protocol error answer, with the CORS and cookie headers of its request.
fn error(req: &HeaderMap, service: &SockJs, status: StatusCode, message: &'static str) -> Response {
    let mut response = plain(status, message);
    cors(
        req,
        response.headers_mut(),
        service.options.null_origin_credentials,
    );
    cookie(service, req, response.headers_mut());
    response
}

/// The text of a frame.
pub fn render(next: Next) -> String {
    match next {
        Next::Open => frame::OPEN.to_string(),
        Next::Heartbeat => frame::HEARTBEAT.to_string(),
        Next::Messages(messages) => frame::messages(&messages),
        Next::Close(code, reason) => frame::close(code, &reason),
    }
}

/// How a transport wraps frames.
#[derive(Clone)]
struct Format {
    transport: Transport,
    callback: String,
}

impl Format {
    fn is_polling(&self) -> bool {
        matches!(
            self.transport,
            Transport::XhrPolling | Transport::JsonpPolling
        )
    }

    fn content_type(&self) -> &'static str {
        match self.transport {
            Transport::EventSource => "text/event-stream; charset=UTF-8",
            Transport::HtmlFile => "text/html; charset=UTF-8",
            _ => JAVASCRIPT,
        }
    }

    /// What a streaming response starts with, before any frame.
    fn prelude(&self) -> String {
        match self.transport {
            // Some browsers show nothing of a streamed response before 2 KiB arrived.
            Transport::XhrStreaming => format!("{}\n", "h".repeat(2048)),
            // Opera needed a first line before events.
            Transport::EventSource => "\r\n".to_string(),
            Transport::HtmlFile => {
                let mut page = format!(
                    "<!doctype html>\n<html><head>\n  \
                     <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  \
                     <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n\
                     </head><body><h2>Don't panic!</h2>\n  <script>\n    \
                     document.domain = document.domain;\n    var c = parent.{};\n    \
                     c.start();\n    function p(d) {{c.message(d);}};\n    \
                     window.onload = function() {{c.stop();}};\n  </script>",
                    self.callback
                );
                // Browsers render an incremental page only after 1 KiB.
                let padding = 1025usize.saturating_sub(page.len());
                page.push_str(&" ".repeat(padding));
                page.push_str("\r\n\r\n");
                page
            }
            _ => String::new(),
        }
    }

    fn frame(&self, frame: &str) -> String {
        match self.transport {
            Transport::EventSource => format!("data: {frame}\r\n\r\n"),
            Transport::HtmlFile => {
                let mut out = String::with_capacity(frame.len() + 32);
                out.push_str("<script>\np(");
                frame::push_json_string(&mut out, frame, true);
                out.push_str(");\n</script>\r\n");
                out
            }
            Transport::JsonpPolling => {
                let mut out = String::with_capacity(frame.len() + self.callback.len() + 12);
                // An empty comment first: a response that starts with the callback name can be
                // read as a Flash file by old plugins (CVE-2014-4671, "Rosetta Flash").
                out.push_str("/**/");
                out.push_str(&self.callback);
                out.push('(');
                frame::push_json_string(&mut out, frame, false);
                out.push_str(");\r\n");
                out
            }
            _ => format!("{frame}\n"),
        }
    }
}

struct Streaming {
    format: Format,
    prelude_sent: bool,
    receiver: Option<Receiver>,
    sent: usize,
    limit: usize,
    heartbeat: Duration,
}

/// A streaming body: the prelude, then frames until the session closes or the response limit
/// is reached. Dropped early (the client went away), its receiver interrupts the session.
fn stream(format: Format, receiver: Option<Receiver>, service: &SockJs) -> Body {
    let state = Streaming {
        format,
        prelude_sent: false,
        receiver,
        sent: 0,
        limit: service.options.response_limit,
        heartbeat: service.options.heartbeat,
    };
    Body::from_stream(futures_util::stream::unfold(
        state,
        |mut state| async move {
            if !state.prelude_sent {
                state.prelude_sent = true;
                let prelude = Bytes::from(state.format.prelude());
                return Some((Ok::<_, Infallible>(prelude), state));
            }
            let receiver = state.receiver.as_ref()?;
            let next = receiver.next(Some(state.heartbeat)).await;
            let last = matches!(next, Next::Close(..));
            let chunk = state.format.frame(&render(next));
            state.sent += chunk.len();
            if last || state.sent >= state.limit {
                if let Some(receiver) = state.receiver.take() {
                    receiver.finish();
                }
            }
            Some((Ok(Bytes::from(chunk)), state))
        },
    ))
}

/// The answer to a CORS preflight: cacheable for a year.
fn options(service: &SockJs, req: &Request, allowed: &'static str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    cached_a_year(headers);
    headers.insert(
        "access-control-max-age",
        HeaderValue::from_static("31536000"),
    );
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static(allowed),
    );
    cors(
        req.headers(),
        headers,
        service.options.null_origin_credentials,
    );
    response
}

fn cached_a_year(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHED_A_YEAR),
    );
    if let Ok(expires) =
        HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now() + ONE_YEAR))
    {
        headers.insert(header::EXPIRES, expires);
    }
}

/// CORS for any origin: the page's origin echoed with credentials allowed (cookies must flow
/// for sticky sessions), or `*` for no origin. `Origin: null` (pages from `file://`,
/// sandboxed frames) gets `*` as the protocol's tests expect, unless the service is told that
/// such pages may connect ([`super::Options::null_origin_credentials`]): browsers refuse `*`
/// for sockjs-client's credentialed requests, so it is then echoed with credentials too.
fn cors(req: &HeaderMap, headers: &mut HeaderMap, null_credentials: bool) {
    match req.get(header::ORIGIN) {
        Some(origin) if origin.as_bytes() != b"null" || null_credentials => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        _ => {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    if let Some(asked) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        if !asked.is_empty() {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
    }
}

/// `JSESSIONID`, echoed when the client has one, else `dummy`: its only use is to make a load
/// balancer keep the client on this server.
/// The request's `JSESSIONID` cookie, when it has a well-formed one.
pub(super) fn jsessionid(req: &HeaderMap) -> Option<&str> {
    req.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("JSESSIONID="))
        .filter(|v| {
            v.bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        })
}

fn cookie(service: &SockJs, req: &HeaderMap, headers: &mut HeaderMap) {
    if !service.options.cookie_needed {
        return;
    }
    let value = jsessionid(req).unwrap_or("dummy");
    if let Ok(cookie) = HeaderValue::from_str(&format!("JSESSIONID={value}; path=/")) {
        headers.insert(header::SET_COOKIE, cookie);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iframe_names() {
        for ok in [
            "iframe.html",
            "iframe-a.html",
            "iframe-.html",
            "iframe-0.1.2abc-dirty.2144.html",
        ] {
            assert!(is_iframe(ok), "{ok}");
        }
        for bad in [
            "iframe.htm",
            "iframe",
            "IFRAME.HTML",
            "iframe.HTML",
            "iframe.xml",
        ] {
            assert!(!is_iframe(bad), "{bad}");
        }
    }

    #[test]
    fn htmlfile_prelude_is_over_a_kilobyte() {
        let format = Format {
            transport: Transport::HtmlFile,
            callback: "cb".into(),
        };
        let prelude = format.prelude();
        assert!(prelude.len() > 1024);
        assert!(prelude.contains("var c = parent.cb;"));
        assert_eq!(format.frame("o"), "<script>\np(\"o\");\n</script>\r\n");
    }
}
