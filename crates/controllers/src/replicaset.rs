//! The ReplicaSet controller: keeps each ReplicaSet's count of pods.
//!
//! [`plan`] decides, as a pure function of a ReplicaSet and the pods in its namespace
//! (what the caches show), which pods to adopt and release, how many to create, which to
//! delete, and the status to write. [`ReplicaSetController`] runs it: informer changes
//! queue the ReplicaSets they concern and mark [`Expectations`] observed; a reconcile
//! makes the writes, and makes no creates or deletes while earlier ones are still
//! unobserved in its cache.
//!
//! The rules are Kubernetes':
//!
//! * a pod belongs to the ReplicaSet whose uid its controller owner reference names; an
//!   active orphan (no controller reference, not finished, not being deleted) whose labels
//!   match the selector is adopted; an owned pod whose labels stop matching is released. A
//!   ReplicaSet being deleted adopts and releases nothing. Pods controlled by something else are never touched;
//! * the active pods are the owned ones neither finished (Succeeded, Failed) nor being
//!   deleted; their count is brought to `replicas` (creates capped per round, so a
//!   ReplicaSet of 10,000 does not send 10,000 creates at once);
//! * surplus pods are deleted cheapest first: not yet on a node, then Pending before
//!   Unknown before Running, not ready before ready, ready for less time before longer,
//!   more restarts before fewer, newer before older;
//! * status counts active pods (`replicas`), those whose labels match the template
//!   (`fullyLabeledReplicas`), ready ones, and ones ready for at least `minReadySeconds`
//!   (`availableReplicas`), and records the generation it saw.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_client::reflector::{Cache, Change};
use flotilla_client::{Client, ClientError};
use flotilla_core::selector::LabelSelector;
use flotilla_proto::api as pb;

use crate::informers::Informers;
use crate::manager::Context;
use crate::podcontrol::PodControl;
use crate::pods::{available, controller_uid, meta, phase, ready_since};
use crate::queue::WorkQueue;
use crate::worker::Reconcile;
use crate::ControllerError;

/// How long a create whose outcome is unknown is waited for before it is taken as lost:
/// the request timeout and a store election, with room to spare.
pub const UNSURE_CREATE: Duration = Duration::from_secs(15);

/// At most this many creates per reconcile (Kubernetes' burstReplicas).
pub const BURST_CREATES: usize = 500;

/// What one reconcile of a ReplicaSet should do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Orphans to adopt (names).
    pub adopt: Vec<String>,
    /// Owned pods whose labels no longer match, to release (names).
    pub release: Vec<String>,
    /// Pods to create from the template.
    pub create: usize,
    /// Pods to delete, cheapest first: (name, uid).
    pub delete: Vec<(String, String)>,
    /// The status to write.
    pub status: pb::ReplicaSetStatus,
}

fn restarts(p: &pb::Pod) -> i64 {
    p.status.as_ref().map_or(0, |s| s.container_statuses.iter().map(|c| i64::from(c.restart_count)).sum())
}

fn created(p: &pb::Pod) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(&meta(p).creation_timestamp).ok()
}

