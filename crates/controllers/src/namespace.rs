//! The namespace controller: empties a namespace being deleted, through the API, then
//! lets it go.
//!
//! Deleting a namespace only marks it Terminating, with the `kubernetes` finalizer in its
//! spec (the apiserver refuses new objects in it from then on). For such a namespace this
//! controller deletes every object of every namespaced kind inside with an ordinary
//! delete — so a pod on a node is given its grace period and stopped by its kubelet, an
//! object's finalizers hold it until their owners remove them, and the garbage collector
//! sees the deletes as usual — and looks again until nothing is left. Meanwhile the
//! namespace's conditions say what it waits for (`NamespaceContentRemaining`,
//! `NamespaceFinalizersRemaining`, with counts per kind). When it is empty the controller
//! removes its finalizer, and the apiserver deletes the namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::kinds::meta;
use flotilla_api::{Kind, NAMESPACE_FINALIZER};
use flotilla_client::reflector::{Cache, Change};
use flotilla_client::{Client, DeleteParams};
use flotilla_proto::api as pb;

use crate::informers::Informers;
use crate::manager::Context;
use crate::queue::WorkQueue;
use crate::worker::Reconcile;
use crate::ControllerError;

/// How soon a namespace with content left is looked at again.
const AGAIN: Duration = Duration::from_millis(500);

/// What is left in a namespace: objects per kind, and those held by finalizers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    /// Objects still there, per kind (plural).
    pub content: BTreeMap<&'static str, usize>,
    /// Finalizers holding objects, and how many each holds.
    pub finalizers: BTreeMap<String, usize>,
}

impl Remaining {
    fn is_empty(&self) -> bool {
        self.content.is_empty()
    }
}

fn counts<K: std::fmt::Display>(m: &BTreeMap<K, usize>) -> String {
    m.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
}

