//! The key and channel layout of the Redis backplane, in one place. All names start with `sb:`.
//!
//! - `sb:nodes`: sorted set, node id → last heartbeat (ms). A node whose heartbeat is older
//!   than `node_ttl_ms` is dead: nobody routes to it any more.
//! - `sb:alive:{node}`: set with the expiry at every heartbeat (`SET … GET`); finding it gone
//!   before it could expire means Redis lost its data, and the node announces everything again.
//! - `sb:{tenant}:presence:{user}`: set of the nodes holding sessions of that user.
//! - `sb:{tenant}:consumers:{queue}`: set of the nodes with consumers of that queue.
//! - `sb:{tenant}:ingress:{sha256}:{n}`: the claim on the n-th ingress message with those bytes.
//! - channel `sb:inbox:{node}`: messages for one node (user and queue messages).
//! - channel `sb:{tenant}:topic:{dest}`: a topic; subscribed only by nodes with subscribers.
//! - channel `sb:presence`: "a user's presence changed" (`{tenant}\0{user}`), which drops that
//!   entry from every node's presence cache.

/// The sorted set of live nodes and their last heartbeat.
pub const NODES: &str = "sb:nodes";

/// The channel of presence-change notices.
pub const PRESENCE_CHANNEL: &str = "sb:presence";

/// The key whose disappearance tells a node that Redis lost its data.
pub fn alive(node: &str) -> String {
    format!("sb:alive:{node}")
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
    format!("sb:{tenant}:presence:{user}")
}

/// The set of nodes with consumers of queue `dest`.
pub fn consumers(tenant: &str, dest: &str) -> String {
    format!("sb:{tenant}:consumers:{dest}")
}

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
    fn layout() {
        assert_eq!(alive("a"), "sb:alive:a");
        assert_eq!(inbox("a"), "sb:inbox:a");
        assert_eq!(topic_channel("t", "/topic/x"), "sb:t:topic:/topic/x");
        assert_eq!(presence("t", "alice"), "sb:t:presence:alice");
        assert_eq!(consumers("t", "/queue/q"), "sb:t:consumers:/queue/q");
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
