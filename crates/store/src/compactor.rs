//! Automatic compaction (`--compaction-retention`, as kube-apiserver and etcd's periodic
//! compactor do): every member samples its revision ten times per retention period; the
//! Raft leader compacts to the newest sample at least one retention old. So a watch or a
//! read at a revision younger than the retention never finds it compacted, and the history
//! the store keeps stays bounded by time rather than growing without end.

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::Duration;

use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::raft as pb;
use tokio::time::Instant;

use crate::node::Node;

/// Revision samples and the choice of what to compact to; no I/O (unit-tested).
#[derive(Debug, Default)]
pub struct Samples {
    taken: VecDeque<(Instant, i64)>,
}

impl Samples {
    /// Records the revision at `now`.
    pub fn record(&mut self, now: Instant, revision: i64) {
        self.taken.push_back((now, revision));
    }

    /// The revision to compact to at `now` with `retention`: the newest sample at least
    /// `retention` old (older samples are dropped), if it is above `compacted`.
    pub fn target(&mut self, now: Instant, retention: Duration, compacted: i64) -> Option<i64> {
        let mut best = None;
        while let Some(&(at, rev)) = self.taken.front() {
            if now.duration_since(at) < retention {
                break;
            }
            best = Some(rev);
            self.taken.pop_front();
        }
        best.filter(|r| *r > compacted)
    }
}

/// Runs until the member stops; compacts only while it leads Raft.
pub async fn run(node: Weak<Node>, retention: Duration) {
    if retention.is_zero() {
        return;
    }
    let mut samples = Samples::default();
    let mut tick = tokio::time::interval(retention / 10);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(n) = node.upgrade() else { return };
        let now = Instant::now();
        samples.record(now, n.sm.mvcc.revision());
        let Some(rev) = samples.target(now, retention, n.sm.mvcc.compact_revision()) else { continue };
        if !n.is_leader() {
            continue;
        }
        let cmd = pb::Command {
            kind: Some(pb::command::Kind::Compaction(ep::CompactionRequest { revision: rev, physical: false })),
        };
        match n.propose(cmd).await {
            Ok(_) => tracing::info!(revision = rev, "compacted history older than the retention"),
            Err(e) => tracing::warn!(revision = rev, error = %e, "automatic compaction failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_to_the_newest_revision_at_least_one_retention_old() {
        let t0 = Instant::now();
        let r = Duration::from_secs(300);
        let mut s = Samples::default();
        for i in 0..20u64 {
            s.record(t0 + Duration::from_secs(30 * i), 100 + i as i64 * 10);
        }
        // At t0 + 300 s only the first sample is 300 s old.
        assert_eq!(s.target(t0 + r, r, 0), Some(100));
        // At t0 + 455 s the samples up to t0 + 150 s are: revision 150.
        assert_eq!(s.target(t0 + Duration::from_secs(455), r, 100), Some(150));
        // Nothing new old enough, or already compacted that far: nothing to do.
        assert_eq!(s.target(t0 + Duration::from_secs(460), r, 150), None);
        let mut idle = Samples::default();
        idle.record(t0, 7);
        assert_eq!(idle.target(t0 + r, r, 7), None, "an idle store is not compacted again");
    }
}
