//! The Deployment controller: rolls a Deployment's pods from one pod template to the next
//! through a ReplicaSet per template.
//!
//! [`plan`] decides, as a pure function of a Deployment, the ReplicaSets in its namespace
//! and counts of their pods, what to write; [`DeploymentController`] runs it over the
//! informer caches. The rules are Kubernetes' (pkg/controller/deployment), made strict
//! where Kubernetes relies on ReplicaSet statuses that may lag:
//!
//! * each pod template gets a ReplicaSet named `<deployment>-<hash>`, the hash taken over
//!   the template; the ReplicaSet's selector, labels and template carry
//!   `pod-template-hash=<hash>` so that ReplicaSets of one Deployment never share pods.
//!   The *new* ReplicaSet is the one whose template (without that label) equals the
//!   Deployment's; the others are *old*. Orphan ReplicaSets the selector matches are
//!   adopted, owned ones it stops matching are released;
//! * revisions: a ReplicaSet made or brought back (a rollback is an old template put back
//!   in the Deployment) gets the next revision in `deployment.kubernetes.io/revision`, and
//!   the Deployment carries its new ReplicaSet's revision;
//! * **RollingUpdate**: at most `replicas + maxSurge` pods exist (a ReplicaSet counts as the
//!   larger of its `replicas` and the live pods it still has, so pods an old ReplicaSet
//!   has not deleted yet are counted), and at least `replicas - maxUnavailable` stay
//!   available (an old ReplicaSet counts as available the smaller of its available pods
//!   and its `replicas`: it deletes unavailable pods first). maxSurge rounds up,
//!   maxUnavailable down, and both 0 after rounding means maxUnavailable 1. Old
//!   ReplicaSets are scaled down oldest first, their unavailable pods before available ones;
//! * **Recreate**: every old ReplicaSet is scaled to 0, and the new one is scaled up only
//!   when no pod of an old one exists any more;
//! * paused: nothing rolls (no new ReplicaSet, no scaling between ReplicaSets); a change of
//!   `replicas` still resizes the only active ReplicaSet;
//! * once a rollout is complete, old ReplicaSets scaled to 0 with no pods beyond the
//!   newest `revisionHistoryLimit` are deleted;
//! * status: pods, updated (the new ReplicaSet's), ready, available, unavailable; the
//!   `Available` condition (at least `replicas - maxUnavailable` available) and
//!   `Progressing`, which turns False (`ProgressDeadlineExceeded`) when a rollout made no
//!   progress for `progressDeadlineSeconds`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_client::events::object_ref;
use flotilla_client::reflector::{Cache, Change};
use flotilla_client::{Client, ClientError, DeleteParams, EventRecorder};
use flotilla_proto::api as pb;
use prost::Message;

use crate::informers::Informers;
use crate::manager::Context;
use crate::pods::{active, available, controller_uid, meta};
use crate::queue::WorkQueue;
use crate::recent::Recent;
use crate::worker::Reconcile;
use crate::ControllerError;

/// The label that keeps a Deployment's ReplicaSets' pods apart.
pub const HASH_LABEL: &str = "pod-template-hash";
/// The annotation holding a ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

/// What the controller knows of one ReplicaSet's pods (from the pod cache).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodCounts {
    /// Pods that exist, being deleted or not.
    pub existing: i32,
    /// Active pods (not finished, not being deleted).
    pub live: i32,
    /// Active and Ready.
    pub ready: i32,
    /// Active and Ready for minReadySeconds.
    pub available: i32,
}

/// Counts `pods` (those of one ReplicaSet) at `now`.
pub fn count(pods: &[&pb::Pod], min_ready_seconds: i32, now: SystemTime) -> PodCounts {
    let min_ready = Duration::from_secs(u64::try_from(min_ready_seconds).unwrap_or(0));
    let mut c = PodCounts::default();
    for p in pods {
        c.existing += 1;
        if active(p) {
            c.live += 1;
            c.ready += i32::from(crate::pods::ready_since(p).is_some());
            c.available += i32::from(available(p, min_ready, now));
        }
    }
    c
}

/// What one reconcile of a Deployment should write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Orphan ReplicaSets to adopt (names).
    pub adopt: Vec<String>,
    /// Owned ReplicaSets the selector no longer matches, to release (names).
    pub release: Vec<String>,
    /// The new ReplicaSet to create.
    pub create: Option<pb::ReplicaSet>,
    /// ReplicaSets to write back changed (replicas, revision), as compare-and-swaps.
    pub update: Vec<pb::ReplicaSet>,
    /// Old ReplicaSets beyond the revision history to delete: (name, uid).
    pub delete: Vec<(String, String)>,
    /// The revision the Deployment should carry, when it does not yet.
    pub revision: Option<String>,
    /// The status to write.
    pub status: pb::DeploymentStatus,
    /// When to look again regardless of changes (a deadline or minReadySeconds).
    pub requeue: Option<Duration>,
}

/// FNV-1a over the template's encoding (maps are ordered, so the encoding is stable).
fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The template without the hash label (as a Deployment holds it).
fn unhashed(t: &pb::PodTemplateSpec) -> pb::PodTemplateSpec {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut() {
        m.labels.remove(HASH_LABEL);
    }
    t
}

/// The hash of a pod template: short, and made of letters and digits that never spell
/// words (as Kubernetes' names).
pub fn template_hash(t: &pb::PodTemplateSpec) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = fnv32a(&unhashed(t).encode_to_vec());
    let mut s = String::new();
    loop {
        s.push(char::from(ALPHABET[(h % 27) as usize]));
        h /= 27;
        if h == 0 {
            return s;
        }
    }
}

