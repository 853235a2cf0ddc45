//! The typed client: every call goes to a healthy master; reads are retried on another
//! master when the first cannot be reached, writes only when they certainly never left
//! (otherwise the caller gets [`ClientError::Indeterminate`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::pool::Conn;
use flotilla_proto::api::{self as pb, api_client::ApiClient, object::Kind as O};
use tonic::{Code, Status};

use crate::error::{is_transport, never_sent, ClientError};
use crate::pool::{Options, Pool};
use crate::resource::Resource;

/// A client of the resource API over a list of masters. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub(crate) pool: Arc<Pool>,
    /// The fencing token every write carries, if this client acts for an elected
    /// component (see [`Client::fenced`]).
    fence: Option<pb::FenceToken>,
    /// Called for every write the store refuses as fenced (a metric's counter).
    on_fenced: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Parameters of a list (or of the list under a watch).
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// Namespace; empty: all.
    pub namespace: String,
    /// Label selector (`app=web,tier!=db`).
    pub label_selector: String,
    /// Field selector (`spec.nodeName=n1`).
    pub field_selector: String,
    /// Page size; 0: the default (500). `list` follows every page either way.
    pub limit: i64,
}

/// A list's items and the revision they were read at.
#[derive(Debug, Clone)]
pub struct ObjectList<T> {
    /// The items.
    pub items: Vec<T>,
    /// The store revision of the snapshot (start a watch from here).
    pub resource_version: String,
}

/// What to do on delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteParams {
    /// Only if the object still has this uid.
    pub uid: String,
    /// Only if the object is still at this resourceVersion.
    pub resource_version: String,
    /// Grace period for a pod on a node; Some(0) deletes at once.
    pub grace_period_seconds: Option<i64>,
    /// What happens to the objects it owns: Background ("", the default), Foreground or
    /// Orphan.
    pub propagation_policy: String,
}

/// Largest answer accepted (a page of up to [`DEFAULT_PAGE`] objects of up to 1.5 MiB
/// each could be larger; pages are cut by count, so keep objects small or pages short).
pub const MAX_ANSWER_BYTES: usize = 256 << 20;
/// Objects per page when the caller does not choose.
pub const DEFAULT_PAGE: i64 = 500;

#[derive(Clone, Copy, PartialEq)]
enum Call {
    Read,
    Write,
}

fn unexpected<T>(what: &str) -> Result<T, ClientError> {
    Err(ClientError::Api(Status::internal(format!("the server answered {what} with another kind"))))
}

/// The object of an answer, whatever its kind.
fn any(o: pb::Object) -> Result<O, ClientError> {
    o.kind.ok_or_else(|| ClientError::Api(Status::internal("empty object in the answer")))
}

fn into<T: Resource>(o: Option<pb::Object>) -> Result<T, ClientError> {
    match o.and_then(|o| o.kind).and_then(T::from_object) {
        Some(t) => Ok(t),
        None => unexpected(T::KIND),
    }
}

impl Client {
    /// A client over `endpoints` (`host:port` or `http://host:port`), with default timing.
    /// Must be called inside a tokio runtime (it starts the health checks).
    pub fn new(endpoints: &[String]) -> Result<Client, ClientError> {
        Client::with_options(endpoints, Options::default())
    }

    /// A client with explicit timing.
    pub fn with_options(endpoints: &[String], opts: Options) -> Result<Client, ClientError> {
        Ok(Client { pool: Pool::new(endpoints, opts)?, fence: None, on_fenced: None })
    }

    /// The same client, every write of which carries `fence`: the store refuses them
    /// (`ClientError::is_fenced`) once the lock has another holder or term
    /// (docs/rfcs/0001-fenced-leadership.md).
    pub fn fenced(&self, fence: &flotilla_api::Fence) -> Client {
        Client { pool: self.pool.clone(), fence: Some(fence.to_proto()), on_fenced: self.on_fenced.clone() }
    }

    /// The same client, calling `f` for every write the store refuses as fenced (to count
    /// them in a metric); clients made from it with [`Client::fenced`] keep it.
    pub fn on_fenced(&self, f: impl Fn() + Send + Sync + 'static) -> Client {
        Client { pool: self.pool.clone(), fence: self.fence.clone(), on_fenced: Some(Arc::new(f)) }
    }

    /// The fencing token this client's writes carry.
    pub fn fence(&self) -> Option<&pb::FenceToken> {
        self.fence.as_ref()
    }

    /// The URL of the master calls go to now.
    pub fn current_master(&self) -> String {
        self.pool.masters[self.pool.pick()].url.clone()
    }

    /// A raw channel to the master in use (for the etcd API on the same port).
    pub fn channel(&self) -> Conn {
        self.pool.masters[self.pool.pick()].channel.clone()
    }

