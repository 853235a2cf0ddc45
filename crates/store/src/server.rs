//! Runs a master's store: binds the client, peer and HTTP listeners, starts the node and
//! serves until asked to stop.

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::sync::Arc;

use flotilla_core::cluster::Url;
use flotilla_core::limits::MAX_REQUEST_BYTES;
use flotilla_proto::etcdserverpb::cluster_server::ClusterServer;
use flotilla_proto::etcdserverpb::kv_server::KvServer;
use flotilla_proto::etcdserverpb::lease_server::LeaseServer;
use flotilla_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use flotilla_proto::etcdserverpb::watch_server::WatchServer;
use flotilla_proto::raft::raft_peer_server::RaftPeerServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

use crate::config::NodeConfig;
use crate::error::StoreError;
use crate::etcd;
use crate::network::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW, MAX_PEER_MESSAGE};
use crate::node::Node;
use crate::peer::PeerService;

/// gRPC framing overhead allowed on top of the request size limit (as etcd does).
const GRPC_OVERHEAD: usize = 512 * 1024;

/// Accepted connections with Nagle's algorithm off (gRPC writes headers and bodies
/// separately, and Nagle plus delayed ACKs would add ~40 ms to small responses), each
/// counted in `accepted`.
fn incoming(
    l: TcpListener,
    accepted: prometheus_client::metrics::counter::Counter,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(l).map(move |s| {
        let s = s?;
        accepted.inc();
        s.set_nodelay(true)?;
        Ok(s)
    })
}

/// A router behind a gate.
type Gated = tonic::transport::server::Router<tower_layer::Stack<crate::auth::AuthLayer, tower_layer::Identity>>;

/// Serves `router` on `l`, in TLS with `tls` when given, until `stop` completes; counts
/// accepted connections in `accepted`.
fn serve(
    router: Gated,
    (l, accepted): (TcpListener, prometheus_client::metrics::counter::Counter),
    tls: Option<Arc<flotilla_tls::ServerTls>>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let conns = incoming(l, accepted);
    match tls {
        None => tokio::spawn(router.serve_with_incoming_shutdown(conns, stop)),
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(flotilla_tls::incoming(conns, tls), stop)),
    }
}

/// The TLS a listener at `url` serves with: `https` URLs need it, `http` ones refuse it
/// (so that a URL always says what its port speaks).
fn tls_for(
    url: &Url,
    what: &str,
    tls: Option<&Arc<flotilla_tls::ServerTls>>,
) -> Result<Option<Arc<flotilla_tls::ServerTls>>, StoreError> {
    match (url.is_tls(), tls) {
        (true, Some(t)) => Ok(Some(t.clone())),
        (false, None) => Ok(None),
        (true, None) => {
            Err(StoreError::InvalidArgument(format!("{what} URL {url} is https but no certificate was given")))
        }
        (false, Some(_)) => Err(StoreError::InvalidArgument(format!(
            "{what} URL {url} is plaintext http but certificates were given; use https (or leave the certificates out)"
        ))),
    }
}

async fn bind(url: &Url, what: &str) -> Result<TcpListener, StoreError> {
    TcpListener::bind(url.authority())
        .await
        .map_err(|e| StoreError::InvalidArgument(format!("cannot listen for {what} on {url}: {e}")))
}