fn revision(m: &pb::ObjectMeta) -> i64 {
    m.annotations.get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn rs_meta(rs: &pb::ReplicaSet) -> &pb::ObjectMeta {
    static EMPTY: std::sync::OnceLock<pb::ObjectMeta> = std::sync::OnceLock::new();
    rs.metadata.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

fn replicas(rs: &pb::ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn created(m: &pb::ObjectMeta) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(&m.creation_timestamp).ok()
}

/// Resolves maxSurge and maxUnavailable for `replicas` (Kubernetes' fenceposts).
pub fn surge_and_unavailable(d: &pb::DeploymentSpec) -> (i32, i32) {
    let want = d.replicas.unwrap_or(1).max(0);
    let ru = d.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
    let resolve = |v: &str, default: &str, round_up: bool| -> i32 {
        let v = if v.is_empty() { default } else { v };
        match v.strip_suffix('%') {
            Some(p) => {
                let p = i64::from(p.parse::<u32>().unwrap_or(0));
                let n = i64::from(want) * p;
                i32::try_from(if round_up { (n + 99) / 100 } else { n / 100 }).unwrap_or(i32::MAX)
            }
            None => v.parse::<i32>().unwrap_or(0),
        }
    };
    let surge = resolve(&ru.max_surge, "25%", true);
    let mut unavailable = resolve(&ru.max_unavailable, "25%", false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(want))
}

fn recreate(d: &pb::DeploymentSpec) -> bool {
    d.strategy.as_ref().is_some_and(|s| s.r#type == "Recreate")
}

/// The ReplicaSet a Deployment makes for its template.
pub fn new_replicaset(d: &pb::Deployment, hash: &str, revision: i64, replicas: i32) -> pb::ReplicaSet {
    let m = d.metadata.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template.clone().unwrap_or_default();
    let tm = template.metadata.get_or_insert_with(Default::default);
    tm.labels.insert(HASH_LABEL.into(), hash.into());
    let mut selector = spec.selector.clone().unwrap_or_default();
    selector.match_labels.insert(HASH_LABEL.into(), hash.into());
    pb::ReplicaSet {
        metadata: Some(pb::ObjectMeta {
            name: format!("{}-{hash}", m.name),
            namespace: m.namespace.clone(),
            labels: tm.labels.clone(),
            annotations: BTreeMap::from([(REVISION.to_string(), revision.to_string())]),
            owner_references: vec![pb::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: m.name.clone(),
                uid: m.uid.clone(),
                controller: true,
                block_owner_deletion: true,
            }],
            ..Default::default()
        }),
        spec: Some(pb::ReplicaSetSpec {
            replicas: Some(replicas),
            selector: Some(selector),
            template: Some(template),
            min_ready_seconds: spec.min_ready_seconds,
        }),
        status: None,
    }
}

fn with_replicas(rs: &pb::ReplicaSet, n: i32) -> pb::ReplicaSet {
    let mut rs = rs.clone();
    rs.spec.get_or_insert_with(Default::default).replicas = Some(n);
    rs
}

fn now_string(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now).to_string()
}

/// Sets condition `c` in `conditions`. One that says the same as before is left as it was
/// (its times too: a status rewritten every second would wake the controller every
/// second), unless `touch` (progress was made: its update time moves); one whose status
/// did not change keeps its transition time.
fn set_condition(conditions: &mut Vec<pb::Condition>, mut c: pb::Condition, touch: bool) {
    match conditions.iter_mut().find(|x| x.r#type == c.r#type) {
        Some(old) => {
            let same = (&old.status, &old.reason, &old.message) == (&c.status, &c.reason, &c.message);
            if same && !touch {
                return;
            }
            if old.status == c.status {
                c.last_transition_time = old.last_transition_time.clone();
            }
            *old = c;
        }
        None => conditions.push(c),
    }
}

/// Plans one reconcile of `d` over the ReplicaSets of its namespace (`sets`, each with the
/// counts of its pods), at `now`. Fails only on a selector that does not parse (the
/// apiserver refuses those).
pub fn plan(d: &pb::Deployment, sets: &[(&pb::ReplicaSet, PodCounts)], now: SystemTime) -> Result<Plan, String> {
    let m = d.metadata.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let mut plan = Plan::default();
    let Some(selector) = spec.selector.as_ref().map(flotilla_api::select::from_proto).transpose()? else {
        return Ok(plan);
    };
    let deleting = !m.deletion_timestamp.is_empty();
    // Ownership.
    let mut owned: Vec<(pb::ReplicaSet, PodCounts)> = Vec::new();
    for (rs, c) in sets {
        let rm = rs_meta(rs);
        let matches = !selector.requirements.is_empty() && selector.matches(&rm.labels);
        match controller_uid(rm) {
            Some(uid) if uid == m.uid => {
                if matches {
                    owned.push(((*rs).clone(), *c));
                } else if rm.deletion_timestamp.is_empty() && !deleting {
                    plan.release.push(rm.name.clone());
                }
            }
            Some(_) => {}
            None if matches && !deleting && rm.deletion_timestamp.is_empty() => {
                plan.adopt.push(rm.name.clone());
                owned.push(((*rs).clone(), *c));
            }
            None => {}
        }
    }
    if deleting {
        return Ok(plan);
    }
    // Oldest first: by creation time, then name.
    owned.sort_by(|(a, _), (b, _)| {
        let (am, bm) = (rs_meta(a), rs_meta(b));
        created(am).cmp(&created(bm)).then(am.name.cmp(&bm.name))
    });
    let template = spec.template.clone().unwrap_or_default();
    let hash = template_hash(&template);
    let want = spec.replicas.unwrap_or(1).max(0);
    let max_revision = owned.iter().map(|(rs, _)| revision(rs_meta(rs))).max().unwrap_or(0);
    let new_index = owned.iter().position(|(rs, _)| {
        rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| unhashed(t) == template)
    });
    // The ReplicaSets as this reconcile leaves them (replicas may change below).
    let mut next: Vec<pb::ReplicaSet> = owned.iter().map(|(rs, _)| rs.clone()).collect();
    let counts: Vec<PodCounts> = owned.iter().map(|(_, c)| *c).collect();
    let (surge, max_unavailable) = surge_and_unavailable(&spec);
    let min_available = want - max_unavailable;
    let mut new_revision = None;

    match new_index {
        None if !spec.paused => {
            // A new template: its ReplicaSet starts as large as the strategy allows now.
            let initial = if recreate(&spec) {
                if counts.iter().all(|c| c.existing == 0) && next.iter().all(|rs| replicas(rs) == 0) {
                    want
                } else {
                    0
                }
            } else {
                let total: i32 = next.iter().zip(&counts).map(|(rs, c)| replicas(rs).max(c.live)).sum();
                (want + surge - total).clamp(0, want)
            };
            plan.create = Some(new_replicaset(d, &hash, max_revision + 1, initial));
            new_revision = Some(max_revision + 1);
        }
        None => {}
        Some(i) => {
            let r = revision(rs_meta(&next[i]));
            if r < max_revision || r == 0 {
                // An old template brought back (a rollback): it is the newest revision now.
                let rev = (max_revision + 1).max(1);
                next[i]
                    .metadata
                    .get_or_insert_with(Default::default)
                    .annotations
                    .insert(REVISION.into(), rev.to_string());
                new_revision = Some(rev);
            } else {
                new_revision = Some(r);
            }
        }
    }
    let old: Vec<usize> = (0..next.len()).filter(|&i| Some(i) != new_index).collect();

    if let Some(n) = new_index {
        if spec.paused {
            // Only a resize of a Deployment that is not mid-rollout.
            if old.iter().all(|&i| replicas(&next[i]) == 0) && replicas(&next[n]) != want {
                next[n] = with_replicas(&next[n], want);
            }
        } else if recreate(&spec) {
            for &i in &old {
                if replicas(&next[i]) > 0 {
                    next[i] = with_replicas(&next[i], 0);
                }
            }
            let old_pods = old.iter().any(|&i| counts[i].existing > 0 || replicas(&next[i]) > 0);
            if !old_pods && replicas(&next[n]) != want {
                next[n] = with_replicas(&next[n], want);
            }
        } else {
            roll(&mut next, &counts, n, &old, want, surge, min_available);
        }
    } else if spec.paused {
        // Paused before its template has a ReplicaSet: resize the only active one.
        let active: Vec<usize> = (0..next.len()).filter(|&i| replicas(&next[i]) > 0).collect();
        if let [i] = active[..] {
            if replicas(&next[i]) != want {
                next[i] = with_replicas(&next[i], want);
            }
        }
    }
    for (i, rs) in next.iter().enumerate() {
        if *rs != owned[i].0 {
            plan.update.push(rs.clone());
        }
    }

    // Status, from the pods and the ReplicaSets as they will be.
    let total = |f: fn(&PodCounts) -> i32| counts.iter().map(f).sum::<i32>();
    let updated = new_index.map_or(0, |i| counts[i].live);
    let mut status = pb::DeploymentStatus {
        observed_generation: m.generation,
        replicas: total(|c| c.live),
        updated_replicas: updated,
        ready_replicas: total(|c| c.ready),
        available_replicas: total(|c| c.available),
        unavailable_replicas: (want - total(|c| c.available)).max(0),
        conditions: d.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
    };
    let stamp = now_string(now);
    let condition = |t: &str, s: &str, reason: &str, message: String| pb::Condition {
        r#type: t.into(),
        status: s.into(),
        reason: reason.into(),
        message,
        last_transition_time: stamp.clone(),
        last_heartbeat_time: stamp.clone(),
    };
    let available_now = status.available_replicas >= min_available;
    set_condition(
        &mut status.conditions,
        if available_now {
            condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into())
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        },
        false,
    );
    let old_live: i32 = old.iter().map(|&i| counts[i].live + replicas(&next[i])).sum();
    let complete = new_index.is_some_and(|i| replicas(&next[i]) == want)
        && updated == want
        && status.available_replicas >= want
        && status.replicas == want
        && old_live == 0;
    let rs_name = format!("{}-{hash}", m.name);
    let previous = d.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.r#type == "Progressing")).cloned();
    let counts_changed = d.status.as_ref().is_none_or(|s| {
        (s.replicas, s.updated_replicas, s.ready_replicas, s.available_replicas)
            != (status.replicas, status.updated_replicas, status.ready_replicas, status.available_replicas)
    });
    let progressed = plan.create.is_some() || !plan.update.is_empty() || counts_changed;
    let deadline = Duration::from_secs(u64::try_from(spec.progress_deadline_seconds.unwrap_or(600)).unwrap_or(600));
    let progressing = if spec.paused {
        condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into())
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
        )
    } else if progressed
        || previous.as_ref().is_none_or(|p| p.reason == "DeploymentPaused" || p.reason == "NewReplicaSetAvailable")
    {
        let reason = if plan.create.is_some() { "NewReplicaSetCreated" } else { "ReplicaSetUpdated" };
        condition("Progressing", "True", reason, format!("ReplicaSet \"{rs_name}\" is progressing."))
    } else {
        // No progress since the last update of the condition: past the deadline?
        let mut p = previous.clone().unwrap_or_default();
        let since = humantime::parse_rfc3339_weak(&p.last_heartbeat_time).ok();
        let idle = since.and_then(|t| now.duration_since(t).ok()).unwrap_or_default();
        if idle > deadline && p.reason != "ProgressDeadlineExceeded" {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            )
        } else {
            if p.reason != "ProgressDeadlineExceeded" {
                plan.requeue = Some(deadline.saturating_sub(idle) + Duration::from_secs(1));
            }
            p.r#type = "Progressing".into();
            p
        }
    };
    let touch = progressed && progressing.status == "True" && !complete;
    if touch {
        // Look again when the deadline would pass without further progress.
        plan.requeue = Some(deadline + Duration::from_secs(1));
    }
    set_condition(&mut status.conditions, progressing, touch);
    if status.ready_replicas > status.available_replicas && spec.min_ready_seconds > 0 {
        let wait = Duration::from_secs(u64::try_from(spec.min_ready_seconds).unwrap_or(0));
        plan.requeue = Some(plan.requeue.map_or(wait, |r| r.min(wait)));
    }
    plan.status = status;

    // History: once complete, old ReplicaSets with nothing left, beyond the limit.
    if complete {
        let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(0);
        let mut idle: Vec<usize> = old
            .iter()
            .copied()
            .filter(|&i| {
                replicas(&next[i]) == 0 && counts[i].existing == 0 && rs_meta(&next[i]).deletion_timestamp.is_empty()
            })
            .collect();
        idle.sort_by_key(|&i| revision(rs_meta(&next[i])));
        let surplus = idle.len().saturating_sub(limit);
        plan.delete =
            idle[..surplus].iter().map(|&i| (rs_meta(&next[i]).name.clone(), rs_meta(&next[i]).uid.clone())).collect();
    }
    if let Some(r) = new_revision {
        if m.annotations.get(REVISION) != Some(&r.to_string()) {
            plan.revision = Some(r.to_string());
        }
    }
    Ok(plan)
}