    /// The API client for master `i`, accepting answers as large as a list page can be.
    pub(crate) fn api(&self, i: usize) -> ApiClient<Conn> {
        ApiClient::new(self.pool.masters[i].channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    async fn call<T, F, Fut>(&self, kind: Call, f: F) -> Result<T, ClientError>
    where
        F: Fn(ApiClient<Conn>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.pool.opts.retry_budget;
        let mut pause = std::time::Duration::from_millis(20);
        // A TLS refusal (this client's certificate not accepted) says more than the broken
        // pipes that may follow it on later attempts: it is what gets reported.
        let mut refused: Option<String> = None;
        loop {
            let i = self.pool.pick();
            let client = self.api(i);
            let res = tokio::time::timeout(self.pool.opts.request_timeout, f(client)).await;
            let status = match res {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if !is_transport(&s) => {
                    let e = ClientError::Api(s);
                    if let (true, Some(f)) = (e.is_fenced(), &self.on_fenced) {
                        f();
                    }
                    return Err(e);
                }
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded("no answer within the request timeout"),
            };
            let url = &self.pool.masters[i].url;
            if crate::error::tls_refused(&status) {
                refused = Some(format!("{url}: {}", crate::error::describe(&status)));
            } else if let Some(r) = self.pool.masters[i].refusal.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                refused = Some(format!("{url}: {r}"));
            }
            // The master is unreachable, or has no leader: use another one.
            self.pool.mark_bad(i);
            if kind == Call::Write && !never_sent(&status) {
                return Err(ClientError::Indeterminate(format!("{url}: {}", crate::error::describe(&status))));
            }
            if Instant::now() + pause > deadline {
                return Err(ClientError::Unavailable(match refused {
                    Some(r) => format!("TLS refused by {r}"),
                    None => format!("last tried {url}: {}", crate::error::describe(&status)),
                }));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(200));
        }
    }

    /// Creates an object (AlreadyExists if it exists).
    pub async fn create<T: Resource>(&self, obj: T) -> Result<T, ClientError> {
        let req =
            pb::CreateRequest { object: Some(pb::Object { kind: Some(obj.into_object()) }), fence: self.fence.clone() };
        into(Some(
            self.call(Call::Write, |mut c| {
                let r = req.clone();
                async move { c.create(r).await }
            })
            .await?,
        ))
    }

    /// Creates any object.
    pub async fn create_object(&self, obj: O) -> Result<O, ClientError> {
        let req = pb::CreateRequest { object: Some(pb::Object { kind: Some(obj) }), fence: self.fence.clone() };
        let o = self
            .call(Call::Write, |mut c| {
                let r = req.clone();
                async move { c.create(r).await }
            })
            .await?;
        any(o)
    }

    /// Reads one object of any kind.
    pub async fn get_object(&self, kind: &str, namespace: &str, name: &str) -> Result<O, ClientError> {
        let req = pb::GetRequest { kind: kind.into(), namespace: namespace.into(), name: name.into() };
        let o = self
            .call(Call::Read, |mut c| {
                let r = req.clone();
                async move { c.get(r).await }
            })
            .await?;
        any(o)
    }

    /// Reads one object.
    pub async fn get<T: Resource>(&self, namespace: &str, name: &str) -> Result<T, ClientError> {
        T::from_object(self.get_object(T::KIND, namespace, name).await?).map_or_else(|| unexpected(T::KIND), Ok)
    }

    /// Lists one page of any kind (raw request).
    pub async fn list_page(&self, req: pb::ListRequest) -> Result<pb::ListResponse, ClientError> {
        self.call(Call::Read, |mut c| {
            let r = req.clone();
            async move { c.list(r).await }
        })
        .await
    }

    /// Lists every object matching `p`, following pages, as one snapshot.
    pub async fn list<T: Resource>(&self, p: &ListParams) -> Result<ObjectList<T>, ClientError> {
        let mut req = pb::ListRequest {
            kind: T::KIND.into(),
            namespace: p.namespace.clone(),
            label_selector: p.label_selector.clone(),
            field_selector: p.field_selector.clone(),
            limit: if p.limit > 0 { p.limit } else { DEFAULT_PAGE },
            ..Default::default()
        };
        let mut items = Vec::new();
        loop {
            let page = self.list_page(req.clone()).await?;
            for o in page.items {
                items.push(into::<T>(Some(o))?);
            }
            if page.r#continue.is_empty() {
                return Ok(ObjectList { items, resource_version: page.resource_version });
            }
            req.r#continue = page.r#continue;
        }
    }

    /// Replaces an object; compare-and-swap on its resourceVersion when set.
    pub async fn update<T: Resource>(&self, obj: T) -> Result<T, ClientError> {
        let req =
            pb::UpdateRequest { object: Some(pb::Object { kind: Some(obj.into_object()) }), fence: self.fence.clone() };
        into(Some(
            self.call(Call::Write, |mut c| {
                let r = req.clone();
                async move { c.update(r).await }
            })
            .await?,
        ))
    }

