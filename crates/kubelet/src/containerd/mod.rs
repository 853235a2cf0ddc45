//! The containerd runtime: real containers through containerd 1.6 (its gRPC API over
//! `/run/containerd/containerd.sock`, runc under the `io.containerd.runc.v2` shim), one
//! containerd namespace per worker.
//!
//! * [`images`]: pulls (OCI distribution API) and archive imports into the content store,
//!   unpacked into snapshots;
//! * [`spec`]: the OCI runtime spec of a container.
//!
//! A container is a containerd container (labelled with its pod's uid, its name and its
//! attempt) on an active snapshot of its image, and a task whose stdout and stderr the
//! shim writes to a file under the worker's directory — no pipe the kubelet must drain,
//! so containers run on while the worker is down, and a restarted worker finds them again
//! by listing its namespace. A task is deleted only with its container, so an exit code
//! outlives the process.

pub mod images;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1 as cd;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::v1::Status as TaskStatus;
use flotilla_proto::api as pb;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::network::{CniNetwork, Sandbox};
use crate::runtime::{ContainerInfo, ContainerSpec, PodSandbox, Runtime, State};
use crate::KubeletError;

/// Labels a container carries.
const LABEL_UID: &str = "io.flotilla.pod.uid";
const LABEL_POD: &str = "io.flotilla.pod";
const LABEL_NAME: &str = "io.flotilla.container";
const LABEL_ATTEMPT: &str = "io.flotilla.attempt";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// A containerd error, said with what was being done.
pub(crate) fn cd_err(what: &str, s: tonic::Status) -> KubeletError {
    KubeletError::Runtime(format!("containerd: {what}: {}", s.message()))
}

/// A connection to containerd, in one namespace.
#[derive(Clone)]
pub struct Conn {
    channel: Channel,
    /// The `containerd-namespace` header every request carries.
    namespace: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Conn {
    /// Connects to containerd's socket, for `namespace`.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Conn, KubeletError> {
        let channel = containerd_client::connect(socket).await.map_err(|e| {
            KubeletError::Runtime(format!(
                "cannot reach containerd at {}: {e} (is containerd running? scripts/containerd starts one)",
                socket.display()
            ))
        })?;
        let namespace = namespace.parse().map_err(|_| {
            KubeletError::Runtime(format!("containerd namespace {namespace:?}: not a valid header value (ASCII only)"))
        })?;
        Ok(Conn { channel, namespace })
    }

    /// A request in this connection's namespace.
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert("containerd-namespace", self.namespace.clone());
        r.set_timeout(Duration::from_secs(60));
        r
    }

    /// A request in this namespace that holds what it makes under `lease`.
    fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    /// A lease (expiring in an hour, should the worker die holding it) that keeps
    /// half-written content and snapshots from containerd's garbage collector.
    async fn lease(&self) -> Result<String, KubeletError> {
        let expire = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600)).to_string();
        let id = format!(
            "flotilla-{}",
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos()
        );
        let req = cd::CreateRequest {
            id: id.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
        };
        cd::leases_client::LeasesClient::new(self.channel.clone())
            .create(self.req(req))
            .await
            .map_err(|s| cd_err("creating a lease", s))?;
        Ok(id)
    }

    async fn drop_lease(&self, id: &str) {
        let req = cd::DeleteRequest { id: id.into(), sync: false };
        if let Err(s) = cd::leases_client::LeasesClient::new(self.channel.clone()).delete(self.req(req)).await {
            tracing::debug!(lease = id, error = %s.message(), "cannot drop a lease (it expires by itself)");
        }
    }
}

/// How the containerd runtime is set up.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// containerd's socket.
    pub socket: PathBuf,
    /// The containerd namespace (one per worker).
    pub namespace: String,
    /// The worker's directory (container logs under `logs/`).
    pub dir: PathBuf,
    /// Image archives to import (`--image-dir`).
    pub image_dir: Option<PathBuf>,
    /// Registry settings (`--registry-config`).
    pub registries: images::Registries,
    /// The snapshotter.
    pub snapshotter: String,
    /// The cgroup (v1 path) containers go under.
    pub cgroup_parent: String,
    /// The CNI plugins' directory; none runs every pod on the host's network.
    pub cni_bin_dir: Option<PathBuf>,
    /// The bridge pods are attached to.
    pub bridge: String,
    /// When unused images are removed.
    pub image_gc: ImageGc,
}

