//! `flotilla master`: flags and config file → the store member's and the apiserver's
//! configuration; then runs both.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use flotilla_apiserver::registry::{parse_cidr, ApiConfig};
use flotilla_core::cluster::{parse_initial_cluster, Url};
use flotilla_store::config::{ClusterState, NodeConfig};
use serde::Deserialize;

/// Flags of `flotilla master`. Every flag can also be set in the YAML file given with
/// `--config-file` (same names, with dashes); flags given on the command line win.
#[derive(Args, Debug, Default)]
pub struct MasterArgs {
    /// YAML file with any of the flags below (e.g. `name: n1`, `data-dir: /var/lib/flotilla`).
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,

    /// This member's name; must be one of the names in --initial-cluster.
    #[arg(long)]
    name: Option<String>,

    /// Directory for the Raft log and the key-value data (created if missing). A data dir
    /// from another cluster or member is refused, never reset.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// URL the etcd v3 API listens on, e.g. http://127.0.0.1:2379.
    #[arg(long, value_name = "URL")]
    listen_client: Option<String>,

    /// Client URL announced to other members and clients [default: --listen-client].
    #[arg(long, value_name = "URL")]
    advertise_client: Option<String>,

    /// URL the peer (Raft) protocol listens on, e.g. http://127.0.0.1:2380.
    #[arg(long, value_name = "URL")]
    listen_peer: Option<String>,

    /// Peer URL announced to other members [default: --listen-peer]. It must be this
    /// member's URL in --initial-cluster.
    #[arg(long, value_name = "URL")]
    advertise_peer: Option<String>,

    /// URL serving /healthz, /readyz and /metrics (Prometheus), e.g. http://127.0.0.1:2381.
    #[arg(long, value_name = "URL")]
    listen_metrics: Option<String>,

    /// Every member at bootstrap: name=peer-url,... (e.g. n1=http://10.0.0.1:2380,n2=...).
    #[arg(long, value_name = "NAME=URL,...")]
    initial_cluster: Option<String>,

    /// `new` to bootstrap a cluster, `existing` to join one that has already added this
    /// member with `etcdctl member add`.
    #[arg(long, value_name = "new|existing")]
    initial_cluster_state: Option<String>,

    /// Token that keeps clusters with the same member URLs apart [default: flotilla-cluster].
    #[arg(long, value_name = "TOKEN")]
    initial_cluster_token: Option<String>,

    /// Leader heartbeat interval in milliseconds [default: 100]. Keep it above the usual
    /// round trip between masters.
    #[arg(long, value_name = "MS")]
    heartbeat_interval: Option<u64>,

    /// How long the leader waits for a follower to answer a replication request carrying
    /// log entries, in milliseconds, before it sends again [default: 5000]. A slow link
    /// or a slow disk on a follower delays replication by its own slowness, not by
    /// repeated retries, as long as this is above the worst round trip plus fsync.
    #[arg(long, value_name = "MS")]
    replication_timeout: Option<u64>,

    /// Election timeout in milliseconds (followers wait between this and twice this before
    /// campaigning) [default: 300].
    #[arg(long, value_name = "MS")]
    election_timeout: Option<u64>,

    /// Applied entries between snapshots; older log entries are purged after each
    /// snapshot [default: 10000].
    #[arg(long, value_name = "N")]
    snapshot_count: Option<u64>,

    /// How long a client request may wait for a leader or a commit, in milliseconds
    /// [default: 5000].
    #[arg(long, value_name = "MS")]
    request_timeout: Option<u64>,

    /// Range the apiserver allocates Services' cluster IPs from. Every master of a cluster
    /// must be given the same range [default: 10.96.0.0/12].
    #[arg(long, value_name = "CIDR")]
    service_cluster_ip_range: Option<String>,

    /// How long Events live before the store drops them, e.g. `1h`; `0` keeps them
    /// [default: 1h].
    #[arg(long, value_name = "DURATION")]
    event_ttl: Option<String>,

    /// History older than this is compacted away automatically, e.g. `5m`, `1h`; `0`
    /// keeps everything (then compact with `etcdctl compaction`). A watch resumed within
    /// this time never has to list again [default: 5m].
    #[arg(long, value_name = "DURATION")]
    compaction_retention: Option<String>,

