//! Checkers of a plane run (`chaos/run plane`): pure functions over what the harness
//! recorded — the service requests the clients made, the pods as a watch saw them, the
//! containers containerd ran, the node Leases' renewals and the evictions.
//!
//! Times are seconds: `at` fields since the run's start (the harness's monotonic clock);
//! lease renewals and evictions on the wall clock (every process runs on this machine,
//! so one clock serves them all).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

/// One request to the Service, from the client in worker `client`'s namespace.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// Which worker's namespace the client runs in.
    pub client: usize,
    /// When it was sent.
    pub at: f64,
    /// Answered (HTTP 200 with a body).
    pub ok: bool,
    /// A failed request's endpoint (pod IP), when connection tracking told.
    pub endpoint: Option<String>,
    /// How a failed request failed.
    pub error: Option<String>,
}

/// What a fault may cost the service's clients.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Allowance {
    /// Nothing: the data path does not go through what the fault hit.
    None,
    /// Until `until` (seconds since the start), requests may fail when they went to one
    /// of `endpoints` (pod IPs; per client, indexed as the workers); the client of
    /// `anything_from` (the lost machine itself) may fail whatever it calls, until the
    /// time given with it.
    Until {
        /// The end of the allowance.
        until: f64,
        /// Per client: the endpoints its requests may fail on.
        endpoints: Vec<BTreeSet<String>>,
        /// A client that may fail on anything, and until when.
        anything_from: Option<(usize, f64)>,
    },
}

/// A fault as the request checker sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// The fault's name.
    pub fault: String,
    /// Injected at; failures from here until the next fault are this fault's.
    pub start: f64,
    /// What it may cost.
    pub allowance: Allowance,
}

/// A failure beyond its fault's allowance: (fault, client, at, endpoint, error).
pub type Violation = (String, usize, f64, Option<String>, Option<String>);

/// Per fault: the requests made and failed while it was the latest, and those that
/// failed beyond its allowance.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestVerdict {
    /// fault → (made, failed, failed beyond the allowance).
    pub per_fault: Vec<(String, u64, u64, u64)>,
    /// Requests before the first fault: (made, failed).
    pub before: (u64, u64),
    /// The first few failures beyond an allowance: (fault, client, at, endpoint, error).
    pub violations: Vec<Violation>,
}

impl RequestVerdict {
    /// Whether no request failed beyond its fault's allowance (or before any fault).
    pub fn valid(&self) -> bool {
        self.before.1 == 0 && self.per_fault.iter().all(|(_, _, _, bad)| *bad == 0)
    }
}

/// Judges the requests: before the first fault none may fail; while a fault is the
/// latest, failures are allowed only as its [`Allowance`] says.
pub fn requests(reqs: &[Request], windows: &[Window]) -> RequestVerdict {
    let mut v = RequestVerdict {
        per_fault: windows.iter().map(|w| (w.fault.clone(), 0, 0, 0)).collect(),
        ..Default::default()
    };
    for r in reqs {
        let Some(i) = windows.iter().rposition(|w| w.start <= r.at) else {
            v.before.0 += 1;
            v.before.1 += u64::from(!r.ok);
            continue;
        };
        let w = &windows[i];
        let entry = &mut v.per_fault[i];
        entry.1 += 1;
        if r.ok {
            continue;
        }
        entry.2 += 1;
        let allowed = match &w.allowance {
            Allowance::None => false,
            Allowance::Until { until, endpoints, anything_from } => {
                let own = anything_from.is_some_and(|(c, own_until)| c == r.client && r.at <= own_until);
                let to_allowed =
                    r.endpoint.as_ref().is_some_and(|e| endpoints.get(r.client).is_some_and(|s| s.contains(e)));
                own || (r.at <= *until && to_allowed)
            }
        };
        if !allowed {
            entry.3 += 1;
            if v.violations.len() < 10 {
                v.violations.push((w.fault.clone(), r.client, r.at, r.endpoint.clone(), r.error.clone()));
            }
        }
    }
    v
}

/// A pod as one watch event showed it.
#[derive(Debug, Clone, Serialize)]
pub struct PodEvent {
    /// Seen at (seconds since the start).
    pub at: f64,
    /// The pod's uid.
    pub uid: String,
    /// Its name.
    pub name: String,
    /// The node it is bound to ("" while unbound).
    pub node: String,
    /// Its IP ("" until it has one).
    pub ip: String,
    /// Counted as one of its ReplicaSet's replicas: not being deleted, not finished.
    pub active: bool,
    /// The event deleted it.
    pub deleted: bool,
}

