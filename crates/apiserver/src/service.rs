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

    /// Authorizes `what` for the request's user; a refusal is audited.
    async fn admit<T>(&self, req: &Request<T>, what: &authz::Request<'_>) -> Result<Option<User>, Status> {
        let user = req.extensions().get::<User>().cloned();
        if let Err(e) = self.authz.authorize(&self.reg, user.as_ref(), what).await {
            self.audit(user.as_ref(), what, Err(&e));
            return Err(e.into());
        }
        Ok(user)
    }

    /// Records a write (or a refusal) in the audit log.
    fn audit(&self, user: Option<&User>, what: &authz::Request<'_>, result: Result<(), &ApiError>) {
        let Some(log) = &self.reg.config().audit else { return };
        if result.is_ok() && !matches!(what.verb, "create" | "update" | "patch" | "delete") {
            return;
        }
        let resource = what.resource();
        let name = match (what.name, what.object) {
            ("", Some(o)) => kinds::meta(o).name.clone(),
            (n, _) => n.to_string(),
        };
        let mut e = Entry::resource(user, what.verb, &resource, what.namespace, &name);
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
        what: &authz::Request<'_>,
        run: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, Status> {
        let r = run.await;
        self.audit(user, what, r.as_ref().map(|_| ()));
        r.map_err(Status::from)
    }
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
        let fence = Fence::from_request(req.get_ref().fence.as_ref()).map_err(ApiError::from)?;
        let o = kinds::unwrap(req.get_ref().object.clone()).map_err(ApiError::from)?;
        let kind = Kind::of(&o);
        let ns = kind.namespace_or_default(&kinds::meta(&o).namespace).to_string();
        let name = kinds::meta(&o).name.clone();
        let sub = if status { "status" } else { "" };
        let w = authz::Request { object: Some(&o), fenced: fence.is_some(), ..what("update", kind, sub, &ns, &name) };
        let user = self.admit(&req, &w).await?;
        let updated = self.write(user.as_ref(), &w, self.reg.update(o.clone(), status, fence.as_ref())).await?;
        Ok(Response::new(kinds::wrap(updated)))
    }
}

#[tonic::async_trait]
impl Api for ApiService {
    async fn create(&self, req: Request<pb::CreateRequest>) -> Result<Response<pb::Object>, Status> {
        let fence = Fence::from_request(req.get_ref().fence.as_ref()).map_err(ApiError::from)?;
        let o = kinds::unwrap(req.get_ref().object.clone()).map_err(ApiError::from)?;
        let kind = Kind::of(&o);
        let ns = kind.namespace_or_default(&kinds::meta(&o).namespace).to_string();
        let w = authz::Request { object: Some(&o), fenced: fence.is_some(), ..what("create", kind, "", &ns, "") };
        let user = self.admit(&req, &w).await?;
        let created = self.write(user.as_ref(), &w, self.reg.create(o.clone(), fence.as_ref())).await?;
        Ok(Response::new(kinds::wrap(created)))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Object>, Status> {
        let r = req.get_ref();
        let kind = Kind::parse(&r.kind).map_err(ApiError::from)?;
        let ns = kind.namespace_or_default(&r.namespace);
        self.admit(&req, &what("get", kind, "", ns, &r.name)).await?;
        Ok(Response::new(kinds::wrap(self.reg.get(kind, ns, &r.name).await?)))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let r = req.get_ref();
        let kind = Kind::parse(&r.kind).map_err(ApiError::from)?;
        self.admit(&req, &what("list", kind, "", &r.namespace, "")).await?;
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
        let user = self.admit(&req, &w).await?;
        Ok(Response::new(kinds::wrap(self.write(user.as_ref(), &w, self.reg.patch(r)).await?)))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = req.get_ref();
        let kind = Kind::parse(&r.kind).map_err(ApiError::from)?;
        let ns = kind.namespace_or_default(&r.namespace);
        let w = authz::Request { fenced: r.fence.is_some(), ..what("delete", kind, "", ns, &r.name) };
        let user = self.admit(&req, &w).await?;
        let d = self.write(user.as_ref(), &w, self.reg.delete(r)).await?;
        Ok(Response::new(pb::DeleteResponse { object: Some(kinds::wrap(d.object)), deleted: d.gone }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let kind = Kind::parse(&req.get_ref().kind).map_err(ApiError::from)?;
        self.admit(&req, &what("watch", kind, "", &req.get_ref().namespace, "")).await?;
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
        let user = self.admit(&req, &w).await?;
        Ok(Response::new(kinds::wrap(self.write(user.as_ref(), &w, self.reg.bind(r)).await?)))
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
        let user = req.extensions().get::<User>().cloned();
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
        self.admit(&req, &what("get", Kind::Pod, "log", &ns, &req.get_ref().name)).await?;
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
