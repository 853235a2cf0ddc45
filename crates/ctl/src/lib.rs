//! `flotctl` (also `flotilla ctl`): the command line for the resource API and the cluster.
//! It talks to the masters only through [`flotilla_client`] and the etcd v3 API, like any
//! other client. Errors are one line on stderr and a non-zero exit code.

/// `print!` that stops quietly when stdout is closed (`flotctl get pods | head`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if write!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// `println!` that stops quietly when stdout is closed.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

pub mod commands;
pub mod manifest;
pub mod node;
pub mod print;
pub mod rollout;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// What flotctl can fail with; each is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A manifest could not be read or is invalid.
    #[error("{0}")]
    Manifest(String),
    /// Bad command-line usage or configuration.
    #[error("{0}")]
    Usage(String),
    /// The cluster answered with an error, or could not be reached.
    #[error("{0}")]
    Client(#[from] flotilla_client::ClientError),
    /// The etcd-API side of the cluster (members, status).
    #[error("{}", flotilla_client::error::describe(.0))]
    Cluster(#[from] tonic::Status),
    /// Local I/O (reading a manifest, writing a file).
    #[error("{0}")]
    Io(String),
    /// `auth can-i` answered no; why.
    #[error("{0}")]
    Denied(String),
}

/// Global flags and the command.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Masters to talk to (host:port, comma-separated) [env: FLOTILLA_ENDPOINTS; else the
    /// config file; else 127.0.0.1:2379].
    #[arg(long, global = true, value_name = "HOST:PORT,...")]
    pub endpoints: Option<String>,

    /// Config file with `endpoints: [host:port, ...]` [default: ~/.flotilla/config.yaml
    /// when it exists].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Namespace [default: default].
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,

    #[command(flatten)]
    pub credentials: CredentialArgs,

    /// Act as this user (only cluster admins may; Kubernetes' impersonation).
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// How a client proves who it is to the masters: TLS files under the names etcdctl gives
/// them, and a bearer token; for flotctl and every component that talks to the masters.
#[derive(Args, Debug, Default, Clone)]
pub struct CredentialArgs {
    /// CA certificate (PEM) the masters' certificates chain to; given, the masters are
    /// spoken to in TLS (endpoints without a scheme become https://) [env: FLOTILLA_CACERT].
    #[arg(long, global = true, value_name = "FILE", env = "FLOTILLA_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) to identify with; needs --key and --cacert [env: FLOTILLA_CERT].
    #[arg(long, global = true, value_name = "FILE", env = "FLOTILLA_CERT")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert [env: FLOTILLA_KEY].
    #[arg(long, global = true, value_name = "FILE", env = "FLOTILLA_KEY")]
    pub key: Option<PathBuf>,
    /// Bearer token from the masters' --token-auth-file [env: FLOTILLA_TOKEN].
    #[arg(long, global = true, value_name = "TOKEN", env = "FLOTILLA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl CredentialArgs {
    /// The client TLS the files make (None without --cacert); half a set is refused by name.
    pub fn client_tls(
        &self,
    ) -> Result<Option<std::sync::Arc<flotilla_client::pool::ClientTls>>, flotilla_client::ClientError> {
        flotilla_client::tls_from_files(self.cacert.as_deref(), self.cert.as_deref(), self.key.as_deref())
    }

    /// A client of `masters` with these files.
    pub fn client(&self, masters: &[String]) -> Result<flotilla_client::Client, flotilla_client::ClientError> {
        let opts =
            flotilla_client::Options { tls: self.client_tls()?, token: self.token.clone(), ..Default::default() };
        flotilla_client::Client::with_options(masters, opts)
    }
}

/// Output formats of `get`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// More columns.
    Wide,
    /// YAML manifests.
    Yaml,
    /// JSON.
    Json,
    /// kind/name only.
    Name,
}