    /// Certificate (PEM) the client port serves; --listen-client (and --advertise-client)
    /// must then be https. Reloaded when the file changes, without a restart.
    #[arg(long, value_name = "FILE")]
    cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cert-file.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,

    /// CA (PEM) that clients' certificates must chain to; with it a client may identify
    /// itself by certificate. The master's own scheduler and controller manager also
    /// verify its certificate with it (needed with --cert-file).
    #[arg(long, value_name = "FILE")]
    trusted_ca_file: Option<PathBuf>,

    /// Refuse clients that present no certificate from --trusted-ca-file.
    #[arg(long)]
    client_cert_auth: bool,

    /// Certificate (PEM) this member serves to and presents to its peers; the peer URLs
    /// must then be https. Peers are always verified both ways.
    #[arg(long, value_name = "FILE")]
    peer_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, value_name = "FILE")]
    peer_key_file: Option<PathBuf>,

    /// CA (PEM) that peers' certificates must chain to (required with --peer-cert-file).
    #[arg(long, value_name = "FILE")]
    peer_trusted_ca_file: Option<PathBuf>,

    /// Accepted for etcd's sake (with peer TLS only): a peer without a certificate from
    /// --peer-trusted-ca-file is always refused.
    #[arg(long)]
    peer_client_cert_auth: bool,

    /// Static token file: `token,user,uid,"group1,group2"` per line (Kubernetes' format);
    /// a client sending `authorization: Bearer <token>` is that user.
    #[arg(long, value_name = "FILE")]
    token_auth_file: Option<PathBuf>,

    /// Let requests with neither a client certificate nor a token in, as
    /// system:anonymous (group system:unauthenticated; RBAC decides what they may do).
    #[arg(long)]
    anonymous_auth: bool,

    /// How the resource API authorizes: `RBAC` (masters may do anything, nodes what the
    /// node authorizer allows, everyone else what Roles bound to them allow) or
    /// `AlwaysAllow` [default: RBAC when the client port authenticates (TLS or a token
    /// file), else AlwaysAllow].
    #[arg(long, value_name = "RBAC|AlwaysAllow")]
    authorization_mode: Option<String>,

    /// Append one JSON line per write and per refusal to this file.
    #[arg(long, value_name = "FILE")]
    audit_log_path: Option<PathBuf>,

    /// Rotate the audit log past this many megabytes [default: 100].
    #[arg(long, value_name = "MB")]
    audit_log_maxsize: Option<u64>,

    /// Rotated audit logs to keep [default: 5].
    #[arg(long, value_name = "N")]
    audit_log_maxbackup: Option<usize>,

    /// Do not run a scheduler candidate in this master (by default every master runs one,
    /// talking to its own apiserver; the elected one places pods). Run `flotilla scheduler`
    /// elsewhere instead.
    #[arg(long)]
    disable_scheduler: bool,

    #[command(flatten)]
    scheduler: crate::scheduler::SchedulerFlags,

    /// Do not run a controller-manager candidate in this master (by default every master
    /// runs one, talking to its own apiserver; the elected one runs the controllers). Run
    /// `flotilla controller-manager` elsewhere instead.
    #[arg(long)]
    disable_controller_manager: bool,

    #[command(flatten)]
    controller_manager: crate::controller_manager::ControllerManagerFlags,
}

/// The YAML config file: the same settings as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    listen_client: Option<String>,
    advertise_client: Option<String>,
    listen_peer: Option<String>,
    advertise_peer: Option<String>,
    listen_metrics: Option<String>,
    initial_cluster: Option<String>,
    initial_cluster_state: Option<String>,
    initial_cluster_token: Option<String>,
    heartbeat_interval: Option<u64>,
    replication_timeout: Option<u64>,
    election_timeout: Option<u64>,
    snapshot_count: Option<u64>,
    request_timeout: Option<u64>,
    service_cluster_ip_range: Option<String>,
    compaction_retention: Option<String>,
    event_ttl: Option<String>,
    #[serde(default)]
    disable_scheduler: bool,
    #[serde(default)]
    disable_controller_manager: bool,
    controllers: Option<String>,
    cluster_cidr: Option<String>,
    node_cidr_mask_size: Option<u8>,
    load_balancer_pool: Option<String>,
    node_monitor_grace_period: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    trusted_ca_file: Option<PathBuf>,
    #[serde(default)]
    client_cert_auth: bool,
    peer_cert_file: Option<PathBuf>,
    peer_key_file: Option<PathBuf>,
    peer_trusted_ca_file: Option<PathBuf>,
    #[serde(default)]
    peer_client_cert_auth: bool,
    token_auth_file: Option<PathBuf>,
    #[serde(default)]
    anonymous_auth: bool,
    authorization_mode: Option<String>,
    audit_log_path: Option<PathBuf>,
    audit_log_maxsize: Option<u64>,
    audit_log_maxbackup: Option<usize>,
}

