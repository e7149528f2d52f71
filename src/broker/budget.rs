//! Byte budgets: how much memory one connection, one tenant's queue backlogs or the whole
//! node's may hold. A budget is a counter with a ceiling that many threads charge and release;
//! it owns no data, only the arithmetic, so every holder charges what it keeps and gives it
//! back when it lets go.

use std::sync::atomic::{AtomicUsize, Ordering};

/// What one header costs beyond its bytes: two `String`s and a slot in the list.
const HEADER_OVERHEAD: usize = 56;

/// What a list of headers holds: its bytes and what each costs beyond them. Every holder of
/// headers (a backlog, a store, a transaction) charges them the same way.
pub fn headers_weight(headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD)
        .sum()
}

/// A ceiling in bytes and what is charged against it.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// An empty budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Charges `bytes` if they fit; false (and nothing charged) if they do not.
    pub fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Charges `bytes` even past the ceiling, for what cannot be refused (a message given back
    /// by a consumer was accepted once); later charges are refused until it is given back.
    pub fn take_anyway(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_add(bytes))
            });
    }

    /// Gives back `bytes` charged earlier. Never goes below zero: a holder that gives back more
    /// than it took is a bug, and an underflow would turn the budget into no limit at all.
    pub fn give_back(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Bytes still free.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.used())
    }

    /// The ceiling.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_fits_and_nothing_more() {
        let budget = Budget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(41), "60 + 41 is over the limit");
        assert_eq!(budget.used(), 60, "a refused charge leaves nothing behind");
        assert!(budget.try_take(40));
        assert_eq!(budget.room(), 0);
        budget.give_back(100);
        assert_eq!(budget.used(), 0);
        budget.give_back(1);
        assert_eq!(budget.used(), 0, "never below zero");
        assert!(!budget.try_take(usize::MAX), "no overflow");
        budget.take_anyway(150);
        assert_eq!(budget.room(), 0);
        assert!(!budget.try_take(1), "over the ceiling, nothing more fits");
        budget.give_back(150);
        assert!(budget.try_take(1));
    }
}
