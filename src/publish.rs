//! Publishing a message from a backend, whatever the entry (the HTTP publish API, a tenant's
//! Redis ingress channel): the JSON body is checked and resolved to a destination, then routed
//! through the tenant. Failures are a [`PublishError`]; each entry turns them into its own
//! answer (the HTTP API into a status code, ingress into a log line and a metric).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::broker::destination::{self, Target};
use crate::broker::message::RESERVED_HEADERS;
use crate::broker::{Content, RouteError};
use crate::metrics::DropReason;
use crate::stomp::Limits;
use crate::tenant::{Delivery, Tenant};

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The body is malformed or names an invalid destination or header.
    #[error("{0}")]
    Invalid(String),
    /// The content is larger than a frame may be.
    #[error("{0}")]
    TooLarge(String),
    /// The tenant's policy knows no such channel code.
    #[error("unknown channel code '{code}' for tenant '{tenant}'")]
    UnknownChannel {
        /// The code.
        code: String,
        /// The tenant.
        tenant: String,
    },
    /// The tenant's policy failed (a plugin that trapped or is not loaded).
    #[error("{0}")]
    PolicyUnavailable(String),
    /// A queue with no consumer is full.
    #[error(transparent)]
    Refused(#[from] RouteError),
    /// The cluster bus is down and no session on this node took the message.
    #[error("the cluster bus (Redis) is unreachable and no session on this node took the message: it was not delivered; retry later")]
    ClusterUnavailable,
}

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The user to deliver to; absent = deliver to `destination` itself.
    pub receiver: Option<String>,
    /// Where to deliver: with a receiver, the user destination (e.g. `/queue/notice`).
    pub destination: Option<String>,
    /// A channel code the tenant's policy maps to a destination (instead of `destination`).
    #[serde(rename = "channelCode")]
    pub channel_code: Option<String>,
    /// The body: a string as is, anything else as JSON, byte for byte as the publisher wrote it
    /// (so key order and number formatting survive).
    pub content: Box<RawValue>,
    /// Headers passed to subscribers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Headers the broker adds to a MESSAGE: destination, subscription, message-id, content-length,
/// in the client acknowledgement modes of STOMP 1.2 ack, and for a stored message
/// x-stream-offset or (a queue message) redelivered: never both.
const BROKER_HEADERS: usize = 6;
/// Bytes those but the destination take at most, with the command line, an added content-type
/// and the frame's end, for the size check (512, and the longest `x-stream-offset` line). The
/// destination is counted apart: the publisher makes it as long as a destination may be, far
/// more than this.
const BROKER_HEADER_BYTES: usize = 512 + "x-stream-offset:18446744073709551615\n".len();

/// Bytes `text` takes in a header line as STOMP 1.2 subscribers get it, the longest encoding:
/// `\`, `:`, CR and LF are escaped to two bytes each.
fn escaped_len(text: &str) -> usize {
    text.len()
        + text
            .bytes()
            .filter(|b| matches!(b, b'\\' | b':' | b'\r' | b'\n'))
            .count()
}

fn bad(message: impl Into<String>) -> PublishError {
    PublishError::Invalid(message.into())
}