/// What `flotilla master` runs: the store member, the apiserver beside it, a scheduler
/// candidate and a controller-manager candidate.
pub struct MasterConfig {
    /// The store member.
    pub node: NodeConfig,
    /// The apiserver.
    pub api: ApiConfig,
    /// The scheduler candidate (None: switched off).
    pub scheduler: Option<flotilla_scheduler::SchedulerConfig>,
    /// The controller-manager candidate (None: switched off).
    pub controller_manager: Option<flotilla_controllers::ManagerConfig>,
    /// How the candidates reach this master's client port: in TLS, with the master's own
    /// certificate, when it serves TLS.
    pub candidates_tls: Option<Arc<flotilla_tls::ClientTls>>,
    /// The token the candidates present (known to this master's gate only; they act as
    /// the scheduler's and the controller manager's users through it).
    pub candidates_token: Option<String>,
}

/// The TLS files given for one listener.
struct TlsFlags {
    /// `--cert-file` or `--peer-cert-file`, for messages.
    prefix: &'static str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
}

impl TlsFlags {
    /// The server side, or None when no file is given; half a set is refused by name.
    fn server(&self, auth: flotilla_tls::ClientAuth) -> anyhow::Result<Option<Arc<flotilla_tls::ServerTls>>> {
        let p = self.prefix;
        let (cert, key) = match (&self.cert, &self.key) {
            (None, None) => {
                if self.ca.is_some() {
                    bail!(
                        "--{p}trusted-ca-file needs --{p}cert-file and --{p}key-file (the listener's own certificate)"
                    );
                }
                if auth == flotilla_tls::ClientAuth::Required && p.is_empty() {
                    bail!("--client-cert-auth needs --cert-file, --key-file and --trusted-ca-file");
                }
                return Ok(None);
            }
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (Some(_), None) => bail!("--{p}cert-file needs --{p}key-file"),
            (None, Some(_)) => bail!("--{p}key-file needs --{p}cert-file"),
        };
        let auth = match (auth, &self.ca) {
            (flotilla_tls::ClientAuth::Required, None) => bail!(
                "{} needs --{p}trusted-ca-file (the CA that client certificates chain to)",
                if p.is_empty() { "--client-cert-auth" } else { "peer TLS" }
            ),
            (flotilla_tls::ClientAuth::Required, Some(_)) => flotilla_tls::ClientAuth::Required,
            (_, Some(_)) => flotilla_tls::ClientAuth::Optional,
            (_, None) => flotilla_tls::ClientAuth::Off,
        };
        let files =
            flotilla_tls::ServerFiles { cert, key, ca: self.ca.clone(), auth, protocol: flotilla_tls::Protocol::Grpc };
        Ok(Some(flotilla_tls::ServerTls::new(files)?))
    }

    /// The client side with the same files: trusting the CA, presenting the certificate.
    fn client(&self, why: &str) -> anyhow::Result<Arc<flotilla_tls::ClientTls>> {
        let p = self.prefix;
        let ca = self.ca.clone().with_context(|| format!("--{p}cert-file needs --{p}trusted-ca-file ({why})"))?;
        let identity = self.cert.clone().zip(self.key.clone());
        Ok(flotilla_tls::ClientTls::new(flotilla_tls::ClientFiles { ca, identity })?)
    }
}

fn url(flag: &str, v: &str) -> anyhow::Result<Url> {
    Url::parse(v).with_context(|| format!("--{flag}"))
}