/// One step of a rolling update over `sets` (oldest first), `new` the new ReplicaSet.
fn roll(
    sets: &mut [pb::ReplicaSet],
    counts: &[PodCounts],
    new: usize,
    old: &[usize],
    want: i32,
    surge: i32,
    min_available: i32,
) {
    // Scale up the new ReplicaSet within replicas + maxSurge (counting pods old
    // ReplicaSets have not deleted yet), or down to replicas.
    let new_replicas = replicas(&sets[new]);
    if new_replicas > want {
        sets[new] = with_replicas(&sets[new], want);
    } else if new_replicas < want {
        let total: i32 = sets.iter().zip(counts).map(|(rs, c)| replicas(rs).max(c.live)).sum();
        let up = (want + surge - total).min(want - new_replicas);
        if up > 0 {
            sets[new] = with_replicas(&sets[new], new_replicas + up);
        }
    }
    // Scale old ReplicaSets down while at least min_available stay available.
    let new_replicas = replicas(&sets[new]);
    let avail = |rs: &pb::ReplicaSet, c: &PodCounts| c.available.min(replicas(rs));
    let all: i32 = sets.iter().map(replicas).sum();
    let new_unavailable = new_replicas - avail(&sets[new], &counts[new]);
    let mut budget = all - min_available - new_unavailable;
    if budget <= 0 {
        return;
    }
    // First what is unavailable anyway, oldest first.
    for &i in old {
        if budget == 0 {
            break;
        }
        let unhealthy = replicas(&sets[i]) - avail(&sets[i], &counts[i]);
        let down = unhealthy.min(budget);
        if down > 0 {
            sets[i] = with_replicas(&sets[i], replicas(&sets[i]) - down);
            budget -= down;
        }
    }
    // Then available pods, as far as availability allows.
    let available_total: i32 = sets.iter().zip(counts).map(|(rs, c)| avail(rs, c)).sum();
    let mut down_total = (available_total - min_available).min(budget);
    for &i in old {
        if down_total <= 0 {
            break;
        }
        let down = replicas(&sets[i]).min(down_total);
        if down > 0 {
            sets[i] = with_replicas(&sets[i], replicas(&sets[i]) - down);
            down_total -= down;
        }
    }
}

