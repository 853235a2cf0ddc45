//! The `Runtime` trait: what the pod sync loop needs from a container runtime — start a
//! container, list what runs (so a restarted worker re-adopts its containers instead of
//! starting them again), stop one gracefully, remove one. Implemented by
//! [`crate::process::ProcessRuntime`] (host processes) and, next, containerd.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use flotilla_proto::api as pb;

use crate::KubeletError;

/// One container to start: the pod's container, where it belongs, and where its output
/// goes.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The pod's uid.
    pub pod_uid: String,
    /// `namespace/name` of the pod (for messages).
    pub pod: String,
    /// The container, as the pod spec says.
    pub container: pb::Container,
    /// Which start of this container this is (0, then one more per restart).
    pub attempt: u32,
    /// The pod's security context (defaults of the container's).
    pub pod_security: Option<pb::PodSecurityContext>,
}

/// What a pod's sandbox (its network namespace and address) is made from.
#[derive(Debug, Clone, Default)]
pub struct PodSandbox {
    /// The pod's uid.
    pub uid: String,
    /// `namespace/name` of the pod (for messages).
    pub pod: String,
    /// On the node's own network (`spec.hostNetwork`).
    pub host_network: bool,
    /// The node's address (a host-network pod's).
    pub node_ip: String,
    /// The node's pod range (its pods' addresses come from it).
    pub pod_cidr: String,
    /// Host ports to map to the pod.
    pub ports: Vec<crate::network::PortMapping>,
    /// The pod's volumes (made with the sandbox, removed with it).
    pub volumes: Vec<pb::Volume>,
    /// The pod's /etc/resolv.conf (cluster DNS), for a pod on the pod network; None: the
    /// image's own.
    pub resolv_conf: Option<String>,
}

/// What a container is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Running since.
    Running {
        /// When it started.
        started_at: SystemTime,
    },
    /// Ended.
    Exited {
        /// Exit code (128 + signal when a signal ended it).
        code: i32,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// When it started.
        started_at: SystemTime,
        /// When it ended.
        finished_at: SystemTime,
        /// Whether the kernel's OOM killer ended it (its memory limit was exceeded).
        oom_killed: bool,
    },
}

/// A container the runtime knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The runtime's id for it.
    pub id: String,
    /// Its pod's uid.
    pub pod_uid: String,
    /// The container's name in the pod.
    pub name: String,
    /// Which start it is.
    pub attempt: u32,
    /// What it is doing.
    pub state: State,
    /// Its output (stdout and stderr).
    pub log: PathBuf,
}

/// A container runtime.
pub trait Runtime: Send + Sync + 'static {
    /// Its name, with a version where it has one (shown in the Node's info).
    fn version(&self) -> String;

    /// Refuses, with a message naming the field, what this runtime cannot honour in
    /// `spec` (never ignored silently).
    fn check(&self, spec: &pb::PodSpec) -> Result<(), String>;

    /// Sets up the pod's sandbox once (its network namespace and address, kept until
    /// [`Runtime::remove_sandbox`]); the pod's IP.
    fn sandbox(&self, pod: &PodSandbox) -> impl Future<Output = Result<String, KubeletError>> + Send;

    /// Tears down a pod's sandbox, once its containers are gone; nothing if it has none.
    fn remove_sandbox(&self, uid: &str) -> impl Future<Output = Result<(), KubeletError>> + Send;

    /// The pods (uids) that have a sandbox.
    fn sandboxes(&self) -> Vec<String>;

    /// Whether pods get networks of their own (the worker then keeps routes to the other
    /// nodes' pods).
    fn pod_network(&self) -> bool;

    /// Makes the container's image present, as its imagePullPolicy says; whether it had to
    /// be fetched (false: it was there). A runtime without images has nothing to do.
    fn pull(&self, c: &pb::Container) -> impl Future<Output = Result<bool, KubeletError>> + Send;

    /// Starts a container; its id.
    fn start(&self, c: &ContainerSpec) -> impl Future<Output = Result<String, KubeletError>> + Send;

    /// Every container this runtime has, running or exited.
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerInfo>, KubeletError>> + Send;

    /// One container, if the runtime has it.
    fn inspect(&self, id: &str) -> impl Future<Output = Option<ContainerInfo>> + Send;

    /// Stops a container: SIGTERM, then SIGKILL after `grace`; returns once it has ended.
    fn stop(&self, id: &str, grace: Duration) -> impl Future<Output = Result<(), KubeletError>> + Send;

    /// Runs `command` in a running container (its environment and working directory),
    /// killed after `timeout`; its exit code (None when it timed out or could not run).
    fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<i32>, KubeletError>> + Send;

    /// Forgets an ended container (its output with it).
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), KubeletError>> + Send;

    /// Garbage collection of what the runtime keeps besides containers (unused images),
    /// run every [`Runtime::housekeeping_period`].
    fn housekeeping(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// How often [`Runtime::housekeeping`] runs.
    fn housekeeping_period(&self) -> Duration {
        Duration::from_secs(300)
    }
}
