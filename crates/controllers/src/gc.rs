//! The garbage collector: objects whose owners are gone are deleted, as `ownerReferences`
//! say — for every kind but Namespaces (deleted by the namespace controller) and Events
//! (too many to watch for nothing; they expire): Deployments own ReplicaSets, which own
//! pods, as DaemonSets and Jobs do; any object may name any other as its owner.
//!
//! * **Background** (a plain delete): the owner goes at once; a dependent all of whose
//!   owners are gone is deleted, one whose other owners remain loses the dangling
//!   reference. "Gone" is confirmed by reading the owner from the apiserver (not found, or
//!   another uid) before anything is deleted: a cache that has not yet seen a new owner
//!   never costs its dependents.
//! * **Foreground** (`foregroundDeletion` finalizer): the owner stays, marked, while its
//!   dependents are deleted; when none is left, the finalizer is removed and it goes.
//! * **Orphan** (`orphan` finalizer): the reference to the owner is removed from every
//!   dependent, then the finalizer, and the owner goes; the dependents stay.
//!
//! Level-triggered: every pass looks at the whole of the caches, so a restart or a
//! failover finishes what was begun.

use std::collections::HashMap;
use std::time::Duration;

use flotilla_api::kinds::{meta, meta_mut};
use flotilla_api::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use flotilla_client::{Client, ClientError, DeleteParams, Resource};
use flotilla_proto::api::{self as pb, object::Kind as O};

use crate::informers::Informers;
use crate::manager::Context;

/// How often the caches are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// An object that can own others, as the caches show it.
struct Owner {
    kind: &'static str,
    obj: O,
}

/// Runs `$m!(T)` for every kind the garbage collector watches.
macro_rules! for_each_kind {
    ($m:ident) => {{
        $m!(pb::Node);
        $m!(pb::Deployment);
        $m!(pb::ReplicaSet);
        $m!(pb::DaemonSet);
        $m!(pb::Job);
        $m!(pb::Pod);
        $m!(pb::Service);
        $m!(pb::Endpoints);
        $m!(pb::Lease);
    }};
}

/// Starts the informers the garbage collector reads.
pub fn warm(informers: &Informers) {
    macro_rules! get {
        ($t:ty) => {
            informers.get::<$t>();
        };
    }
    for_each_kind!(get);
}

fn snapshot<T: Resource>(informers: &Informers) -> Vec<O> {
    let i = informers.get::<T>();
    let c = i.cache();
    let objects: Vec<O> = c.read().unwrap_or_else(|p| p.into_inner()).values().cloned().map(T::into_object).collect();
    objects
}

/// Every watched object, as the caches show it.
fn everything(informers: &Informers) -> Vec<O> {
    let mut all = Vec::new();
    macro_rules! add {
        ($t:ty) => {
            all.extend(snapshot::<$t>(informers));
        };
    }
    for_each_kind!(add);
    all
}

fn kind_name(o: &O) -> &'static str {
    flotilla_api::Kind::of(o).name()
}

/// Runs the garbage collector for one term (until `ctx` says stop).
pub async fn start(ctx: Context) {
    let synced = async {
        macro_rules! wait {
            ($t:ty) => {
                ctx.informers.get::<$t>().wait_synced().await;
            };
        }
        for_each_kind!(wait);
    };
    tokio::select! {
        () = ctx.stopped() => return,
        () = synced => {}
    }
    let metrics = ctx.metrics("garbagecollector");
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = ctx.stopped() => return,
            _ = tick.tick() => {}
        }
        let started = std::time::Instant::now();
        let ok = pass(&ctx.client, &ctx.informers).await;
        metrics.observe(started.elapsed(), ok);
    }
}