/// The running controller: its caches, client (fenced when elected) and its own recent
/// ReplicaSet writes.
pub struct DeploymentController {
    client: Client,
    recorder: EventRecorder,
    deployments: Cache<pb::Deployment>,
    sets: Cache<pb::ReplicaSet>,
    pods: Cache<pb::Pod>,
    written: Recent<pb::ReplicaSet>,
}

impl DeploymentController {
    /// A controller over these caches, writing through `client`.
    pub fn new(
        client: Client,
        deployments: Cache<pb::Deployment>,
        sets: Cache<pb::ReplicaSet>,
        pods: Cache<pb::Pod>,
    ) -> DeploymentController {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        DeploymentController {
            client,
            recorder: EventRecorder::new("deployment-controller", host.trim()),
            deployments,
            sets,
            pods,
            written: Recent::default(),
        }
    }

    /// The cached Deployment that controls a ReplicaSet (by uid), as `namespace/name`.
    fn owner_of_set(&self, rm: &pb::ObjectMeta) -> Option<String> {
        let r = rm.owner_references.iter().find(|r| r.controller && r.kind == "Deployment")?;
        let key = format!("{}/{}", rm.namespace, r.name);
        let ds = self.deployments.read().unwrap_or_else(|p| p.into_inner());
        ds.get(&key)?.metadata.as_ref().is_some_and(|m| m.uid == r.uid).then_some(key)
    }

    /// Deployments in `namespace` whose selector matches `labels`.
    fn matching(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
        let prefix = format!("{namespace}/");
        let ds = self.deployments.read().unwrap_or_else(|p| p.into_inner());
        ds.range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, d)| {
                d.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|sel| {
                    flotilla_api::select::from_proto(sel).is_ok_and(|s| !s.requirements.is_empty() && s.matches(labels))
                })
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn all_changed(&self, queue: &WorkQueue) {
        for k in self.deployments.read().unwrap_or_else(|p| p.into_inner()).keys() {
            queue.add(k);
        }
    }

    /// Takes in a change of the Deployment cache.
    pub fn deployment_changed(&self, queue: &WorkQueue, c: &Change<pb::Deployment>) {
        match c {
            Change::Listed => self.all_changed(queue),
            Change::Upsert { new, .. } | Change::Deleted(new) => {
                if let Some(m) = &new.metadata {
                    queue.add(&format!("{}/{}", m.namespace, m.name));
                }
            }
        }
    }

    /// Takes in a change of the ReplicaSet cache: queues its owner (before and after), or
    /// for an orphan the Deployments that could adopt it.
    pub fn set_changed(&self, queue: &WorkQueue, c: &Change<pb::ReplicaSet>) {
        let (old, new) = match c {
            Change::Listed => return self.all_changed(queue),
            Change::Upsert { old, new } => (old.as_ref(), new),
            Change::Deleted(gone) => {
                let m = rs_meta(gone);
                self.written.forget(&format!("{}/{}", m.namespace, m.name));
                (None, gone)
            }
        };
        for rs in old.into_iter().chain([new]) {
            let m = rs_meta(rs);
            match self.owner_of_set(m) {
                Some(k) => queue.add(&k),
                None if controller_uid(m).is_none() => {
                    for k in self.matching(&m.namespace, &m.labels) {
                        queue.add(&k);
                    }
                }
                None => {}
            }
        }
    }