/// What the pod checker found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PodVerdict {
    /// The most active pods of the workload at once.
    pub most_active: usize,
    /// Pods bound to one node, then another.
    pub rebound: Vec<String>,
    /// The first moment the active pods exceeded the bound: (at, count).
    pub over_surge: Option<(f64, usize)>,
}

impl PodVerdict {
    /// Whether the pods stayed within the bound and none moved between nodes.
    pub fn valid(&self) -> bool {
        self.rebound.is_empty() && self.over_surge.is_none()
    }
}

/// Replays the workload's pod events in the store's order: at no point may more than
/// `bound` (replicas + maxSurge) pods be active, and a bound pod never changes nodes.
pub fn pods(events: &[PodEvent], bound: usize) -> PodVerdict {
    let mut v = PodVerdict::default();
    let mut active: BTreeSet<&str> = BTreeSet::new();
    let mut node: HashMap<&str, &str> = HashMap::new();
    for e in events {
        if e.active && !e.deleted {
            active.insert(&e.uid);
        } else {
            active.remove(e.uid.as_str());
        }
        if !e.node.is_empty() {
            match node.insert(&e.uid, &e.node) {
                Some(before) if before != e.node => v.rebound.push(format!("{} from {before} to {}", e.name, e.node)),
                _ => {}
            }
        }
        v.most_active = v.most_active.max(active.len());
        if active.len() > bound && v.over_surge.is_none() {
            v.over_surge = Some((e.at, active.len()));
        }
    }
    v
}

/// Pods whose containers were running in more than one worker's containerd namespace in
/// the same sample: (at, pod uid, the workers). A sample is one round over every worker.
pub fn on_two_nodes(samples: &[(f64, Vec<BTreeSet<String>>)]) -> Vec<(f64, String, Vec<usize>)> {
    let mut found = Vec::new();
    for (at, per_worker) in samples {
        let mut seen: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (w, uids) in per_worker.iter().enumerate() {
            for u in uids {
                seen.entry(u).or_default().push(w);
            }
        }
        found.extend(seen.into_iter().filter(|(_, ws)| ws.len() > 1).map(|(u, ws)| (*at, u.to_string(), ws)));
    }
    found
}

/// An eviction by the node lifecycle controller: when (wall clock, seconds), which pod,
/// from which node.
#[derive(Debug, Clone, Serialize)]
pub struct Eviction {
    /// Seen at (Unix seconds).
    pub at: f64,
    /// The pod.
    pub pod: String,
    /// Its node.
    pub node: String,
}

