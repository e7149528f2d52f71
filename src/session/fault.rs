//! Every way a session can end with an ERROR, as one enum: each value knows the ERROR frame's
//! `message` header, its body, any extra headers the spec asks for, and its label in metrics
//! and logs, so the three always agree.

use crate::policy::{Operation, PolicyError};
use crate::stomp::Command;

/// Why a session ends with an ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The first frame was not CONNECT or STOMP.
    ExpectedConnect(Command),
    /// CONNECT twice on one connection.
    AlreadyConnected,
    /// No STOMP version in common; the client's `accept-version`.
    UnsupportedVersion(String),
    /// No tenant for the connection.
    UnknownTenant,
    /// A heart-beat header that does not parse.
    InvalidHeartBeat(String),
    /// The tenant's policy refused the CONNECT, or could not decide.
    Authentication(PolicyError),
    /// The tenant's policy refused an operation on a destination, or could not decide.
    Access {
        /// SUBSCRIBE or SEND.
        op: Operation,
        /// The destination.
        dest: String,
        /// The policy's answer.
        error: PolicyError,
    },
    /// A frame lacks a header it needs.
    MissingHeader {
        /// The frame's command.
        command: Command,
        /// The header.
        name: &'static str,
    },
    /// A destination of no known kind, or malformed.
    InvalidDestination(String),
    /// A transaction id that was not begun.
    UnknownTransaction(String),
    /// BEGIN of an id already open.
    DuplicateTransaction(String),
    /// More open transactions than allowed.
    TooManyTransactions(usize),
    /// More frames in one transaction than allowed.
    TransactionTooLarge(usize),
    /// SUBSCRIBE with an id already in use.
    DuplicateSubscription(String),
    /// More subscriptions than allowed.
    TooManySubscriptions(usize),
    /// An `ack` header of no known mode.
    InvalidAckMode(String),
    /// A `prefetch-count` header that is not a non-negative integer.
    InvalidPrefetch(String),
    /// An `x-stream-offset` header that is none of its forms (the reason).
    InvalidStreamOffset(String),
    /// `x-stream-offset` on a destination that has no stream.
    NoStream(String),
    /// The message store could not be read.
    StoreUnavailable(String),
    /// What the connection holds would pass its memory budget.
    MemoryBudget {
        /// What was being added.
        what: &'static str,
        /// The budget, in bytes.
        limit: usize,
    },
    /// UNSUBSCRIBE of an id not in use.
    UnknownSubscription(String),
    /// ACK/NACK of an id this connection never sent.
    UnknownMessage(String),
    /// A frame only servers send.
    ServerFrame(Command),
    /// The broker refused a SEND (a full queue backlog).
    NotAccepted(String),
    /// The tenant's backend did not take a SEND to an application destination (the reason).
    Upstream(String),
    /// The codec refused the bytes.
    MalformedFrame(String),
    /// Nothing arrived within the negotiated heart-beat.
    HeartBeatTimeout,
    /// No CONNECT within the limit (ms).
    ConnectTimeout(u64),
    /// A frame began and did not end within the limit (ms).
    FrameTimeout(u64),
    /// The node is stopping.
    ShuttingDown,
    /// The node is draining for a restart: its sessions are closed one by one over the drain
    /// period, each asked to reconnect (to another node, as the load balancer no longer sends
    /// new connections here).
    Draining,
    /// The operator deleted or reconfigured the session's tenant (the reason).
    TenantClosed(String),
    /// The tenant's backend closed the user's sessions (the disconnect API).
    Disconnected,
    /// The user may not connect until then (ms since the epoch): a ban from the disconnect
    /// API.
    Banned(u64),
    /// The transport failed.
    Transport(String),
}

