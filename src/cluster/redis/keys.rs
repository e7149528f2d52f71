//! The key and channel layout of the Redis backplane, in one place. All names start with `sb:`.
//!
//! - `sb:nodes`: sorted set, node id → last heartbeat (ms). A node whose heartbeat is older
//!   than `node_ttl_ms` is dead: nobody routes to it any more.
//! - `sb:alive:{node}`: set with the expiry at every heartbeat (`SET … GET`); finding it gone
//!   before it could expire means Redis lost its data, and the node announces everything again.
//! - `sb:{tenant:user}:presence`: set of the nodes holding sessions of that user. Every key of
//!   one user carries the hash tag `{tenant:user}`, so that they share a Redis Cluster slot
//!   and one script may touch them together.
//! - `sb:{tenant:user}:stream`: the user's stored messages, a Redis stream whose entry ids are
//!   `{offset}-{stored at, ms}` (so a read from an offset is a range read), fields `d`
//!   (destination), `h` (headers, JSON) and `b` (body); capped near the retention count and
//!   expiring with the retention age.
//! - `sb:{tenant:user}:meta`: hash of the stream's epoch (`e`), its last offset (`n`) and per
//!   destination the cursor (`c:{dest}`); expires with the stream.
//! - `sb:{tenant:topic}:topic-stream` and `sb:{tenant:topic}:topic-meta`: the same for a topic
//!   with history (`[[tenants.topic_history]]`), one stream per topic; the meta hash has no
//!   cursors (a topic's subscribers name their own start). The suffixes differ from a user's,
//!   so a user named like a topic never shares its keys.
//! - `sb:{tag}:history:since`: when a primary began keeping history (ms), one per primary (the
//!   tag is one that hashes to a slot it serves); set if absent by every node as it connects to
//!   that primary. A node that saw it and finds it gone knows that primary lost its data and
//!   records the time in `sb:history:lost`.
//! - `sb:{tenant:queue}:consumers`: set of the nodes with consumers of that queue.
//! - `sb:{tenant:queue}:queue`: the queue's messages (a durable queue), a Redis stream with
//!   one consumer group, `g`, in which each node is a consumer named by its id; an entry is
//!   deleted once acknowledged. Entries given back by a node are held by the consumer
//!   [`RETURNED`] until a node claims them.
//! - `sb:holdings:{node}`: set of what the node has announced (one member per user present and
//!   queue consumed, see [`holding`]), so that a node that starts again under its id, or comes
//!   back after an outage during which changes were lost, withdraws what it no longer holds.
//! - `sb:{tenant}:upstream`: a tenant's stream for its backends (`[tenants.upstream] stream`,
//!   unless `stream_key` names another): one entry per client message to an application
//!   prefix or connection event, written through `Backplane::append_stream`, read by the backends.
//! - `sb:{tenant}:ingress:{sha256}:{n}`: the claim on the n-th ingress message with those bytes.
//! - channel `sb:inbox:{node}`: messages for one node (user and queue messages); sharded on a
//!   Redis Cluster.
//! - channel `sb:{tenant}:topic:{dest}`: a topic; subscribed only by nodes with subscribers;
//!   sharded on a Redis Cluster.
//! - channel `sb:ask`: a question to every node (the presence and disconnect APIs), JSON
//!   `{"id", "from", "query"}`; classic, so every node hears it. Replies go to the asking
//!   node's inbox as `{"answer": id, "node", "reply"}`.
//! - `sb:{tenant}:bans`: sorted set, user → until when (ms) they may not connect (the
//!   disconnect API's ban); read by a node as it announces itself.
//! - channel `sb:presence`: "a user's presence changed" (`{tenant}\0{user}`), which drops that
//!   entry from every node's presence cache; classic, so every node hears it.
//! - `sb:tenants`: hash, tenant id → the JSON document of a tenant the operator created,
//!   changed or deleted through the admin API (`{"tenant": {...}}` or `{"deleted": true}`);
//!   it overrides the config files of every node.
//! - channel `sb:tenant-changed`: a tenant id whose document changed, or `plugin:` and a
//!   tenant id whose plugin was uploaded; classic, so every node hears it and reads the
//!   document (or the plugin) again.
//! - `sb:{tenant}:plugin`: the `.wasm` last uploaded for a tenant through the admin API; a
//!   node installs it when told, and when it joins.
//!
//! On a Redis Cluster the single-key commands go to their key's primary; `sb:nodes`,
//! `sb:alive:{node}`, `sb:holdings:{node}` and `sb:history:lost` live where their names hash.
//! While the primary holding `sb:nodes` is down, nodes route with the list they read last.