/// Orders pods cheapest to delete first (see the module docs).
fn deletion_cost(a: &pb::Pod, b: &pb::Pod) -> Ordering {
    let on_node = |p: &pb::Pod| p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty());
    let phase_rank = |p: &pb::Pod| match phase(p) {
        "Pending" | "" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    on_node(a)
        .cmp(&on_node(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(ready_since(a).is_some().cmp(&ready_since(b).is_some()))
        // Ready more recently first: a later time sorts first.
        .then_with(|| match (ready_since(a).flatten(), ready_since(b).flatten()) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then(restarts(b).cmp(&restarts(a)))
        .then_with(|| match (created(a), created(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
}

/// Plans one reconcile of `rs` over `pods` (the pods of its namespace), at `now`.
/// Fails only on a selector that does not parse (the apiserver refuses those).
pub fn plan(rs: &pb::ReplicaSet, pods: &[&pb::Pod], now: SystemTime) -> Result<Plan, String> {
    let m = rs.metadata.clone().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let selector = match &spec.selector {
        Some(s) => flotilla_api::select::from_proto(s)?,
        // No selector selects nothing (the apiserver requires one).
        None => return Ok(Plan { status: status(&m, &spec, &[], now), ..Default::default() }),
    };
    let deleting = !m.deletion_timestamp.is_empty();
    let mut plan = Plan::default();
    let mut owned: Vec<&pb::Pod> = Vec::new();
    for &p in pods {
        let pm = meta(p);
        let matches = !empty(&selector) && selector.matches(&pm.labels);
        match controller_uid(pm) {
            Some(uid) if uid == m.uid => {
                if matches {
                    owned.push(p);
                } else if pm.deletion_timestamp.is_empty() && !deleting {
                    plan.release.push(pm.name.clone());
                }
            }
            Some(_) => {} // another controller's
            None if matches
                && !deleting
                && pm.deletion_timestamp.is_empty()
                && !matches!(phase(p), "Succeeded" | "Failed") =>
            {
                plan.adopt.push(pm.name.clone());
                owned.push(p);
            }
            None => {}
        }
    }
    let mut active: Vec<&pb::Pod> = owned
        .iter()
        .copied()
        .filter(|p| meta(p).deletion_timestamp.is_empty() && !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    if !deleting {
        if active.len() < want {
            plan.create = (want - active.len()).min(BURST_CREATES);
        } else if active.len() > want {
            active.sort_by(|a, b| deletion_cost(a, b));
            plan.delete =
                active[..active.len() - want].iter().map(|p| (meta(p).name.clone(), meta(p).uid.clone())).collect();
        }
    }
    active.sort_by(|a, b| meta(a).name.cmp(&meta(b).name));
    plan.status = status(&m, &spec, &active, now);
    Ok(plan)
}

/// An empty structured selector would select every pod: treat it as selecting none.
fn empty(s: &LabelSelector) -> bool {
    s.requirements.is_empty()
}

fn status(m: &pb::ObjectMeta, spec: &pb::ReplicaSetSpec, active: &[&pb::Pod], now: SystemTime) -> pb::ReplicaSetStatus {
    let template_labels: BTreeMap<String, String> = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .map(|tm| tm.labels.clone().into_iter().collect())
        .unwrap_or_default();
    let min_ready = Duration::from_secs(u64::try_from(spec.min_ready_seconds).unwrap_or(0));
    let count =
        |f: &dyn Fn(&pb::Pod) -> bool| i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX);
    pb::ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: count(&|p| template_labels.iter().all(|(k, v)| meta(p).labels.get(k) == Some(v))),
        ready_replicas: count(&|p| ready_since(p).is_some()),
        available_replicas: count(&|p| available(p, min_ready, now)),
        observed_generation: m.generation,
        conditions: vec![],
    }
}

/// The running controller: its caches, expectations and client (fenced when elected).
pub struct ReplicaSetController {
    client: Client,
    control: PodControl<pb::ReplicaSet>,
    sets: Cache<pb::ReplicaSet>,
    pods: Cache<pb::Pod>,
}

fn key_of(m: &pb::ObjectMeta) -> String {
    format!("{}/{}", m.namespace, m.name)
}

/// The pod `rs` makes from its template.
fn new_pod(rs: &pb::ReplicaSet) -> pb::Pod {
    let m = rs.metadata.clone().unwrap_or_default();
    let template = rs.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    pb::Pod {
        metadata: Some(pb::ObjectMeta {
            generate_name: format!("{}-", m.name),
            namespace: m.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            owner_references: vec![owner_ref(&m)],
            ..Default::default()
        }),
        spec: template.spec,
        status: None,
    }
}

fn owner_ref(m: &pb::ObjectMeta) -> pb::OwnerReference {
    crate::podcontrol::owner_ref::<pb::ReplicaSet>(m, "apps/v1")
}

impl ReplicaSetController {
    /// A controller over these caches, writing through `client`.
    pub fn new(client: Client, sets: Cache<pb::ReplicaSet>, pods: Cache<pb::Pod>) -> ReplicaSetController {
        ReplicaSetController {
            control: PodControl::new(client.clone(), sets.clone(), "replicaset-controller"),
            client,
            sets,
            pods,
        }
    }

    /// The cached ReplicaSet that controls `pod`, as `namespace/name` — only if its uid
    /// is the one the owner reference names (not a namesake made after it was deleted).
    fn owner_key(&self, pod: &pb::Pod) -> Option<String> {
        let m = meta(pod);
        let r = m.owner_references.iter().find(|r| r.controller && r.kind == "ReplicaSet")?;
        let key = format!("{}/{}", m.namespace, r.name);
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        let rs = sets.get(&key)?;
        rs.metadata.as_ref().is_some_and(|rm| rm.uid == r.uid).then_some(key)
    }

    /// The ReplicaSets in `namespace` whose selector matches `labels`.
    fn matching_sets(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        sets.range(format!("{namespace}/")..)
            .take_while(|(k, _)| k.starts_with(&format!("{namespace}/")))
            .filter(|(_, rs)| {
                rs.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|sel| {
                    flotilla_api::select::from_proto(sel).is_ok_and(|s| !empty(&s) && s.matches(labels))
                })
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Takes in a change of the pod cache: marks expectations observed and queues the
    /// ReplicaSets the pod concerns (its owner, before and after; for an orphan, those
    /// that could adopt it).
    pub fn pod_changed(&self, queue: &WorkQueue, c: &Change<pb::Pod>) {
        match c {
            Change::Listed => {
                // The cache was filled from a list: it shows every acknowledged create
                // and delete, so what was expected of a ReplicaSet with no writes in
                // flight (no worker holds it) is settled. The others keep their records;
                // their writes' events come through the watch that follows the list.
                self.control.expectations.retain(|k| queue.is_processing(k));
                self.all_changed(queue);
            }
            Change::Upsert { old: None, new } => match self.owner_key(new) {
                Some(owner) => {
                    self.control.expectations.creation_observed(&owner);
                    queue.add(&owner);
                }
                None => self.matching_sets(&meta(new).namespace, &meta(new).labels).iter().for_each(|k| queue.add(k)),
            },
            Change::Upsert { old: Some(old), new } => {
                let (om, nm) = (meta(old), meta(new));
                if !nm.deletion_timestamp.is_empty() && om.deletion_timestamp.is_empty() {
                    // Being deleted gracefully counts as the deletion (it no longer counts).
                    self.control.expectations.deletion_observed_anywhere(&nm.uid);
                }
                let (was, is) = (self.owner_key(old), self.owner_key(new));
                for k in was.iter().chain(is.iter().filter(|k| Some(*k) != was.as_ref())) {
                    queue.add(k);
                }
                if is.is_none() && (om.labels != nm.labels || was.is_some()) {
                    self.matching_sets(&nm.namespace, &nm.labels).iter().for_each(|k| queue.add(k));
                }
            }
            Change::Deleted(p) => {
                self.control.expectations.deletion_observed_anywhere(&meta(p).uid);
                if let Some(owner) = self.owner_key(p) {
                    queue.add(&owner);
                }
            }
        }
    }

    /// Takes in a change of the ReplicaSet cache.
    pub fn set_changed(&self, queue: &WorkQueue, c: &Change<pb::ReplicaSet>) {
        match c {
            Change::Listed => self.all_changed(queue),
            Change::Upsert { new, .. } => queue.add(&key_of(&new.metadata.clone().unwrap_or_default())),
            Change::Deleted(rs) => {
                let k = key_of(&rs.metadata.clone().unwrap_or_default());
                self.control.expectations.forget(&k);
                queue.add(&k);
            }
        }
    }

    fn all_changed(&self, queue: &WorkQueue) {
        let keys: Vec<String> = self.sets.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        keys.iter().for_each(|k| queue.add(k));
    }

    /// Writes `status` (a compare-and-swap); when the cached ReplicaSet is behind (often
    /// behind this controller's own last status write), reads it again and retries once.
    async fn write_status(&self, rs: &pb::ReplicaSet, status: &pb::ReplicaSetStatus) -> Result<(), ClientError> {
        let mut updated = rs.clone();
        updated.status = Some(status.clone());
        match self.client.update_status(updated).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) if e.is_conflict() => {
                let m = rs.metadata.clone().unwrap_or_default();
                let mut fresh: pb::ReplicaSet = match self.client.get(&m.namespace, &m.name).await {
                    Err(e) if e.is_not_found() => return Ok(()),
                    other => other?,
                };
                if fresh.metadata.as_ref().is_none_or(|f| f.uid != m.uid || f.generation != m.generation) {
                    return Ok(()); // changed under us: its own event brings the key back
                }
                let mut status = status.clone();
                status.conditions = fresh.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
                fresh.status = Some(status);
                self.client.update_status(fresh).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    async fn set_owner(&self, pod: &pb::Pod, rs: &pb::ObjectMeta, adopt: bool) -> Result<(), ClientError> {
        let mut p = pod.clone();
        let m = p.metadata.get_or_insert_with(Default::default);
        if adopt {
            // An orphan has no controller; a non-controlling reference to this
            // ReplicaSet is replaced, not doubled.
            m.owner_references.retain(|r| r.uid != rs.uid);
            m.owner_references.push(owner_ref(rs));
        } else {
            m.owner_references.retain(|r| !(r.controller && r.uid == rs.uid));
        }
        // A compare-and-swap on the cached version: a pod changed meanwhile is looked
        // at again, never overwritten.
        self.client.update(p).await.map(|_| ())
    }
}

impl Reconcile for ReplicaSetController {
    fn name(&self) -> &str {
        "replicaset"
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let Some(rs) = self.sets.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned() else {
            self.control.expectations.forget(key);
            return Ok(None);
        };
        let m = rs.metadata.clone().unwrap_or_default();
        let satisfied = self.control.expectations.satisfied(key);
        let pods: Vec<pb::Pod> = {
            let all = self.pods.read().unwrap_or_else(|p| p.into_inner());
            let prefix = format!("{}/", m.namespace);
            all.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(_, p)| p.clone()).collect()
        };
        let by_name: BTreeMap<&str, &pb::Pod> = pods.iter().map(|p| (meta(p).name.as_str(), p)).collect();
        let plan = match plan(&rs, &pods.iter().collect::<Vec<_>>(), SystemTime::now()) {
            Ok(p) => p,
            // A spec the apiserver would refuse today (stored before a rule existed):
            // said in an Event, and left alone until it changes; the others go on.
            Err(e) => {
                self.control.event(&rs, "Warning", "InvalidSpec", &format!("cannot act on it: {e}")).await;
                return Ok(None);
            }
        };
        let mut errors: Vec<String> = Vec::new();
        if !plan.adopt.is_empty() {
            // Adopt only for the ReplicaSet that exists now, and is not being deleted:
            // the cache may still hold a namesake that was deleted.
            let fresh: pb::ReplicaSet = match self.client.get(&m.namespace, &m.name).await {
                Ok(f) => f,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let fm = fresh.metadata.unwrap_or_default();
            if fm.uid != m.uid || !fm.deletion_timestamp.is_empty() {
                return Ok(None); // its own events bring the key back
            }
        }
        for (names, adopt) in [(&plan.adopt, true), (&plan.release, false)] {
            for name in names {
                if let Some(p) = by_name.get(name.as_str()) {
                    if let Err(e) = self.set_owner(p, &m, adopt).await {
                        if !e.is_not_found() {
                            errors.push(format!("{} pod {name}: {e}", if adopt { "adopting" } else { "releasing" }));
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            // The plan counted pods it failed to claim: no creates or deletes from it
            // (another ReplicaSet may have claimed them), as Kubernetes does.
            return Err(ControllerError::Reconcile(errors.join("; ")));
        }
        if satisfied {
            let creates = (0..plan.create).map(|_| new_pod(&rs)).collect();
            errors.extend(self.control.sync(key, &rs, creates, &plan.delete).await);
        }
        let current = rs.status.clone().unwrap_or_default();
        let mut want = plan.status.clone();
        want.conditions = current.conditions.clone();
        if want != current {
            if let Err(e) = self.write_status(&rs, &want).await {
                errors.push(format!("writing status: {e}"));
            }
        }
        if !errors.is_empty() {
            return Err(ControllerError::Reconcile(errors.join("; ")));
        }
        // Pods ready but not yet available: look again when they may be.
        let min_ready = rs.spec.as_ref().map_or(0, |s| s.min_ready_seconds);
        Ok((want.ready_replicas > want.available_replicas && min_ready > 0)
            .then(|| Duration::from_secs(u64::try_from(min_ready).unwrap_or(0))))
    }
}

/// Starts the informers the ReplicaSet controller reads.
pub fn warm(informers: &Informers) {
    informers.get::<pb::ReplicaSet>();
    informers.get::<pb::Pod>();
}

/// Runs the ReplicaSet controller for one term (until `ctx` says stop).
pub async fn start(ctx: Context) {
    let (sets, pods) = (ctx.informers.get::<pb::ReplicaSet>(), ctx.informers.get::<pb::Pod>());
    let (mut set_rx, mut pod_rx) = (sets.subscribe(), pods.subscribe());
    let ctl = Arc::new(ReplicaSetController::new(ctx.client.clone(), sets.cache(), pods.cache()));
    let queue = Arc::new(WorkQueue::default());
    // No reconcile before both caches hold their first list: planning against an empty
    // pod cache would create every ReplicaSet's pods again.
    tokio::select! {
        () = ctx.stopped() => return,
        () = async { sets.wait_synced().await; pods.wait_synced().await; } => {}
    }
    let dispatch = async {
        loop {
            tokio::select! {
                Some(c) = set_rx.recv() => ctl.set_changed(&queue, &c),
                Some(c) = pod_rx.recv() => ctl.pod_changed(&queue, &c),
                else => return,
            }
        }
    };
    crate::worker::serve(queue.clone(), ctl.clone(), ctx.workers, ctx.metrics("replicaset"), dispatch, ctx.stopped())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const RS_UID: &str = "rs-uid";

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn rs(replicas: i32) -> pb::ReplicaSet {
        pb::ReplicaSet {
            metadata: Some(pb::ObjectMeta {
                name: "web".into(),
                namespace: "ns".into(),
                uid: RS_UID.into(),
                generation: 3,
                ..Default::default()
            }),
            spec: Some(pb::ReplicaSetSpec {
                replicas: Some(replicas),
                selector: Some(pb::LabelSelector {
                    match_labels: labels(&[("app", "web")]).into_iter().collect(),
                    ..Default::default()
                }),
                template: Some(pb::PodTemplateSpec {
                    metadata: Some(pb::ObjectMeta {
                        labels: labels(&[("app", "web"), ("tier", "front")]).into_iter().collect(),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                min_ready_seconds: 10,
            }),
            status: None,
        }
    }

    /// A pod named `name`, owned by the ReplicaSet when `owner` is Some(true), by another
    /// controller when Some(false), an orphan when None.
    fn pod(name: &str, owner: Option<bool>, app: &str, f: impl FnOnce(&mut pb::Pod)) -> pb::Pod {
        let owner_references = match owner {
            None => vec![],
            Some(ours) => vec![pb::OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: if ours { RS_UID.into() } else { "other".into() },
                controller: true,
                ..Default::default()
            }],
        };
        let mut p = pb::Pod {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                uid: format!("uid-{name}"),
                labels: labels(&[("app", app)]).into_iter().collect(),
                owner_references,
                creation_timestamp: "2026-12-04T00:00:00Z".into(),
                ..Default::default()
            }),
            spec: Some(pb::PodSpec::default()),
            status: Some(pb::PodStatus { phase: "Pending".into(), ..Default::default() }),
        };
        f(&mut p);
        p
    }

    fn running(node: &str, ready_at: Option<&str>) -> impl FnOnce(&mut pb::Pod) {
        let (node, ready_at) = (node.to_string(), ready_at.map(str::to_string));
        move |p| {
            p.spec.as_mut().expect("spec").node_name = node;
            let s = p.status.as_mut().expect("status");
            s.phase = "Running".into();
            if let Some(t) = ready_at {
                s.conditions.push(pb::Condition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: t,
                    ..Default::default()
                });
            }
        }
    }

    fn at(t: &str) -> SystemTime {
        humantime::parse_rfc3339(t).expect("time")
    }

    fn plan_of(rs: &pb::ReplicaSet, pods: &[pb::Pod]) -> Plan {
        plan(rs, &pods.iter().collect::<Vec<_>>(), at("2026-12-04T01:00:00Z")).expect("plan")
    }

    #[test]
    fn too_few_pods_are_made_up_and_too_many_cut_to_the_count() {
        let pods = vec![pod("a", Some(true), "web", |_| {})];
        assert_eq!(plan_of(&rs(3), &pods).create, 2);
        assert!(plan_of(&rs(3), &pods).delete.is_empty());
        assert_eq!(plan_of(&rs(0), &pods).delete, vec![("a".to_string(), "uid-a".to_string())]);
        assert_eq!(plan_of(&rs(1), &pods), Plan { status: plan_of(&rs(1), &pods).status, ..Default::default() });
        assert_eq!(plan_of(&rs(100_000), &[]).create, BURST_CREATES, "creates are capped per round");
    }

    #[test]
    fn orphans_that_match_are_adopted_and_owned_pods_that_stop_matching_are_released() {
        let pods = vec![
            pod("orphan", None, "web", |_| {}),
            pod("stray", Some(true), "db", |_| {}),
            pod("theirs", Some(false), "web", |_| {}),
            pod("orphan-db", None, "db", |_| {}),
            pod("orphan-going", None, "web", |p| {
                p.metadata.as_mut().expect("meta").deletion_timestamp = "2026-12-04T00:30:00Z".into()
            }),
        ];
        let p = plan_of(&rs(1), &pods);
        assert_eq!(p.adopt, vec!["orphan"]);
        assert_eq!(p.release, vec!["stray"]);
        assert_eq!((p.create, p.delete.len(), p.status.replicas), (0, 0, 1), "the adopted pod counts: {p:?}");
        let mut going = rs(1);
        going.metadata.as_mut().expect("meta").deletion_timestamp = "2026-12-04T00:59:00Z".into();
        let p = plan_of(&going, &pods);
        assert!(p.adopt.is_empty() && p.create == 0, "a ReplicaSet being deleted adopts and creates nothing: {p:?}");
    }

    #[test]
    fn finished_and_terminating_pods_do_not_count_and_are_replaced() {
        let pods = vec![
            pod("done", Some(true), "web", |p| p.status.as_mut().expect("status").phase = "Succeeded".into()),
            pod("failed", Some(true), "web", |p| p.status.as_mut().expect("status").phase = "Failed".into()),
            pod("going", Some(true), "web", |p| {
                p.metadata.as_mut().expect("meta").deletion_timestamp = "2026-12-04T00:30:00Z".into()
            }),
            pod("live", Some(true), "web", |_| {}),
        ];
        let p = plan_of(&rs(2), &pods);
        assert_eq!((p.create, p.status.replicas), (1, 1), "{p:?}");
        assert!(p.delete.is_empty());
    }

    #[test]
    fn surplus_pods_go_cheapest_first() {
        let pods = vec![
            pod("ready-old", Some(true), "web", running("n1", Some("2026-12-04T00:10:00Z"))),
            pod("ready-new", Some(true), "web", running("n1", Some("2026-12-04T00:50:00Z"))),
            pod("running-unready", Some(true), "web", running("n1", None)),
            pod("unknown", Some(true), "web", |p| {
                p.spec.as_mut().expect("spec").node_name = "n2".into();
                p.status.as_mut().expect("status").phase = "Unknown".into();
            }),
            pod("pending-on-node", Some(true), "web", |p| p.spec.as_mut().expect("spec").node_name = "n2".into()),
            pod("unscheduled", Some(true), "web", |_| {}),
        ];
        let order: Vec<String> = plan_of(&rs(0), &pods).delete.into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            order,
            vec!["unscheduled", "pending-on-node", "unknown", "running-unready", "ready-new", "ready-old"]
        );
        let keep_one: Vec<String> = plan_of(&rs(5), &pods).delete.into_iter().map(|(n, _)| n).collect();
        assert_eq!(keep_one, vec!["unscheduled"]);
    }

    #[test]
    fn status_counts_ready_available_after_min_ready_seconds_and_fully_labeled() {
        let pods = vec![
            // Ready 50 minutes before "now": available.
            pod("a", Some(true), "web", running("n1", Some("2026-12-04T00:10:00Z"))),
            // Ready 5 s before "now": ready, not yet available (minReadySeconds 10).
            pod("b", Some(true), "web", running("n1", Some("2026-12-04T00:59:55Z"))),
            pod("c", Some(true), "web", |p| {
                p.metadata.as_mut().expect("meta").labels.insert("tier".into(), "front".into());
            }),
        ];
        let s = plan_of(&rs(3), &pods).status;
        assert_eq!(
            (s.replicas, s.ready_replicas, s.available_replicas, s.fully_labeled_replicas, s.observed_generation),
            (3, 2, 1, 1, 3)
        );
    }
}