impl Fault {
    /// The ERROR frame's `message` header.
    pub fn message(&self) -> String {
        match self {
            Fault::ExpectedConnect(_) => "expected CONNECT".into(),
            Fault::AlreadyConnected => "already connected".into(),
            Fault::UnsupportedVersion(_) => "unsupported STOMP version".into(),
            Fault::UnknownTenant => "unknown tenant".into(),
            Fault::InvalidHeartBeat(_) => "invalid heart-beat header".into(),
            Fault::Authentication(_) => "authentication failed".into(),
            Fault::Access { .. } => "access denied".into(),
            Fault::MissingHeader { name, .. } => format!("missing {name} header"),
            Fault::InvalidDestination(_) => "invalid destination".into(),
            Fault::UnknownTransaction(_) => "unknown transaction".into(),
            Fault::DuplicateTransaction(_) => "duplicate transaction".into(),
            Fault::TooManyTransactions(_) => "too many transactions".into(),
            Fault::TransactionTooLarge(_) => "transaction too large".into(),
            Fault::DuplicateSubscription(_) => "duplicate subscription id".into(),
            Fault::TooManySubscriptions(_) => "too many subscriptions".into(),
            Fault::InvalidAckMode(_) => "invalid ack mode".into(),
            Fault::InvalidPrefetch(_) => "invalid prefetch-count".into(),
            Fault::InvalidStreamOffset(_) => "invalid x-stream-offset".into(),
            Fault::NoStream(_) => "no stream for x-stream-offset".into(),
            Fault::StoreUnavailable(_) => "message store unavailable".into(),
            Fault::MemoryBudget { .. } => "connection memory budget exceeded".into(),
            Fault::UnknownSubscription(_) => "unknown subscription".into(),
            Fault::UnknownMessage(_) => "unknown message".into(),
            Fault::ServerFrame(_) => "unexpected frame".into(),
            Fault::NotAccepted(_) => "message not accepted".into(),
            Fault::Upstream(_) => "message not accepted by the backend".into(),
            Fault::MalformedFrame(_) => "malformed frame".into(),
            Fault::HeartBeatTimeout => "heart-beat timeout".into(),
            Fault::ConnectTimeout(_) => "CONNECT timeout".into(),
            Fault::FrameTimeout(_) => "frame timeout".into(),
            Fault::ShuttingDown => "server shutting down".into(),
            Fault::Draining => "server draining".into(),
            Fault::TenantClosed(_) => "tenant closed".into(),
            Fault::Disconnected => "disconnected by the server".into(),
            Fault::Banned(_) => "user banned".into(),
            Fault::Transport(_) => "transport error".into(),
        }
    }

    /// The ERROR frame's body: what went wrong, for a person.
    pub fn detail(&self) -> String {
        match self {
            Fault::ExpectedConnect(command) => format!(
                "the first frame must be CONNECT or STOMP, not {}",
                command.as_str()
            ),
            Fault::AlreadyConnected => "CONNECT was sent twice on one connection".into(),
            Fault::UnsupportedVersion(list) => {
                format!("this server speaks STOMP 1.0, 1.1 and 1.2; the client accepts {list}")
            }
            Fault::UnknownTenant => {
                "the CONNECT host header names no tenant and this node has no 'default' tenant"
                    .into()
            }
            Fault::InvalidHeartBeat(value) => format!(
                "heart-beat must be two non-negative integers like 10000,10000, got '{value}'"
            ),
            Fault::Authentication(e) => e.to_string(),
            Fault::Access { op, dest, error } => {
                let verb = match op {
                    Operation::Subscribe => "subscribe to",
                    Operation::Send => "send to",
                };
                format!("may not {verb} {dest}: {error}")
            }
            Fault::MissingHeader { command, name } => {
                format!("{} requires a '{name}' header", command.as_str())
            }
            Fault::InvalidDestination(why) | Fault::NotAccepted(why) => why.clone(),
            Fault::Upstream(why) => format!(
                "{why}; the message was not handed to the tenant's backend, send it again later"
            ),
            Fault::UnknownTransaction(id) => {
                format!("no transaction '{id}' was begun on this connection")
            }
            Fault::DuplicateTransaction(id) => format!("transaction '{id}' is already open"),
            Fault::TooManyTransactions(max) => {
                format!("a connection may hold at most {max} open transactions")
            }
            Fault::TransactionTooLarge(max) => {
                format!("a transaction may hold at most {max} frames")
            }
            Fault::DuplicateSubscription(id) => {
                format!("subscription '{id}' already exists on this connection")
            }
            Fault::TooManySubscriptions(max) => {
                format!("a connection may hold at most {max} subscriptions")
            }
            Fault::InvalidAckMode(mode) => {
                format!("ack must be auto, client or client-individual, got '{mode}'")
            }
            Fault::InvalidStreamOffset(why) => why.clone(),
            Fault::NoStream(dest) => format!(
                "{dest} keeps no history to start from: x-stream-offset applies to user \
                 destinations (/user/queue/...) of a tenant that stores user messages, and to \
                 topics under one of the tenant's topic_history prefixes"
            ),
            Fault::StoreUnavailable(why) => why.clone(),
            Fault::InvalidPrefetch(value) => format!(
                "prefetch-count must be a non-negative integer (0 = no limit), got '{value}'"
            ),
            Fault::MemoryBudget { what, limit } => format!(
                "{what} would take this connection past its memory budget of {limit} bytes \
                 (server.connection_memory_bytes), which covers open transactions, \
                 subscriptions, cached authorization verdicts, a partial frame and \
                 unacknowledged queue messages"
            ),
            Fault::UnknownSubscription(id) => {
                format!("there is no subscription '{id}' on this connection")
            }
            Fault::UnknownMessage(id) => {
                format!("'{id}' is not the id of a message sent on this connection")
            }
            Fault::ServerFrame(command) => {
                format!("{} is a frame only the server sends", command.as_str())
            }
            Fault::MalformedFrame(why) | Fault::Transport(why) => why.clone(),
            Fault::HeartBeatTimeout => {
                "nothing was received from the client within its heart-beat interval".into()
            }
            Fault::ConnectTimeout(ms) => format!("no CONNECT frame within {ms} ms"),
            Fault::FrameTimeout(ms) => {
                format!("a frame began and did not end within {ms} ms (server.frame_timeout_ms)")
            }
            Fault::ShuttingDown => {
                "the server is shutting down; reconnect to another node or later".into()
            }
            Fault::Draining => {
                "this node is being restarted; reconnect now, another node will serve you".into()
            }
            Fault::TenantClosed(why) => why.clone(),
            Fault::Disconnected => {
                "the application closed every session of this user (logout or suspension)".into()
            }
            Fault::Banned(until_ms) => format!(
                "the application refuses this user's connections for {} more seconds",
                until_ms
                    .saturating_sub(crate::util::unix_ms())
                    .div_ceil(1000)
            ),
        }
    }

