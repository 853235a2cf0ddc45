//! The lease workload's checker.
//!
//! A client grants a lease, attaches one key to it, then keeps it alive, revokes it or
//! abandons it, reading the key along the way. The guarantees (etcd's, which Flotilla
//! keeps by holding lease deadlines on the leader's monotonic clock and giving every
//! lease its full TTL again after a failover):
//!
//! * **never early**: a grant or keep-alive invoked at `t` that answered TTL `T` promises
//!   the lease lives until at least `t + T`. An observation that it is gone (a read that
//!   does not find the attached key, or a keep-alive answering TTL 0) which completed
//!   before that promise ran out, with no revoke invoked yet, is a violation;
//! * **revoke is final**: the key is never read after an acknowledged revoke completed;
//! * **gone stays gone**: once a read that began after the key was attached found it
//!   gone, no later read finds it and no later keep-alive renews the lease;
//! * **expires**: after the workload stops and every promise has run out (plus a grace
//!   for the revoke to commit), no key of any lease is left (checked on the final read).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::Outcome;

/// A lease operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOp {
    /// Grant the lease (its id is chosen by the server; recorded from the answer).
    Grant,
    /// Put the lease's key, attached to it.
    Attach,
    /// One keep-alive.
    KeepAlive,
    /// Read the lease's key.
    Read,
    /// Revoke the lease.
    Revoke,
}

/// What came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOutput {
    /// A grant or keep-alive answered this TTL in seconds (0: the lease is gone).
    Ttl(i64),
    /// A read found the key (true) or not.
    Present(bool),
    /// An attach or revoke was acknowledged.
    Done,
}

/// One lease operation in a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEvent {
    /// The lease (its id).
    pub lease: i64,
    /// What was asked.
    pub op: LeaseOp,
    /// When it was invoked (ns).
    pub invoke: u64,
    /// When its outcome arrived (ns).
    pub complete: u64,
    /// What came back.
    pub outcome: Outcome<LeaseOutput>,
}

/// The checker's findings: one line per broken guarantee.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseReport {
    /// Leases granted.
    pub leases: usize,
    /// Acknowledged keep-alives.
    pub keep_alives: usize,
    /// What went wrong (must be empty).
    pub problems: Vec<String>,
}

impl LeaseReport {
    /// Whether the run passes.
    pub fn valid(&self) -> bool {
        self.problems.is_empty()
    }
}

const NS_PER_SEC: u64 = 1_000_000_000;

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Checks a lease history; `left_at_end` are the leases whose keys the final read found
/// (taken after every promise ran out, with a grace).
pub fn check(events: &[LeaseEvent], left_at_end: &BTreeSet<i64>) -> LeaseReport {
    let mut by_lease: BTreeMap<i64, Vec<&LeaseEvent>> = BTreeMap::new();
    for e in events {
        by_lease.entry(e.lease).or_default().push(e);
    }
    let mut r = LeaseReport::default();
    for (&lease, evs) in &by_lease {
        if evs.iter().any(|e| e.op == LeaseOp::Grant && matches!(e.outcome, Outcome::Ok(_))) {
            r.leases += 1;
        }
        r.keep_alives += evs
            .iter()
            .filter(|e| e.op == LeaseOp::KeepAlive && matches!(e.outcome, Outcome::Ok(LeaseOutput::Ttl(t)) if t > 0))
            .count();
        check_one(lease, evs, &mut r.problems);
    }
    for lease in left_at_end {
        r.problems.push(format!("lease {lease:x}: its key was still there at the end, after every promise ran out"));
    }
    r
}