/// The conditions a Terminating namespace shows for `left`.
pub fn conditions(left: &Remaining, now: &str) -> Vec<pb::Condition> {
    let cond = |kind: &str, on: bool, reason: &str, message: String| pb::Condition {
        r#type: kind.into(),
        status: if on { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: now.into(),
        last_heartbeat_time: String::new(),
    };
    vec![
        if left.content.is_empty() {
            cond("NamespaceContentRemaining", false, "ContentRemoved", "all content is removed".into())
        } else {
            cond(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("objects remain: {}", counts(&left.content)),
            )
        },
        if left.finalizers.is_empty() {
            cond("NamespaceFinalizersRemaining", false, "ContentHasNoFinalizers", "no finalizers hold content".into())
        } else {
            cond(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!("finalizers hold objects: {}", counts(&left.finalizers)),
            )
        },
    ]
}

/// Whether `new` says the same as `old` (transition times aside).
fn same(old: &[pb::Condition], new: &[pb::Condition]) -> bool {
    old.len() == new.len()
        && old.iter().zip(new).all(|(a, b)| {
            (&a.r#type, &a.status, &a.reason, &a.message) == (&b.r#type, &b.status, &b.reason, &b.message)
        })
}

/// The running controller.
pub struct NamespaceController {
    client: Client,
    namespaces: Cache<pb::Namespace>,
}

impl NamespaceController {
    /// A controller over this cache, writing through `client`.
    pub fn new(client: Client, namespaces: Cache<pb::Namespace>) -> NamespaceController {
        NamespaceController { client, namespaces }
    }

    /// Takes in a change of the namespace cache.
    pub fn namespace_changed(&self, queue: &WorkQueue, c: &Change<pb::Namespace>) {
        match c {
            Change::Listed => {
                for k in self.namespaces.read().unwrap_or_else(|p| p.into_inner()).keys() {
                    queue.add(k);
                }
            }
            Change::Upsert { new, .. } => {
                if let Some(m) = new.metadata.as_ref().filter(|m| !m.deletion_timestamp.is_empty()) {
                    queue.add(&format!("/{}", m.name));
                }
            }
            Change::Deleted(_) => {}
        }
    }

    /// Deletes what is in namespace `ns` (what is not being deleted yet); what is left.
    async fn empty(&self, ns: &str) -> Result<Remaining, ControllerError> {
        let mut left = Remaining::default();
        for kind in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
            let mut req = pb::ListRequest { kind: kind.name().into(), namespace: ns.into(), ..Default::default() };
            loop {
                let page = self.client.list_page(req.clone()).await?;
                for o in page.items.into_iter().filter_map(|o| o.kind) {
                    let m = meta(&o);
                    *left.content.entry(kind.plural()).or_default() += 1;
                    for f in &m.finalizers {
                        *left.finalizers.entry(f.clone()).or_default() += 1;
                    }
                    if !m.deletion_timestamp.is_empty() {
                        continue;
                    }
                    let p = DeleteParams { uid: m.uid.clone(), ..Default::default() };
                    match self.client.delete_object(kind.name(), ns, &m.name, &p).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() || e.code() == Some(tonic::Code::FailedPrecondition) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                if page.r#continue.is_empty() {
                    break;
                }
                req.r#continue = page.r#continue;
            }
        }
        Ok(left)
    }
}

impl Reconcile for NamespaceController {
    fn name(&self) -> &str {
        "namespace"
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let Some(ns) = self.namespaces.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned() else {
            return Ok(None);
        };
        let m = ns.metadata.clone().unwrap_or_default();
        let holds = ns.spec.as_ref().is_some_and(|s| s.finalizers.iter().any(|f| f == NAMESPACE_FINALIZER));
        if m.deletion_timestamp.is_empty() || !holds {
            return Ok(None);
        }
        let left = self.empty(&m.name).await?;
        if left.is_empty() {
            let mut done = ns;
            if let Some(s) = done.spec.as_mut() {
                s.finalizers.retain(|f| f != NAMESPACE_FINALIZER);
            }
            // A compare-and-swap on the cached version: a conflict is retried.
            match self.client.update(done).await {
                Ok(_) => tracing::info!(namespace = %m.name, "namespace emptied; finalizer removed"),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(None);
        }
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let want = conditions(&left, &now);
        let status = ns.status.clone().unwrap_or_default();
        if !same(&status.conditions, &want) {
            let mut s = ns.clone();
            s.status = Some(pb::NamespaceStatus { conditions: want, ..status });
            // Only a report: a failed write is made again at the next look.
            if let Err(e) = self.client.update_status(s).await {
                tracing::debug!(namespace = %m.name, error = %e, "namespace conditions not written");
            }
        }
        Ok(Some(AGAIN))
    }
}

/// Starts the informers the namespace controller reads.
pub fn warm(informers: &Informers) {
    informers.get::<pb::Namespace>();
}

/// Runs the namespace controller for one term (until `ctx` says stop).
pub async fn start(ctx: Context) {
    let namespaces = ctx.informers.get::<pb::Namespace>();
    let mut rx = namespaces.subscribe();
    let ctl = Arc::new(NamespaceController::new(ctx.client.clone(), namespaces.cache()));
    let queue = Arc::new(WorkQueue::default());
    tokio::select! {
        () = ctx.stopped() => return,
        () = namespaces.wait_synced() => {}
    }
    let dispatch = async {
        while let Some(c) = rx.recv().await {
            ctl.namespace_changed(&queue, &c);
        }
    };
    crate::worker::serve(queue.clone(), ctl.clone(), ctx.workers, ctx.metrics("namespace"), dispatch, ctx.stopped())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminating_namespace_says_what_it_waits_for() {
        let mut left = Remaining::default();
        left.content.insert("pods", 2);
        left.content.insert("configmaps", 1);
        left.finalizers.insert("example.com/hold".into(), 1);
        let c = conditions(&left, "t");
        assert_eq!(c[0].status, "True");
        assert_eq!(c[0].message, "objects remain: configmaps: 1, pods: 2");
        assert_eq!(c[1].message, "finalizers hold objects: example.com/hold: 1");
        let empty = conditions(&Remaining::default(), "t2");
        assert!(empty.iter().all(|c| c.status == "False"));
        assert!(same(&c, &conditions(&left, "later")), "times alone are no change");
        assert!(!same(&c, &empty));
    }
}