    /// Takes in a change of the pod cache: queues the Deployment whose ReplicaSet owns it
    /// (readiness and availability are counted from pods).
    pub fn pod_changed(&self, queue: &WorkQueue, c: &Change<pb::Pod>) {
        let pods: Vec<&pb::Pod> = match c {
            Change::Listed => return self.all_changed(queue),
            Change::Upsert { old, new } => old.iter().chain([new]).collect(),
            Change::Deleted(p) => vec![p],
        };
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        for p in pods {
            let pm = meta(p);
            let Some(r) = pm.owner_references.iter().find(|r| r.controller && r.kind == "ReplicaSet") else { continue };
            if let Some(rs) = sets.get(&format!("{}/{}", pm.namespace, r.name)) {
                if let Some(k) = self.owner_of_set(rs_meta(rs)) {
                    queue.add(&k);
                }
            }
        }
    }

    async fn event(&self, d: &pb::Deployment, kind: &str, reason: &str, message: &str) {
        if let Err(e) = self.recorder.record(&self.client, object_ref(d), kind, reason, message).await {
            tracing::debug!(error = %e, reason, "cannot record an Event");
        }
    }

    async fn set_owner(&self, rs: &pb::ReplicaSet, d: &pb::ObjectMeta, adopt: bool) -> Result<(), ClientError> {
        let mut rs = rs.clone();
        let m = rs.metadata.get_or_insert_with(Default::default);
        if adopt {
            m.owner_references.retain(|r| r.uid != d.uid);
            m.owner_references.push(pb::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: d.name.clone(),
                uid: d.uid.clone(),
                controller: true,
                block_owner_deletion: true,
            });
        } else {
            m.owner_references.retain(|r| !(r.controller && r.uid == d.uid));
        }
        let written = self.client.update(rs).await?;
        self.written.wrote(&written);
        Ok(())
    }

    /// Writes the Deployment's status; when the cached one is behind (often behind this
    /// controller's own last write), reads it again and retries once.
    async fn write_status(&self, d: &pb::Deployment, status: &pb::DeploymentStatus) -> Result<(), ClientError> {
        let mut updated = d.clone();
        updated.status = Some(status.clone());
        match self.client.update_status(updated).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) if e.is_conflict() => {
                let m = d.metadata.clone().unwrap_or_default();
                let mut fresh: pb::Deployment = match self.client.get(&m.namespace, &m.name).await {
                    Err(e) if e.is_not_found() => return Ok(()),
                    other => other?,
                };
                if fresh.metadata.as_ref().is_none_or(|f| f.uid != m.uid || f.generation != m.generation) {
                    return Ok(()); // changed under us: its own event brings the key back
                }
                fresh.status = Some(status.clone());
                self.client.update_status(fresh).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the Deployment's revision annotation (a compare-and-swap on the cached
    /// version: a conflict is retried with a fresher one).
    async fn write_revision(&self, d: &pb::Deployment, rev: &str) -> Result<pb::Deployment, ClientError> {
        let mut d = d.clone();
        d.metadata.get_or_insert_with(Default::default).annotations.insert(REVISION.into(), rev.into());
        self.client.update(d).await
    }
}