fn check_one(lease: i64, evs: &[&LeaseEvent], problems: &mut Vec<String>) {
    let ok = |e: &&&LeaseEvent| matches!(e.outcome, Outcome::Ok(_));
    // Promises: (completed at, alive until).
    let promises: Vec<(u64, u64)> = evs
        .iter()
        .filter(ok)
        .filter_map(|e| match (e.op, e.outcome) {
            (LeaseOp::Grant | LeaseOp::KeepAlive, Outcome::Ok(LeaseOutput::Ttl(t))) if t > 0 => {
                Some((e.complete, e.invoke + t as u64 * NS_PER_SEC))
            }
            _ => None,
        })
        .collect();
    let attached = evs.iter().filter(ok).filter(|e| e.op == LeaseOp::Attach).map(|e| e.complete).min();
    // A revoke that may have happened (acknowledged or unknown; a failed one never did).
    let first_revoke =
        evs.iter().filter(|e| e.op == LeaseOp::Revoke && e.outcome != Outcome::Fail).map(|e| e.invoke).min();
    let revoked = evs.iter().filter(ok).filter(|e| e.op == LeaseOp::Revoke).map(|e| e.complete).min();
    // Observations that the lease is gone: (invoked, completed).
    let gone: Vec<(u64, u64, &str)> = evs
        .iter()
        .filter(ok)
        .filter_map(|e| match (e.op, e.outcome) {
            (LeaseOp::Read, Outcome::Ok(LeaseOutput::Present(false))) if attached.is_some_and(|a| e.invoke > a) => {
                Some((e.invoke, e.complete, "a read did not find its key"))
            }
            (LeaseOp::KeepAlive, Outcome::Ok(LeaseOutput::Ttl(0))) => {
                Some((e.invoke, e.complete, "a keep-alive found it gone"))
            }
            _ => None,
        })
        .collect();
    for &(g_invoke, g_complete, what) in &gone {
        // The strongest promise made before this observation began (void once a revoke
        // may have taken effect).
        let revoked_by_then = first_revoke.is_some_and(|rv| rv < g_complete);
        if let Some(until) = promises.iter().filter(|p| p.0 <= g_invoke && !revoked_by_then).map(|p| p.1).max() {
            if g_complete < until {
                problems.push(format!(
                    "lease {lease:x} expired early: {what} at {:.3}s, but it was promised to live until {:.3}s",
                    secs(g_complete),
                    secs(until)
                ));
            }
        }
        for e in evs.iter().filter(ok).filter(|e| e.invoke > g_complete) {
            match (e.op, e.outcome) {
                (LeaseOp::Read, Outcome::Ok(LeaseOutput::Present(true))) => problems.push(format!(
                    "lease {lease:x}: its key came back at {:.3}s after it was seen gone at {:.3}s",
                    secs(e.complete),
                    secs(g_complete)
                )),
                (LeaseOp::KeepAlive, Outcome::Ok(LeaseOutput::Ttl(t))) if t > 0 => problems.push(format!(
                    "lease {lease:x} was renewed at {:.3}s after it was seen gone at {:.3}s",
                    secs(e.complete),
                    secs(g_complete)
                )),
                _ => {}
            }
        }
    }
    if let Some(rv) = revoked {
        for e in evs.iter().filter(ok).filter(|e| e.invoke > rv) {
            if e.outcome == Outcome::Ok(LeaseOutput::Present(true)) {
                problems.push(format!(
                    "lease {lease:x}: its key was read at {:.3}s after the revoke was acknowledged at {:.3}s",
                    secs(e.complete),
                    secs(rv)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_SEC;

    fn ev(op: LeaseOp, invoke: u64, complete: u64, out: LeaseOutput) -> LeaseEvent {
        LeaseEvent { lease: 7, op, invoke, complete, outcome: Outcome::Ok(out) }
    }

    fn granted_and_attached() -> Vec<LeaseEvent> {
        vec![ev(LeaseOp::Grant, 0, S / 10, LeaseOutput::Ttl(3)), ev(LeaseOp::Attach, S / 10, S / 5, LeaseOutput::Done)]
    }

    #[test]
    fn a_kept_alive_lease_read_in_time_is_valid() {
        let mut h = granted_and_attached();
        h.push(ev(LeaseOp::KeepAlive, S, S + 1, LeaseOutput::Ttl(3)));
        h.push(ev(LeaseOp::Read, 3 * S, 3 * S + 1, LeaseOutput::Present(true)));
        // Gone after the promise (1 s + 3 s) ran out: fine.
        h.push(ev(LeaseOp::Read, 5 * S, 5 * S + 1, LeaseOutput::Present(false)));
        let r = check(&h, &BTreeSet::new());
        assert!(r.valid(), "{:?}", r.problems);
        assert_eq!((r.leases, r.keep_alives), (1, 1));
    }

    #[test]
    fn a_lease_gone_before_its_keep_alive_ran_out_is_caught() {
        let mut h = granted_and_attached();
        h.push(ev(LeaseOp::KeepAlive, 2 * S, 2 * S + 1, LeaseOutput::Ttl(3)));
        // Promised until 5 s; the key is gone at 4 s.
        h.push(ev(LeaseOp::Read, 4 * S, 4 * S + 1, LeaseOutput::Present(false)));
        let r = check(&h, &BTreeSet::new());
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("expired early"));
    }

    #[test]
    fn a_keep_alive_answering_zero_inside_the_promise_is_caught() {
        let mut h = granted_and_attached();
        h.push(ev(LeaseOp::KeepAlive, S, S + 1, LeaseOutput::Ttl(0)));
        assert!(!check(&h, &BTreeSet::new()).valid());
    }

    #[test]
    fn gone_after_a_revoke_began_is_not_early() {
        let mut h = granted_and_attached();
        h.push(LeaseEvent { lease: 7, op: LeaseOp::Revoke, invoke: S, complete: 2 * S, outcome: Outcome::Info });
        h.push(ev(LeaseOp::Read, S + 1, S + 2, LeaseOutput::Present(false)));
        assert!(check(&h, &BTreeSet::new()).valid());
    }

    #[test]
    fn a_key_back_after_it_was_seen_gone_is_caught_even_with_a_revoke_in_flight() {
        let mut h = granted_and_attached();
        h.push(LeaseEvent { lease: 7, op: LeaseOp::Revoke, invoke: S, complete: 2 * S, outcome: Outcome::Info });
        h.push(ev(LeaseOp::Read, S + 1, S + 2, LeaseOutput::Present(false)));
        h.push(ev(LeaseOp::Read, S + 3, S + 4, LeaseOutput::Present(true)));
        assert!(check(&h, &BTreeSet::new()).problems.iter().any(|p| p.contains("came back")));
    }

    #[test]
    fn a_failed_revoke_does_not_excuse_an_early_expiry() {
        let mut h = granted_and_attached();
        h.push(LeaseEvent { lease: 7, op: LeaseOp::Revoke, invoke: S, complete: S + 1, outcome: Outcome::Fail });
        h.push(ev(LeaseOp::Read, S + 2, S + 3, LeaseOutput::Present(false)));
        assert!(check(&h, &BTreeSet::new()).problems.iter().any(|p| p.contains("expired early")));
    }

    #[test]
    fn a_key_read_after_an_acknowledged_revoke_is_caught() {
        let mut h = granted_and_attached();
        h.push(ev(LeaseOp::Revoke, S, S + 1, LeaseOutput::Done));
        h.push(ev(LeaseOp::Read, S + 2, S + 3, LeaseOutput::Present(true)));
        assert!(check(&h, &BTreeSet::new()).problems.iter().any(|p| p.contains("after the revoke")));
    }

    #[test]
    fn a_key_that_comes_back_or_a_lease_renewed_after_it_was_gone_is_caught() {
        let mut h = granted_and_attached();
        h.push(ev(LeaseOp::Read, 4 * S, 4 * S + 1, LeaseOutput::Present(false)));
        h.push(ev(LeaseOp::Read, 5 * S, 5 * S + 1, LeaseOutput::Present(true)));
        h.push(ev(LeaseOp::KeepAlive, 6 * S, 6 * S + 1, LeaseOutput::Ttl(3)));
        let r = check(&h, &BTreeSet::new());
        assert!(r.problems.iter().any(|p| p.contains("came back")), "{:?}", r.problems);
        assert!(r.problems.iter().any(|p| p.contains("renewed")), "{:?}", r.problems);
    }

    #[test]
    fn a_read_before_the_attach_was_acknowledged_proves_nothing() {
        let mut h = vec![ev(LeaseOp::Grant, 0, 1, LeaseOutput::Ttl(3))];
        h.push(ev(LeaseOp::Read, 2, 3, LeaseOutput::Present(false)));
        h.push(ev(LeaseOp::Attach, 1, 4, LeaseOutput::Done));
        assert!(check(&h, &BTreeSet::new()).valid());
    }

    #[test]
    fn a_lease_that_never_expires_is_caught() {
        let h = granted_and_attached();
        assert!(!check(&h, &BTreeSet::from([7])).valid());
    }
}
