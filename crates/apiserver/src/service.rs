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
}
