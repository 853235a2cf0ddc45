//! The HTTP endpoint of a master: `/healthz` (the process serves), `/readyz` (it knows a
//! leader and has applied what it has committed), `/metrics` (Prometheus text).

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_stream::Stream;

use crate::node::Node;

async fn healthz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    match &node.raft.metrics().borrow_watched().running_state {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("raft stopped: {e}\n")),
    }
}

async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let m = node.raft.metrics().borrow_watched().clone();
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
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<flotilla_tls::ServerTls>>,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node);
    let served = match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        Some(tls) => match TlsListener::new(listener, tls) {
            Ok(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}

/// A listener in TLS for axum (an `https` metrics URL; the components' metrics too).
pub struct TlsListener {
    addr: std::net::SocketAddr,
    conns: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<flotilla_tls::TlsConn>> + Send>>,
}

impl TlsListener {
    /// Accepts TLS connections on `l` (each handshake in a task of its own).
    pub fn new(l: TcpListener, tls: Arc<flotilla_tls::ServerTls>) -> std::io::Result<TlsListener> {
        let addr = l.local_addr()?;
        let tcp = tokio_stream::wrappers::TcpListenerStream::new(l);
        Ok(TlsListener { addr, conns: Box::pin(flotilla_tls::incoming(tcp, tls)) })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = flotilla_tls::TlsConn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (flotilla_tls::TlsConn, std::net::SocketAddr) {
        use tokio_stream::StreamExt;
        loop {
            match self.conns.next().await {
                Some(Ok(s)) => {
                    let addr = s.0.get_ref().0.peer_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
                    return (s, addr);
                }
                Some(Err(e)) => {
                    // As axum does for plain TCP: a failed accept (out of file descriptors)
                    // is retried after a pause rather than ending the listener.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.addr)
    }
}