/// Merges flags over the config file and validates the result.
pub fn config(args: MasterArgs) -> anyhow::Result<MasterConfig> {
    let file: FileConfig = match &args.config_file {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
            serde_yaml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let name = args.name.or(file.name).context("--name is required")?;
    let data_dir = args.data_dir.or(file.data_dir).context("--data-dir is required")?;
    let listen_client =
        url("listen-client", &args.listen_client.or(file.listen_client).context("--listen-client is required")?)?;
    let listen_peer = url("listen-peer", &args.listen_peer.or(file.listen_peer).context("--listen-peer is required")?)?;
    let advertise_client = match args.advertise_client.or(file.advertise_client) {
        Some(u) => url("advertise-client", &u)?,
        None => listen_client.clone(),
    };
    let advertise_peer = match args.advertise_peer.or(file.advertise_peer) {
        Some(u) => url("advertise-peer", &u)?,
        None => listen_peer.clone(),
    };
    let listen_metrics = args.listen_metrics.or(file.listen_metrics).map(|u| url("listen-metrics", &u)).transpose()?;
    let initial_cluster = parse_initial_cluster(
        &args.initial_cluster.or(file.initial_cluster).unwrap_or_else(|| format!("{name}={advertise_peer}")),
    )?;
    match initial_cluster.iter().find(|m| m.name == name) {
        None => bail!("--name {name:?} is not in --initial-cluster"),
        Some(m) if m.peer_url != advertise_peer => bail!(
            "--initial-cluster gives {name} the peer URL {}, but this member advertises {advertise_peer}",
            m.peer_url
        ),
        Some(_) => {}
    }
    let initial_cluster_state = match args.initial_cluster_state.or(file.initial_cluster_state).as_deref() {
        None | Some("new") => ClusterState::New,
        Some("existing") => ClusterState::Existing,
        Some(other) => bail!("--initial-cluster-state must be `new` or `existing`, not {other:?}"),
    };
    let heartbeat = args.heartbeat_interval.or(file.heartbeat_interval).unwrap_or(100);
    let election = args.election_timeout.or(file.election_timeout).unwrap_or(300);
    if heartbeat == 0 || election <= heartbeat * 2 {
        bail!("--election-timeout ({election} ms) must be more than twice --heartbeat-interval ({heartbeat} ms)");
    }
    let replication_timeout = args.replication_timeout.or(file.replication_timeout).unwrap_or(5000);
    if replication_timeout <= heartbeat {
        bail!(
            "--replication-timeout ({replication_timeout} ms) must be more than --heartbeat-interval ({heartbeat} ms)"
        );
    }
    let snapshot_count = args.snapshot_count.or(file.snapshot_count).unwrap_or(10_000);
    if snapshot_count == 0 {
        bail!("--snapshot-count must be at least 1");
    }
    let mut api = ApiConfig::default();
    match args.event_ttl.or(file.event_ttl).as_deref() {
        None => {}
        Some("0") => api.event_ttl = Duration::ZERO,
        Some(d) => {
            api.event_ttl = humantime::parse_duration(d)
                .with_context(|| format!("--event-ttl {d:?} is not a duration like 1h or 30m"))?;
            if api.event_ttl < Duration::from_secs(1) {
                bail!("--event-ttl must be at least 1s (or 0 to keep Events)");
            }
        }
    }
    if let Some(r) = args.service_cluster_ip_range.or(file.service_cluster_ip_range) {
        api.service_cidr = parse_cidr(&r).map_err(|e| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?;
    }
    let compaction_retention = match args.compaction_retention.or(file.compaction_retention).as_deref() {
        None => Duration::from_secs(300),
        Some("0") => Duration::ZERO,
        Some(d) => humantime::parse_duration(d)
            .with_context(|| format!("--compaction-retention {d:?} is not a duration like 5m or 1h"))?,
    };
    if !compaction_retention.is_zero() && compaction_retention < Duration::from_secs(1) {
        bail!("--compaction-retention must be at least 1s (or 0 to keep everything)");
    }
    let client_flags = TlsFlags {
        prefix: "",
        cert: args.cert_file.or(file.cert_file),
        key: args.key_file.or(file.key_file),
        ca: args.trusted_ca_file.or(file.trusted_ca_file),
    };
    let client_auth = if args.client_cert_auth || file.client_cert_auth {
        flotilla_tls::ClientAuth::Required
    } else {
        flotilla_tls::ClientAuth::Optional
    };
    let client_tls = client_flags.server(client_auth)?;
    let candidates_tls = match &client_tls {
        Some(_) => {
            Some(client_flags.client("this master's scheduler and controller manager verify its certificate with it")?)
        }
        None => None,
    };
    let peer_flags = TlsFlags {
        prefix: "peer-",
        cert: args.peer_cert_file.or(file.peer_cert_file),
        key: args.peer_key_file.or(file.peer_key_file),
        ca: args.peer_trusted_ca_file.or(file.peer_trusted_ca_file),
    };
    let peer_tls = match peer_flags.server(flotilla_tls::ClientAuth::Required)? {
        Some(server) => {
            Some(flotilla_store::config::PeerTls { server, client: peer_flags.client("peers are verified both ways")? })
        }
        None => None,
    };
    // Peer TLS always verifies both ways; the flag only says so, and without peer TLS it
    // would promise what nothing does.
    if (args.peer_client_cert_auth || file.peer_client_cert_auth) && peer_tls.is_none() {
        bail!("--peer-client-cert-auth needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file");
    }
    for (flag, u, tls) in [
        ("listen-client", &listen_client, client_tls.is_some()),
        ("advertise-client", &advertise_client, client_tls.is_some()),
        ("listen-peer", &listen_peer, peer_tls.is_some()),
        ("advertise-peer", &advertise_peer, peer_tls.is_some()),
    ] {
        match (u.is_tls(), tls) {
            (true, false) => bail!(
                "--{flag} {u} is https: give the certificates ({})",
                if flag.ends_with("peer") {
                    "--peer-cert-file, --peer-key-file, --peer-trusted-ca-file"
                } else {
                    "--cert-file, --key-file, --trusted-ca-file"
                }
            ),
            (false, true) => bail!("--{flag} {u} is plaintext http but certificates were given for it: use https"),
            _ => {}
        }
    }
    if let Some(m) = initial_cluster.iter().find(|m| m.peer_url.is_tls() != peer_tls.is_some()) {
        bail!(
            "--initial-cluster gives {} the peer URL {}, but this member's peers talk {}",
            m.name,
            m.peer_url,
            if peer_tls.is_some() { "TLS (https)" } else { "plaintext (http)" }
        );
    }
    if listen_metrics.as_ref().is_some_and(Url::is_tls) && client_tls.is_none() {
        bail!("an https --listen-metrics serves the client port's certificate: give --cert-file and --key-file");
    }
    // Authentication: with TLS or a token file the client port asks who is calling; a
    // plaintext port without tokens is the insecure mode (anyone is admin).
    let token_file = args.token_auth_file.or(file.token_auth_file);
    let mut tokens = match &token_file {
        Some(p) => flotilla_store::auth::load_tokens(p)?,
        None => Default::default(),
    };
    let authenticates = client_tls.is_some() || token_file.is_some();
    let audit = match args.audit_log_path.or(file.audit_log_path) {
        Some(p) => {
            let mb = args.audit_log_maxsize.or(file.audit_log_maxsize).unwrap_or(100);
            if mb == 0 {
                bail!("--audit-log-maxsize must be at least 1 (megabytes)");
            }
            let keep = args.audit_log_maxbackup.or(file.audit_log_maxbackup).unwrap_or(5);
            Some(flotilla_store::audit::AuditLog::open(&p, mb << 20, keep)?)
        }
        None => None,
    };
    api.audit = audit.clone();
    api.authorization = match args.authorization_mode.or(file.authorization_mode).as_deref() {
        None if authenticates => flotilla_apiserver::authz::Mode::Rbac,
        None | Some("AlwaysAllow") => flotilla_apiserver::authz::Mode::AlwaysAllow,
        Some("RBAC") if authenticates => flotilla_apiserver::authz::Mode::Rbac,
        Some("RBAC") => bail!(
            "--authorization-mode RBAC needs authentication: serve TLS (--cert-file ...) or give --token-auth-file"
        ),
        Some(other) => bail!("--authorization-mode must be RBAC or AlwaysAllow, not {other:?}"),
    };
    let anonymous = args.anonymous_auth || file.anonymous_auth;
    if anonymous && !authenticates {
        bail!("--anonymous-auth needs authentication to be on (TLS or --token-auth-file); a plaintext port lets everyone in anyway");
    }
    let candidates_token = authenticates.then(|| {
        use rand::Rng;
        let t: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(40).map(char::from).collect();
        tokens.insert(
            t.clone(),
            flotilla_store::auth::User::new(
                format!("{}{name}", flotilla_store::auth::MASTER_USER_PREFIX),
                vec![flotilla_store::auth::MASTERS.into()],
            ),
        );
        t
    });
    let client_gate = Arc::new(if authenticates {
        flotilla_store::auth::Gate::Client(flotilla_store::auth::AuthConfig { tokens, anonymous, audit })
    } else {
        tracing::warn!("the client port is plaintext without tokens: whoever reaches it is cluster admin");
        flotilla_store::auth::Gate::Open
    });
    let node = NodeConfig {
        name,
        data_dir,
        listen_client,
        advertise_client,
        listen_peer,
        advertise_peer,
        listen_metrics,
        initial_cluster,
        initial_cluster_state,
        initial_cluster_token: args
            .initial_cluster_token
            .or(file.initial_cluster_token)
            .unwrap_or_else(|| "flotilla-cluster".into()),
        heartbeat_interval: Duration::from_millis(heartbeat),
        election_timeout: Duration::from_millis(election),
        replication_timeout: Duration::from_millis(replication_timeout),
        snapshot_count,
        request_timeout: Duration::from_millis(args.request_timeout.or(file.request_timeout).unwrap_or(5000)),
        compaction_retention,
        client_tls,
        peer_tls,
        client_gate,
    };
    let scheduler = if args.disable_scheduler || file.disable_scheduler {
        None
    } else {
        Some(args.scheduler.config(&format!("{}/{}", node.name, flotilla_client::elector::unique_identity()))?)
    };
    let controller_manager = if args.disable_controller_manager || file.disable_controller_manager {
        None
    } else {
        let mut flags = args.controller_manager;
        if let (true, Some(c)) = (flags.controllers.is_empty() || flags.controllers == "*", file.controllers) {
            flags.controllers = c;
        }
        flags.cluster_cidr = flags.cluster_cidr.or(file.cluster_cidr);
        flags.node_cidr_mask_size = flags.node_cidr_mask_size.or(file.node_cidr_mask_size);
        flags.load_balancer_pool = flags.load_balancer_pool.or(file.load_balancer_pool);
        flags.node_monitor_grace_period = flags.node_monitor_grace_period.or(file.node_monitor_grace_period);
        Some(flags.config(&format!("{}/{}", node.name, flotilla_client::elector::unique_identity()))?)
    };
    api.kubelet_tls = candidates_tls.clone();
    Ok(MasterConfig { node, api, scheduler, controller_manager, candidates_tls, candidates_token })
}

/// An elected component a master runs beside its store: a scheduler or a controller
/// manager candidate, talking to this master's own apiserver.
struct Candidate {
    /// For logs.
    what: &'static str,
    /// Its lock (namespace, name).
    lock: (&'static str, &'static str),
    /// Its identity in the lock.
    identity: String,
    /// The user it acts as.
    user: &'static str,
    /// Its `/metrics` text, added to the master's.
    render: Box<dyn Fn() -> String + Send + Sync>,
    /// Runs it until the future given completes; whether it held the lock and released it.
    run: RunFn,
}

type Client = flotilla_client::Client;
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
/// Runs a candidate through a client until the future given completes.
type RunFn = Box<dyn FnOnce(Client, BoxFuture<'static, ()>) -> BoxFuture<'static, anyhow::Result<bool>> + Send>;

fn candidates(
    scheduler: Option<flotilla_scheduler::SchedulerConfig>,
    manager: Option<flotilla_controllers::ManagerConfig>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(cfg) = scheduler {
        let metrics = Arc::new(flotilla_scheduler::SchedulerMetrics::new());
        let m = metrics.clone();
        out.push(Candidate {
            what: "scheduler",
            lock: flotilla_scheduler::LOCK,
            user: flotilla_apiserver::authz::SCHEDULER,
            identity: cfg.elector.identity.clone(),
            render: Box::new(move || m.render()),
            run: Box::new(move |client, stop| {
                Box::pin(async move { Ok(flotilla_scheduler::run(client, cfg, metrics, stop).await?) })
            }),
        });
    }
    if let Some(cfg) = manager {
        let metrics = Arc::new(flotilla_controllers::ControllerMetrics::new());
        let m = metrics.clone();
        out.push(Candidate {
            what: "controller manager",
            lock: flotilla_controllers::LOCK,
            user: flotilla_apiserver::authz::CONTROLLER_MANAGER,
            identity: cfg.elector.identity.clone(),
            render: Box::new(move || m.render()),
            run: Box::new(move |client, stop| {
                Box::pin(async move { Ok(flotilla_controllers::run(client, cfg, metrics, stop).await?) })
            }),
        });
    }
    out
}

/// Runs a master until SIGINT or SIGTERM. On a graceful stop the scheduler and
/// controller-manager candidates release their locks first (successors take over at
/// once), then the store stops.
pub fn run(args: MasterArgs) -> anyhow::Result<()> {
    let cfg = config(args)?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let (stop_candidates, candidates_stopped) = tokio::sync::watch::channel(false);
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let running = tasks.clone();
        let shutdown = async move {
            crate::scheduler::signalled().await;
            let _ = stop_candidates.send(true);
            let handles = std::mem::take(&mut *running.lock().unwrap_or_else(|p| p.into_inner()));
            let all = futures::future::join_all(handles);
            if tokio::time::timeout(Duration::from_secs(3), all).await.is_err() {
                tracing::warn!("the scheduler and controller manager did not stop within 3 s");
            }
        };
        let api = cfg.api;
        let candidates = candidates(cfg.scheduler, cfg.controller_manager);
        let own = cfg.node.advertise_client.to_string();
        let tls = cfg.candidates_tls;
        let token = cfg.candidates_token;
        flotilla_store::server::run(
            cfg.node,
            move |node, routes| {
                for c in candidates {
                    node.metrics.add_renderer(c.render);
                    let mut stopped = candidates_stopped.clone();
                    let own = own.clone();
                    // With authentication, the candidate acts as its component's user (its
                    // role, and its fence required), through this master's own token.
                    let opts = flotilla_client::Options {
                        tls: tls.clone(),
                        token: token.clone(),
                        impersonate: token.as_ref().map(|_| c.user.to_string()),
                        ..Default::default()
                    };
                    let handle = tokio::spawn(async move {
                        let stop = Box::pin(async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        });
                        let client = match flotilla_client::Client::with_options(&[own], opts) {
                            Ok(c) => c,
                            Err(e) => return tracing::error!(error = %e, "cannot start the {} candidate", c.what),
                        };
                        match (c.run)(client.clone(), stop).await {
                            // Keep this master's store up until a successor holds the lock,
                            // so that it takes over through it rather than after a store
                            // election (this master may lead Raft too).
                            Ok(true) => wait_for_successor(&client, c.lock, &c.identity).await,
                            Ok(false) => {}
                            Err(e) => tracing::error!(error = %e, "the {} candidate stopped", c.what),
                        }
                    });
                    tasks.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
                }
                routes.add_service(flotilla_apiserver::service(node, api))
            },
            shutdown,
        )
        .await
    })?;
    Ok(())
}

/// After a graceful handover the store keeps serving this long, so that the successor's
/// first writes land through this master before its store member stops (when it leads
/// Raft, its stop costs the cluster an election).
const HANDOVER_DRAIN: Duration = Duration::from_millis(300);

/// Waits (at most a second) until another candidate holds `lock`, then [`HANDOVER_DRAIN`].
async fn wait_for_successor(client: &flotilla_client::Client, lock: (&str, &str), me: &str) {
    use flotilla_proto::api as pb;
    let (ns, name) = lock;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        if let Ok(l) = client.get::<pb::Lease>(ns, name).await {
            let holder = l.spec.map(|s| s.holder_identity).unwrap_or_default();
            if !holder.is_empty() && holder != me {
                tracing::info!(successor = %holder, lock = name, "the lock has a successor");
                tokio::time::sleep(HANDOVER_DRAIN).await;
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
