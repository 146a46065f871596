//! Turns out-of-order acks into a contiguous committed watermark per
//! partition, for logs that commit an offset instead of acking messages
//! (Kafka; the bridge's durable forwarder).

use std::collections::{BTreeSet, HashMap};

/// Per-partition tracking of delivered and acked offsets.
///
/// The commit offset of a partition is the lowest offset delivered and not
/// yet acked, or one past the highest delivered when all are acked. So a
/// commit never passes an unacked message, whatever order acks come in, and
/// gaps in the log (compaction, transaction markers) don't hold it back.
#[derive(Debug, Default, Clone)]
pub struct AckTracker {
    partitions: HashMap<u32, Partition>,
}

#[derive(Debug, Clone)]
struct Partition {
    /// Delivered, not yet acked.
    pending: BTreeSet<u64>,
    /// One past the highest offset delivered (or the start offset).
    next: u64,
    /// The commit offset last handed out by `take_commits`.
    committed: u64,
    /// A commit handed out failed: hand the offset out again.
    resend: bool,
}

impl Partition {
    fn commit_offset(&self) -> u64 {
        self.pending.first().copied().unwrap_or(self.next)
    }
}

impl AckTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking `partition` at `offset` (its committed position).
    /// Replaces any earlier state of that partition.
    pub fn assign(&mut self, partition: u32, offset: u64) {
        self.partitions.insert(
            partition,
            Partition {
                pending: BTreeSet::new(),
                next: offset,
                committed: offset,
                resend: false,
            },
        );
    }

    /// Forgets `partition` (revoked in a rebalance); returns its final commit
    /// offset so the caller can commit it before giving the partition up.
    pub fn revoke(&mut self, partition: u32) -> Option<u64> {
        self.partitions
            .remove(&partition)
            .map(|p| p.commit_offset())
    }

    /// Records that `offset` was delivered. A partition seen for the first
    /// time starts at `offset`. Redelivery of a pending offset is a no-op.
    pub fn delivered(&mut self, partition: u32, offset: u64) {
        let p = self.partitions.entry(partition).or_insert(Partition {
            pending: BTreeSet::new(),
            next: offset,
            committed: offset,
            resend: false,
        });
        if offset >= p.committed {
            p.pending.insert(offset);
            p.next = p.next.max(offset + 1);
        }
    }

    /// Records that `offset` was acked; returns the partition's commit offset.
    /// Acking an offset never delivered (or already acked) changes nothing.
    pub fn acked(&mut self, partition: u32, offset: u64) -> Option<u64> {
        let p = self.partitions.get_mut(&partition)?;
        p.pending.remove(&offset);
        Some(p.commit_offset())
    }

    /// The offset that is safe to commit for `partition`: every offset below
    /// it that was delivered has been acked.
    pub fn commit_offset(&self, partition: u32) -> Option<u64> {
        self.partitions
            .get(&partition)
            .map(Partition::commit_offset)
    }

    /// Offsets delivered and not acked in `partition`.
    pub fn pending(&self, partition: u32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |p| p.pending.len())
    }

    /// The partitions whose commit offset moved since the last call, with
    /// the offset to commit; marks them committed.
    pub fn take_commits(&mut self) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        for (&partition, p) in &mut self.partitions {
            let offset = p.commit_offset();
            if offset > p.committed || (p.resend && offset == p.committed) {
                p.committed = offset;
                p.resend = false;
                out.push((partition, offset));
            }
        }
        out.sort_unstable();
        out
    }

    /// A commit `take_commits` handed out for `partition` failed: the next
    /// call hands the partition's offset out again, even if no ack moved
    /// it, so an idle partition does not keep an old commit forever.
    pub fn commit_failed(&mut self, partition: u32) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.resend = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn out_of_order_acks_commit_only_the_contiguous_prefix() {
        let mut t = AckTracker::new();
        t.assign(0, 10);
        for o in 10..15 {
            t.delivered(0, o);
        }
        assert_eq!(t.acked(0, 12), Some(10));
        assert_eq!(t.acked(0, 10), Some(11));
        assert_eq!(t.acked(0, 11), Some(13));
        assert_eq!(t.take_commits(), vec![(0, 13)]);
        assert!(t.take_commits().is_empty());
        t.acked(0, 14);
        t.acked(0, 13);
        assert_eq!(t.take_commits(), vec![(0, 15)]);
        assert_eq!(t.revoke(0), Some(15));
    }

    #[test]
    fn a_failed_commit_is_handed_out_again() {
        let mut t = AckTracker::new();
        t.assign(0, 0);
        t.delivered(0, 0);
        t.acked(0, 0);
        assert_eq!(t.take_commits(), vec![(0, 1)]);
        assert!(t.take_commits().is_empty());
        t.commit_failed(0);
        assert_eq!(t.take_commits(), vec![(0, 1)], "resent after the failure");
        assert!(t.take_commits().is_empty(), "resent once");
        t.commit_failed(7); // a partition no longer tracked: nothing to resend
        assert!(t.take_commits().is_empty());
    }

    #[test]
    fn gaps_in_the_log_do_not_hold_the_watermark() {
        let mut t = AckTracker::new();
        t.delivered(3, 100);
        t.delivered(3, 105);
        t.acked(3, 100);
        assert_eq!(t.commit_offset(3), Some(105));
        t.acked(3, 105);
        assert_eq!(t.commit_offset(3), Some(106));
    }

    proptest! {
        /// Deliver 0..n, ack a random subset in random order: after every
        /// ack, every offset below the commit offset was acked, and the
        /// commit offset is as far as it can go.
        #[test]
        fn never_commits_past_an_unacked_offset(
            n in 1u64..300,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..300),
        ) {
            let mut t = AckTracker::new();
            t.assign(7, 0);
            for o in 0..n { t.delivered(7, o); }
            let mut unacked: Vec<u64> = (0..n).collect();
            let mut acked = BTreeSet::new();
            for idx in order {
                if unacked.is_empty() { break; }
                let o = unacked.swap_remove(idx.index(unacked.len()));
                acked.insert(o);
                let commit = t.acked(7, o).unwrap();
                prop_assert!((0..commit).all(|x| acked.contains(&x)));
                let lowest_unacked = unacked.iter().copied().min().unwrap_or(n);
                prop_assert_eq!(commit, lowest_unacked);
            }
            let commits = t.take_commits();
            prop_assert!(commits.iter().all(|&(_, c)| (0..c).all(|x| acked.contains(&x))));
        }

        /// Partitions are independent.
        #[test]
        fn partitions_do_not_interfere(acks in proptest::collection::vec((0u32..4, 0u64..50), 0..200)) {
            let mut t = AckTracker::new();
            for p in 0..4 { for o in 0..50 { t.delivered(p, o); } }
            let mut acked: HashMap<u32, BTreeSet<u64>> = HashMap::new();
            for (p, o) in acks {
                t.acked(p, o);
                acked.entry(p).or_default().insert(o);
                for q in 0..4 {
                    let c = t.commit_offset(q).unwrap();
                    let set = acked.get(&q).cloned().unwrap_or_default();
                    prop_assert!((0..c).all(|x| set.contains(&x)));
                }
            }
        }
    }
}