    /// Headers the spec asks for beyond `message` (the versions the server speaks, when none
    /// was in common).
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Fault::UnsupportedVersion(_) => &[("version", "1.0,1.1,1.2")],
            _ => &[],
        }
    }

    /// Its label in metrics and logs (one of [`crate::metrics::SESSION_ERRORS`]).
    pub fn label(&self) -> &'static str {
        match self {
            Fault::Authentication(PolicyError::Denied(_)) => "authentication_denied",
            Fault::Authentication(PolicyError::Unavailable(_)) => "policy_unavailable",
            Fault::Access {
                error: PolicyError::Denied(_),
                ..
            } => "access_denied",
            Fault::Access {
                error: PolicyError::Unavailable(_),
                ..
            } => "policy_unavailable",
            Fault::MalformedFrame(_) => "malformed_frame",
            Fault::HeartBeatTimeout => "heartbeat_timeout",
            Fault::ConnectTimeout(_) => "connect_timeout",
            Fault::FrameTimeout(_) => "frame_timeout",
            Fault::ShuttingDown => "shutdown",
            Fault::Draining => "draining",
            Fault::TenantClosed(_) => "tenant_closed",
            Fault::Disconnected => "disconnected",
            Fault::Banned(_) => "banned",
            Fault::Transport(_) => "transport_error",
            Fault::NotAccepted(_) => "not_accepted",
            Fault::Upstream(_) => "upstream_refused",
            Fault::StoreUnavailable(_) => "store_unavailable",
            Fault::TooManySubscriptions(_)
            | Fault::TooManyTransactions(_)
            | Fault::TransactionTooLarge(_)
            | Fault::MemoryBudget { .. } => "limit",
            _ => "protocol_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_and_unavailable_policies_read_alike_but_count_apart() {
        let denied = Fault::Authentication(PolicyError::Denied("bad token".into()));
        let down = Fault::Authentication(PolicyError::Unavailable("trap".into()));
        assert_eq!(denied.message(), down.message());
        assert_eq!(denied.detail(), "bad token");
        assert!(down.detail().contains("unavailable"), "{}", down.detail());
        assert_ne!(denied.label(), down.label());
        for fault in [denied, down] {
            assert!(crate::metrics::SESSION_ERRORS.contains(&fault.label()));
        }
    }

    #[test]
    fn only_a_version_mismatch_lists_the_versions() {
        assert_eq!(
            Fault::UnsupportedVersion("2.0".into()).extra_headers(),
            &[("version", "1.0,1.1,1.2")]
        );
        assert!(Fault::AlreadyConnected.extra_headers().is_empty());
    }
}