/// flotctl's commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List objects, or show one (`get pods`, `get pod web-0 -o yaml`, `get deploy -A -w`).
    Get {
        /// Kind: pod(s)/po, deployment(s)/deploy, replicaset(s)/rs, service(s)/svc,
        /// daemonset(s)/ds, job(s), endpoints/ep, node(s)/no, namespace(s)/ns, lease(s),
        /// event(s)/ev.
        kind: String,
        /// Names (all when none).
        names: Vec<String>,
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Label selector (`app=web,tier!=db,env in (a,b)`).
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Field selector (`spec.nodeName=n1,status.phase=Running`).
        #[arg(long)]
        field_selector: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
        /// After listing, keep printing changes.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show one object in detail, with its recent events.
    Describe {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
    },
    /// Create the objects of manifest files (fails on any that exists).
    Create {
        /// YAML or JSON manifests; several documents per file; `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Create or update the objects of manifest files to match them.
    Apply {
        /// YAML or JSON manifests; several documents per file; `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Delete objects by name, by manifest, or by label selector.
    Delete {
        /// Kind (omit with -f).
        kind: Option<String>,
        /// Names.
        names: Vec<String>,
        /// Delete what these manifests describe.
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        /// Delete every object of the kind matching this selector.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Seconds a running pod gets to stop (0: at once).
        #[arg(long)]
        grace_period: Option<i64>,
        /// What happens to what the objects own: background (deleted after them),
        /// foreground (deleted before them) or orphan (kept, without the owner).
        #[arg(long, value_name = "background|foreground|orphan", default_value = "background")]
        cascade: String,
    },
    /// Set or remove labels: `label pod web tier=front old-`.
    Label(MapChanges),
    /// Set or remove annotations: `annotate pod web note=hi old-`.
    Annotate(MapChanges),
    /// Set the replicas of a deployment or replica set.
    Scale {
        /// deployment or replicaset.
        kind: String,
        /// Name.
        name: String,
        /// Desired replicas.
        #[arg(long)]
        replicas: i32,
    },
    /// Deployments' rollouts: status, history, undo, restart, pause, resume.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Change part of an object: `set image deployment/web main=nginx:1.27`.
    #[command(subcommand)]
    Set(rollout::SetCommand),
    /// Print a container's output (`logs web-0`, `logs pod/web-0 -c sidecar -f`).
    Logs {
        /// The pod: NAME or pod/NAME.
        pod: String,
        /// The container [default: the pod's only one].
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Keep printing what it writes until it ends.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<i64>,
        /// The output of its previous instance (before its last restart).
        #[arg(short = 'p', long)]
        previous: bool,
    },
    /// Mark a node unschedulable: nothing new is placed there (what runs stays).
    Cordon {
        /// Node name.
        node: String,
    },
    /// Let the scheduler place pods on a cordoned node again.
    Uncordon {
        /// Node name.
        node: String,
    },
    /// Cordon a node, then delete its pods gracefully and wait until they are gone (their
    /// controllers recreate them elsewhere). Refuses, changing nothing, while pods that
    /// no controller owns are there, unless --force.
    Drain(node::DrainArgs),
    /// The masters: members, status, leader, move-leader, snapshot save.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Questions about access: `auth can-i create pods`, `auth can-i update nodes/status
    /// --as system:node:w1`.
    #[command(subcommand)]
    Auth(AuthCommand),
}

/// `flotctl auth`.
#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Whether you (or the user given with --as) may do VERB on RESOURCE: prints yes or
    /// no (with the reason), and exits 0 for yes, 1 for no.
    CanI {
        /// get, list, watch, create, update, patch, delete.
        verb: String,
        /// A resource as RBAC names it: pods, pods/status, nodes, deployments, ...
        resource: String,
        /// One object's name.
        name: Option<String>,
    },
}

/// Arguments of `label` and `annotate`.
#[derive(Args, Debug)]
pub struct MapChanges {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    pub changes: Vec<String>,
    /// Allow changing an existing value.
    #[arg(long)]
    pub overwrite: bool,
}

/// `flotctl cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// List the members.
    Members,
    /// Status of every endpoint: leader, revision, raft term and index, DB size.
    Status,
    /// Print the leader's name.
    Leader,
    /// Hand leadership to the named member.
    MoveLeader {
        /// Member name.
        name: String,
    },
    /// Save a consistent copy of the cluster's data (from the first endpoint that
    /// answers) to a file, in Flotilla's snapshot format.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `flotctl cluster snapshot ...`
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Write the snapshot to FILE (written to FILE.part, synced, then renamed).
    Save {
        /// Destination file.
        file: PathBuf,
    },
}

/// Runs flotctl; prints errors as one line and returns the exit code.
pub fn run(args: CtlArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(commands::dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
