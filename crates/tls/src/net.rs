//! TLS on sockets: the accepting side for tonic servers ([`incoming`]) and the dialling
//! side for tonic channels ([`Connector`]), each taking the current configuration of a
//! [`Reloading`](crate::reload::Reloading) for every new connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use crate::reload::{ClientTls, ServerTls};

/// How long a client has to complete its handshake; a connection that dawdles longer is
/// dropped (without holding up anyone else's).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 128;

/// Turns a stream of accepted TCP connections into TLS connections, handshaking each in a
/// task of its own so that a slow or hostile client delays nobody. A failed handshake (no
/// certificate where one is required, another CA's, plaintext spoken to a TLS port) is
/// logged with the client's address and the connection closed. Accept errors pass through
/// as they are. The accepting stops (and the listener closes) when the returned stream is
/// dropped.
pub fn incoming<S>(tcp: S, tls: Arc<ServerTls>) -> impl Stream<Item = io::Result<TlsConn>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let next = tokio::select! {
                () = tx.closed() => return,
                n = tcp.next() => n,
            };
            let stream = match next {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(s)) => s,
            };
            let acceptor = TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(TlsConn(s))).await;
                    }
                    Ok(Err(e)) => tracing::info!(client = ?peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(client = ?peer, "TLS handshake not completed in time"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// An accepted TLS connection. tonic servers find a [`PeerInfo`] in every request's
/// extensions (see [`crate::peer_identity`]).
pub struct TlsConn(pub server::TlsStream<TcpStream>);

/// Who is at the other end of a TLS connection: its address and the user and groups its
/// certificate names (verified by the handshake; read once per connection, not per
/// request). No identity: it presented no certificate.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub remote: Option<std::net::SocketAddr>,
    /// The leaf certificate's user and groups (an error when the leaf cannot be read).
    pub identity: Option<Arc<Result<crate::Identity, String>>>,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let (tcp, session) = self.0.get_ref();
        let identity = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| Arc::new(crate::identity(leaf).map_err(|e| e.to_string())));
        PeerInfo { remote: tcp.peer_addr().ok(), identity }
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// What a failed TLS connection attempt reports: the server was never reached at the
/// gRPC level, so a request that failed so was not sent (its message starts with
/// `tls handshake error`, which `flotilla_core::limits::is_connect_failure` knows).
#[derive(Debug, thiserror::Error)]
#[error("tls handshake error with {server}: {source}")]
pub struct HandshakeError {
    server: String,
    source: io::Error,
}

/// Dials TCP and then TLS with the current client configuration, for
/// `tonic::transport::Endpoint::connect_with_connector_lazy`. The server's name (DNS name
/// or IP address) is taken from the URI and must be among its certificate's SANs.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Arc<ClientTls>,
}

impl Connector {
    /// A connector presenting `tls`'s certificate (if any) and trusting its CA.
    pub fn new(tls: Arc<ClientTls>) -> Connector {
        let mut http = HttpConnector::new();
        // The URI says https; it is this connector that speaks TLS over the TCP stream.
        http.enforce_http(false);
        http.set_nodelay(true);
        Connector { http, tls }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.tls.current();
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let connect = self.http.call(uri);
        Box::pin(async move {
            // The TCP connector's own errors keep their words ("tcp connect error ...").
            let tcp = connect.await?.into_inner();
            let name = ServerName::try_from(host.clone())
                .map_err(|e| HandshakeError { server: host.clone(), source: io::Error::other(e) })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| HandshakeError { server: host, source })?;
            Ok(TokioIo::new(tls))
        })
    }
}
