//! One user's stored messages put back in offset order on a node, when the store is shared by
//! the cluster: several nodes append to the user's stream, and each forwards what it appended
//! to the nodes holding the user, so a node may hear offset 7 before 6, or miss one whose
//! sender lost its Redis connection. [`Gate`] is the rule, without I/O: what goes on to the
//! user's subscriptions now, what waits, and when the missing range must be read from the
//! store.
//!
//! A gate is seeded with the stream's head when the user's first subscription on the node is
//! made, before that subscription reads the stream: everything below the head is in what
//! every later subscription reads, so the gate only has to order what comes after it. A gap
//! is filled by reading the stream after the last offset let through; whatever the read did
//! not find (dropped by retention since) is given up, so a fill always ends the gap it was
//! made for.
//!
//! A topic's gate differs in one way: a topic also has live-only subscribers, which never
//! read the stream, so what arrives from below the seed is let through (late, at once)
//! instead of dropped; a subscription that read the stream drops it itself, having
//! delivered it from the read.

use std::collections::BTreeMap;

use super::Position;

/// One user's order on one node.
#[derive(Debug)]
pub struct Gate<T> {
    seeded: bool,
    epoch: u64,
    /// The offset to let through next.
    next: u64,
    /// What arrived before the gate was seeded.
    early: Vec<(Position, T)>,
    /// What arrived past a gap, by offset.
    held: BTreeMap<u64, T>,
    /// A read of the missing range is under way.
    filling: bool,
    /// Let what arrives from below the seed through (a topic's gate, see the module notes).
    pass_below_seed: bool,
    /// The offset it was seeded with, in its epoch (0 once the epoch changed).
    seeded_at: u64,
}

/// What a step of the gate gives: messages to deliver now, in order, and a range to read.
#[derive(Debug)]
pub struct Released<T> {
    /// Messages for the user's subscriptions, in offset order.
    pub deliver: Vec<(Position, T)>,
    /// Read the stream after this position and hand the result to [`Gate::filled`].
    pub fill: Option<Position>,
}

impl<T> Default for Released<T> {
    fn default() -> Self {
        Released {
            deliver: Vec::new(),
            fill: None,
        }
    }
}

impl<T> Released<T> {
    fn merge(&mut self, other: Released<T>) {
        self.deliver.extend(other.deliver);
        self.fill = self.fill.or(other.fill);
    }
}

impl<T> Default for Gate<T> {
    fn default() -> Self {
        Gate {
            seeded: false,
            epoch: 0,
            next: 0,
            early: Vec::new(),
            held: BTreeMap::new(),
            filling: false,
            pass_below_seed: false,
            seeded_at: 0,
        }
    }
}

impl<T> Gate<T> {
    /// A gate that holds everything until it is seeded.
    pub fn new() -> Gate<T> {
        Gate::default()
    }

    /// A topic's gate: what arrives from below the seed goes on instead of being dropped.
    pub fn passing_below_seed() -> Gate<T> {
        Gate {
            pass_below_seed: true,
            ..Gate::default()
        }
    }

    /// True once it knows where the stream was.
    pub fn is_seeded(&self) -> bool {
        self.seeded
    }

    /// Messages waiting in it.
    pub fn waiting(&self) -> usize {
        self.early.len() + self.held.len()
    }

    /// Seeds it with the stream's head (its epoch and the offset its next message gets); what
    /// arrived meanwhile is ordered from there.
    pub fn seed(&mut self, head: Position) -> Released<T> {
        let mut out = Released::default();
        if self.seeded {
            return out;
        }
        self.seeded = true;
        self.epoch = head.epoch;
        self.next = head.offset.max(1);
        self.seeded_at = self.next;
        let mut early = std::mem::take(&mut self.early);
        early.sort_by_key(|(p, _)| (p.epoch != head.epoch, p.offset));
        for (position, item) in early {
            out.merge(self.offer(position, item));
        }
        out
    }