/// The image garbage collector's settings.
#[derive(Debug, Clone)]
pub struct ImageGc {
    /// Collect while the disk is fuller than this (percent; 0: always, every unused image).
    pub high: u8,
    /// Down to this (percent).
    pub low: u8,
    /// How often to look (also the youngest an image removed may be, at most 2 min).
    pub period: Duration,
}

impl Default for ImageGc {
    fn default() -> ImageGc {
        ImageGc { high: 85, low: 80, period: Duration::from_secs(300) }
    }
}

/// Containers on containerd.
pub struct ContainerdRuntime {
    conn: Conn,
    cfg: ContainerdConfig,
    images: images::Images,
    version: String,
    logs: PathBuf,
    network: Option<CniNetwork>,
    /// Pods' sandboxes by uid, as recorded under `sandboxes/`.
    sandboxes: Mutex<HashMap<String, Sandbox>>,
    sandbox_dir: PathBuf,
}

pub(crate) fn ts(t: &Option<prost_types::Timestamp>) -> SystemTime {
    t.as_ref()
        .and_then(|t| {
            let secs = u64::try_from(t.seconds).ok()?;
            Some(SystemTime::UNIX_EPOCH + Duration::new(secs, u32::try_from(t.nanos).unwrap_or(0)))
        })
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// containerd's ids are at most 76 characters of `[A-Za-z0-9_.-]`: a digest of what the
/// container is, so a start that is tried again finds its earlier half.
fn container_id(c: &ContainerSpec) -> String {
    let h = Sha256::digest(format!("{}/{}/{}", c.pod_uid, c.container.name, c.attempt).as_bytes());
    format!("{:x}", h)[..32].to_string()
}

impl ContainerdRuntime {
    /// Connects to containerd and makes the worker's directories.
    pub async fn connect(cfg: ContainerdConfig) -> Result<ContainerdRuntime, KubeletError> {
        let conn = Conn::connect(&cfg.socket, &cfg.namespace).await?;
        let v = cd::version_client::VersionClient::new(conn.channel.clone())
            .version(Request::new(()))
            .await
            .map_err(|s| {
                KubeletError::Runtime(format!(
                    "containerd at {} does not answer: {} (is it running?)",
                    cfg.socket.display(),
                    s.message()
                ))
            })?
            .into_inner();
        let logs = cfg.dir.join("logs");
        let scratch = cfg.dir.join("images");
        let sandbox_dir = cfg.dir.join("sandboxes");
        for d in [&logs, &scratch, &sandbox_dir] {
            std::fs::create_dir_all(d).map_err(|e| KubeletError::io(d, e))?;
        }
        let network = match &cfg.cni_bin_dir {
            Some(bin) => Some(CniNetwork::new(bin, &cfg.dir.join("cni"), &cfg.bridge)?),
            None => None,
        };
        // The sandboxes this worker made before it was restarted.
        let mut sandboxes = HashMap::new();
        for e in std::fs::read_dir(&sandbox_dir).map_err(|e| KubeletError::io(&sandbox_dir, e))?.flatten() {
            match std::fs::read(e.path()).map(|b| serde_json::from_slice::<Sandbox>(&b)) {
                Ok(Ok(sb)) => {
                    sandboxes.insert(sb.uid.clone(), sb);
                }
                _ => tracing::warn!(file = %e.path().display(), "unreadable sandbox record; ignored"),
            }
        }
        let images =
            images::Images::new(conn.clone(), &cfg.snapshotter, cfg.image_dir.clone(), scratch, cfg.registries.clone());
        if cfg.image_dir.is_some() {
            images.import_dir().await?;
        }
        Ok(ContainerdRuntime {
            conn,
            images,
            version: format!("containerd://{}", v.version),
            logs,
            network,
            sandboxes: Mutex::new(sandboxes),
            sandbox_dir,
            cfg,
        })
    }

    /// The image store (for imports by tests and tools).
    pub fn images(&self) -> &images::Images {
        &self.images
    }

    /// One round of image garbage collection: unused images (no container of this
    /// worker's refers to them) removed as [`ImageGc`] says; the names removed.
    pub async fn collect_images(&self) -> Result<Vec<String>, KubeletError> {
        let containers = cd::containers_client::ContainersClient::new(self.conn.channel.clone())
            .list(self.conn.req(cd::ListContainersRequest { filters: vec![] }))
            .await
            .map_err(|s| cd_err("listing containers", s))?
            .into_inner()
            .containers;
        let used = containers.into_iter().map(|c| c.image).collect();
        let gc = &self.cfg.image_gc;
        let min_age = gc.period.min(Duration::from_secs(120));
        self.images.collect(&used, &self.cfg.dir, gc.high, gc.low, min_age).await
    }

    /// A pod's own directory (its emptyDir volumes).
    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.dir.join("pods").join(uid)
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.logs.join(format!("{id}.log"))
    }

    fn snapshotter(&self) -> String {
        self.cfg.snapshotter.clone()
    }

    async fn container(&self, id: &str) -> Result<Option<cd::Container>, KubeletError> {
        match cd::containers_client::ContainersClient::new(self.conn.channel.clone())
            .get(self.conn.req(cd::GetContainerRequest { id: id.into() }))
            .await
        {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(cd_err("getting a container", s)),
        }
    }

    async fn task(&self, id: &str) -> Result<Option<containerd_client::types::v1::Process>, KubeletError> {
        match cd::tasks_client::TasksClient::new(self.conn.channel.clone())
            .get(self.conn.req(cd::GetRequest { container_id: id.into(), exec_id: String::new() }))
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(cd_err("getting a task", s)),
        }
    }

    /// Whether the container's cgroup saw the OOM killer (cgroup v1 `memory.oom_control`
    /// or v2 `memory.events`); read before the task is deleted, while the cgroup exists.
    fn oom_killed(&self, id: &str) -> bool {
        let rel = format!("{}/{}", self.cfg.cgroup_parent.trim_matches('/'), id);
        let v1 = Path::new("/sys/fs/cgroup/memory").join(&rel).join("memory.oom_control");
        let v2 = Path::new("/sys/fs/cgroup").join(&rel).join("memory.events");
        [v1, v2].iter().filter_map(|p| std::fs::read_to_string(p).ok()).any(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
    }

    fn info(&self, c: &cd::Container, task: Option<&containerd_client::types::v1::Process>) -> Option<ContainerInfo> {
        let uid = c.labels.get(LABEL_UID)?.clone();
        let name = c.labels.get(LABEL_NAME)?.clone();
        let attempt = c.labels.get(LABEL_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0);
        let started_at = ts(&c.created_at);
        let status = task.map(|t| TaskStatus::try_from(t.status).unwrap_or(TaskStatus::Unknown));
        let state = match (status, task) {
            (Some(TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing), _) => State::Running { started_at },
            (Some(TaskStatus::Stopped), Some(t)) => {
                let code = i32::try_from(t.exit_status).unwrap_or(255);
                State::Exited {
                    code,
                    signal: (code > 128).then_some(code - 128),
                    started_at,
                    finished_at: ts(&t.exited_at).max(started_at),
                    oom_killed: self.oom_killed(&c.id),
                }
            }
            // No task (the machine restarted, or the worker stopped between creating the
            // container and starting it): it does not run, and is started again.
            _ => State::Exited {
                code: 255,
                signal: None,
                started_at,
                finished_at: ts(&c.updated_at).max(started_at),
                oom_killed: false,
            },
        };
        Some(ContainerInfo { id: c.id.clone(), pod_uid: uid, name, attempt, state, log: self.log_path(&c.id) })
    }

    /// Removes whatever is left of container `id` (task, container, snapshot).
    async fn remove_all(&self, id: &str) -> Result<(), KubeletError> {
        let mut tasks = cd::tasks_client::TasksClient::new(self.conn.channel.clone());
        match tasks.delete(self.conn.req(cd::DeleteTaskRequest { container_id: id.into() })).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(cd_err("deleting a task", s)),
        }
        match cd::containers_client::ContainersClient::new(self.conn.channel.clone())
            .delete(self.conn.req(cd::DeleteContainerRequest { id: id.into() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(cd_err("deleting a container", s)),
        }
        let rm = snap::RemoveSnapshotRequest { snapshotter: self.snapshotter(), key: id.into() };
        match snap::snapshots_client::SnapshotsClient::new(self.conn.channel.clone()).remove(self.conn.req(rm)).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(cd_err("removing a snapshot", s)),
        }
        Ok(())
    }

    /// Signals a container's main process (`all`: every process in it), or an exec.
    async fn kill(&self, id: &str, signal: u32, exec_id: &str, all: bool) -> Result<(), KubeletError> {
        let req = cd::KillRequest { container_id: id.into(), exec_id: exec_id.into(), signal, all };
        match cd::tasks_client::TasksClient::new(self.conn.channel.clone()).kill(self.conn.req(req)).await {
            Ok(_) => Ok(()),
            // Gone already, or not running: nothing to signal.
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(cd_err("signalling a task", s)),
        }
    }

    /// Waits (at most `limit`) for a process of `id` to end; its exit status, if it did.
    async fn wait(&self, id: &str, exec_id: &str, limit: Duration) -> Result<Option<u32>, KubeletError> {
        let mut req = self.conn.req(cd::WaitRequest { container_id: id.into(), exec_id: exec_id.into() });
        req.set_timeout(limit.max(Duration::from_millis(10)) + Duration::from_secs(5));
        let mut tasks = cd::tasks_client::TasksClient::new(self.conn.channel.clone());
        match tokio::time::timeout(limit, tasks.wait(req)).await {
            Err(_) => Ok(None),
            Ok(Ok(r)) => Ok(Some(r.into_inner().exit_status)),
            Ok(Err(s)) if s.code() == Code::NotFound => Ok(Some(255)),
            Ok(Err(s)) => Err(cd_err("waiting for a task", s)),
        }
    }
}