/// One look at everything; whether every write went through.
async fn pass(client: &Client, informers: &Informers) -> bool {
    // Every kind watched can be an owner (a pod deleted in the foreground owns nothing,
    // but carries the finalizer to remove), and a dependent.
    let all = everything(informers);
    let dependents: Vec<O> = all.iter().filter(|o| !meta(o).owner_references.is_empty()).cloned().collect();
    let owners = all;
    let by_uid: HashMap<String, Owner> =
        owners.into_iter().map(|o| (meta(&o).uid.clone(), Owner { kind: kind_name(&o), obj: o })).collect();
    // Dependents by the uid of each owner they name.
    let mut of: HashMap<&str, Vec<&O>> = HashMap::new();
    for dep in &dependents {
        for r in &meta(dep).owner_references {
            of.entry(r.uid.as_str()).or_default().push(dep);
        }
    }
    let mut ok = true;
    // Owners being deleted with a policy: deal with their dependents, then let them go.
    for (uid, owner) in &by_uid {
        let m = meta(&owner.obj);
        if m.deletion_timestamp.is_empty() {
            continue;
        }
        let deps = of.get(uid.as_str()).cloned().unwrap_or_default();
        if m.finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
            for dep in &deps {
                ok &= drop_reference(client, dep, uid).await;
            }
            if deps.is_empty() {
                ok &= remove_finalizer(client, owner, ORPHAN_FINALIZER).await;
            }
        } else if m.finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
            for dep in deps.iter().filter(|d| meta(d).deletion_timestamp.is_empty()) {
                // Pods own nothing: deleted plainly, so that their kubelet's graceful stop
                // (not a finalizer) decides when they go.
                let policy = if matches!(dep, O::Pod(_)) { "" } else { "Foreground" };
                ok &= delete(client, dep, policy).await;
            }
            // Dependents that block their owner's deletion must be gone first.
            let blocking =
                deps.iter().any(|d| meta(d).owner_references.iter().any(|r| r.uid == *uid && r.block_owner_deletion));
            if !blocking {
                ok &= remove_finalizer(client, owner, FOREGROUND_FINALIZER).await;
            }
        }
    }
    // Dependents whose owners are gone.
    for dep in &dependents {
        let refs = &meta(dep).owner_references;
        if refs.is_empty() {
            continue;
        }
        let missing: Vec<&pb::OwnerReference> = refs.iter().filter(|r| !by_uid.contains_key(&r.uid)).collect();
        if missing.is_empty() {
            continue;
        }
        // The cache says gone: ask the apiserver before acting on it.
        let mut gone = Vec::new();
        for r in &missing {
            match owner_exists(client, dep, r).await {
                Ok(false) => gone.push(r.uid.clone()),
                Ok(true) => {}
                Err(e) => {
                    tracing::debug!(owner = %r.name, error = %e, "gc: cannot look up an owner");
                    ok = false;
                }
            }
        }
        if gone.is_empty() {
            continue;
        }
        if gone.len() == refs.len() {
            if meta(dep).deletion_timestamp.is_empty() {
                ok &= delete(client, dep, "").await;
            }
        } else {
            for uid in &gone {
                ok &= drop_reference(client, dep, uid).await;
            }
        }
    }
    ok
}

/// Whether the owner `r` of `dep` exists (same uid), read from the apiserver.
async fn owner_exists(client: &Client, dep: &O, r: &pb::OwnerReference) -> Result<bool, ClientError> {
    let Some(kind) = flotilla_api::Kind::lookup(&r.kind) else {
        // A kind this cluster does not have cannot exist.
        return Ok(false);
    };
    let ns = if kind.namespaced() { meta(dep).namespace.as_str() } else { "" };
    match client.get_object(kind.name(), ns, &r.name).await {
        Ok(o) => Ok(meta(&o).uid == r.uid),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

async fn delete(client: &Client, o: &O, policy: &str) -> bool {
    let m = meta(o);
    let p = DeleteParams { uid: m.uid.clone(), propagation_policy: policy.into(), ..Default::default() };
    match client.delete_object(kind_name(o), &m.namespace, &m.name, &p).await {
        Ok(_) => {
            tracing::info!(kind = kind_name(o), name = %m.name, namespace = %m.namespace, "gc: deleted a dependent of a deleted owner");
            true
        }
        Err(e) if e.is_not_found() || e.code() == Some(tonic::Code::FailedPrecondition) => true,
        Err(e) => {
            tracing::debug!(name = %m.name, error = %e, "gc: delete failed");
            false
        }
    }
}

/// Removes the reference to owner `uid` from `dep` (a compare-and-swap on the cached
/// version; a conflict is tried again on the next pass).
async fn drop_reference(client: &Client, dep: &O, uid: &str) -> bool {
    let mut d = dep.clone();
    meta_mut(&mut d).owner_references.retain(|r| r.uid != uid);
    match client.update_object(d).await {
        Ok(_) => true,
        Err(e) if e.is_not_found() => true,
        Err(e) => {
            tracing::debug!(name = %meta(dep).name, error = %e, "gc: removing an owner reference failed");
            false
        }
    }
}

async fn remove_finalizer(client: &Client, owner: &Owner, finalizer: &str) -> bool {
    let mut o = owner.obj.clone();
    meta_mut(&mut o).finalizers.retain(|f| f != finalizer);
    match client.update_object(o).await {
        Ok(_) => {
            tracing::info!(kind = owner.kind, name = %meta(&owner.obj).name, finalizer, "gc: dependents dealt with: owner released");
            true
        }
        Err(e) if e.is_not_found() => true,
        Err(e) => {
            tracing::debug!(name = %meta(&owner.obj).name, error = %e, "gc: removing a finalizer failed");
            false
        }
    }
}
