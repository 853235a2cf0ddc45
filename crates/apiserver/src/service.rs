//! The `flotilla.api.v1.Api` gRPC service: decodes requests, calls the [`Registry`], and
//! maps errors to status codes (through [`ApiError`]'s one conversion).

use std::pin::Pin;
use std::sync::Arc;

use flotilla_proto::api::{self as pb, api_server::Api};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::registry::Registry;
use flotilla_api::kinds::{self, Kind};
use flotilla_api::Fence;

/// Serves the resource API from a registry.
pub struct ApiService {
    reg: Arc<Registry>,
}

impl ApiService {
    /// Serves `reg`.
    pub fn new(reg: Arc<Registry>) -> ApiService {
        ApiService { reg }
    }
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

#[tonic::async_trait]
impl Api for ApiService {
    async fn create(&self, req: Request<pb::CreateRequest>) -> Result<Response<pb::Object>, Status> {
        let r = req.into_inner();
        let fence = Fence::from_request(r.fence.as_ref()).map_err(ApiError::from)?;
        let o = kinds::unwrap(r.object).map_err(ApiError::from)?;
        Ok(Response::new(kinds::wrap(self.reg.create(o, fence.as_ref()).await?)))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Object>, Status> {
        let r = req.into_inner();
        let kind = Kind::parse(&r.kind).map_err(ApiError::from)?;
        let ns = kind.namespace_or_default(&r.namespace);
        Ok(Response::new(kinds::wrap(self.reg.get(kind, ns, &r.name).await?)))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let r = req.into_inner();
        let kind = Kind::parse(&r.kind).map_err(ApiError::from)?;
        Ok(Response::new(self.reg.list(kind, &r).await?))
    }

    async fn update(&self, req: Request<pb::UpdateRequest>) -> Result<Response<pb::Object>, Status> {
        let r = req.into_inner();
        let fence = Fence::from_request(r.fence.as_ref()).map_err(ApiError::from)?;
        let o = kinds::unwrap(r.object).map_err(ApiError::from)?;
        Ok(Response::new(kinds::wrap(self.reg.update(o, false, fence.as_ref()).await?)))
    }

    async fn update_status(&self, req: Request<pb::UpdateRequest>) -> Result<Response<pb::Object>, Status> {
        let r = req.into_inner();
        let fence = Fence::from_request(r.fence.as_ref()).map_err(ApiError::from)?;
        let o = kinds::unwrap(r.object).map_err(ApiError::from)?;
        Ok(Response::new(kinds::wrap(self.reg.update(o, true, fence.as_ref()).await?)))
    }

    async fn patch(&self, req: Request<pb::PatchRequest>) -> Result<Response<pb::Object>, Status> {
        Ok(Response::new(kinds::wrap(self.reg.patch(&req.into_inner()).await?)))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let d = self.reg.delete(&req.into_inner()).await?;
        Ok(Response::new(pb::DeleteResponse { object: Some(kinds::wrap(d.object)), deleted: d.gone }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let r = req.into_inner();
        let kind = Kind::parse(&r.kind).map_err(ApiError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::WatchEvent, ApiError>>(256);
        self.reg.watch(kind, &r, tx)?;
        let stream =
            futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn bind(&self, req: Request<pb::BindRequest>) -> Result<Response<pb::Object>, Status> {
        Ok(Response::new(kinds::wrap(self.reg.bind(&req.into_inner()).await?)))
    }

    type PodLogsStream = LogStream;

    async fn pod_logs(&self, req: Request<pb::PodLogsRequest>) -> Result<Response<LogStream>, Status> {
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
