//! The leader's lease clock.
//!
//! Lease *records* (id, granted TTL, attached keys) are replicated state; lease *deadlines*
//! live only in the leader's memory, as in etcd. Keep-alives reset a deadline on the
//! leader; an expired lease is revoked by proposing a `LeaseRevoke` through the log, so
//! every member deletes its keys at the same revision. A member that becomes leader gives
//! every lease its full TTL again, so a failover can only lengthen a lease, never expire a
//! live one early.

use openraft::async_runtime::WatchReceiver;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::raft as pb;
use openraft::ServerState;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::mvcc::Mvcc;
use crate::node::Node;
use crate::state_machine::LeaseEvent;

/// How often the leader looks for expired leases.
const TICK: Duration = Duration::from_millis(200);

/// One lease's clock on the leader.
#[derive(Debug, Clone, Copy)]
struct Clock {
    deadline: Instant,
    ttl: i64,
    /// Expired and being revoked: keep-alives no longer renew it.
    revoking: bool,
}

/// Deadlines by lease id; `None` unless this member is the leader.
pub struct Lessor {
    mvcc: Arc<Mvcc>,
    deadlines: Mutex<Option<HashMap<i64, Clock>>>,
}

impl Lessor {
    /// A lessor for the leases in `mvcc`, inactive until [`Lessor::promote`].
    pub fn new(mvcc: Arc<Mvcc>) -> Arc<Lessor> {
        Arc::new(Lessor { mvcc, deadlines: Mutex::new(None) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<i64, Clock>>> {
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the clock: every known lease gets its full TTL from now.
    pub fn promote(&self) {
        let now = now();
        let leases = self.mvcc.leases().unwrap_or_default();
        let map = leases
            .into_iter()
            .map(|(id, ttl)| (id, Clock { deadline: now + secs(ttl), ttl, revoking: false }))
            .collect();
        *self.lock() = Some(map);
    }

    /// Stops the clock (this member is no longer the leader).
    pub fn demote(&self) {
        *self.lock() = None;
    }

    /// Whether the clock is running here.
    pub fn is_active(&self) -> bool {
        self.lock().is_some()
    }

    fn on_event(&self, ev: LeaseEvent) {
        if let Some(m) = self.lock().as_mut() {
            match ev {
                LeaseEvent::Granted(id, ttl) => {
                    m.insert(id, Clock { deadline: now() + secs(ttl), ttl, revoking: false });
                }
                LeaseEvent::Revoked(id) => {
                    m.remove(&id);
                }
            }
        }
    }

    /// Renews a lease: its TTL. A lease the applied state holds but the clock has not
    /// heard of yet (its grant's event is still on the way) is adopted with its full TTL.
    fn keep_alive(&self, id: i64) -> Lookup<i64> {
        self.lookup(id, |c| {
            c.deadline = now() + secs(c.ttl);
            c.ttl
        })
    }

    /// `(remaining seconds, granted ttl)` of a lease.
    fn time_to_live(&self, id: i64) -> Lookup<(i64, i64)> {
        self.lookup(id, |c| {
            let left = c.deadline.saturating_duration_since(now());
            (left.as_secs_f64().ceil() as i64, c.ttl)
        })
    }

    /// The applied state is read under the lock on purpose: a lease event handled between
    /// the read and the lock could otherwise be undone (a revoked lease's clock restored).
    fn lookup<T>(&self, id: i64, f: impl FnOnce(&mut Clock) -> T) -> Lookup<T> {
        let mut g = self.lock();
        let Some(m) = g.as_mut() else {
            return Lookup::NotLeader;
        };
        // The applied state decides whether the lease exists (a revoke's or grant's event
        // may not have reached the clock yet); the clock decides whether it has expired.
        let ttl = match self.mvcc.lease_ttl(id) {
            Ok(Some(ttl)) => ttl,
            Ok(None) => {
                m.remove(&id);
                return Lookup::Gone;
            }
            Err(e) => return Lookup::Failed(e),
        };
        let c = m.entry(id).or_insert_with(|| Clock { deadline: now() + secs(ttl), ttl, revoking: false });
        if c.revoking {
            Lookup::Revoking
        } else {
            Lookup::Live(f(c))
        }
    }

    /// Drops the clock of a lease the applied state no longer holds (a revoke that found
    /// it already gone).
    fn forget_if_gone(&self, id: i64) {
        if let (Some(m), Ok(None)) = (self.lock().as_mut(), self.mvcc.lease_ttl(id)) {
            m.remove(&id);
        }
    }

    /// Leases past their deadline. Each is given a second's grace before it is reported
    /// again, so one revoke is in flight at a time.
    fn expired(&self) -> Vec<i64> {
        let now = now();
        let mut g = self.lock();
        let Some(m) = g.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (id, c) in m.iter_mut() {
            if c.deadline <= now {
                out.push(*id);
                c.revoking = true;
                c.deadline = now + Duration::from_secs(1);
            }
        }
        out
    }
}

/// What the leader's clock says of a lease.
#[derive(Debug)]
enum Lookup<T> {
    /// Alive (and renewed, for a keep-alive).
    Live(T),
    /// Expired; its revoke is proposed but not applied yet, so its keys still exist.
    Revoking,
    /// Not in the applied state: never granted, or revoked (its keys are gone).
    Gone,
    /// This member's clock is not running (not the leader).
    NotLeader,
    /// The applied state could not be read.
    Failed(StoreError),
}

/// Answers a lookup. A lease whose revoke is under way is reported gone only once the
/// revoke is applied here (so its keys are deleted, for every later linearizable read),
/// as etcd does: a client told its lease is gone must not still find its keys.
async fn settle<T>(node: &Node, look: impl Fn(&Lessor) -> Lookup<T>) -> Result<Option<T>, StoreError> {
    let deadline = tokio::time::Instant::now() + node.config.request_timeout;
    // Subscribed before looking, so the revoke's event cannot slip in between.
    let mut applied = node.sm.lease_events.subscribe();
    loop {
        match look(&node.lessor) {
            Lookup::Live(t) => return Ok(Some(t)),
            Lookup::Gone => return Ok(None),
            Lookup::NotLeader => return Err(StoreError::NotLeader),
            Lookup::Failed(e) => return Err(e),
            // Lease commands go alone in their log entry, so each revoke's event is sent
            // once its batch is written: look again after the next one (or a lag).
            Lookup::Revoking => match tokio::time::timeout_at(deadline, applied.recv()).await {
                Err(_) => return Err(StoreError::Timeout),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return Err(StoreError::Stopped),
                Ok(_) => {}
            },
        }
    }
}

/// Renews lease `id` on this member, which must be the leader: leadership is confirmed
/// with a quorum first, so a deposed leader cannot keep leases alive. `Ok(0)` if the lease
/// is unknown or revoked (an expired lease: once its revoke is applied).
pub async fn keep_alive_local(node: &Node, id: i64) -> Result<i64, StoreError> {
    if !node.lessor.is_active() {
        return Err(StoreError::NotLeader);
    }
    node.read_index_local().await?;
    Ok(settle(node, |l| l.keep_alive(id)).await?.unwrap_or(0))
}

/// `(remaining, granted)` TTL of lease `id` on this member, which must be the leader
/// (`None`: unknown or revoked, as for [`keep_alive_local`]).
pub async fn time_to_live_local(node: &Node, id: i64) -> Result<Option<(i64, i64)>, StoreError> {
    if !node.lessor.is_active() {
        return Err(StoreError::NotLeader);
    }
    node.read_index_local().await?;
    settle(node, |l| l.time_to_live(id)).await
}

/// The leader's lease clock: monotonic (a wall clock that jumps must not expire leases).
fn now() -> Instant {
    if crate::fault::lease_wall_clock() {
        // The injected bug: follow the wall clock from the first reading on.
        static BASE: std::sync::OnceLock<(Instant, std::time::SystemTime)> = std::sync::OnceLock::new();
        let (i, w) = *BASE.get_or_init(|| (Instant::now(), std::time::SystemTime::now()));
        return i + std::time::SystemTime::now().duration_since(w).unwrap_or_default();
    }
    Instant::now()
}

/// How long a lease of `ttl` seconds lives on the leader's clock.
fn secs(ttl: i64) -> Duration {
    let d = Duration::from_secs(ttl.max(0) as u64);
    if crate::fault::short_leases() {
        d / 2
    } else {
        d
    }
}

/// Follows leadership and lease events, and revokes expired leases while leader.
pub async fn run(node: Arc<Node>) {
    let mut metrics = node.raft.server_metrics();
    let mut events = node.sm.lease_events.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let leader = metrics.borrow_and_update().state == ServerState::Leader;
                match (leader, node.lessor.is_active()) {
                    (true, false) => {
                        // Apply everything committed before reading the leases, so a lease
                        // granted just before the failover is not missed.
                        if let Err(e) = node.linearizable_barrier().await {
                            tracing::warn!(error = %e, "cannot confirm leadership; lease clock not started");
                            continue;
                        }
                        node.lessor.promote();
                        tracing::info!("lease clock started: every lease has its full TTL again");
                    }
                    (false, true) => node.lessor.demote(),
                    _ => {}
                }
            }
            ev = events.recv() => match ev {
                Ok(ev) => node.lessor.on_event(ev),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if node.lessor.is_active() {
                        node.lessor.promote();
                    }
                }
                Err(_) => return,
            },
            _ = tick.tick() => {
                for id in node.lessor.expired() {
                    let node = node.clone();
                    tokio::spawn(async move {
                        let cmd = pb::Command { kind: Some(pb::command::Kind::LeaseRevoke(ep::LeaseRevokeRequest { id })) };
                        match node.propose_local(cmd).await {
                            Ok(pb::CommandResult { kind: Some(pb::command_result::Kind::LeaseRevoke(_)) }) => {
                                tracing::info!(lease = id, "lease expired and was revoked");
                            }
                            Ok(other) => tracing::debug!(lease = id, result = ?other, "an expired lease was already gone"),
                            Err(e) => tracing::debug!(lease = id, error = %e, "revoking an expired lease failed; will retry"),
                        }
                        node.lessor.forget_if_gone(id);
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::etcdserverpb as ep;
    use flotilla_proto::raft as pb;

    use super::*;
    use crate::rocks::{Batch, Db, Sync};

    /// Once a lease's deadline has passed and its revoke is under way, a keep-alive no
    /// longer renews it (the client is told it is gone instead of being told it holds it).
    #[test]
    fn expired_lease_cannot_be_kept_alive_while_its_revoke_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let mvcc = Arc::new(Mvcc::open(db.clone()).expect("mvcc"));
        for (id, ttl) in [(1, 0), (2, 60)] {
            let cmd = pb::Command { kind: Some(pb::command::Kind::LeaseGrant(ep::LeaseGrantRequest { id, ttl })) };
            let mut b = Batch::new();
            mvcc.apply(&cmd, &mut b).expect("grant");
            db.write(b, Sync::No).expect("write");
        }
        let lessor = Lessor::new(mvcc.clone());
        assert!(matches!(lessor.keep_alive(2), Lookup::NotLeader), "inactive before promotion");
        lessor.promote();
        assert_eq!(lessor.expired(), vec![1]);
        assert!(matches!(lessor.keep_alive(1), Lookup::Revoking));
        assert!(matches!(lessor.time_to_live(1), Lookup::Revoking));
        assert!(matches!(lessor.keep_alive(2), Lookup::Live(60)));
        assert_eq!(lessor.expired(), Vec::<i64>::new(), "one revoke at a time");
        assert!(matches!(lessor.keep_alive(3), Lookup::Gone), "never granted");
        // Granted in the applied state, its event not yet seen by the clock: adopted.
        let cmd = pb::Command { kind: Some(pb::command::Kind::LeaseGrant(ep::LeaseGrantRequest { id: 4, ttl: 30 })) };
        let mut b = Batch::new();
        mvcc.apply(&cmd, &mut b).expect("grant");
        db.write(b, Sync::No).expect("write");
        assert!(matches!(lessor.keep_alive(4), Lookup::Live(30)));
    }

    /// Regression (found by the chaos harness, full run seed 307): a keep-alive on a lease
    /// whose deadline had passed answered "gone" while the revoke was still waiting for a
    /// quorum, and a later read still found the lease's key. Gone now means revoked.
    #[test]
    fn a_keep_alive_on_an_expiring_lease_reports_it_gone_only_once_its_revoke_is_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let mvcc = Arc::new(Mvcc::open(db.clone()).expect("mvcc"));
        let apply = |kind| {
            let mut b = Batch::new();
            mvcc.apply(&pb::Command { kind: Some(kind) }, &mut b).expect("apply");
            db.write(b, Sync::No).expect("write");
        };
        apply(pb::command::Kind::LeaseGrant(ep::LeaseGrantRequest { id: 1, ttl: 0 }));
        let lessor = Lessor::new(mvcc.clone());
        lessor.promote();
        assert_eq!(lessor.expired(), vec![1]);
        assert!(matches!(lessor.keep_alive(1), Lookup::Revoking), "expired, but its keys still exist");
        apply(pb::command::Kind::LeaseRevoke(ep::LeaseRevokeRequest { id: 1 }));
        assert!(matches!(lessor.keep_alive(1), Lookup::Gone), "revoked: now it is gone");
        assert!(matches!(lessor.time_to_live(1), Lookup::Gone));
    }
}
