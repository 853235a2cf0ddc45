//! The `flotilla.api.v1.Api` gRPC service: decodes requests, calls the [`Registry`], and
//! maps errors to status codes (through [`ApiError`]'s one conversion).

use std::pin::Pin;
use std::sync::Arc;

use flotilla_proto::api::{self as pb, api_server::Api};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::authz::{self, Authorizer};
use crate::error::ApiError;
use crate::registry::Registry;
use flotilla_api::kinds::{self, Kind};
use flotilla_api::Fence;
use flotilla_store::audit::Entry;
use flotilla_store::auth::User;

/// Serves the resource API from a registry.
pub struct ApiService {
    reg: Arc<Registry>,
    authz: Arc<Authorizer>,
}

impl ApiService {
    /// Serves `reg`, deciding requests with `authz`.
    pub fn new(reg: Arc<Registry>, authz: Arc<Authorizer>) -> ApiService {
        ApiService { reg, authz }
    }

    /// Authorizes `what` for `user`; a refusal is audited.
    async fn admit(&self, user: Option<&User>, what: &authz::Request<'_>) -> Result<(), Status> {
        if let Err(e) = self.authz.authorize(&self.reg, user, what).await {
            if let Some(a) = self.audited(what) {
                self.audit(user, &a, Err(&e));
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// What the audit log will say of `what` (None without an audit log): taken before
    /// the request's object moves on to the registry.
    fn audited(&self, what: &authz::Request<'_>) -> Option<Audited> {
        self.reg.config().audit.as_ref()?;
        Some(Audited {
            verb: what.verb,
            resource: what.resource(),
            namespace: what.namespace.to_string(),
            name: what.object_name().to_string(),
        })
    }

    /// Records a write (or a refusal) in the audit log.
    fn audit(&self, user: Option<&User>, a: &Audited, result: Result<(), &ApiError>) {
        let Some(log) = &self.reg.config().audit else { return };
        let mut e = Entry::resource(user, a.verb, &a.resource, &a.namespace, &a.name);
        let reason = result.err().map(ToString::to_string).unwrap_or_default();
        if let Err(err) = result {
            e.result = if matches!(err, ApiError::Forbidden(_)) { "denied" } else { "failed" };
            e.reason = &reason;
        }
        log.record(&e);
    }

    /// Runs a write that `admit` let through, and audits how it ended.
    async fn write<T>(
        &self,
        user: Option<&User>,
        audited: Option<Audited>,
        run: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, Status> {
        let r = run.await;
        if let Some(a) = &audited {
            self.audit(user, a, r.as_ref().map(|_| ()));
        }
        r.map_err(Status::from)
    }
}

/// A write or refusal as the audit log records it.
struct Audited {
    verb: &'static str,
    resource: String,
    namespace: String,
    name: String,
}

/// The user a request comes from (None: a plaintext port, where nobody is asked).
fn user_of<T>(req: &Request<T>) -> Option<User> {
    req.extensions().get::<User>().cloned()
}

fn what<'a>(
    verb: &'static str,
    kind: Kind,
    sub: &'static str,
    namespace: &'a str,
    name: &'a str,
) -> authz::Request<'a> {
    // A cluster-scoped object has no namespace, whatever the request says.
    let namespace = if kind.namespaced() { namespace } else { "" };
    authz::Request { verb, kind, sub, namespace, name, object: None, fenced: false }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

/// How long the apiserver waits to reach a kubelet.
const KUBELET_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Where pod `ns/name`'s kubelet listens, and which container of it is meant.
async fn kubelet_of(reg: &Registry, r: &pb::PodLogsRequest) -> Result<(String, pb::ContainerLogsRequest), ApiError> {
    use flotilla_proto::api::object::Kind as O;
    let ns = Kind::Pod.namespace_or_default(&r.namespace);
    let O::Pod(pod) = reg.get(Kind::Pod, ns, &r.name).await? else {
        return Err(ApiError::Internal("a pod key holds another kind".into()));
    };
    let spec = pod.spec.unwrap_or_default();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let container = match (r.container.as_str(), names.as_slice()) {
        ("", [only]) => only.to_string(),
        ("", _) => {
            return Err(ApiError::invalid(
                "container",
                format!("pod {ns}/{} has several containers; name one of: {}", r.name, names.join(", ")),
            ))
        }
        (c, _) if names.contains(&c) => c.to_string(),
        (c, _) => {
            return Err(ApiError::invalid(
                "container",
                format!("{c:?} is not a container of pod {ns}/{}; its containers: {}", r.name, names.join(", ")),
            ))
        }
    };
    if spec.node_name.is_empty() {
        return Err(ApiError::FailedPrecondition(format!("pod {ns}/{} is not on a node yet", r.name)));
    }
    let O::Node(node) = reg.get(Kind::Node, "", &spec.node_name).await? else {
        return Err(ApiError::Internal("a node key holds another kind".into()));
    };
    let st = node.status.unwrap_or_default();
    let ip = st.addresses.iter().find(|a| a.r#type == "InternalIP").map(|a| a.address.clone());
    let port = st.daemon_endpoints.and_then(|d| d.kubelet_endpoint).map_or(0, |e| e.port);
    let (Some(ip), true) = (ip, port > 0) else {
        return Err(ApiError::FailedPrecondition(format!(
            "node {} does not say where its kubelet listens (status.daemonEndpoints)",
            spec.node_name
        )));
    };
    let uid = pod.metadata.map(|m| m.uid).unwrap_or_default();
    let req = pb::ContainerLogsRequest {
        pod_uid: uid,
        container,
        follow: r.follow,
        tail_lines: r.tail_lines,
        previous: r.previous,
    };
    let scheme = if reg.config().kubelet_tls.is_some() { "https" } else { "http" };
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    Ok((format!("{scheme}://{host}:{port}"), req))
}

impl ApiService {
    async fn update_either(
        &self,
        req: Request<pb::UpdateRequest>,
        status: bool,
    ) -> Result<Response<pb::Object>, Status> {
        let user = user_of(&req);
        let r = req.into_inner();
        let fence = Fence::from_request(r.fence.as_ref()).map_err(ApiError::from)?;
        let o = kinds::unwrap(r.object).map_err(ApiError::from)?;
        let kind = Kind::of(&o);
        let ns = kind.namespace_or_default(&kinds::meta(&o).namespace).to_string();
        let name = kinds::meta(&o).name.clone();
        let sub = if status { "status" } else { "" };
        let w = authz::Request { object: Some(&o), fenced: fence.is_some(), ..what("update", kind, sub, &ns, &name) };
        self.admit(user.as_ref(), &w).await?;
        let audited = self.audited(&w);
        let updated = self.write(user.as_ref(), audited, self.reg.update(o, status, fence.as_ref())).await?;
        Ok(Response::new(kinds::wrap(updated)))
    }
}

#[tonic::async_trait]
impl Api for ApiService {
    async fn create(&self, req: Request<pb::CreateRequest>) -> Result<Response<pb::Object>, Status> {
        let user = user_of(&req);
        let r = req.into_inner();
        let fence = Fence::from_request(r.fence.as_ref()).map_err(ApiError::from)?;
        let o = kinds::unwrap(r.object).map_err(ApiError::from)?;
        let kind = Kind::of(&o);
        let ns = kind.namespace_or_default(&kinds::meta(&o).namespace).to_string();
        let w = authz::Request { object: Some(&o), fenced: fence.is_some(), ..what("create", kind, "", &ns, "") };
        self.admit(user.as_ref(), &w).await?;
        let audited = self.audited(&w);
        let created = self.write(user.as_ref(), audited, self.reg.create(o, fence.as_ref())).await?;
        Ok(Response::new(kinds::wrap(created)))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Object>, Status> {
        let r = req.get_ref();
        let kind = Kind::parse(&r.kind).map_err(ApiError::from)?;
        let ns = kind.namespace_or_default(&r.namespace);
        self.admit(user_of(&req).as_ref(), &what("get", kind, "", ns, &r.name)).await?;
        Ok(Response::new(kinds::wrap(self.reg.get(kind, ns, &r.name).await?)))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let r = req.get_ref();
        let kind = Kind::parse(&r.kind).map_err(ApiError::from)?;
        self.admit(user_of(&req).as_ref(), &what("list", kind, "", &r.namespace, "")).await?;
        Ok(Response::new(self.reg.list(kind, r).await?))
    }

    async fn update(&self, req: Request<pb::UpdateRequest>) -> Result<Response<pb::Object>, Status> {
        self.update_either(req, false).await
    }

    async fn update_status(&self, req: Request<pb::UpdateRequest>) -> Result<Response<pb::Object>, Status> {
        self.update_either(req, true).await
    }

    async fn patch(&self, req: Request<pb::PatchRequest>) -> Result<Response<pb::Object>, Status> {
        let r = req.get_ref();
        let kind = Kind::parse(&r.kind).map_err(ApiError::from)?;
        let ns = kind.namespace_or_default(&r.namespace);
        let sub = if r.status { "status" } else { "" };
        let w = authz::Request { fenced: r.fence.is_some(), ..what("patch", kind, sub, ns, &r.name) };
        let user = user_of(&req);
        self.admit(user.as_ref(), &w).await?;
        Ok(Response::new(kinds::wrap(self.write(user.as_ref(), self.audited(&w), self.reg.patch(r)).await?)))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = req.get_ref();
        let kind = Kind::parse(&r.kind).map_err(ApiError::from)?;
        let ns = kind.namespace_or_default(&r.namespace);
        let w = authz::Request { fenced: r.fence.is_some(), ..what("delete", kind, "", ns, &r.name) };
        let user = user_of(&req);
        self.admit(user.as_ref(), &w).await?;
        let d = self.write(user.as_ref(), self.audited(&w), self.reg.delete(r)).await?;
        Ok(Response::new(pb::DeleteResponse { object: Some(kinds::wrap(d.object)), deleted: d.gone }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let kind = Kind::parse(&req.get_ref().kind).map_err(ApiError::from)?;
        self.admit(user_of(&req).as_ref(), &what("watch", kind, "", &req.get_ref().namespace, "")).await?;
        let r = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::WatchEvent, ApiError>>(256);
        self.reg.watch(kind, &r, tx)?;
        let stream =
            futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn bind(&self, req: Request<pb::BindRequest>) -> Result<Response<pb::Object>, Status> {
        let r = req.get_ref();
        let ns = Kind::Pod.namespace_or_default(&r.namespace);
        let w = authz::Request { fenced: r.fence.is_some(), ..what("create", Kind::Pod, "binding", ns, &r.name) };
        let user = user_of(&req);
        self.admit(user.as_ref(), &w).await?;
        Ok(Response::new(kinds::wrap(self.write(user.as_ref(), self.audited(&w), self.reg.bind(r)).await?)))
    }

    async fn access_review(
        &self,
        req: Request<pb::AccessReviewRequest>,
    ) -> Result<Response<pb::AccessReviewResponse>, Status> {
        let r = req.get_ref();
        let (plural, sub) = r.resource.split_once('/').unwrap_or((r.resource.as_str(), ""));
        let kind = Kind::lookup(plural)
            .filter(|k| k.plural() == plural)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown resource {plural:?} (a plural such as pods)")))?;
        let sub: &'static str = match sub {
            "" => "",
            "status" => "status",
            "binding" => "binding",
            "log" => "log",
            other => return Err(ApiError::BadRequest(format!("unknown subresource {other:?}")).into()),
        };
        let verb: &'static str = flotilla_api::validate::VERBS
            .into_iter()
            .find(|v| *v == r.verb && *v != "*")
            .ok_or_else(|| ApiError::BadRequest(format!("unknown verb {:?}", r.verb)))?;
        let ns = kind.namespace_or_default(&r.namespace);
        // The review asks about a write that carries its fence, as the components' do.
        let w = authz::Request { fenced: true, ..what(verb, kind, sub, ns, &r.name) };
        let user = user_of(&req);
        let decision = self.authz.authorize(&self.reg, user.as_ref(), &w).await;
        let (allowed, reason) = match decision {
            Ok(()) => (true, String::new()),
            Err(ApiError::Forbidden(why)) => (false, why),
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(pb::AccessReviewResponse {
            allowed,
            reason,
            user: user.as_ref().map(|u| u.name.clone()).unwrap_or_default(),
            groups: user.map(|u| u.groups).unwrap_or_default(),
        }))
    }

    type PodLogsStream = LogStream;

    async fn pod_logs(&self, req: Request<pb::PodLogsRequest>) -> Result<Response<LogStream>, Status> {
        let ns = Kind::Pod.namespace_or_default(&req.get_ref().namespace).to_string();
        self.admit(user_of(&req).as_ref(), &what("get", Kind::Pod, "log", &ns, &req.get_ref().name)).await?;
        let r = req.into_inner();
        if r.tail_lines.is_some_and(|n| n < 0) {
            return Err(ApiError::invalid("tailLines", "must not be negative").into());
        }
        let (url, kreq) = kubelet_of(&self.reg, &r).await?;
        let unreachable = |e: String| ApiError::KubeletUnreachable(format!("the kubelet at {url}: {e}"));
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(KUBELET_CONNECT_TIMEOUT);
        let channel = match &self.reg.config().kubelet_tls {
            None => endpoint.connect().await.map_err(|e| unreachable(e.to_string()))?,
            Some(tls) => endpoint
                .connect_with_connector(flotilla_tls::Connector::new(tls.clone()))
                .await
                .map_err(|e| unreachable(e.to_string()))?,
        };
        let mut kubelet = pb::kubelet_client::KubeletClient::new(channel);
        let stream = kubelet.container_logs(kreq).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}
