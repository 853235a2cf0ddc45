//! Flotilla's apiserver: the typed `flotilla.api.v1` resource API (Kubernetes-shaped
//! objects and verbs) on top of the replicated store.
//!
//! Requests are validated and defaulted at the boundary (`flotilla_api::validate` and
//! `defaults`, shared with clients); [`registry`] turns each verb into store transactions whose compares make concurrent
//! writers safe; [`storage`] is the trait over the store. This crate does not know about
//! RocksDB or Raft: it only sees ranges, transactions and watches.

pub mod authz;
pub mod error;
pub mod fault;
pub mod keys;
pub mod registry;
pub mod service;
pub mod storage;

use std::sync::Arc;

pub use error::ApiError;
pub use flotilla_api::Kind;
pub use registry::{ApiConfig, Registry};

/// The gRPC service of the resource API, served from the store of this master process.
pub fn service(
    node: Arc<flotilla_store::node::Node>,
    cfg: ApiConfig,
) -> flotilla_proto::api::api_server::ApiServer<service::ApiService> {
    let store: Arc<dyn storage::Storage> = Arc::new(storage::LocalStore::new(node));
    let mode = cfg.authorization;
    let reg = Arc::new(Registry::new(store.clone(), cfg));
    tokio::spawn(ensure_builtin_namespaces(reg.clone()));
    if mode == authz::Mode::Rbac {
        tokio::spawn(ensure_default_policy(reg.clone()));
    }
    let authz = Arc::new(authz::Authorizer::new(mode, store));
    flotilla_proto::api::api_server::ApiServer::new(service::ApiService::new(reg, authz))
        .max_decoding_message_size(registry::MAX_OBJECT_BYTES * 2)
}

/// Namespaces every cluster has, as in Kubernetes.
pub const BUILTIN_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-node-lease"];

/// Creates the built-in namespaces if they are missing, retrying until the store has a
/// leader. Every master does this; all but the first find them there.
pub async fn ensure_builtin_namespaces(reg: Arc<Registry>) {
    use flotilla_proto::api as pb;
    for name in BUILTIN_NAMESPACES {
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            let ns = pb::object::Kind::Namespace(pb::Namespace {
                metadata: Some(pb::ObjectMeta { name: name.into(), ..Default::default() }),
                ..Default::default()
            });
            match reg.get(Kind::Namespace, "", name).await {
                Ok(_) => break,
                Err(ApiError::NotFound { .. }) => match reg.create(ns, None).await {
                    Ok(_) | Err(ApiError::AlreadyExists { .. }) => break,
                    Err(e) => tracing::debug!(namespace = name, error = %e, "cannot create yet"),
                },
                Err(e) => tracing::debug!(namespace = name, error = %e, "cannot read yet"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(2));
        }
    }
}

/// Creates the default RBAC roles and bindings ([`authz::default_policy`]) that are
/// missing, retrying until the store has a leader. One an admin changed is left as it is.
pub async fn ensure_default_policy(reg: Arc<Registry>) {
    for o in authz::default_policy() {
        let (kind, name) = (flotilla_api::kinds::Kind::of(&o), flotilla_api::kinds::meta(&o).name.clone());
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            match reg.get(kind, "", &name).await {
                Ok(_) => break,
                Err(ApiError::NotFound { .. }) => match reg.create(o.clone(), None).await {
                    Ok(_) | Err(ApiError::AlreadyExists { .. }) => break,
                    Err(e) => tracing::debug!(%name, error = %e, "cannot create yet"),
                },
                Err(e) => tracing::debug!(%name, error = %e, "cannot read yet"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests;