impl Reconcile for DeploymentController {
    fn name(&self) -> &str {
        "deployment"
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let Some(mut d) = self.deployments.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned() else {
            return Ok(None);
        };
        let m = d.metadata.clone().unwrap_or_default();
        let min_ready = d.spec.as_ref().map_or(0, |s| s.min_ready_seconds);
        let prefix = format!("{}/", m.namespace);
        let now = SystemTime::now();
        let sets: Vec<(pb::ReplicaSet, PodCounts)> = {
            let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
            let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
            let mut by_owner: BTreeMap<&str, Vec<&pb::Pod>> = BTreeMap::new();
            for (_, p) in pods.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
                if let Some(uid) = controller_uid(meta(p)) {
                    by_owner.entry(uid).or_default().push(p);
                }
            }
            sets.range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, rs)| {
                    let rs = self.written.fresher(rs.clone());
                    let pods = by_owner.get(rs_meta(&rs).uid.as_str()).map(Vec::as_slice).unwrap_or_default();
                    let c = count(pods, min_ready, now);
                    (rs, c)
                })
                .collect()
        };
        let views: Vec<(&pb::ReplicaSet, PodCounts)> = sets.iter().map(|(rs, c)| (rs, *c)).collect();
        let plan = match plan(&d, &views, now) {
            Ok(p) => p,
            // A spec the apiserver would refuse today (stored before a rule existed):
            // said once per change, and left alone until it changes.
            Err(e) => {
                self.event(&d, "Warning", "InvalidSpec", &format!("cannot act on it: {e}")).await;
                return Ok(None);
            }
        };
        let by_name: BTreeMap<&str, &pb::ReplicaSet> =
            sets.iter().map(|(rs, _)| (rs_meta(rs).name.as_str(), rs)).collect();

        if !plan.adopt.is_empty() {
            let fresh: pb::Deployment = match self.client.get(&m.namespace, &m.name).await {
                Ok(f) => f,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let fm = fresh.metadata.unwrap_or_default();
            if fm.uid != m.uid || !fm.deletion_timestamp.is_empty() {
                return Ok(None);
            }
        }
        for (names, adopt) in [(&plan.adopt, true), (&plan.release, false)] {
            for name in names {
                if let Some(rs) = by_name.get(name.as_str()) {
                    match self.set_owner(rs, &m, adopt).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        // Claims decide what the plan counted: plan again from fresh state.
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        if !plan.adopt.is_empty() || !plan.release.is_empty() {
            // What the plan counted changed: plan again with the claims in the cache.
            return Ok(Some(Duration::from_millis(0)));
        }
        if let Some(rs) = &plan.create {
            let name = rs_meta(rs).name.clone();
            match self.client.create(rs.clone()).await {
                Ok(created) => {
                    self.written.wrote(&created);
                    let n = replicas(&created);
                    self.event(&d, "Normal", "ScalingReplicaSet", &format!("Scaled up replica set {name} to {n}"))
                        .await;
                }
                Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {
                    // A namesake with another template (or not ours): say so, and retry
                    // after the back-off (the cache may simply be behind).
                    self.event(
                        &d,
                        "Warning",
                        "ReplicaSetCreateError",
                        &format!("Failed to create new replica set {name}: {e}"),
                    )
                    .await;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut errors = Vec::new();
        for rs in &plan.update {
            let rm = rs_meta(rs);
            let name = rm.name.clone();
            let before = by_name.get(name.as_str()).map_or(0, |r| replicas(r));
            // A merge patch of what this controller owns (replicas, revision), so that
            // the ReplicaSet controller's status writes never make it conflict; the uid
            // keeps it off a namesake.
            let patch = serde_json::json!({
                "metadata": {"uid": rm.uid, "annotations": {REVISION: rm.annotations.get(REVISION)}},
                "spec": {"replicas": replicas(rs)},
            });
            match self.client.patch::<pb::ReplicaSet>(&m.namespace, &name, &patch).await {
                Ok(written) => {
                    self.written.wrote(&written);
                    let after = replicas(&written);
                    if after != before {
                        let way = if after > before { "up" } else { "down" };
                        self.event(
                            &d,
                            "Normal",
                            "ScalingReplicaSet",
                            &format!("Scaled {way} replica set {name} to {after}"),
                        )
                        .await;
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(format!("updating replica set {name}: {e}")),
            }
        }
        for (name, uid) in &plan.delete {
            let p = DeleteParams { uid: uid.clone(), ..Default::default() };
            match self.client.delete::<pb::ReplicaSet>(&m.namespace, name, &p).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(format!("deleting old replica set {name}: {e}")),
            }
        }
        if let Some(rev) = &plan.revision {
            match self.write_revision(&d, rev).await {
                Ok(written) => d = written,
                Err(e) if e.is_not_found() => return Ok(None),
                // The cache is behind: the Deployment's next event brings the key back.
                Err(e) if e.is_conflict() => {}
                Err(e) => errors.push(format!("writing the revision: {e}")),
            }
        }
        if d.status.as_ref() != Some(&plan.status) {
            if let Err(e) = self.write_status(&d, &plan.status).await {
                errors.push(format!("writing status: {e}"));
            }
        }
        if !errors.is_empty() {
            return Err(ControllerError::Reconcile(errors.join("; ")));
        }
        Ok(plan.requeue)
    }
}

/// Starts the informers the Deployment controller reads.
pub fn warm(informers: &Informers) {
    informers.get::<pb::Deployment>();
    informers.get::<pb::ReplicaSet>();
    informers.get::<pb::Pod>();
}

/// Runs the Deployment controller for one term (until `ctx` says stop).
pub async fn start(ctx: Context) {
    let (ds, sets, pods) =
        (ctx.informers.get::<pb::Deployment>(), ctx.informers.get::<pb::ReplicaSet>(), ctx.informers.get::<pb::Pod>());
    let (mut d_rx, mut set_rx, mut pod_rx) = (ds.subscribe(), sets.subscribe(), pods.subscribe());
    let ctl = Arc::new(DeploymentController::new(ctx.client.clone(), ds.cache(), sets.cache(), pods.cache()));
    let queue = Arc::new(WorkQueue::default());
    tokio::select! {
        () = ctx.stopped() => return,
        () = async { ds.wait_synced().await; sets.wait_synced().await; pods.wait_synced().await; } => {}
    }
    let dispatch = async {
        loop {
            tokio::select! {
                Some(c) = d_rx.recv() => ctl.deployment_changed(&queue, &c),
                Some(c) = set_rx.recv() => ctl.set_changed(&queue, &c),
                Some(c) = pod_rx.recv() => ctl.pod_changed(&queue, &c),
                else => return,
            }
        }
    };
    crate::worker::serve(queue.clone(), ctl.clone(), ctx.workers, ctx.metrics("deployment"), dispatch, ctx.stopped())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn template(image: &str) -> pb::PodTemplateSpec {
        pb::PodTemplateSpec {
            metadata: Some(pb::ObjectMeta { labels: labels(&[("app", "web")]), ..Default::default() }),
            spec: Some(pb::PodSpec {
                containers: vec![pb::Container { name: "main".into(), image: image.into(), ..Default::default() }],
                ..Default::default()
            }),
        }
    }

    fn deployment(replicas: i32, image: &str, surge: &str, unavailable: &str) -> pb::Deployment {
        pb::Deployment {
            metadata: Some(pb::ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                uid: "d-uid".into(),
                generation: 1,
                ..Default::default()
            }),
            spec: Some(pb::DeploymentSpec {
                replicas: Some(replicas),
                selector: Some(pb::LabelSelector { match_labels: labels(&[("app", "web")]), ..Default::default() }),
                template: Some(template(image)),
                strategy: Some(pb::DeploymentStrategy {
                    r#type: "RollingUpdate".into(),
                    rolling_update: Some(pb::RollingUpdateDeployment {
                        max_surge: surge.into(),
                        max_unavailable: unavailable.into(),
                    }),
                }),
                min_ready_seconds: 0,
                revision_history_limit: Some(10),
                paused: false,
                progress_deadline_seconds: Some(600),
            }),
            status: None,
        }
    }

    /// A ReplicaSet as the apiserver would hold it after `new_replicaset`.
    fn stored(rs: pb::ReplicaSet, uid: &str, second: u64) -> pb::ReplicaSet {
        let mut rs = rs;
        let m = rs.metadata.as_mut().expect("meta");
        m.uid = uid.into();
        m.creation_timestamp = now_string(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + second));
        rs
    }

    fn counts(n: i32) -> PodCounts {
        PodCounts { existing: n, live: n, ready: n, available: n }
    }

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        let spec = |n, s: &str, u: &str| deployment(n, "a", s, u).spec.expect("spec");
        assert_eq!(surge_and_unavailable(&spec(10, "25%", "25%")), (3, 2));
        assert_eq!(surge_and_unavailable(&spec(10, "2", "1")), (2, 1));
        assert_eq!(surge_and_unavailable(&spec(1, "0%", "10%")), (0, 1), "both 0 after rounding: 1 unavailable");
        assert_eq!(surge_and_unavailable(&spec(3, "1", "5")), (1, 3), "never more unavailable than replicas");
    }

    #[test]
    fn a_new_deployment_gets_a_replicaset_with_the_hash_label_and_revision_one() {
        let d = deployment(3, "a", "25%", "25%");
        let p = plan(&d, &[], at()).expect("plan");
        let rs = p.create.expect("a ReplicaSet");
        let hash = template_hash(&template("a"));
        let m = rs.metadata.as_ref().expect("meta");
        assert_eq!(m.name, format!("web-{hash}"));
        assert_eq!(m.labels.get(HASH_LABEL), Some(&hash));
        assert_eq!(m.annotations.get(REVISION).map(String::as_str), Some("1"));
        assert_eq!(m.owner_references[0].uid, "d-uid");
        let spec = rs.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.selector.as_ref().expect("selector").match_labels.get(HASH_LABEL), Some(&hash));
        assert_eq!(
            spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.get(HASH_LABEL)),
            Some(&hash)
        );
        assert_eq!(p.revision.as_deref(), Some("1"));
        assert_ne!(template_hash(&template("b")), hash, "another template, another hash");
    }

    #[test]
    fn a_template_put_back_reuses_its_replicaset_as_the_newest_revision() {
        let d = deployment(2, "a", "1", "0");
        let old_a = stored(new_replicaset(&d, &template_hash(&template("a")), 1, 0), "rs-a", 1);
        let db = deployment(2, "b", "1", "0");
        let b = stored(new_replicaset(&db, &template_hash(&template("b")), 2, 2), "rs-b", 2);
        let p = plan(&d, &[(&old_a, counts(0)), (&b, counts(2))], at()).expect("plan");
        assert_eq!(p.create, None, "no new ReplicaSet for a template that has one");
        let a = p.update.iter().find(|rs| rs_meta(rs).uid == "rs-a").expect("rs-a written");
        assert_eq!(rs_meta(a).annotations.get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(replicas(a), 1, "scaled up within maxSurge 1");
        assert_eq!(p.revision.as_deref(), Some("3"));
    }

    #[test]
    fn recreate_scales_the_old_to_zero_and_the_new_up_only_when_old_pods_are_gone() {
        let mut d = deployment(3, "b", "", "");
        d.spec.as_mut().expect("spec").strategy =
            Some(pb::DeploymentStrategy { r#type: "Recreate".into(), rolling_update: None });
        let old = stored(new_replicaset(&deployment(3, "a", "1", "1"), &template_hash(&template("a")), 1, 3), "a", 1);
        let p = plan(&d, &[(&old, counts(3))], at()).expect("plan");
        assert_eq!(replicas(p.create.as_ref().expect("new")), 0, "the new one starts empty");
        let new = stored(p.create.clone().expect("new"), "b", 2);
        let p = plan(&d, &[(&old, counts(3)), (&new, counts(0))], at()).expect("plan");
        assert_eq!(
            p.update.iter().map(|rs| (rs_meta(rs).uid.as_str(), replicas(rs))).collect::<Vec<_>>(),
            vec![("a", 0)]
        );
        // Scaled to 0 but a pod is still terminating: the new one waits.
        let old0 = with_replicas(&old, 0);
        let terminating = PodCounts { existing: 1, ..Default::default() };
        let p = plan(&d, &[(&old0, terminating), (&new, counts(0))], at()).expect("plan");
        assert!(p.update.is_empty(), "{:?}", p.update);
        let p = plan(&d, &[(&old0, PodCounts::default()), (&new, counts(0))], at()).expect("plan");
        assert_eq!(
            p.update.iter().map(|rs| (rs_meta(rs).uid.as_str(), replicas(rs))).collect::<Vec<_>>(),
            vec![("b", 3)]
        );
    }

    #[test]
    fn a_paused_deployment_does_not_roll_but_is_resized() {
        let mut d = deployment(5, "b", "1", "1");
        d.spec.as_mut().expect("spec").paused = true;
        let old = stored(new_replicaset(&deployment(3, "a", "1", "1"), &template_hash(&template("a")), 1, 3), "a", 1);
        let p = plan(&d, &[(&old, counts(3))], at()).expect("plan");
        assert_eq!(p.create, None);
        assert_eq!(p.update.iter().map(replicas).collect::<Vec<_>>(), vec![5], "resized in place");
        let c = p.status.conditions.iter().find(|c| c.r#type == "Progressing").expect("Progressing");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("Unknown", "DeploymentPaused"));
    }

    #[test]
    fn old_replicasets_beyond_the_history_limit_are_deleted_once_complete() {
        let mut d = deployment(1, "e", "1", "0");
        d.spec.as_mut().expect("spec").revision_history_limit = Some(2);
        let mut sets = Vec::new();
        for (i, img) in ["a", "b", "c", "d"].iter().enumerate() {
            let rs = new_replicaset(&deployment(1, img, "1", "0"), &template_hash(&template(img)), i as i64 + 1, 0);
            sets.push(stored(rs, img, i as u64));
        }
        sets.push(stored(new_replicaset(&d, &template_hash(&template("e")), 5, 1), "e", 9));
        let views: Vec<(&pb::ReplicaSet, PodCounts)> =
            sets.iter().map(|rs| (rs, if rs_meta(rs).uid == "e" { counts(1) } else { PodCounts::default() })).collect();
        let p = plan(&d, &views, at()).expect("plan");
        assert_eq!(p.delete.iter().map(|(_, uid)| uid.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        let c = p.status.conditions.iter().find(|c| c.r#type == "Progressing").expect("Progressing");
        assert_eq!(c.reason, "NewReplicaSetAvailable");
    }

    #[test]
    fn no_progress_past_the_deadline_turns_progressing_false() {
        let d0 = deployment(2, "b", "1", "0");
        let old = stored(new_replicaset(&deployment(2, "a", "1", "0"), &template_hash(&template("a")), 1, 2), "a", 1);
        let new = stored(new_replicaset(&d0, &template_hash(&template("b")), 2, 1), "b", 2);
        let stuck = PodCounts { existing: 1, live: 1, ready: 0, available: 0 };
        let views = [(&old, counts(2)), (&new, stuck)];
        let first = plan(&d0, &views, at()).expect("plan");
        let mut d = d0.clone();
        d.status = Some(first.status.clone());
        // Nothing changes for 10 minutes and a second.
        let later = at() + Duration::from_secs(601);
        let p = plan(&d, &views, later).expect("plan");
        let c = p.status.conditions.iter().find(|c| c.r#type == "Progressing").expect("Progressing");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "ProgressDeadlineExceeded"));
        // Before the deadline it stays as it was, with a look scheduled for the deadline.
        let p = plan(&d, &views, at() + Duration::from_secs(60)).expect("plan");
        assert_eq!(p.status, first.status);
        assert_eq!(p.requeue, Some(Duration::from_secs(541)));
    }

    #[test]
    fn orphans_that_match_are_adopted_and_owned_sets_that_stop_matching_released() {
        let d = deployment(1, "a", "1", "0");
        let mut orphan = stored(new_replicaset(&d, &template_hash(&template("a")), 1, 1), "o", 1);
        orphan.metadata.as_mut().expect("meta").owner_references.clear();
        let mut strayed = stored(new_replicaset(&d, "x", 0, 0), "s", 2);
        strayed.metadata.as_mut().expect("meta").labels = labels(&[("app", "other")]);
        let p = plan(&d, &[(&orphan, counts(1)), (&strayed, PodCounts::default())], at()).expect("plan");
        assert_eq!(p.adopt, vec![rs_meta(&orphan).name.clone()]);
        assert_eq!(p.release, vec![rs_meta(&strayed).name.clone()]);
    }

    /// A simulated cluster: ReplicaSets, the readiness of each one's live pods.
    struct Sim {
        sets: Vec<pb::ReplicaSet>,
        pods: Vec<Vec<bool>>,
        made: u64,
    }

    impl Sim {
        fn counts(&self, i: usize) -> PodCounts {
            let ready = self.pods[i].iter().filter(|r| **r).count() as i32;
            let n = self.pods[i].len() as i32;
            PodCounts { existing: n, live: n, ready, available: ready }
        }

        fn deployment_step(&mut self, d: &pb::Deployment) -> Plan {
            let views: Vec<(&pb::ReplicaSet, PodCounts)> =
                self.sets.iter().enumerate().map(|(i, rs)| (rs, self.counts(i))).collect();
            let p = plan(d, &views, at()).expect("plan");
            for rs in &p.update {
                let i = self.sets.iter().position(|s| rs_meta(s).uid == rs_meta(rs).uid).expect("known");
                self.sets[i] = rs.clone();
            }
            if let Some(rs) = &p.create {
                self.made += 1;
                self.sets.push(stored(rs.clone(), &format!("rs{}", self.made), self.made));
                self.pods.push(Vec::new());
            }
            p
        }

        /// The ReplicaSet controller, one pod at a time: creates unready pods, deletes
        /// unready ones first.
        fn replicaset_step(&mut self, i: usize) {
            let want = replicas(&self.sets[i]) as usize;
            let pods = &mut self.pods[i];
            if pods.len() < want {
                pods.push(false);
            } else if pods.len() > want {
                let at = pods.iter().position(|r| !*r).unwrap_or(0);
                pods.remove(at);
            }
        }

        fn ready_step(&mut self, i: usize) {
            if let Some(p) = self.pods[i].iter_mut().find(|r| !**r) {
                *p = true;
            }
        }

        fn live(&self) -> usize {
            self.pods.iter().map(Vec::len).sum()
        }

        fn available(&self) -> usize {
            self.pods.iter().flatten().filter(|r| **r).count()
        }
    }

    proptest! {
        /// Any interleaving of the Deployment controller, the ReplicaSet controller and
        /// pods becoming ready keeps a rolling update of 10 within maxSurge 2 and
        /// maxUnavailable 1 (never more than 12 pods, never fewer than 9 available), and
        /// run fairly to the end it completes on the new template alone.
        #[test]
        fn a_rolling_update_stays_within_its_bounds_in_any_order(
            steps in proptest::collection::vec((0u8..3, 0usize..4), 1..400),
            surge in 0i32..4,
            unavailable in 0i32..4,
        ) {
            let (surge, unavailable) = if surge == 0 && unavailable == 0 { (2, 1) } else { (surge, unavailable) };
            let d_old = deployment(10, "a", &surge.to_string(), &unavailable.to_string());
            let mut sim = Sim {
                sets: vec![stored(new_replicaset(&d_old, &template_hash(&template("a")), 1, 10), "rs0", 0)],
                pods: vec![vec![true; 10]],
                made: 0,
            };
            let d = deployment(10, "b", &surge.to_string(), &unavailable.to_string());
            let (most, least) = (10 + surge as usize, 10 - unavailable as usize);
            for (what, which) in steps {
                match what {
                    0 => { sim.deployment_step(&d); }
                    1 => { let i = which % sim.sets.len(); sim.replicaset_step(i); }
                    _ => { let i = which % sim.sets.len(); sim.ready_step(i); }
                }
                prop_assert!(sim.live() <= most, "{} pods, more than {most}", sim.live());
                prop_assert!(sim.available() >= least, "{} available, fewer than {least}", sim.available());
            }
            for _ in 0..500 {
                sim.deployment_step(&d);
                for i in 0..sim.sets.len() {
                    sim.replicaset_step(i);
                    prop_assert!(sim.live() <= most);
                    sim.ready_step(i);
                }
                prop_assert!(sim.available() >= least);
            }
            let new = sim.sets.iter().position(|rs| rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| unhashed(t) == template("b"))).expect("new set");
            prop_assert_eq!(sim.pods[new].len(), 10);
            prop_assert_eq!(sim.live(), 10);
            let p = sim.deployment_step(&d);
            let c = p.status.conditions.iter().find(|c| c.r#type == "Progressing").expect("Progressing");
            prop_assert_eq!(c.reason.as_str(), "NewReplicaSetAvailable");
        }
    }
}