/// Where a publish body says its message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address<'a> {
    /// A destination, as given.
    Destination(&'a str),
    /// A channel code, for the tenant's policy to resolve to a destination.
    ChannelCode(&'a str),
}

impl PublishRequest {
    /// Parses a publish body.
    pub fn parse(body: &[u8]) -> Result<PublishRequest, PublishError> {
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
    }

    /// Where the message goes: exactly one of `destination` and `channelCode` must be given.
    pub fn address(&self) -> Result<Address<'_>, PublishError> {
        match (&self.destination, &self.channel_code) {
            (Some(_), Some(_)) => Err(bad("give either 'destination' or 'channelCode', not both")),
            (None, None) => Err(bad("missing 'destination' (or 'channelCode')")),
            (Some(d), None) => Ok(Address::Destination(d)),
            (None, Some(code)) => Ok(Address::ChannelCode(code)),
        }
    }

    /// Checks the rest of the body, `dest` being its destination (given, or resolved from its
    /// channel code), against `limits`: the target it routes to and the content it carries.
    /// Pure, so that everything but the channel code's resolution is checked by one function
    /// the `publish` fuzz target calls directly.
    pub fn check(self, dest: &str, limits: &Limits) -> Result<(Target, Content), PublishError> {
        let target = match &self.receiver {
            Some(user) if user.is_empty() => return Err(bad("'receiver' is empty")),
            Some(user) => {
                if dest.starts_with("/user/") {
                    return Err(bad(format!(
                        "with a receiver, give the destination the user subscribed to without /user (e.g. '/queue/notice'), not '{dest}'"
                    )));
                }
                match destination::for_send(&format!("/user/{user}{dest}")) {
                    Ok(t) if !user.contains('/') => t,
                    _ => {
                        return Err(bad(format!(
                            "'{dest}' is not a user destination: use /queue/... or /topic/... (and a receiver without '/')"
                        )))
                    }
                }
            }
            None => destination::for_send(dest).map_err(|e| bad(e.to_string()))?,
        };
        for (name, value) in &self.headers {
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(bad(format!(
                    "header '{name}' is set by the broker and cannot be given"
                )));
            }
            if name.is_empty() || name.contains(['\n', '\r', ':']) {
                return Err(bad(format!(
                    "invalid header name '{name}': it must be non-empty, without ':' or line breaks"
                )));
            }
            if value.contains(['\n', '\r']) {
                return Err(bad(format!("header '{name}' has a line break in its value, which STOMP 1.0 subscribers cannot receive")));
            }
        }
        let raw = self.content.get();
        let (content_type, body) = if raw.starts_with('"') {
            let text: String =
                serde_json::from_str(raw).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
            ("text/plain", Bytes::from(text))
        } else {
            ("application/json", Bytes::copy_from_slice(raw.as_bytes()))
        };
        // The frame subscribers get obeys the limits clients' frames do: at most as many headers
        // as a frame may hold beside the ones the broker adds, no line longer than a header line
        // may be, and no more bytes in all than a frame may have.
        let most_headers = limits.max_headers.saturating_sub(BROKER_HEADERS);
        let given = self.headers.len() + usize::from(!self.headers.contains_key("content-type"));
        if given > most_headers {
            return Err(bad(format!(
                "{given} headers (content-type included); a message may carry at most {most_headers} (server.max_headers = {} less the {BROKER_HEADERS} the broker adds)",
                limits.max_headers
            )));
        }
        let subscribed = match &target {
            Target::Topic(d) | Target::Queue(d) => escaped_len(d),
            Target::User { dest, .. } => escaped_len(&destination::user_facing(dest)),
        };
        let mut frame_bytes =
            body.len() + BROKER_HEADER_BYTES + "destination:\n".len() + subscribed;
        for (name, value) in &self.headers {
            let line = escaped_len(name) + 1 + escaped_len(value);
            if line > limits.max_header_line {
                return Err(bad(format!(
                    "header '{name}' is {line} bytes as an escaped line; the limit is server.max_header_line = {}",
                    limits.max_header_line
                )));
            }
            frame_bytes += line + 1;
        }
        if frame_bytes > limits.max_frame_bytes {
            return Err(PublishError::TooLarge(format!(
                "the message would be a {frame_bytes}-byte frame (content {} bytes plus headers); the limit is server.max_frame_bytes = {}",
                body.len(),
                limits.max_frame_bytes
            )));
        }
        let mut headers: Vec<(String, String)> = Vec::with_capacity(self.headers.len() + 1);
        if !self.headers.contains_key("content-type") {
            headers.push(("content-type".into(), content_type.into()));
        }
        headers.extend(self.headers);
        Ok((target, Content { headers, body }))
    }
}