/// Evictions from a node that kept renewing its Lease: one that renewed within half the
/// grace period before the eviction (a node the controller may call silent has not
/// renewed for a whole grace period). `renewals`: node → renewTimes (Unix seconds).
pub fn unjust_evictions<'a>(
    evictions: &'a [Eviction],
    renewals: &BTreeMap<String, Vec<f64>>,
    grace: f64,
) -> Vec<&'a Eviction> {
    evictions
        .iter()
        .filter(|e| renewals.get(&e.node).is_some_and(|rs| rs.iter().any(|r| *r >= e.at - grace / 2.0 && *r <= e.at)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(client: usize, at: f64, ok: bool) -> Request {
        Request { client, at, ok, endpoint: None, error: None }
    }

    fn failed_to(client: usize, at: f64, endpoint: &str) -> Request {
        Request { client, at, ok: false, endpoint: Some(endpoint.into()), error: None }
    }

    fn window(fault: &str, start: f64, allowance: Allowance) -> Window {
        Window { fault: fault.into(), start, allowance }
    }

    /// Three clients; the lost worker is client 2, its endpoint 10.244.2.5.
    fn lost_worker(until: f64) -> Allowance {
        let lost: BTreeSet<String> = ["10.244.2.5".to_string()].into();
        Allowance::Until { until, endpoints: vec![lost.clone(), lost.clone(), lost], anything_from: Some((2, until)) }
    }

    #[test]
    fn a_control_plane_fault_may_fail_no_request() {
        let w = [window("kill-scheduler", 5.0, Allowance::None)];
        assert!(requests(&[req(0, 1.0, true), req(1, 6.0, true)], &w).valid());
        let v = requests(&[req(0, 1.0, true), req(1, 6.0, false)], &w);
        assert!(!v.valid());
        assert_eq!(v.per_fault[0], ("kill-scheduler".into(), 1, 1, 1));
        assert_eq!(v.violations, vec![("kill-scheduler".into(), 1, 6.0, None, None)]);
    }

    #[test]
    fn a_lost_worker_may_fail_only_requests_to_its_endpoints_and_only_for_a_while() {
        let w = [window("lose-worker", 5.0, lost_worker(17.0))];
        let fine = [failed_to(0, 6.0, "10.244.2.5"), req(2, 16.9, false), failed_to(1, 17.0, "10.244.2.5")];
        assert!(requests(&fine, &w).valid());
        assert!(!requests(&[failed_to(0, 17.5, "10.244.2.5")], &w).valid(), "too late");
        assert!(!requests(&[failed_to(0, 6.0, "10.244.1.7")], &w).valid(), "another worker's endpoint");
        assert!(!requests(&[req(0, 6.0, false)], &w).valid(), "an endpoint nobody could tell");
    }

    #[test]
    fn a_failure_before_any_fault_fails_the_run() {
        let w = [window("lose-worker", 5.0, lost_worker(10.0))];
        let v = requests(&[req(0, 1.0, false), req(2, 6.0, false)], &w);
        assert_eq!(v.before, (1, 1));
        assert!(!v.valid());
    }

    #[test]
    fn failures_belong_to_the_latest_fault() {
        let w = [window("lose-worker", 5.0, lost_worker(7.0)), window("kill-leader", 8.0, Allowance::None)];
        let v = requests(&[failed_to(1, 6.0, "10.244.2.5"), failed_to(1, 9.0, "10.244.2.5")], &w);
        assert_eq!(v.per_fault[0].3, 0);
        assert_eq!(v.per_fault[1].3, 1);
    }

    fn ev(at: f64, uid: &str, node: &str, active: bool) -> PodEvent {
        PodEvent { at, uid: uid.into(), name: uid.into(), node: node.into(), ip: String::new(), active, deleted: false }
    }

    #[test]
    fn active_pods_are_counted_in_the_stores_order_and_terminating_ones_are_not() {
        let events = [
            ev(1.0, "a", "", true),
            ev(1.0, "b", "", true),
            ev(2.0, "c", "", true),
            ev(3.0, "a", "w1", false), // being deleted
            ev(3.0, "d", "", true),
        ];
        let v = pods(&events, 3);
        assert_eq!(v.most_active, 3);
        assert!(v.valid());
        let v = pods(&events[..3], 2);
        assert_eq!(v.over_surge, Some((2.0, 3)));
    }

    #[test]
    fn a_pod_bound_to_a_second_node_is_caught() {
        let events = [ev(1.0, "a", "w1", true), ev(2.0, "a", "w1", true), ev(3.0, "a", "w2", true)];
        assert_eq!(pods(&events, 3).rebound, vec!["a from w1 to w2".to_string()]);
    }

    #[test]
    fn a_pod_running_on_two_workers_in_one_sample_is_caught() {
        let s = |a: &[&str], b: &[&str]| {
            vec![a.iter().map(|s| s.to_string()).collect(), b.iter().map(|s| s.to_string()).collect()]
        };
        let samples = vec![(1.0, s(&["a"], &["b"])), (2.0, s(&["a", "c"], &["c"]))];
        assert_eq!(on_two_nodes(&samples), vec![(2.0, "c".to_string(), vec![0, 1])]);
    }

    #[test]
    fn an_eviction_from_a_node_that_renewed_recently_is_unjust() {
        let renewals: BTreeMap<String, Vec<f64>> =
            [("w1".to_string(), vec![100.0, 102.0]), ("w2".to_string(), vec![100.0, 108.0])].into();
        let e = |node: &str| Eviction { at: 112.0, pod: "p".into(), node: node.into() };
        let evictions = [e("w1"), e("w2"), e("w3")];
        let unjust = unjust_evictions(&evictions, &renewals, 10.0);
        assert_eq!(unjust.len(), 1);
        assert_eq!(unjust[0].node, "w2");
    }
}