    /// Replaces any object.
    pub async fn update_object(&self, obj: O) -> Result<O, ClientError> {
        let req = pb::UpdateRequest { object: Some(pb::Object { kind: Some(obj) }), fence: self.fence.clone() };
        let o = self
            .call(Call::Write, |mut c| {
                let r = req.clone();
                async move { c.update(r).await }
            })
            .await?;
        any(o)
    }

    /// Replaces an object's status only.
    pub async fn update_status<T: Resource>(&self, obj: T) -> Result<T, ClientError> {
        let req =
            pb::UpdateRequest { object: Some(pb::Object { kind: Some(obj.into_object()) }), fence: self.fence.clone() };
        into(Some(
            self.call(Call::Write, |mut c| {
                let r = req.clone();
                async move { c.update_status(r).await }
            })
            .await?,
        ))
    }

    /// Applies a JSON merge patch to any object.
    pub async fn patch_object(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &serde_json::Value,
        status: bool,
    ) -> Result<O, ClientError> {
        let req = pb::PatchRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            merge_patch: patch.to_string().into_bytes(),
            status,
            fence: self.fence.clone(),
        };
        let o = self
            .call(Call::Write, |mut c| {
                let r = req.clone();
                async move { c.patch(r).await }
            })
            .await?;
        any(o)
    }

    /// Applies a JSON merge patch.
    pub async fn patch<T: Resource>(
        &self,
        namespace: &str,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<T, ClientError> {
        T::from_object(self.patch_object(T::KIND, namespace, name, patch, false).await?)
            .map_or_else(|| unexpected(T::KIND), Ok)
    }

    /// Deletes any object: Ok(true) when gone, Ok(false) when marked for deletion.
    pub async fn delete_object(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        p: &DeleteParams,
    ) -> Result<bool, ClientError> {
        let req = pb::DeleteRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            preconditions: Some(pb::Preconditions { uid: p.uid.clone(), resource_version: p.resource_version.clone() }),
            grace_period_seconds: p.grace_period_seconds,
            fence: self.fence.clone(),
            propagation_policy: p.propagation_policy.clone(),
        };
        let r = self
            .call(Call::Write, |mut c| {
                let r = req.clone();
                async move { c.delete(r).await }
            })
            .await?;
        Ok(r.deleted)
    }

    /// Deletes an object.
    pub async fn delete<T: Resource>(
        &self,
        namespace: &str,
        name: &str,
        p: &DeleteParams,
    ) -> Result<bool, ClientError> {
        self.delete_object(T::KIND, namespace, name, p).await
    }

    /// A container's output (pods/log), from the kubelet of the pod's node through a
    /// master; with `follow`, the stream goes on until the container ends.
    pub async fn pod_logs(&self, req: pb::PodLogsRequest) -> Result<tonic::Streaming<pb::LogChunk>, ClientError> {
        self.call(Call::Read, |mut c| {
            let r = req.clone();
            async move { c.pod_logs(r).await }
        })
        .await
    }

    /// Binds a pod to a node (once).
    /// Whether this client (or the user it impersonates) may do `verb` on `resource`
    /// (`pods`, `pods/status`) in `namespace`, named `name` (may be empty).
    pub async fn access_review(
        &self,
        verb: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<pb::AccessReviewResponse, ClientError> {
        let req = pb::AccessReviewRequest {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.call(Call::Read, |mut c| {
            let r = req.clone();
            async move { c.access_review(r).await }
        })
        .await
    }

    pub async fn bind(&self, namespace: &str, pod: &str, node: &str, uid: &str) -> Result<pb::Pod, ClientError> {
        let req = pb::BindRequest {
            namespace: namespace.into(),
            name: pod.into(),
            node_name: node.into(),
            uid: uid.into(),
            fence: self.fence.clone(),
        };
        into(Some(
            self.call(Call::Write, |mut c| {
                let r = req.clone();
                async move { c.bind(r).await }
            })
            .await?,
        ))
    }

    /// Opens one watch stream on the current master (no resumption; see [`crate::watch`]).
    pub(crate) async fn open_watch(
        &self,
        req: pb::WatchRequest,
    ) -> Result<(usize, tonic::Streaming<pb::WatchEvent>), ClientError> {
        let deadline = Instant::now() + self.pool.opts.retry_budget;
        loop {
            let i = self.pool.pick();
            let mut c = self.api(i);
            match tokio::time::timeout(self.pool.opts.request_timeout, c.watch(req.clone())).await {
                Ok(Ok(s)) => return Ok((i, s.into_inner())),
                Ok(Err(s)) if s.code() == Code::OutOfRange => return Err(ClientError::Expired(s.message().into())),
                Ok(Err(s)) if !is_transport(&s) => return Err(ClientError::Api(s)),
                Ok(Err(_)) | Err(_) => self.pool.mark_bad(i),
            }
            if Instant::now() > deadline {
                return Err(ClientError::Unavailable("cannot open a watch on any master".into()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
