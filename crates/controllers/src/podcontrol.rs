//! What the controllers that own pods directly (DaemonSet, Job) share: finding a pod's
//! owner in the cache (by the controller reference's uid, never a namesake), keeping
//! [`Expectations`] as pods are seen, and creating and deleting pods with Events —
//! `SuccessfulCreate`, `FailedCreate`, `SuccessfulDelete` — as the ReplicaSet
//! controller does.

use flotilla_client::events::object_ref;
use flotilla_client::reflector::{Cache, Change};
use flotilla_client::{Client, ClientError, DeleteParams, EventRecorder, Resource};
use flotilla_proto::api as pb;

use crate::expectations::Expectations;
use crate::pods::meta;
use crate::queue::WorkQueue;
use crate::replicaset::UNSURE_CREATE;

/// Pod creation and deletion on behalf of owners of kind `T`.
pub struct PodControl<T: Resource> {
    client: Client,
    recorder: EventRecorder,
    owners: Cache<T>,
    /// What each owner (by key) has asked for and not yet seen.
    pub expectations: Expectations,
}

/// The controller reference an owner `m` of kind `T` puts on its pods.
pub fn owner_ref<T: Resource>(m: &pb::ObjectMeta, api_version: &str) -> pb::OwnerReference {
    pb::OwnerReference {
        api_version: api_version.into(),
        kind: T::KIND.into(),
        name: m.name.clone(),
        uid: m.uid.clone(),
        controller: true,
        block_owner_deletion: true,
    }
}

impl<T: Resource> PodControl<T> {
    /// Pod control writing through `client`, recording Events as `component`.
    pub fn new(client: Client, owners: Cache<T>, component: &str) -> PodControl<T> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        PodControl {
            client,
            recorder: EventRecorder::new(component, host.trim()),
            owners,
            expectations: Expectations::default(),
        }
    }

    /// The cached owner of `pod` (`namespace/name`), if its controller reference names an
    /// object of kind `T` with the uid the cache has.
    pub fn owner_key(&self, pod: &pb::Pod) -> Option<String> {
        let m = meta(pod);
        let r = m.owner_references.iter().find(|r| r.controller && r.kind == T::KIND)?;
        let key = format!("{}/{}", m.namespace, r.name);
        let owners = self.owners.read().unwrap_or_else(|p| p.into_inner());
        owners.get(&key)?.metadata().is_some_and(|om| om.uid == r.uid).then_some(key)
    }

    /// Takes in a change of the pod cache: expectations observed, owners queued.
    pub fn pod_changed(&self, queue: &WorkQueue, c: &Change<pb::Pod>) {
        match c {
            Change::Listed => {
                self.expectations.retain(|k| queue.is_processing(k));
                for k in self.owners.read().unwrap_or_else(|p| p.into_inner()).keys() {
                    queue.add(k);
                }
            }
            Change::Upsert { old: None, new } => {
                if let Some(k) = self.owner_key(new) {
                    self.expectations.creation_observed(&k);
                    queue.add(&k);
                }
            }
            Change::Upsert { old: Some(old), new } => {
                if !meta(new).deletion_timestamp.is_empty() && meta(old).deletion_timestamp.is_empty() {
                    self.expectations.deletion_observed_anywhere(&meta(new).uid);
                }
                let (was, is) = (self.owner_key(old), self.owner_key(new));
                for k in was.iter().chain(is.iter().filter(|k| Some(*k) != was.as_ref())) {
                    queue.add(k);
                }
            }
            Change::Deleted(p) => {
                self.expectations.deletion_observed_anywhere(&meta(p).uid);
                if let Some(k) = self.owner_key(p) {
                    queue.add(&k);
                }
            }
        }
    }

    /// Takes in a change of the owners' cache.
    pub fn owner_changed(&self, queue: &WorkQueue, c: &Change<T>) {
        match c {
            Change::Listed => {
                for k in self.owners.read().unwrap_or_else(|p| p.into_inner()).keys() {
                    queue.add(k);
                }
            }
            Change::Upsert { new, .. } => queue.add(&format!("{}/{}", new.namespace(), new.name())),
            Change::Deleted(o) => {
                let k = format!("{}/{}", o.namespace(), o.name());
                self.expectations.forget(&k);
                queue.add(&k);
            }
        }
    }

    /// Records an Event about `owner` (a failure to record is only logged).
    pub async fn event(&self, owner: &T, kind: &str, reason: &str, message: &str) {
        if let Err(e) = self.recorder.record(&self.client, object_ref(owner), kind, reason, message).await {
            tracing::debug!(error = %e, reason, "cannot record an Event");
        }
    }

    /// Creates `create` and deletes `delete` (name, uid; gracefully) for `owner` (key
    /// `key`), expecting to see each in the pod cache before the owner acts again; the
    /// errors.
    pub async fn sync(&self, key: &str, owner: &T, create: Vec<pb::Pod>, delete: &[(String, String)]) -> Vec<String> {
        let mut errors = Vec::new();
        if create.is_empty() && delete.is_empty() {
            return errors;
        }
        // One record for both: a second would replace the first.
        self.expectations.expect(key, create.len() as u64, delete.iter().map(|(_, uid)| uid.as_str()));
        let creates = create.into_iter().map(|p| async {
            let r = self.client.create(p).await;
            if let Ok(p) = &r {
                self.event(owner, "Normal", "SuccessfulCreate", &format!("Created pod: {}", meta(p).name)).await;
            }
            r
        });
        for r in futures::future::join_all(creates).await {
            match r {
                Ok(_) => {}
                // It may have been made: wait a little for its event (taking it back at
                // once could make one pod too many), then take it as lost.
                Err(e @ ClientError::Indeterminate(_)) => {
                    self.expectations.creation_unsure(key, UNSURE_CREATE);
                    errors.push(format!("creating a pod: {e}"));
                }
                Err(e) => {
                    // It will never be observed: take it back.
                    self.expectations.creation_observed(key);
                    if !e.is_fenced() {
                        self.event(owner, "Warning", "FailedCreate", &format!("Error creating: {e}")).await;
                    }
                    errors.push(format!("creating a pod: {e}"));
                }
            }
        }
        for (name, uid) in delete {
            let p = DeleteParams { uid: uid.clone(), ..Default::default() };
            match self.client.delete::<pb::Pod>(owner.namespace(), name, &p).await {
                Ok(_) => self.event(owner, "Normal", "SuccessfulDelete", &format!("Deleted pod: {name}")).await,
                Err(e) if e.is_not_found() => self.expectations.deletion_observed(key, uid),
                Err(e) => {
                    self.expectations.deletion_failed(key, uid);
                    errors.push(format!("deleting pod {name}: {e}"));
                }
            }
        }
        errors
    }

    /// The pods (in `pods`, the pod cache) whose controller is the cached `owner` (by uid).
    pub fn owned(&self, pods: &Cache<pb::Pod>, namespace: &str, uid: &str) -> Vec<pb::Pod> {
        let all = pods.read().unwrap_or_else(|p| p.into_inner());
        let prefix = format!("{namespace}/");
        all.range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, p)| p)
            .filter(|p| meta(p).owner_references.iter().any(|r| r.controller && r.kind == T::KIND && r.uid == uid))
            .cloned()
            .collect()
    }
}