use crate::broker::Interest;

/// The sorted set of live nodes and their last heartbeat.
pub const NODES: &str = "sb:nodes";

/// The channel of questions to every node.
pub const ASK_CHANNEL: &str = "sb:ask";

/// The tenants changed through the admin API.
pub const TENANTS: &str = "sb:tenants";

/// The channel that says a tenant's document changed.
pub const TENANT_CHANNEL: &str = "sb:tenant-changed";

/// The notice that a tenant's plugin was uploaded starts with this (tenant ids have no `:`).
pub const PLUGIN_NOTICE: &str = "plugin:";

/// The plugin last uploaded for a tenant.
pub fn plugin(tenant: &str) -> String {
    format!("sb:{{{tenant}}}:plugin")
}

/// A tenant's bans.
pub fn bans(tenant: &str) -> String {
    format!("sb:{{{tenant}}}:bans")
}

/// Entry `key` of a tenant's plugin cache. The tag is the tenant and the key together, so a
/// tenant's entries spread over a Redis Cluster's slots.
pub fn plugin_cache(tenant: &str, key: &str) -> String {
    format!("sb:{{{tenant}:{key}}}:plugin-cache")
}

/// The channel of presence-change notices.
pub const PRESENCE_CHANNEL: &str = "sb:presence";

/// The key whose disappearance tells a node that Redis lost its data.
pub fn alive(node: &str) -> String {
    format!("sb:alive:{node}")
}

/// A tenant's stream for its backends, unless its config names another key.
pub fn upstream(tenant: &str) -> String {
    format!("sb:{{{tenant}}}:upstream")
}

/// The set of what `node` has announced.
pub fn holdings(node: &str) -> String {
    format!("sb:holdings:{node}")
}

/// A member of [`holdings`]: `u\0{tenant}\0{user}` or `q\0{tenant}\0{queue}`; `None` for a
/// topic (a channel subscription, which ends with the connection).
pub fn holding(tenant: &str, interest: &Interest) -> Option<String> {
    match interest {
        Interest::User { user, .. } => Some(format!("u\0{tenant}\0{user}")),
        Interest::Queue { dest, .. } => Some(format!("q\0{tenant}\0{dest}")),
        Interest::Topic { .. } => None,
    }
}

/// The tenant and the interest (as given up) of a [`holding`].
pub fn parse_holding(member: &str) -> Option<(String, Interest)> {
    let mut parts = member.splitn(3, '\0');
    let (kind, tenant, name) = (parts.next()?, parts.next()?, parts.next()?);
    let interest = match kind {
        "u" => Interest::User {
            user: name.to_string(),
            held: false,
        },
        "q" => Interest::Queue {
            dest: name.to_string(),
            held: false,
        },
        _ => return None,
    };
    Some((tenant.to_string(), interest))
}

/// The channel of messages for one node.
pub fn inbox(node: &str) -> String {
    format!("sb:inbox:{node}")
}

/// The channel of a topic.
pub fn topic_channel(tenant: &str, dest: &str) -> String {
    format!("sb:{tenant}:topic:{dest}")
}

/// The set of nodes holding `user`'s sessions.
pub fn presence(tenant: &str, user: &str) -> String {
    format!("sb:{{{tenant}:{user}}}:presence")
}

/// The stream of `user`'s stored messages.
pub fn user_stream(tenant: &str, user: &str) -> String {
    format!("sb:{{{tenant}:{user}}}:stream")
}

/// The epoch, last offset and cursors of `user`'s stream.
pub fn user_meta(tenant: &str, user: &str) -> String {
    format!("sb:{{{tenant}:{user}}}:meta")
}