    /// A message stored at `position` arrived.
    pub fn offer(&mut self, position: Position, item: T) -> Released<T> {
        let mut out = Released::default();
        if !self.seeded {
            self.early.push((position, item));
            return out;
        }
        if position.epoch != self.epoch {
            // The store lost what it held and numbers from 1 again.
            self.restart(position.epoch, &mut out);
        }
        if position.offset < self.next {
            if self.pass_below_seed && position.offset < self.seeded_at {
                // Stored before the seed and sent only now: live-only subscribers need it.
                out.deliver.push((position, item));
            }
            return out; // it came before, or the stream read when seeding holds it
        }
        if position.offset == self.next {
            out.deliver.push((position, item));
            self.next += 1;
            self.release_in_order(&mut out);
            return out;
        }
        self.held.insert(position.offset, item);
        out.fill = self.ask_fill();
        out
    }

    /// What a read after the requested position found (`messages` by offset, of `epoch`),
    /// and the offset the stream's next message gets (`next_offset`): everything below it
    /// has been found or is gone.
    pub fn filled(&mut self, epoch: u64, messages: Vec<(u64, T)>, next_offset: u64) -> Released<T> {
        self.filling = false;
        let mut out = Released::default();
        if epoch != self.epoch {
            self.restart(epoch, &mut out);
        }
        for (offset, item) in messages {
            if offset < self.next {
                continue;
            }
            self.next = offset + 1;
            out.deliver.push((Position { epoch, offset }, item));
        }
        self.next = self.next.max(next_offset);
        let covered: Vec<u64> = self.held.range(..self.next).map(|(o, _)| *o).collect();
        for offset in covered {
            self.held.remove(&offset);
        }
        self.release_in_order(&mut out);
        if !self.held.is_empty() {
            out.fill = self.ask_fill();
        }
        out
    }

    /// The read failed: where to read from when trying again.
    pub fn fill_failed(&mut self) -> Option<Position> {
        self.filling = false;
        self.ask_fill()
    }

    /// Messages may have been missed (the cluster connection was lost for a while): where to
    /// read from to catch up, unless a read is under way or the gate is not seeded.
    pub fn catch_up(&mut self) -> Option<Position> {
        if !self.seeded {
            return None;
        }
        self.ask_fill()
    }

    fn ask_fill(&mut self) -> Option<Position> {
        if self.filling || !self.seeded {
            return None;
        }
        self.filling = true;
        Some(Position {
            epoch: self.epoch,
            offset: self.next - 1,
        })
    }

    /// What waits of the old epoch goes on (it is not in the new one), then counting starts
    /// at 1 in `epoch`.
    fn restart(&mut self, epoch: u64, out: &mut Released<T>) {
        let old = self.epoch;
        for (offset, item) in std::mem::take(&mut self.held) {
            out.deliver.push((Position { epoch: old, offset }, item));
        }
        self.epoch = epoch;
        self.next = 1;
        self.seeded_at = 0;
        self.filling = false;
    }