impl Runtime for ContainerdRuntime {
    fn version(&self) -> String {
        self.version.clone()
    }

    fn check(&self, spec: &pb::PodSpec) -> Result<(), String> {
        for (i, c) in spec.init_containers.iter().chain(&spec.containers).enumerate() {
            let kind = if i < spec.init_containers.len() { "initContainers" } else { "containers" };
            let j = if i < spec.init_containers.len() { i } else { i - spec.init_containers.len() };
            let f = format!("spec.{kind}[{j}]");
            if c.image.is_empty() {
                return Err(format!("{f}.image: required"));
            }
            images::normalize(&c.image).map_err(|e| format!("{f}.image: {}", e.message()))?;
            if c.ports.iter().any(|p| p.host_port != 0) && (self.network.is_none() || spec.host_network) {
                return Err(format!(
                    "{f}.ports: hostPort needs the pod network (a pod on the host network has its ports already)"
                ));
            }
            let dummy = spec::Placement { pod_security: spec.security_context, ..Default::default() };
            // Limits and paths checked now, with an image that runs anything.
            // (its user is not root: whether the image's is, is known only at start)
            let anything =
                spec::ImageConfig { cmd: Some(vec!["sh".into()]), user: Some("65534".into()), ..Default::default() };
            spec::build(c, &f, &anything, &dummy)?;
        }
        Ok(())
    }

