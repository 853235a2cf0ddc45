//! The list of masters a client may talk to, which of them are healthy, and which one is
//! in use.
//!
//! Each master gets one HTTP/2 connection with keepalive pings every second (so a dead or
//! partitioned master is noticed in about two seconds, not at a TCP timeout). A background
//! task asks every master for its status twice a second: a master that does not answer
//! within a second, or that knows no leader (it is cut off from the majority), is
//! unhealthy. Calls go to the current master while it is healthy, else to the next
//! healthy one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use flotilla_proto::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

pub use flotilla_tls::ClientTls;

/// Timing of the client; the defaults move to another master within 2 s of losing one.
#[derive(Debug, Clone)]
pub struct Options {
    /// Deadline of one unary call.
    pub request_timeout: Duration,
    /// How long a call keeps trying other masters before giving up.
    pub retry_budget: Duration,
    /// Interval of health checks.
    pub health_interval: Duration,
    /// Deadline of one health check (and of connecting).
    pub health_timeout: Duration,
    /// TLS to the masters (their CA, and this client's certificate if it has one); then
    /// every endpoint must be `https` (a bare `host:port` is taken as one). None: plaintext,
    /// and `https` endpoints are refused.
    pub tls: Option<Arc<flotilla_tls::ClientTls>>,
    /// A bearer token sent with every call (from the masters' token file).
    pub token: Option<String>,
    /// A user to act as (only masters may): the `impersonate-user` header.
    pub impersonate: Option<String>,
}

/// What a client sends with every call to say who it is (besides its certificate).
#[derive(Clone, Default)]
pub struct Credentials {
    token: Option<tonic::metadata::AsciiMetadataValue>,
    impersonate: Option<tonic::metadata::AsciiMetadataValue>,
}

impl Credentials {
    /// The credentials `opts` name; a token or user that cannot be a header is refused.
    pub fn new(opts: &Options) -> Result<Credentials, ClientError> {
        let value = |what: &str, v: &str| {
            v.parse::<tonic::metadata::AsciiMetadataValue>()
                .map_err(|_| ClientError::Config(format!("{what} must be printable ASCII")))
        };
        Ok(Credentials {
            token: opts.token.as_deref().map(|t| value("the token", &format!("Bearer {t}"))).transpose()?,
            impersonate: opts.impersonate.as_deref().map(|u| value("the user to impersonate", u)).transpose()?,
        })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        if let Some(u) = &self.impersonate {
            req.metadata_mut().insert("impersonate-user", u.clone());
        }
        Ok(req)
    }
}

/// A connection to a master with the client's credentials on every call.
pub type Conn = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

impl Default for Options {
    fn default() -> Options {
        Options {
            request_timeout: Duration::from_millis(1500),
            retry_budget: Duration::from_secs(10),
            health_interval: Duration::from_millis(500),
            health_timeout: Duration::from_secs(1),
            tls: None,
            token: None,
            impersonate: None,
        }
    }
}

pub(crate) struct Master {
    pub url: String,
    pub channel: Conn,
    healthy: AtomicBool,
    /// Why the master's TLS refused this client at its last health check, if it did.
    pub refusal: std::sync::Mutex<Option<String>>,
}

pub(crate) struct Pool {
    pub masters: Vec<Master>,
    current: AtomicUsize,
    pub opts: Options,
}

/// An endpoint as a URL: `host:port` gets `https://` when the client has TLS, else
/// `http://`; a URL whose scheme disagrees with the client's TLS is refused (an `http`
/// endpoint would silently skip the certificates given; an `https` one cannot be spoken
/// without a CA to verify it).
pub fn endpoint_url(ep: &str, tls: bool) -> Result<String, ClientError> {
    let ep = ep.trim();
    let url = if ep.contains("://") {
        ep.to_string()
    } else if tls {
        format!("https://{ep}")
    } else {
        format!("http://{ep}")
    };
    match (url.starts_with("https://"), tls) {
        (true, false) => Err(ClientError::Config(format!(
            "endpoint {ep} is https but no CA certificate was given to verify it (--cacert)"
        ))),
        (false, true) if url.starts_with("http://") => Err(ClientError::Config(format!(
            "endpoint {ep} is plaintext http but TLS certificates were given; use https://"
        ))),
        _ => Ok(url),
    }
}