/// Parses and checks a publish body for `tenant`: where it goes and what it carries.
pub async fn prepare(
    tenant: &Tenant,
    body: &[u8],
    limits: &Limits,
) -> Result<(Target, Content), PublishError> {
    let request = PublishRequest::parse(body)?;
    let dest = match request.address()? {
        Address::Destination(d) => d.to_owned(),
        Address::ChannelCode(code) => match tenant.policy().resolve_channel(code).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(PublishError::UnknownChannel {
                    code: code.to_owned(),
                    tenant: tenant.id.clone(),
                })
            }
            Err(e) => {
                return Err(PublishError::PolicyUnavailable(format!(
                    "channel code '{code}' could not be resolved: {e}"
                )))
            }
        },
    };
    request.check(&dest, limits)
}

/// Prepares and routes one publish body for `tenant`, waiting until Redis took whatever was
/// forwarded, so that the answer is true. A message that reached nobody because the cluster is
/// down is an error, not a delivery.
pub async fn publish(
    tenant: &Tenant,
    body: &[u8],
    limits: &Limits,
) -> Result<(Target, Delivery), PublishError> {
    let (target, content) = prepare(tenant, body, limits).await?;
    match tenant.route(&target, content, true).await {
        Ok(d) if d.cluster_unreachable && !d.reached_anyone() => {
            Err(PublishError::ClusterUnavailable)
        }
        Ok(d) => Ok((target, d)),
        Err(e) => {
            tenant.metrics.dropped(DropReason::BacklogFull);
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame limit far below the default, so that a destination's length shows.
    const SMALL: Limits = Limits {
        max_frame_bytes: 1000,
        max_headers: 8,
        max_header_line: 64,
    };

    fn check(body: &str) -> Result<(Target, Content), PublishError> {
        let request = PublishRequest::parse(body.as_bytes())?;
        let dest = match request.address()? {
            Address::Destination(d) | Address::ChannelCode(d) => d.to_owned(),
        };
        request.check(&dest, &SMALL)
    }

    fn refused_for(body: &str, limit: &str) -> bool {
        matches!(check(body), Err(PublishError::Invalid(e) | PublishError::TooLarge(e)) if e.contains(limit))
    }

    // The cases below were found by the `publish` fuzz target (fuzz/corpus/publish/regression-*):
    // each passed the checks and made a MESSAGE frame that the same limits refuse.

    #[test]
    fn content_length_and_ack_count_among_the_broker_headers() {
        // Eight at most: subscription, message-id, ack, destination, content-length and a
        // stored message's x-stream-offset leave two, content-type included.
        let two = r#"{"destination":"/topic/a","content":"1","headers":{"a":"1"}}"#;
        assert!(check(two).is_ok());
        let three = r#"{"destination":"/topic/a","content":"1","headers":{"a":"1","b":"2"}}"#;
        assert!(refused_for(three, "max_headers"));
    }

    #[test]
    fn header_lines_are_measured_as_escaped() {
        // `x:` and 31 colons, each escaped to `\c`: 64 bytes, the limit.
        let at = format!(
            r#"{{"destination":"/topic/a","content":"1","headers":{{"x":"{}"}}}}"#,
            ":".repeat(31)
        );
        assert!(check(&at).is_ok());
        let over = at.replace("\":::", "\"::::");
        assert!(refused_for(&over, "max_header_line"));
    }

    #[test]
    fn the_destination_counts_towards_the_frame_size() {
        let body = |dest: &str| {
            format!(
                r#"{{"destination":"{dest}","content":"{}"}}"#,
                "x".repeat(400)
            )
        };
        assert!(check(&body("/topic/a")).is_ok());
        let long = format!("/topic/{}", "a".repeat(600));
        assert!(refused_for(&body(&long), "max_frame_bytes"));
        let user = format!(
            r#"{{"receiver":"u","destination":"/queue/{}","content":"x"}}"#,
            "a".repeat(490)
        );
        assert!(refused_for(&user, "max_frame_bytes"));
    }
}
