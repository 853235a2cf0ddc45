//! The `/healthz` and `/metrics` endpoint of the scheduler, the controller manager, the
//! worker and the proxy: plain HTTP at `HOST:PORT` or `http://HOST:PORT`; TLS at
//! `https://HOST:PORT` with the component's serving certificate (`--tls-cert-file`,
//! `--tls-private-key-file`), and with `--client-ca-file` only for scrapers that present
//! a certificate from that CA. The certificate is reloaded when its files change, as on
//! every other listener.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

/// The flags of a component's metrics endpoint (the worker has its own: its certificate
/// serves the kubelet's endpoint too).
#[derive(clap::Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Address serving /healthz and /metrics: HOST:PORT or http://HOST:PORT in plain
    /// HTTP, https://HOST:PORT in TLS (with --tls-cert-file and --tls-private-key-file).
    #[arg(long, value_name = "[SCHEME://]HOST:PORT")]
    pub listen_metrics: Option<String>,
    /// Certificate (PEM) of an https --listen-metrics.
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, value_name = "FILE")]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA (PEM) that scrapers' client certificates must chain to; without it an https
    /// --listen-metrics asks for none.
    #[arg(long, value_name = "FILE")]
    pub client_ca_file: Option<PathBuf>,
}

impl MetricsArgs {
    /// Binds the endpoint, if one is asked for; starts serving it on the runtime.
    pub async fn start(&self, render: impl Fn() -> String + Clone + Send + Sync + 'static) -> anyhow::Result<()> {
        if self.listen_metrics.as_deref().is_none_or(|l| !l.starts_with("https://"))
            && (self.tls_cert_file.is_some() || self.tls_private_key_file.is_some() || self.client_ca_file.is_some())
        {
            bail!("--tls-cert-file, --tls-private-key-file and --client-ca-file are for an https:// --listen-metrics");
        }
        let Some(listen) = &self.listen_metrics else { return Ok(()) };
        let files = Files {
            cert: self.tls_cert_file.clone(),
            key: self.tls_private_key_file.clone(),
            ca: self.client_ca_file.clone(),
        };
        start(listen, &files, render).await
    }
}

/// The certificate files an https endpoint serves with.
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// Certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// The CA scrapers' certificates must chain to (None: no client certificate asked).
    pub ca: Option<PathBuf>,
}

/// Binds `listen` (`[http://|https://]HOST:PORT`) and serves `/healthz` and `/metrics`
/// (from `render`) on it in a task of its own; https with `files`.
pub async fn start(
    listen: &str,
    files: &Files,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let (addr, tls) = match listen.split_once("://") {
        None => (listen, None),
        Some(("http", addr)) => (addr, None),
        Some(("https", addr)) => {
            let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
                bail!("--listen-metrics {listen} is https: give --tls-cert-file and --tls-private-key-file");
            };
            let tls = flotilla_tls::ServerTls::new(flotilla_tls::ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: files.ca.clone(),
                auth: if files.ca.is_some() {
                    flotilla_tls::ClientAuth::Required
                } else {
                    flotilla_tls::ClientAuth::Off
                },
                protocol: flotilla_tls::Protocol::Http1,
            })
            .with_context(|| format!("--listen-metrics {listen}"))?;
            (addr, Some(tls))
        }
        Some((scheme, _)) => bail!("--listen-metrics {listen}: the scheme is {scheme:?}; use http:// or https://"),
    };
    let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--listen-metrics {listen}"))?;
    tokio::spawn(serve(l, tls, render));
    Ok(())
}

/// Serves `/healthz`, and `/metrics` from `render`, until the process ends.
async fn serve(
    l: tokio::net::TcpListener,
    tls: Option<Arc<flotilla_tls::ServerTls>>,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
) {
    use axum::http::header;
    use axum::routing::get;
    let app = axum::Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let body = render();
            async move { ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body) }
        }),
    );
    let served = match tls {
        None => axum::serve(l, app).await,
        Some(tls) => match flotilla_store::http::TlsListener::new(l, tls) {
            Ok(l) => axum::serve(l, app).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}
