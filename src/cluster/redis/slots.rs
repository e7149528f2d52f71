//! Where a key lives in a Redis Cluster, without I/O: the hash slot of a key or channel (CRC16
//! of its hash tag, modulo 16384), the map of slots to primaries read from `CLUSTER SHARDS`, and
//! the redirections (`MOVED`, `ASK`) a primary answers when a slot is elsewhere. A single Redis
//! is the same map with one primary owning every slot, so the rest of the backplane routes the
//! same way whichever it runs on.

use redis::Value;

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes with.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
};

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The part of `key` that is hashed: what is between the first `{` and the first `}` after it,
/// when that is not empty; else the whole key.
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The hash slot of a key or sharded channel.
pub fn slot(key: &[u8]) -> u16 {
    crc16(hashed_part(key)) % SLOTS as u16
}

/// One primary of the deployment and what it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// `host:port`.
    pub addr: String,
    /// The Redis node id (empty for a single Redis).
    pub id: String,
    /// Slots it owns.
    pub slots: usize,
}

/// Which primary owns each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Per slot, the index of its primary in `primaries`; [`UNOWNED`] when no reachable
    /// primary serves it.
    owner: Box<[u16]>,
    /// The primaries.
    pub primaries: Vec<Primary>,
    /// True for a Redis Cluster (sharded pub/sub, per-slot scripts); false for one Redis.
    pub cluster: bool,
}

/// A slot no primary serves.
const UNOWNED: u16 = u16::MAX;

impl Topology {
    /// One Redis at `addr`, owning every slot.
    pub fn single(addr: &str) -> Topology {
        Topology {
            owner: vec![0; SLOTS].into_boxed_slice(),
            primaries: vec![Primary {
                addr: addr.to_string(),
                id: String::new(),
                slots: SLOTS,
            }],
            cluster: false,
        }
    }

    /// A Redis Cluster whose map is not read yet: no slot is served.
    pub fn unserved() -> Topology {
        Topology {
            owner: vec![UNOWNED; SLOTS].into_boxed_slice(),
            primaries: Vec::new(),
            cluster: true,
        }
    }

    /// The topology in a `CLUSTER SHARDS` reply: per shard, its slot ranges and the primary
    /// that is online. A shard whose primary is not online (failed, or a failover under way)
    /// leaves its slots unowned.
    pub fn from_shards(reply: &Value) -> Result<Topology, String> {
        let shards = items(reply).ok_or("CLUSTER SHARDS did not answer a list")?;
        let mut owner = vec![UNOWNED; SLOTS].into_boxed_slice();
        let mut primaries: Vec<Primary> = Vec::new();
        for shard in shards {
            let fields = pairs(shard).ok_or("a shard is not a map")?;
            let ranges = field(&fields, "slots")
                .and_then(items)
                .ok_or("a shard has no slots")?;
            let nodes = field(&fields, "nodes")
                .and_then(items)
                .ok_or("a shard has no nodes")?;
            let primary = nodes.iter().filter_map(pairs).find(|node| {
                field_text(node, "role").as_deref() == Some("master")
                    && field_text(node, "health").as_deref() == Some("online")
            });
            let Some(node) = primary else { continue };
            let host = field_text(&node, "endpoint")
                .filter(|e| !e.is_empty() && e != "?")
                .or_else(|| field_text(&node, "ip"))
                .ok_or("a primary has no address")?;
            let port = field_text(&node, "port").ok_or("a primary has no port")?;
            let index = primaries.len();
            let mut owned = 0;
            for range in ranges.chunks(2) {
                let (Some(start), Some(end)) = (
                    range.first().and_then(number),
                    range.get(1).and_then(number),
                ) else {
                    return Err("a slot range is not two numbers".into());
                };
                if start > end || end >= SLOTS as u64 {
                    return Err(format!("slot range {start}-{end} is out of bounds"));
                }
                for slot in start..=end {
                    owner[slot as usize] = index as u16;
                }
                owned += (end - start + 1) as usize;
            }
            primaries.push(Primary {
                addr: format!("{host}:{port}"),
                id: field_text(&node, "id").unwrap_or_default(),
                slots: owned,
            });
        }
        Ok(Topology {
            owner,
            primaries,
            cluster: true,
        })
    }

    /// The index of the primary owning `slot`, if one does.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&UNOWNED) | None => None,
            Some(&index) => Some(usize::from(index)),
        }
    }

    /// The index of the primary at `addr`.
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.primaries.iter().position(|p| p.addr == addr)
    }

    /// Slots no primary serves.
    pub fn unowned(&self) -> usize {
        self.owner.iter().filter(|&&o| o == UNOWNED).count()
    }

    /// A slot `primary` owns, if it owns any (to route a command that names no key there).
    pub fn any_slot_of(&self, primary: usize) -> Option<u16> {
        self.owner
            .iter()
            .position(|&o| usize::from(o) == primary)
            .map(|s| s as u16)
    }
}

/// Where a primary sent a command instead of running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// The slot moved for good: route it there from now on (the map is out of date).
    Moved {
        /// The slot.
        slot: u16,
        /// `host:port` of its new primary.
        addr: String,
    },
    /// The slot is migrating: ask `addr` this once (after `ASKING`).
    Ask {
        /// The slot.
        slot: u16,
        /// `host:port` of the primary importing it.
        addr: String,
    },
}

impl Redirect {
    /// The redirection in an error reply, if it is one.
    pub fn of(error: &redis::RedisError) -> Option<Redirect> {
        let (addr, slot) = error.redirect_node()?;
        let addr = addr.to_string();
        match error.code() {
            Some("ASK") => Some(Redirect::Ask { slot, addr }),
            _ => Some(Redirect::Moved { slot, addr }),
        }
    }
}

