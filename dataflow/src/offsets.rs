//! Input offsets, owned by the engine. The source notes which offsets it read in which
//! epoch; an epoch's offsets become committable once the output frontier has passed it,
//! i.e. once every response, dead letter and hold-back for that epoch is resolved and
//! acknowledged by the broker.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// epoch → partition → highest offset read in that epoch.
    read: BTreeMap<u64, BTreeMap<i32, i64>>,
    /// partition → next offset already handed to the broker for commit.
    committed: BTreeMap<i32, i64>,
}

impl OffsetTracker {
    pub fn record(&mut self, epoch: u64, partition: i32, offset: i64) {
        let highest = self
            .read
            .entry(epoch)
            .or_default()
            .entry(partition)
            .or_insert(offset);
        *highest = (*highest).max(offset);
    }

    /// Offsets (next to read) that may be committed now, given that no work remains at
    /// epochs before `frontier` (`None`: nothing remains at all). Each result is returned
    /// once; call again later for newer epochs.
    pub fn committable(&mut self, frontier: Option<u64>) -> BTreeMap<i32, i64> {
        let done: Vec<u64> = self
            .read
            .keys()
            .copied()
            .take_while(|e| frontier.is_none_or(|f| *e < f))
            .collect();
        let mut out = BTreeMap::new();
        for epoch in done {
            for (p, off) in self.read.remove(&epoch).unwrap_or_default() {
                let next = off + 1;
                if self.committed.get(&p).is_none_or(|c| *c < next) {
                    self.committed.insert(p, next);
                    out.insert(p, next);
                }
            }
        }
        out
    }

    /// The broker's log of `partition` was replaced (the reader reset it): what was read
    /// from the old log must never be committed against the new one, and the new log's
    /// offsets start again from the bottom.
    pub fn forget(&mut self, partition: i32) {
        for partitions in self.read.values_mut() {
            partitions.remove(&partition);
        }
        self.read.retain(|_, partitions| !partitions.is_empty());
        self.committed.remove(&partition);
    }

    /// Epochs with reads not yet committable.
    pub fn outstanding_epochs(&self) -> usize {
        self.read.len()
    }

    /// Partitions with reads not yet committable, and where a restart resumes each (the
    /// offset last committed; `None`: nothing committed yet by this process).
    pub fn outstanding(&self) -> BTreeMap<i32, Option<i64>> {
        self.read
            .values()
            .flat_map(|parts| parts.keys())
            .map(|p| (*p, self.committed.get(p).copied()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_epochs_the_frontier_has_passed() {
        let mut t = OffsetTracker::default();
        t.record(1, 0, 10);
        t.record(1, 0, 12);
        t.record(2, 1, 5);
        t.record(3, 0, 20);
        assert!(t.committable(Some(1)).is_empty(), "epoch 1 still open");
        assert_eq!(t.committable(Some(3)), BTreeMap::from([(0, 13), (1, 6)]));
        assert!(
            t.committable(Some(3)).is_empty(),
            "each commit is handed out once"
        );
        assert_eq!(t.outstanding_epochs(), 1);
        assert_eq!(t.committable(None), BTreeMap::from([(0, 21)]));
    }

    /// Issue 11, defect 3: after the broker lost its log, the new log's (lower) offsets are
    /// committed, and nothing read from the old log is.
    #[test]
    fn a_forgotten_partition_starts_again_from_the_bottom() {
        let mut t = OffsetTracker::default();
        t.record(1, 0, 40);
        assert_eq!(t.committable(Some(2)), BTreeMap::from([(0, 41)]));
        t.record(2, 0, 45);
        t.record(2, 1, 7);
        t.forget(0);
        t.record(3, 0, 2);
        assert_eq!(t.committable(None), BTreeMap::from([(0, 3), (1, 8)]));
    }

    #[test]
    fn never_moves_a_partition_backwards() {
        let mut t = OffsetTracker::default();
        t.record(5, 0, 50);
        assert_eq!(t.committable(Some(6)), BTreeMap::from([(0, 51)]));
        t.record(6, 0, 40); // a re-read after a seek must not rewind the commit
        assert!(t.committable(Some(7)).is_empty());
    }
}