    fn release_in_order(&mut self, out: &mut Released<T>) {
        while let Some(item) = self.held.remove(&self.next) {
            out.deliver.push((
                Position {
                    epoch: self.epoch,
                    offset: self.next,
                },
                item,
            ));
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> Position {
        Position { epoch: 5, offset }
    }

    fn offsets(released: &Released<&str>) -> Vec<u64> {
        released.deliver.iter().map(|(p, _)| p.offset).collect()
    }

    #[test]
    fn in_order_goes_straight_through_and_repeats_are_dropped() {
        let mut gate = Gate::new();
        assert!(offsets(&gate.seed(at(3))).is_empty());
        assert_eq!(offsets(&gate.offer(at(3), "c")), [3]);
        assert_eq!(offsets(&gate.offer(at(4), "d")), [4]);
        let again = gate.offer(at(4), "d");
        assert!(again.deliver.is_empty() && again.fill.is_none());
        assert!(
            gate.offer(at(2), "b").deliver.is_empty(),
            "below the seed: in the stream read"
        );
    }

    #[test]
    fn what_arrives_before_the_seed_waits_and_is_ordered() {
        let mut gate = Gate::new();
        assert!(gate.offer(at(4), "d").deliver.is_empty());
        assert!(gate.offer(at(2), "b").deliver.is_empty());
        assert!(gate.offer(at(3), "c").deliver.is_empty());
        assert_eq!(gate.waiting(), 3);
        let released = gate.seed(at(3));
        assert_eq!(offsets(&released), [3, 4]);
        assert!(released.fill.is_none());
    }

    #[test]
    fn a_late_message_is_put_back_in_its_place() {
        let mut gate = Gate::new();
        gate.seed(at(1));
        assert_eq!(offsets(&gate.offer(at(1), "a")), [1]);
        let early = gate.offer(at(3), "c");
        assert!(early.deliver.is_empty());
        assert_eq!(early.fill, Some(at(1)), "read after the last let through");
        assert_eq!(gate.offer(at(4), "d").fill, None, "one read at a time");
        assert_eq!(offsets(&gate.offer(at(2), "b")), [2, 3, 4]);
        // The read comes back with what arrived meanwhile: nothing twice.
        let filled = gate.filled(5, vec![(2, "b"), (3, "c"), (4, "d")], 5);
        assert!(filled.deliver.is_empty() && filled.fill.is_none());
        assert_eq!(offsets(&gate.offer(at(5), "e")), [5]);
    }

    #[test]
    fn a_missed_message_is_read_from_the_store() {
        let mut gate = Gate::new();
        gate.seed(at(1));
        let gap = gate.offer(at(3), "c");
        assert_eq!(gap.fill, Some(at(0)));
        let filled = gate.filled(5, vec![(1, "a"), (2, "b"), (3, "c")], 4);
        assert_eq!(offsets(&filled), [1, 2, 3]);
        assert_eq!(gate.waiting(), 0);
    }

    #[test]
    fn what_the_store_no_longer_has_is_given_up_so_the_gap_ends() {
        let mut gate = Gate::new();
        gate.seed(at(1));
        gate.offer(at(4), "d");
        // Retention dropped 1 to 3 before the read.
        let filled = gate.filled(5, vec![(4, "d")], 5);
        assert_eq!(offsets(&filled), [4]);
        assert_eq!(offsets(&gate.offer(at(5), "e")), [5]);
    }

    #[test]
    fn a_gap_past_what_the_read_saw_is_read_again() {
        let mut gate = Gate::new();
        gate.seed(at(1));
        gate.offer(at(2), "b");
        // 7 arrives after the read was made at next_offset 3.
        gate.offer(at(7), "g");
        let filled = gate.filled(5, vec![(1, "a"), (2, "b")], 3);
        assert_eq!(offsets(&filled), [1, 2]);
        assert_eq!(filled.fill, Some(at(2)), "3 to 6 are still missing");
    }

    #[test]
    fn a_new_epoch_starts_again_at_one_and_lets_the_old_go_first() {
        let mut gate = Gate::new();
        gate.seed(at(10));
        gate.offer(at(12), "old");
        let new = Position {
            epoch: 9,
            offset: 2,
        };
        let released = gate.offer(new, "new2");
        assert_eq!(
            offsets(&released),
            [12],
            "the old epoch's held message goes on"
        );
        assert_eq!(
            released.fill,
            Some(Position {
                epoch: 9,
                offset: 0
            })
        );
        let filled = gate.filled(9, vec![(1, "new1"), (2, "new2")], 3);
        assert_eq!(offsets(&filled), [1, 2]);
    }

    #[test]
    fn a_topics_gate_lets_what_was_stored_before_the_seed_through_once() {
        let mut gate = Gate::passing_below_seed();
        gate.offer(at(2), "b");
        gate.offer(at(5), "e");
        let released = gate.seed(at(5));
        assert_eq!(
            offsets(&released),
            [2, 5],
            "live-only subscribers get 2 too"
        );
        assert_eq!(offsets(&gate.offer(at(3), "c")), [3], "late, but not lost");
        assert!(
            gate.offer(at(5), "e").deliver.is_empty(),
            "a repeat is dropped"
        );
        assert_eq!(offsets(&gate.offer(at(6), "f")), [6]);
    }

    #[test]
    fn a_failed_read_is_asked_again_and_catch_up_waits_for_the_seed() {
        let mut gate: Gate<&str> = Gate::new();
        assert_eq!(gate.catch_up(), None);
        gate.seed(at(4));
        assert_eq!(gate.catch_up(), Some(at(3)));
        assert_eq!(gate.catch_up(), None, "one read at a time");
        assert_eq!(gate.fill_failed(), Some(at(3)));
    }
}
