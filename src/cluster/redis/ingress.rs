//! Which node handles a message on a tenant's seed-format ingress channel. Every node hears the
//! channel; the one that claims the n-th occurrence of those bytes in Redis (`SET NX`) handles
//! it. All subscribers see one channel's messages in the same order, so identical payloads
//! sent twice are two claims, not one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::keys;

/// How long a claim key lives in Redis.
pub const CLAIM_TTL_MS: u64 = 60_000;

/// How long a payload's occurrence count is remembered; must not be shorter than the time all
/// nodes take to see the same message, and is kept well under [`CLAIM_TTL_MS`].
const REMEMBER: Duration = Duration::from_secs(60);

/// Occurrence counts of the payloads this node heard, by digest.
#[derive(Debug, Default)]
pub struct Claims {
    seen: HashMap<String, (u64, Instant)>,
}

impl Claims {
    /// The key to claim for `payload`, heard now on `tenant`'s channel.
    pub fn next(&mut self, tenant: &str, payload: &[u8], now: Instant) -> String {
        let digest = crate::util::hex(&Sha256::digest(payload));
        let entry = self.seen.entry(digest.clone()).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now;
        keys::ingress_claim(tenant, &digest, entry.0)
    }

    /// Forgets payloads not heard for a while.
    pub fn expire(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(REMEMBER) else {
            return;
        };
        self.seen.retain(|_, (_, at)| *at > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_payloads_are_counted_and_different_ones_are_not() {
        let mut claims = Claims::default();
        let now = Instant::now();
        let first = claims.next("t", b"{\"a\":1}", now);
        let second = claims.next("t", b"{\"a\":1}", now);
        let other = claims.next("t", b"{\"a\":2}", now);
        assert!(
            first.ends_with(":1") && second.ends_with(":2"),
            "{first} {second}"
        );
        assert_eq!(first[..first.len() - 2], second[..second.len() - 2]);
        assert!(other.ends_with(":1"));
        assert_ne!(first, other);
        assert!(first.starts_with("sb:t:ingress:"));
    }

    #[test]
    fn old_counts_are_forgotten() {
        let mut claims = Claims::default();
        let start = Instant::now();
        claims.next("t", b"x", start);
        claims.expire(start + REMEMBER + Duration::from_secs(1));
        assert!(claims.next("t", b"x", start + REMEMBER * 2).ends_with(":1"));
    }
}