/// Starts a member and serves until `shutdown` completes (Ok) or its raft core stops
/// (`Fatal`, with the reason). `more` may add gRPC services
/// (the resource API) to the client listener, next to the etcd API.
pub async fn run(
    cfg: NodeConfig,
    more: impl FnOnce(Arc<Node>, Routes) -> Routes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StoreError> {
    let client_tls = tls_for(&cfg.listen_client, "client", cfg.client_tls.as_ref())?;
    let peer_tls = tls_for(&cfg.listen_peer, "peer", cfg.peer_tls.as_ref().map(|p| &p.server))?;
    let metrics_tls = match &cfg.listen_metrics {
        // The client port's certificates, offering HTTP/1.1 rather than gRPC's HTTP/2.
        Some(u) if u.is_tls() => {
            let client = cfg.client_tls.as_ref().ok_or_else(|| {
                StoreError::InvalidArgument(format!("metrics URL {u} is https but no certificate was given"))
            })?;
            let files =
                flotilla_tls::ServerFiles { protocol: flotilla_tls::Protocol::Http1, ..client.source().clone() };
            Some(flotilla_tls::ServerTls::new(files).map_err(|e| StoreError::InvalidArgument(e.to_string()))?)
        }
        _ => None,
    };
    // Bind first, so a taken port fails fast with a clear message.
    let client_l = bind(&cfg.listen_client, "clients").await?;
    let peer_l = bind(&cfg.listen_peer, "peers").await?;
    let http_l = match &cfg.listen_metrics {
        Some(u) => Some(bind(u, "metrics").await?),
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let node = Node::start(cfg.clone()).await?;
    tracing::info!(
        name = %cfg.name,
        member = format!("{:x}", node.id),
        cluster = format!("{:x}", node.cluster_id()),
        client = %cfg.listen_client,
        peer = %cfg.listen_peer,
        "member started"
    );

    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let peer_srv = tonic::transport::Server::builder()
        .layer(crate::auth::AuthLayer::new(Arc::new(crate::auth::Gate::Peers)))
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .add_service(
            RaftPeerServer::new(PeerService::new(node.clone()))
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
        );
    let peer_srv = serve(peer_srv, (peer_l, node.metrics.peer_connections.clone()), peer_tls, stopped(stop_rx.clone()));
    let max = MAX_REQUEST_BYTES + GRPC_OVERHEAD;
    let routes = Routes::new(KvServer::new(etcd::kv::KvService::new(node.clone())).max_decoding_message_size(max))
        .add_service(WatchServer::new(etcd::watch::WatchService::new(node.clone())).max_decoding_message_size(max))
        .add_service(LeaseServer::new(etcd::lease::LeaseService::new(node.clone())).max_decoding_message_size(max))
        .add_service(
            ClusterServer::new(etcd::cluster::ClusterService::new(node.clone())).max_decoding_message_size(max),
        )
        .add_service(
            MaintenanceServer::new(etcd::maintenance::MaintenanceService::new(node.clone()))
                .max_decoding_message_size(max),
        );
    let routes = more(node.clone(), routes);
    let client_srv = tonic::transport::Server::builder()
        .layer(crate::auth::AuthLayer::new(cfg.client_gate.clone()))
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        // Dead clients (and their watches) are noticed within seconds, not at TCP timeout.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .add_routes(routes);
    let client_task =
        serve(client_srv, (client_l, node.metrics.client_connections.clone()), client_tls, stopped(stop_rx.clone()));
    let peer_task = peer_srv;
    let http_task =
        http_l.map(|l| tokio::spawn(crate::http::serve(l, metrics_tls, node.clone(), stopped(stop_rx.clone()))));

    // Fail-stop: a member whose raft core stopped (a storage error), or whose store found
    // damaged data (a checksum mismatch in a table file), exits with the reason instead
    // of lingering or serving around the damage. Its data must be wiped and resynced.
    // (Polled, not woken by every change of Raft's full metrics: those change on every
    // write. The server metrics change only on elections, and end when the core does.)
    let fatal = {
        let (m, mut server) = (node.raft.metrics(), node.raft.server_metrics());
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                let core_gone = tokio::select! {
                    _ = tick.tick() => false,
                    changed = server.changed() => changed.is_err(),
                };
                if let Err(f) = &m.borrow_watched().running_state {
                    return f.to_string();
                }
                if core_gone {
                    return "the raft core stopped".to_string();
                }
            }
        }
    };
    let mut corruption = node.sm.db.corruption();
    let failed = tokio::select! {
        () = shutdown => None,
        reason = fatal => Some(reason),
        Ok(found) = corruption.wait_for(Option::is_some) => {
            Some(format!("damaged data on disk: {}", found.as_deref().unwrap_or_default()))
        }
    };
    match &failed {
        None => tracing::info!("shutting down"),
        Some(reason) => tracing::error!(%reason, "stopping: this member can no longer serve"),
    }
    let _ = stop_tx.send(true);
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    let _ = client_task.await;
    let _ = peer_task.await;
    if let Some(t) = http_task {
        let _ = t.await;
    }
    match failed {
        None => Ok(()),
        Some(reason) => Err(StoreError::Fatal(reason)),
    }
}