/// The elements of an array reply.
fn items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// A map reply (RESP3) or a flat array of names and values (RESP2) as pairs.
fn pairs(value: &Value) -> Option<Vec<(String, &Value)>> {
    match value {
        Value::Map(entries) => Some(
            entries
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, v)))
                .collect(),
        ),
        Value::Array(flat) => Some(
            flat.chunks(2)
                .filter_map(|kv| Some((text(kv.first()?)?, kv.get(1)?)))
                .collect(),
        ),
        _ => None,
    }
}

fn field<'a>(fields: &[(String, &'a Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
}

fn field_text(fields: &[(String, &Value)], name: &str) -> Option<String> {
    field(fields, name).and_then(text)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn number(value: &Value) -> Option<u64> {
    text(value)?.parse().ok()
}

/// For each slot, a short name that hashes to it: a key made with it as its hash tag lands in
/// that slot (to place a key on a chosen primary).
pub fn tag_for(slot: u16) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); SLOTS];
        let mut missing = SLOTS;
        let mut n: u64 = 0;
        while missing > 0 {
            let candidate = format!("{n:x}");
            let s = usize::from(slot_of_str(&candidate));
            if tags[s].is_empty() {
                tags[s] = candidate;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[usize::from(slot) % SLOTS]
}

fn slot_of_str(s: &str) -> u16 {
    slot(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_what_redis_computes() {
        // CRC16/XMODEM's check value, and slots printed by `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"a"), 15495);
        assert_eq!(slot(b"b"), 3300);
        assert_eq!(slot(b"user:1"), 10778);
        assert_eq!(slot(b"user:2"), 6777);
        assert_eq!(slot(b"foo"), 12182);
    }

    #[test]
    fn a_hash_tag_decides_the_slot() {
        assert_eq!(slot(b"user:{42}:profile"), slot(b"42"));
        assert_eq!(slot(b"sb:{t:alice}:stream"), slot(b"sb:{t:alice}:presence"));
        // An empty tag, or none closed, hashes the whole key.
        assert_eq!(slot(b"a{}b"), crc16(b"a{}b") % 16384);
        assert_eq!(slot(b"a{b"), crc16(b"a{b") % 16384);
        // Only the first tag counts, and it ends at the first closing brace.
        assert_eq!(slot(b"{x}{y}"), slot(b"x"));
        assert_eq!(slot(b"sb:{t:al}ice}:meta"), slot(b"t:al"));
    }

    #[test]
    fn every_slot_has_a_tag() {
        for s in [0u16, 1, 5460, 5461, 16383] {
            assert_eq!(slot(format!("sb:{{{}}}:x", tag_for(s)).as_bytes()), s);
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(id: &str, port: i64, role: &str, health: &str) -> Value {
        Value::Array(vec![
            bulk("id"),
            bulk(id),
            bulk("port"),
            Value::Int(port),
            bulk("ip"),
            bulk("127.0.0.1"),
            bulk("endpoint"),
            bulk("127.0.0.1"),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            Value::Int(10),
            bulk("health"),
            bulk(health),
        ])
    }

    fn shard(ranges: &[i64], nodes: Vec<Value>) -> Value {
        Value::Array(vec![
            bulk("slots"),
            Value::Array(ranges.iter().map(|&n| Value::Int(n)).collect()),
            bulk("nodes"),
            Value::Array(nodes),
        ])
    }

    #[test]
    fn cluster_shards_give_each_slot_its_online_primary() {
        let reply = Value::Array(vec![
            shard(
                &[0, 5460, 16000, 16383],
                vec![
                    node("a", 7000, "master", "online"),
                    node("d", 7003, "replica", "online"),
                ],
            ),
            shard(
                &[5461, 10922],
                vec![
                    node("b", 7001, "master", "failed"),
                    node("e", 7004, "master", "online"),
                ],
            ),
            // A shard whose primary failed and no replica took over yet.
            shard(&[10923, 15999], vec![node("c", 7002, "master", "failed")]),
        ]);
        let topology = Topology::from_shards(&reply).unwrap();
        assert!(topology.cluster);
        assert_eq!(topology.primaries.len(), 2);
        assert_eq!(topology.primaries[0].addr, "127.0.0.1:7000");
        assert_eq!(topology.primaries[0].slots, 5461 + 384);
        assert_eq!(topology.primaries[1].addr, "127.0.0.1:7004");
        assert_eq!(topology.owner(0), Some(0));
        assert_eq!(topology.owner(16383), Some(0));
        assert_eq!(topology.owner(6000), Some(1));
        assert_eq!(topology.owner(12000), None);
        assert_eq!(topology.unowned(), 15999 - 10923 + 1);
        assert_eq!(topology.index_of("127.0.0.1:7004"), Some(1));
        assert_eq!(topology.any_slot_of(1), Some(5461));
    }

    #[test]
    fn broken_shard_replies_are_refused() {
        assert!(Topology::from_shards(&Value::Int(1)).is_err());
        let bad_range = Value::Array(vec![shard(
            &[0, 20000],
            vec![node("a", 7000, "master", "online")],
        )]);
        assert!(Topology::from_shards(&bad_range).is_err());
    }

    #[test]
    fn a_single_redis_owns_every_slot() {
        let topology = Topology::single("127.0.0.1:6379");
        assert!(!topology.cluster);
        assert_eq!(topology.owner(0), Some(0));
        assert_eq!(topology.owner(16383), Some(0));
        assert_eq!(topology.unowned(), 0);
    }

    #[test]
    fn redirections_are_read_from_error_replies() {
        let moved = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::Moved),
            "moved",
            "3999 127.0.0.1:7002".to_string(),
        ));
        assert_eq!(
            Redirect::of(&moved),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "127.0.0.1:7002".into()
            })
        );
    }
}