/// The stream of a topic's stored messages.
pub fn topic_stream(tenant: &str, dest: &str) -> String {
    format!("sb:{{{tenant}:{dest}}}:topic-stream")
}

/// The epoch and last offset of a topic's stream.
pub fn topic_meta(tenant: &str, dest: &str) -> String {
    format!("sb:{{{tenant}:{dest}}}:topic-meta")
}

/// When the primary owning `tag`'s slot began keeping history (one mark per primary: each
/// can lose its data alone).
pub fn history_since(tag: &str) -> String {
    format!("sb:{{{tag}}}:history:since")
}

/// When a node last found that Redis had lost its data.
pub const HISTORY_LOST: &str = "sb:history:lost";

/// The set of nodes with consumers of queue `dest`.
pub fn consumers(tenant: &str, dest: &str) -> String {
    format!("sb:{{{tenant}:{dest}}}:consumers")
}

/// The stream of queue `dest`'s messages.
pub fn queue_stream(tenant: &str, dest: &str) -> String {
    format!("sb:{{{tenant}:{dest}}}:queue")
}

/// The consumer group of every queue stream.
pub const QUEUE_GROUP: &str = "g";

/// The consumer that holds entries a node gave back, until a node claims them.
pub const RETURNED: &str = "~returned";

/// The claim on the `n`-th ingress message whose bytes hash to `digest`.
pub fn ingress_claim(tenant: &str, digest: &str, n: u64) -> String {
    format!("sb:{tenant}:ingress:{digest}:{n}")
}

/// The payload of a presence-change notice.
pub fn presence_notice(tenant: &str, user: &str) -> String {
    format!("{tenant}\0{user}")
}

/// The (tenant, user) of a presence-change notice.
pub fn parse_presence_notice(payload: &[u8]) -> Option<(&str, &str)> {
    std::str::from_utf8(payload).ok()?.split_once('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_round_trip_and_skip_topics() {
        let user = Interest::User {
            user: "al:ice".into(),
            held: true,
        };
        let member = holding("acme", &user).unwrap();
        assert_eq!(
            parse_holding(&member),
            Some((
                "acme".to_string(),
                Interest::User {
                    user: "al:ice".into(),
                    held: false
                }
            ))
        );
        let queue = Interest::Queue {
            dest: "/queue/a".into(),
            held: true,
        };
        assert!(matches!(
            parse_holding(&holding("t", &queue).unwrap()),
            Some((_, Interest::Queue { held: false, .. }))
        ));
        let topic = Interest::Topic {
            dest: "/topic/a".into(),
            held: true,
        };
        assert_eq!(holding("t", &topic), None);
        assert_eq!(parse_holding("x\0t\0y"), None);
        assert_eq!(parse_holding("u\0only-tenant"), None);
    }

    #[test]
    fn layout() {
        assert_eq!(alive("a"), "sb:alive:a");
        assert_eq!(inbox("a"), "sb:inbox:a");
        assert_eq!(topic_channel("t", "/topic/x"), "sb:t:topic:/topic/x");
        assert_eq!(presence("t", "alice"), "sb:{t:alice}:presence");
        assert_eq!(user_stream("t", "alice"), "sb:{t:alice}:stream");
        assert_eq!(user_meta("t", "alice"), "sb:{t:alice}:meta");
        assert_eq!(
            topic_stream("t", "/topic/x"),
            "sb:{t:/topic/x}:topic-stream"
        );
        assert_eq!(topic_meta("t", "/topic/x"), "sb:{t:/topic/x}:topic-meta");
        assert_eq!(consumers("t", "/queue/q"), "sb:{t:/queue/q}:consumers");
        assert_eq!(queue_stream("t", "/queue/q"), "sb:{t:/queue/q}:queue");
        assert_eq!(ingress_claim("t", "ab", 2), "sb:t:ingress:ab:2");
    }

    #[test]
    fn presence_notices_round_trip() {
        let notice = presence_notice("acme", "al:ice");
        assert_eq!(
            parse_presence_notice(notice.as_bytes()),
            Some(("acme", "al:ice"))
        );
        assert_eq!(parse_presence_notice(b"no separator"), None);
        assert_eq!(parse_presence_notice(&[0xff, 0, 1]), None);
    }
}
