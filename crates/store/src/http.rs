//! The HTTP endpoint of a master: `/healthz` (the process serves), `/readyz` (it knows a
//! leader and has applied what it has committed), `/metrics` (Prometheus text).

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::node::Node;

async fn healthz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    match &node.raft.metrics().borrow().running_state {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("raft stopped: {e}\n")),
    }
}

async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let m = node.raft.metrics().borrow().clone();
    if m.running_state.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "raft stopped\n".to_string());
    }
    match m.current_leader {
        None => (StatusCode::SERVICE_UNAVAILABLE, "no leader\n".to_string()),
        Some(l) => (StatusCode::OK, format!("ok: leader {l:x}, applied {}\n", m.last_applied.map_or(0, |l| l.index))),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], node.metrics.render())
}

/// Serves the endpoints on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}