    async fn sandbox(&self, pod: &PodSandbox) -> Result<String, KubeletError> {
        if let Some(sb) = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).get(&pod.uid) {
            return Ok(sb.ip.clone());
        }
        let mut sb = match (&self.network, pod.host_network) {
            (_, true) | (None, _) => Sandbox {
                uid: pod.uid.clone(),
                netns: String::new(),
                ip: pod.node_ip.clone(),
                pod_cidr: String::new(),
                results: vec![],
                ports: vec![],
                volumes: Default::default(),
                tmpfs: vec![],
                resolv_conf: String::new(),
            },
            (Some(net), false) => {
                if pod.pod_cidr.is_empty() {
                    return Err(KubeletError::Runtime(
                        "the node has no podCIDR yet (the controller manager's --cluster-cidr, or the worker's --pod-cidr)"
                            .into(),
                    ));
                }
                net.add(&pod.uid, &pod.pod_cidr, &pod.ports).await?
            }
        };
        let pod_dir = self.pod_dir(&pod.uid);
        let made = crate::volumes::setup(&pod_dir, &pod.volumes).and_then(|made| {
            sb.volumes = made.paths;
            sb.tmpfs = made.tmpfs;
            if let (Some(conf), false) = (&pod.resolv_conf, sb.netns.is_empty()) {
                let path = pod_dir.join("resolv.conf");
                std::fs::create_dir_all(&pod_dir).map_err(|e| KubeletError::io(&pod_dir, e))?;
                std::fs::write(&path, conf).map_err(|e| KubeletError::io(&path, e))?;
                sb.resolv_conf = path.display().to_string();
            }
            let path = self.sandbox_dir.join(format!("{}.json", pod.uid));
            let bytes = serde_json::to_vec(&sb).map_err(|e| KubeletError::Runtime(e.to_string()))?;
            std::fs::write(&path, bytes).map_err(|e| KubeletError::io(&path, e))
        });
        if let Err(e) = made {
            // Undone: the next pass makes it afresh.
            let _ = crate::volumes::teardown(&pod_dir, &sb.tmpfs);
            if let Some(net) = &self.network {
                let _ = net.del(&sb).await;
            }
            return Err(e);
        }
        tracing::info!(pod = %pod.pod, ip = %sb.ip, netns = %sb.netns, "pod sandbox ready");
        let ip = sb.ip.clone();
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).insert(pod.uid.clone(), sb);
        Ok(ip)
    }

    async fn remove_sandbox(&self, uid: &str) -> Result<(), KubeletError> {
        let Some(sb) = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).get(uid).cloned() else {
            return Ok(());
        };
        if let Some(net) = &self.network {
            net.del(&sb).await?;
        }
        crate::volumes::teardown(&self.pod_dir(uid), &sb.tmpfs)?;
        let path = self.sandbox_dir.join(format!("{uid}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KubeletError::io(&path, e)),
        }
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
        Ok(())
    }

    fn sandboxes(&self) -> Vec<String> {
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    fn pod_network(&self) -> bool {
        self.network.is_some()
    }

    async fn pull(&self, c: &pb::Container) -> Result<bool, KubeletError> {
        self.images.ensure(&c.image, &c.image_pull_policy).await.map(|(_, pulled)| pulled).map_err(KubeletError::from)
    }

    async fn start(&self, c: &ContainerSpec) -> Result<String, KubeletError> {
        // Pulled already by `pull` (Always is honoured there, once per start).
        let policy = if c.container.image_pull_policy == "Never" { "Never" } else { "IfNotPresent" };
        let (image, _) = self.images.ensure(&c.container.image, policy).await.map_err(KubeletError::from)?;
        let Some(sb) = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).get(&c.pod_uid).cloned() else {
            return Err(KubeletError::Runtime(format!("pod {} has no sandbox yet", c.pod)));
        };
        let field = format!("container {}", c.container.name);
        let mut mounts = Vec::new();
        for (i, m) in c.container.volume_mounts.iter().enumerate() {
            let source = crate::volumes::source(&sb.volumes, &format!("{field}.volumeMounts[{i}]"), m)?;
            mounts.push((m.mount_path.clone(), source, m.read_only));
        }
        if !sb.resolv_conf.is_empty() && !mounts.iter().any(|(dest, _, _)| dest == "/etc/resolv.conf") {
            mounts.push(("/etc/resolv.conf".into(), sb.resolv_conf.clone(), true));
        }
        let id = container_id(c);
        // A start tried before and cut short left something: start clean.
        if self.container(&id).await?.is_some() {
            self.kill(&id, 9, "", true).await?;
            let _ = self.wait(&id, "", Duration::from_secs(5)).await?;
            self.remove_all(&id).await?;
        }
        let placement = spec::Placement {
            id: id.clone(),
            cgroup_parent: self.cfg.cgroup_parent.clone(),
            netns: sb.netns_path(),
            hostname: c.pod.rsplit('/').next().unwrap_or_default().to_string(),
            mounts,
            pod_security: c.pod_security,
        };
        let oci = spec::build(&c.container, &field, &image.config, &placement).map_err(KubeletError::Unsupported)?;
        let spec_json = serde_json::to_vec(&oci).map_err(|e| KubeletError::Runtime(e.to_string()))?;
        let mut snaps = snap::snapshots_client::SnapshotsClient::new(self.conn.channel.clone());
        let prep = snap::PrepareSnapshotRequest {
            snapshotter: self.snapshotter(),
            key: id.clone(),
            parent: image.chain_id.clone(),
            labels: HashMap::new(),
        };
        let mounts = snaps
            .prepare(self.conn.req(prep))
            .await
            .map_err(|s| cd_err("preparing the root filesystem", s))?
            .into_inner()
            .mounts;
        let container = cd::Container {
            id: id.clone(),
            labels: HashMap::from([
                (LABEL_UID.to_string(), c.pod_uid.clone()),
                (LABEL_POD.to_string(), c.pod.clone()),
                (LABEL_NAME.to_string(), c.container.name.clone()),
                (LABEL_ATTEMPT.to_string(), c.attempt.to_string()),
            ]),
            image: image.name.clone(),
            runtime: Some(cd::container::Runtime { name: "io.containerd.runc.v2".into(), options: None }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE.into(), value: spec_json }),
            snapshotter: self.snapshotter(),
            snapshot_key: id.clone(),
            ..Default::default()
        };
        let created = cd::containers_client::ContainersClient::new(self.conn.channel.clone())
            .create(self.conn.req(cd::CreateContainerRequest { container: Some(container) }))
            .await;
        if let Err(s) = created {
            let _ = self.remove_all(&id).await;
            return Err(cd_err("creating the container", s));
        }
        let log = self.log_path(&id);
        std::fs::write(&log, b"").map_err(|e| KubeletError::io(&log, e))?;
        let uri = format!("file://{}", log.display());
        let task = cd::CreateTaskRequest {
            container_id: id.clone(),
            rootfs: mounts,
            stdout: uri.clone(),
            stderr: uri,
            ..Default::default()
        };
        let mut tasks = cd::tasks_client::TasksClient::new(self.conn.channel.clone());
        let started = match tasks.create(self.conn.req(task)).await {
            Ok(_) => tasks
                .start(self.conn.req(cd::StartRequest { container_id: id.clone(), exec_id: String::new() }))
                .await
                .map_err(|s| cd_err("starting the task", s)),
            Err(s) => Err(cd_err("creating the task", s)),
        };
        if let Err(e) = started {
            // Its record stays (as an exit) only if the task exists; otherwise clean up.
            if self.task(&id).await?.is_none() {
                let _ = self.remove_all(&id).await;
            }
            return Err(e);
        }
        Ok(id)
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, KubeletError> {
        let containers = cd::containers_client::ContainersClient::new(self.conn.channel.clone())
            .list(self.conn.req(cd::ListContainersRequest { filters: vec![] }))
            .await
            .map_err(|s| cd_err("listing containers", s))?
            .into_inner()
            .containers;
        let tasks = cd::tasks_client::TasksClient::new(self.conn.channel.clone())
            .list(self.conn.req(cd::ListTasksRequest { filter: String::new() }))
            .await
            .map_err(|s| cd_err("listing tasks", s))?
            .into_inner()
            .tasks;
        let by_id: HashMap<&str, &containerd_client::types::v1::Process> =
            // containerd 1.6 names a task by `id` (its container's) and leaves
            // `container_id` empty in lists.
            tasks.iter().map(|t| (if t.container_id.is_empty() { t.id.as_str() } else { t.container_id.as_str() }, t)).collect();
        Ok(containers.iter().filter_map(|c| self.info(c, by_id.get(c.id.as_str()).copied())).collect())
    }

    async fn inspect(&self, id: &str) -> Option<ContainerInfo> {
        let c = self.container(id).await.ok()??;
        let t = self.task(id).await.ok()?;
        self.info(&c, t.as_ref())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), KubeletError> {
        match self.task(id).await? {
            None => return Ok(()),
            Some(t) if t.status == TaskStatus::Stopped as i32 => return Ok(()),
            Some(_) => {}
        }
        // SIGTERM to the main process only, as Kubernetes stops a container; SIGKILL to
        // every process left.
        self.kill(id, 15, "", false).await?;
        if self.wait(id, "", grace).await?.is_some() {
            return Ok(());
        }
        self.kill(id, 9, "", true).await?;
        match self.wait(id, "", Duration::from_secs(10)).await? {
            Some(_) => Ok(()),
            None => Err(KubeletError::Runtime(format!("container {id} did not end after SIGKILL"))),
        }
    }

    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<Option<i32>, KubeletError> {
        let Some(c) = self.container(id).await? else { return Ok(None) };
        let spec: serde_json::Value =
            c.spec.as_ref().and_then(|s| serde_json::from_slice(&s.value).ok()).unwrap_or_default();
        let mut process = spec.get("process").cloned().unwrap_or_else(|| serde_json::json!({}));
        process["args"] = serde_json::json!(command);
        process["terminal"] = serde_json::json!(false);
        let exec_id =
            format!("exec-{}", SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos());
        let any = prost_types::Any {
            type_url: PROCESS_TYPE.into(),
            value: serde_json::to_vec(&process).map_err(|e| KubeletError::Runtime(e.to_string()))?,
        };
        let mut tasks = cd::tasks_client::TasksClient::new(self.conn.channel.clone());
        let req = cd::ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.clone(),
            spec: Some(any),
            ..Default::default()
        };
        if let Err(s) = tasks.exec(self.conn.req(req)).await {
            tracing::debug!(container = id, error = %s.message(), "exec refused");
            return Ok(None);
        }
        let out = match tasks
            .start(self.conn.req(cd::StartRequest { container_id: id.into(), exec_id: exec_id.clone() }))
            .await
        {
            Err(s) => {
                tracing::debug!(container = id, error = %s.message(), "exec did not start");
                None
            }
            Ok(_) => match self.wait(id, &exec_id, timeout).await? {
                Some(code) => Some(i32::try_from(code).unwrap_or(255)),
                None => {
                    self.kill(id, 9, &exec_id, false).await?;
                    let _ = self.wait(id, &exec_id, Duration::from_secs(5)).await?;
                    None
                }
            },
        };
        let del = cd::DeleteProcessRequest { container_id: id.into(), exec_id };
        if let Err(s) = tasks.delete_process(self.conn.req(del)).await {
            tracing::debug!(container = id, error = %s.message(), "cannot delete an exec process");
        }
        Ok(out)
    }

    async fn housekeeping(&self) {
        match self.collect_images().await {
            Ok(gone) if !gone.is_empty() => tracing::info!(images = ?gone, "image garbage collection"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
        }
    }

    fn housekeeping_period(&self) -> Duration {
        self.cfg.image_gc.period
    }

    async fn remove(&self, id: &str) -> Result<(), KubeletError> {
        self.remove_all(id).await?;
        let log = self.log_path(id);
        for old in crate::logs::rotated(&log) {
            let _ = std::fs::remove_file(old);
        }
        match std::fs::remove_file(&log) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KubeletError::io(&log, e)),
        }
    }
}

/// The containerd namespace of worker `name`.
pub fn namespace_for(name: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect();
    format!("flotilla-{clean}")
}