/// A lazily connecting channel to `endpoint`, in TLS when `tls` is given (check the URL
/// with [`endpoint_url`] first).
pub fn channel(endpoint: Endpoint, tls: Option<&Arc<flotilla_tls::ClientTls>>) -> Channel {
    match tls {
        Some(tls) => endpoint.connect_with_connector_lazy(flotilla_tls::Connector::new(tls.clone())),
        None => endpoint.connect_lazy(),
    }
}

/// The TLS of a client from its files: the CA that masters' certificates chain to, and
/// the client's own certificate and key (both or neither). None when no file is given.
pub fn tls_from_files(
    cacert: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<Arc<flotilla_tls::ClientTls>>, ClientError> {
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c.to_path_buf(), k.to_path_buf())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ClientError::Config("--cert needs --key (the certificate's private key)".into()))
        }
        (None, Some(_)) => return Err(ClientError::Config("--key needs --cert (the key's certificate)".into())),
    };
    let Some(ca) = cacert else {
        return match identity {
            None => Ok(None),
            Some(_) => Err(ClientError::Config(
                "--cert and --key need --cacert (the CA the masters' certificates chain to)".into(),
            )),
        };
    };
    let files = flotilla_tls::ClientFiles { ca: ca.to_path_buf(), identity };
    flotilla_tls::ClientTls::new(files).map(Some).map_err(|e| ClientError::Config(e.to_string()))
}

impl Pool {
    pub fn new(endpoints: &[String], opts: Options) -> Result<Arc<Pool>, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints given".into()));
        }
        let mut masters = Vec::new();
        let creds = Credentials::new(&opts)?;
        for e in endpoints {
            let url = endpoint_url(e, opts.tls.is_some())?;
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|err| ClientError::Config(format!("endpoint {e:?} is not a URL: {err}")))?
                .connect_timeout(opts.health_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(1))
                .keep_alive_while_idle(true);
            let channel = Conn::new(channel(endpoint, opts.tls.as_ref()), creds.clone());
            masters.push(Master { url, channel, healthy: AtomicBool::new(true), refusal: Default::default() });
        }
        let pool = Arc::new(Pool { masters, current: AtomicUsize::new(0), opts });
        tokio::spawn(health_loop(Arc::downgrade(&pool)));
        Ok(pool)
    }

    /// The master to use now.
    pub fn pick(&self) -> usize {
        let n = self.masters.len();
        let cur = self.current.load(Ordering::Acquire) % n;
        if self.masters[cur].healthy.load(Ordering::Acquire) {
            return cur;
        }
        for step in 1..n {
            let i = (cur + step) % n;
            if self.masters[i].healthy.load(Ordering::Acquire) {
                self.current.store(i, Ordering::Release);
                return i;
            }
        }
        // Nobody looks healthy: rotate, in case the checks are behind.
        let i = (cur + 1) % n;
        self.current.store(i, Ordering::Release);
        i
    }

    /// Whether master `i` passed its last health check.
    pub fn is_healthy(&self, i: usize) -> bool {
        self.masters[i].healthy.load(Ordering::Acquire)
    }

    /// A call to master `i` failed in transport: stop using it until it checks healthy.
    pub fn mark_bad(&self, i: usize) {
        self.masters[i].healthy.store(false, Ordering::Release);
        let _ = self.current.compare_exchange(i, (i + 1) % self.masters.len(), Ordering::AcqRel, Ordering::Acquire);
    }
}

async fn check(m: &Master, timeout: Duration) -> bool {
    let mut c = MaintenanceClient::new(m.channel.clone());
    let r = tokio::time::timeout(timeout, c.status(StatusRequest {})).await;
    let refusal = match &r {
        Ok(Err(s)) if crate::error::tls_refused(s) => Some(crate::error::describe(s)),
        _ => None,
    };
    *m.refusal.lock().unwrap_or_else(|p| p.into_inner()) = refusal;
    matches!(r, Ok(Ok(r)) if r.get_ref().leader != 0)
}

async fn health_loop(pool: Weak<Pool>) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        let interval = p.opts.health_interval;
        let checks = p.masters.iter().map(|m| check(m, p.opts.health_timeout));
        let results = futures::future::join_all(checks).await;
        for (m, ok) in p.masters.iter().zip(results) {
            if m.healthy.swap(ok, Ordering::AcqRel) != ok {
                tracing::debug!(master = %m.url, healthy = ok, "master health changed");
            }
        }
        drop(p);
        tokio::time::sleep(interval).await;
    }
}
