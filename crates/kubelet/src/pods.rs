//! The pod sync loop: the pods bound to this node (a reflector with the field selector
//! `spec.nodeName=<node>`, resuming across masters) against what the runtime runs.
//!
//! Level-triggered, on every change and every second: each container without an instance
//! is started; an ended one is started again as the pod's `restartPolicy` says, after
//! Kubernetes' back-off (at once the first time, then 10 s doubling to 5 min; a container
//! that ran 10 minutes starts the count afresh), waiting meanwhile in `CrashLoopBackOff`;
//! a pod being deleted has its containers stopped (SIGTERM, then SIGKILL after its grace
//! period) and is then deleted for good; containers of pods that no longer exist are
//! stopped and removed. The status — phase, conditions, addresses, container states,
//! restart counts, exit codes — is derived from the runtime's view and written only when
//! it changed. What runs is read back from the runtime, never remembered only in memory,
//! so a restarted worker adopts its containers instead of starting them again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flotilla_client::events::object_ref;
use flotilla_client::reflector::Cache;
use flotilla_client::{Client, DeleteParams, EventRecorder};
use flotilla_proto::api as pb;
use futures::StreamExt;

use crate::prober::{Prober, Results};
use crate::runtime::{ContainerInfo, ContainerSpec, PodSandbox, Runtime, State};
use crate::{KubeletError, WorkerConfig};

/// Pods synced at once.
pub const POD_WORKERS: usize = 8;

/// The longest back-off before restarting a container.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long is restarted at once, as if it had never failed.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// How long to wait before starting attempt `attempt + 1` of a container whose attempt
/// `attempt` (0-based) ran for `ran`.
pub fn backoff(attempt: u32, ran: Duration) -> Duration {
    if attempt == 0 || ran >= BACKOFF_RESET {
        return Duration::ZERO;
    }
    Duration::from_secs(10u64.saturating_mul(1 << (attempt - 1).min(16))).min(MAX_BACKOFF)
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn meta(p: &pb::Pod) -> pb::ObjectMeta {
    p.metadata.clone().unwrap_or_default()
}

/// What to do with one container of a pod.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Nothing: it runs, or it ended for good.
    Nothing,
    /// Start this attempt now.
    Start(u32),
    /// Start again, but not before this long.
    Wait(Duration),
}

fn restarts(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// Decides for one container from its newest instance.
fn next(policy: &str, newest: Option<&ContainerInfo>, now: SystemTime) -> Next {
    match newest.map(|c| (&c.state, c.attempt)) {
        None => Next::Start(0),
        Some((State::Running { .. }, _)) => Next::Nothing,
        Some((State::Exited { code, started_at, finished_at, .. }, attempt)) => {
            if !restarts(policy, *code) {
                return Next::Nothing;
            }
            let ran = finished_at.duration_since(*started_at).unwrap_or_default();
            let wait = backoff(attempt, ran);
            if wait.is_zero() {
                return Next::Start(attempt + 1);
            }
            let due = *finished_at + wait;
            match due.duration_since(now) {
                Ok(left) if !left.is_zero() => Next::Wait(left),
                _ => Next::Start(attempt + 1),
            }
        }
    }
}

/// Where a pod's init containers stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// All ran to success (or the pod has none, or its containers already started).
    Done,
    /// Init container `i` is next, running, or to be started again.
    At(usize),
    /// Init container `i` failed and the pod's restartPolicy is Never.
    Failed(usize),
}

/// The init containers' progress, from their newest instances.
pub fn init_progress(spec: &pb::PodSpec, instances: &BTreeMap<String, Vec<ContainerInfo>>) -> Init {
    if spec.containers.iter().any(|c| instances.get(&c.name).is_some_and(|l| !l.is_empty())) {
        return Init::Done;
    }
    for (i, c) in spec.init_containers.iter().enumerate() {
        match instances.get(&c.name).and_then(|l| l.last()).map(|n| &n.state) {
            Some(State::Exited { code: 0, .. }) => continue,
            Some(State::Exited { .. }) if spec.restart_policy == "Never" => return Init::Failed(i),
            _ => return Init::At(i),
        }
    }
    Init::Done
}

/// The restart policy an init container follows: a failed one runs again unless the pod's
/// is Never; one that succeeded never does.
fn init_policy(pod_policy: &str) -> &'static str {
    if pod_policy == "Never" {
        "Never"
    } else {
        "OnFailure"
    }
}

fn terminated(c: &ContainerInfo) -> Option<pb::ContainerStateTerminated> {
    match &c.state {
        State::Exited { code, signal, started_at, finished_at, oom_killed } => Some(pb::ContainerStateTerminated {
            exit_code: *code,
            signal: signal.unwrap_or(0),
            reason: if *oom_killed {
                "OOMKilled"
            } else if *code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .into(),
            message: String::new(),
            started_at: stamp(*started_at),
            finished_at: stamp(*finished_at),
        }),
        State::Running { .. } => None,
    }
}

/// The status of `pod` given its containers' instances (oldest first, per container);
/// `waiting` says why a container that is not running yet waits (its image, say).
pub fn status(
    pod: &pb::Pod,
    instances: &BTreeMap<String, Vec<ContainerInfo>>,
    probes: &dyn Fn(&str) -> Results,
    waiting_for: &dyn Fn(&str) -> Option<pb::ContainerStateWaiting>,
    addresses: (&str, &str),
    now: SystemTime,
) -> pb::PodStatus {
    let (pod_ip, node_ip) = addresses;
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_str();
    let init = init_progress(&spec, instances);
    let init_statuses = init_statuses(&spec, instances, init, now);
    let waiting_for_init = |c: &pb::Container| pb::ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        state: Some(pb::ContainerState {
            waiting: Some(pb::ContainerStateWaiting { reason: "PodInitializing".into(), message: String::new() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut statuses = Vec::new();
    let (mut running, mut ended_ok, mut ended_bad, mut waiting, mut ready_count) = (0, 0, 0, 0, 0);
    for c in &spec.containers {
        if init != Init::Done {
            statuses.push(waiting_for_init(c));
            continue;
        }
        let list = instances.get(&c.name).map(Vec::as_slice).unwrap_or_default();
        let newest = list.last();
        let previous = list.len().checked_sub(2).and_then(|i| list.get(i));
        let mut cs = pb::ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            restart_count: i32::try_from(newest.map_or(0, |n| n.attempt)).unwrap_or(i32::MAX),
            container_id: newest.map(|n| format!("flotilla://{}", n.id)).unwrap_or_default(),
            ..Default::default()
        };
        let state = match newest {
            None => {
                waiting += 1;
                pb::ContainerState {
                    waiting: Some(waiting_for(&c.name).unwrap_or_else(|| pb::ContainerStateWaiting {
                        reason: "ContainerCreating".into(),
                        message: String::new(),
                    })),
                    ..Default::default()
                }
            }
            Some(n) => match &n.state {
                State::Running { started_at } => {
                    let r = probes(&n.id);
                    running += 1;
                    if r.ready {
                        ready_count += 1;
                    }
                    cs.ready = r.ready;
                    cs.started = r.started;
                    cs.last_state = previous
                        .and_then(terminated)
                        .map(|t| pb::ContainerState { terminated: Some(t), ..Default::default() });
                    pb::ContainerState {
                        running: Some(pb::ContainerStateRunning { started_at: stamp(*started_at) }),
                        ..Default::default()
                    }
                }
                State::Exited { code, .. } if restarts(policy, *code) => {
                    // To be started again: the pod goes on (phase Running), backing off
                    // or about to restart.
                    waiting += 1;
                    cs.last_state =
                        terminated(n).map(|t| pb::ContainerState { terminated: Some(t), ..Default::default() });
                    match next(policy, Some(n), now) {
                        _ if waiting_for(&c.name).is_some() => {
                            pb::ContainerState { waiting: waiting_for(&c.name), ..Default::default() }
                        }
                        Next::Wait(_) => {
                            // The back-off itself, not the time left: the status stays
                            // the same while it waits.
                            let secs = backoff(n.attempt, Duration::ZERO).as_secs();
                            pb::ContainerState {
                                waiting: Some(pb::ContainerStateWaiting {
                                    reason: "CrashLoopBackOff".into(),
                                    message: format!("back-off {secs}s restarting failed container {}", c.name),
                                }),
                                ..Default::default()
                            }
                        }
                        _ => pb::ContainerState { terminated: terminated(n), ..Default::default() },
                    }
                }
                State::Exited { code, .. } => {
                    if *code == 0 {
                        ended_ok += 1;
                    } else {
                        ended_bad += 1;
                    }
                    pb::ContainerState { terminated: terminated(n), ..Default::default() }
                }
            },
        };
        cs.state = Some(state);
        statuses.push(cs);
    }
    let total = spec.containers.len();
    let ever_started = instances.values().any(|v| !v.is_empty());
    let phase = if matches!(init, Init::Failed(_)) {
        "Failed"
    } else if init != Init::Done {
        "Pending"
    } else if total > 0 && ended_ok + ended_bad == total {
        if ended_bad == 0 {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if running > 0 || (ever_started && waiting < total) || (ever_started && policy != "Never") {
        "Running"
    } else {
        "Pending"
    };
    let ready = total > 0 && ready_count == total;
    let condition = |kind: &str, on: bool| {
        let status = if on { "True" } else { "False" };
        let since = old
            .conditions
            .iter()
            .find(|c| c.r#type == kind && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| stamp(now));
        pb::Condition { r#type: kind.into(), status: status.into(), last_transition_time: since, ..Default::default() }
    };
    pb::PodStatus {
        phase: phase.into(),
        conditions: vec![
            condition("PodScheduled", true),
            condition("Initialized", init == Init::Done),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ],
        message: String::new(),
        reason: String::new(),
        host_ip: node_ip.into(),
        pod_ip: if ever_started { pod_ip.into() } else { String::new() },
        start_time: if old.start_time.is_empty() { stamp(now) } else { old.start_time },
        container_statuses: statuses,
        init_container_statuses: init_statuses,
    }
}

/// The statuses of the init containers.
fn init_statuses(
    spec: &pb::PodSpec,
    instances: &BTreeMap<String, Vec<ContainerInfo>>,
    init: Init,
    now: SystemTime,
) -> Vec<pb::ContainerStatus> {
    spec.init_containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let newest = instances.get(&c.name).and_then(|l| l.last());
            let waiting = |reason: &str, message: String| pb::ContainerState {
                waiting: Some(pb::ContainerStateWaiting { reason: reason.into(), message }),
                ..Default::default()
            };
            let state = match (newest, init) {
                // Initialized: each ran to success (its record may be gone).
                (None, Init::Done) => pb::ContainerState {
                    terminated: Some(pb::ContainerStateTerminated { reason: "Completed".into(), ..Default::default() }),
                    ..Default::default()
                },
                (None, _) => waiting("PodInitializing", String::new()),
                (Some(n), _) => match &n.state {
                    State::Running { started_at } => pb::ContainerState {
                        running: Some(pb::ContainerStateRunning { started_at: stamp(*started_at) }),
                        ..Default::default()
                    },
                    State::Exited { .. } => match (init, next(init_policy(&spec.restart_policy), Some(n), now)) {
                        (Init::At(at), Next::Wait(_)) if at == i => waiting(
                            "CrashLoopBackOff",
                            format!(
                                "back-off {}s restarting failed init container {}",
                                backoff(n.attempt, Duration::ZERO).as_secs(),
                                c.name
                            ),
                        ),
                        _ => pb::ContainerState { terminated: terminated(n), ..Default::default() },
                    },
                },
            };
            let done = state.terminated.as_ref().is_some_and(|t| t.exit_code == 0);
            pb::ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                state: Some(state),
                ready: done,
                restart_count: i32::try_from(newest.map_or(0, |n| n.attempt)).unwrap_or(i32::MAX),
                container_id: newest.map(|n| format!("flotilla://{}", n.id)).unwrap_or_default(),
                ..Default::default()
            }
        })
        .collect()
}

/// The sync loop of one worker.
pub struct PodSync<R: Runtime> {
    client: Client,
    runtime: Arc<R>,
    cfg: Arc<WorkerConfig>,
    pods: Cache<pb::Pod>,
    recorder: Arc<EventRecorder>,
    /// Pods (by uid) being stopped in the background.
    stopping: Arc<Mutex<HashSet<String>>>,
    /// Pods (by uid) told that the runtime cannot run them.
    refused: Mutex<HashSet<String>>,
    prober: Prober<R>,
    /// Containers (by id) being killed for failing a probe.
    killing: Arc<Mutex<HashSet<String>>>,
    /// Images that could not be had, by (pod uid, container name).
    pulls: Mutex<HashMap<(String, String), PullBackoff>>,
    /// The node's pod range, as its Node says.
    pod_cidr: Mutex<String>,
    /// Pods (by uid) whose sandbox could not be made, with the last error said.
    sandbox_failed: Mutex<HashMap<String, String>>,
    /// Container instances (ids) whose back-off or failing readiness an Event has said.
    said: Mutex<HashSet<String>>,
}

/// A container whose image could not be had, backing off before the next try.
#[derive(Debug, Clone)]
struct PullBackoff {
    failures: u32,
    at: SystemTime,
    reason: &'static str,
    message: String,
    /// A pass has waited on it since it failed (ErrImagePull, then ImagePullBackOff).
    backing_off: bool,
}

impl PullBackoff {
    fn waiting(&self, image: &str) -> pb::ContainerStateWaiting {
        if self.backing_off {
            pb::ContainerStateWaiting {
                reason: "ImagePullBackOff".into(),
                message: format!("Back-off pulling image {image:?}: {}", self.message),
            }
        } else {
            pb::ContainerStateWaiting { reason: self.reason.into(), message: self.message.clone() }
        }
    }
}

impl<R: Runtime> PodSync<R> {
    /// A sync loop over `pods` (this node's), running them with `runtime`; a change of a
    /// probe's result is said on `probe_changed`.
    pub fn new(
        client: Client,
        runtime: Arc<R>,
        cfg: Arc<WorkerConfig>,
        pods: Cache<pb::Pod>,
        probe_changed: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> PodSync<R> {
        let recorder = Arc::new(EventRecorder::new("kubelet", &cfg.name));
        PodSync {
            client,
            prober: Prober::new(runtime.clone(), probe_changed),
            runtime,
            cfg,
            pods,
            recorder,
            stopping: Arc::default(),
            refused: Mutex::default(),
            killing: Arc::default(),
            pulls: Mutex::default(),
            pod_cidr: Mutex::default(),
            sandbox_failed: Mutex::default(),
            said: Mutex::default(),
        }
    }

    async fn event(&self, pod: &pb::Pod, kind: &str, reason: &str, message: &str) {
        if let Err(e) = self.recorder.record(&self.client, object_ref(pod), kind, reason, message).await {
            tracing::debug!(error = %e, reason, "cannot record an Event");
        }
    }

    /// The node's pod range (from its Node, which the controller manager may give one
    /// after registration).
    pub fn set_pod_cidr(&self, cidr: &str) {
        let mut c = self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner());
        if *c != cidr {
            cidr.clone_into(&mut c);
        }
    }

    /// One pass over every pod and container; how many containers ran at its start.
    pub async fn sync_all(&self) -> Result<usize, KubeletError> {
        let containers = self.runtime.list().await?;
        let running: HashSet<String> =
            containers.iter().filter(|c| matches!(c.state, State::Running { .. })).map(|c| c.id.clone()).collect();
        self.prober.retain(&running);
        {
            let ids: HashSet<String> = containers.iter().map(|c| format!("{}:", c.id)).collect();
            let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
            said.retain(|k| k.split_once(':').is_some_and(|(id, _)| ids.contains(&format!("{id}:"))));
        }
        let mut by_pod: HashMap<String, Vec<ContainerInfo>> = HashMap::new();
        for c in containers {
            by_pod.entry(c.pod_uid.clone()).or_default().push(c);
        }
        let with_containers: HashSet<String> = by_pod.keys().cloned().collect();
        let pods: Vec<pb::Pod> = self.pods.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let known: HashSet<String> = pods.iter().map(|p| meta(p).uid).collect();
        let mut live = Vec::new();
        for pod in pods {
            let uid = meta(&pod).uid;
            let mine = by_pod.remove(&uid).unwrap_or_default();
            if !meta(&pod).deletion_timestamp.is_empty() {
                let grace = meta(&pod)
                    .deletion_grace_period_seconds
                    .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                    .unwrap_or(30);
                self.stop_pod(Some(pod), uid, mine, Duration::from_secs(u64::try_from(grace).unwrap_or(0)));
                continue;
            }
            live.push((pod, mine));
        }
        // Pods are independent: several at once (a pod's network, its containers' starts
        // and its status write each take a round trip or more), as Kubernetes' per-pod
        // workers do.
        futures::stream::iter(live)
            .for_each_concurrent(POD_WORKERS, |(pod, mine)| async move {
                if let Err(e) = self.sync_pod(&pod, mine).await {
                    tracing::debug!(pod = %meta(&pod).name, error = %e, "pod sync failed; trying again");
                }
            })
            .await;
        // Containers of pods that are gone (deleted while this worker was away, or forced).
        for (uid, mine) in by_pod {
            if !known.contains(&uid) {
                self.stop_pod(None, uid, mine, Duration::from_secs(2));
            }
        }
        // Sandboxes of pods that are gone and have no containers left.
        for uid in self.runtime.sandboxes() {
            if !known.contains(&uid) && !with_containers.contains(&uid) {
                self.stop_pod(None, uid, Vec::new(), Duration::ZERO);
            }
        }
        self.sandbox_failed.lock().unwrap_or_else(|p| p.into_inner()).retain(|u, _| known.contains(u));
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).retain(|u| known.contains(u));
        self.pulls.lock().unwrap_or_else(|p| p.into_inner()).retain(|(u, _), _| known.contains(u));
        Ok(running.len())
    }

    /// Stops and removes a pod's containers in the background, then deletes the pod for
    /// good (if it still exists).
    fn stop_pod(&self, pod: Option<pb::Pod>, uid: String, containers: Vec<ContainerInfo>, grace: Duration) {
        if !self.stopping.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.clone()) {
            return;
        }
        let (runtime, client, stopping) = (self.runtime.clone(), self.client.clone(), self.stopping.clone());
        let recorder = self.recorder.clone();
        // preStop hooks by container name; their time counts against the grace period.
        let hooks: HashMap<String, Vec<String>> = pod
            .as_ref()
            .and_then(|p| p.spec.as_ref())
            .map(|s| {
                s.containers
                    .iter()
                    .filter_map(|c| {
                        let e = c.lifecycle.as_ref()?.pre_stop.as_ref()?.exec.as_ref()?;
                        Some((c.name.clone(), e.command.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        tokio::spawn(async move {
            // `stopping` is cleared however this task ends, so a later pass tries again.
            struct Clear(Arc<Mutex<HashSet<String>>>, String);
            impl Drop for Clear {
                fn drop(&mut self) {
                    self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
                }
            }
            let clear = Clear(stopping, uid);
            if let Some(p) = &pod {
                for c in containers.iter().filter(|c| matches!(c.state, State::Running { .. })) {
                    let msg = format!("Stopping container {}", c.name);
                    if let Err(e) = recorder.record(&client, object_ref(p), "Normal", "Killing", &msg).await {
                        tracing::debug!(error = %e, "cannot record an Event");
                    }
                }
            }
            let stops = containers.iter().map(|c| {
                let (runtime, hook) = (runtime.clone(), hooks.get(&c.name).cloned());
                async move {
                    let began = tokio::time::Instant::now();
                    if let (Some(cmd), State::Running { .. }) = (hook, &c.state) {
                        if let Ok(Some(code)) = runtime.exec(&c.id, &cmd, grace).await.map_err(|e| e.to_string()) {
                            tracing::debug!(container = %c.name, code, "preStop hook ran");
                        }
                    }
                    runtime.stop(&c.id, grace.saturating_sub(began.elapsed())).await
                }
            });
            let stopped = futures::future::join_all(stops).await;
            let mut ok = true;
            for (c, r) in containers.iter().zip(&stopped) {
                // A container that did not stop keeps its record (and is stopped again).
                match r {
                    Ok(()) => ok &= runtime.remove(&c.id).await.is_ok(),
                    Err(e) => {
                        tracing::warn!(container = %c.id, error = %e, "a container did not stop");
                        ok = false;
                    }
                }
            }
            let uid = &clear.1;
            if ok {
                if let Err(e) = runtime.remove_sandbox(uid).await {
                    tracing::warn!(pod = %uid, error = %e, "cannot tear down a pod's sandbox; trying again");
                    ok = false;
                }
            }
            if let (true, Some(p)) = (ok, pod) {
                let m = meta(&p);
                let now = DeleteParams { uid: m.uid.clone(), grace_period_seconds: Some(0), ..Default::default() };
                match client.delete::<pb::Pod>(&m.namespace, &m.name, &now).await {
                    Ok(_) => tracing::info!(pod = %m.name, "pod stopped and deleted"),
                    Err(e) if e.is_not_found() || e.code() == Some(tonic::Code::FailedPrecondition) => {}
                    Err(e) => tracing::debug!(pod = %m.name, error = %e, "confirming a pod's deletion failed"),
                }
            }
        });
    }

    /// Whether `what` about container instance `id` is yet to be said (and now is).
    fn say_once(&self, id: &str, what: &str) -> bool {
        self.said.lock().unwrap_or_else(|p| p.into_inner()).insert(format!("{id}:{what}"))
    }

    /// Makes container `c`'s image present unless its pulls are backing off; whether it is.
    async fn image_ready(&self, pod: &pb::Pod, c: &pb::Container, now: SystemTime) -> bool {
        let key = (meta(pod).uid, c.name.clone());
        {
            let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = pulls.get_mut(&key) {
                if now < b.at + backoff(b.failures, Duration::ZERO) {
                    // ErrImagePull stays a while (a pass that follows at once, on the
                    // pod's own status change, leaves it), then ImagePullBackOff.
                    if now >= b.at + self.cfg.resync {
                        b.backing_off = true;
                    }
                    return false;
                }
            }
        }
        let began = std::time::Instant::now();
        match self.runtime.pull(c).await {
            Ok(pulled) => {
                self.pulls.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                if pulled {
                    let took = began.elapsed().as_secs_f64();
                    self.event(
                        pod,
                        "Normal",
                        "Pulled",
                        &format!("Successfully pulled image {:?} in {took:.3}s", c.image),
                    )
                    .await;
                }
                true
            }
            Err(e) => {
                let (reason, message) = match &e {
                    KubeletError::Image { reason, message } => (*reason, message.clone()),
                    other => ("ErrImagePull", other.to_string()),
                };
                let failures = {
                    let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
                    let failures = pulls.get(&key).map_or(0, |b| b.failures) + 1;
                    pulls.insert(
                        key,
                        PullBackoff { failures, at: now, reason, message: message.clone(), backing_off: false },
                    );
                    failures
                };
                self.event(pod, "Warning", "Failed", &format!("Failed to pull image {:?}: {message}", c.image)).await;
                let wait = backoff(failures, Duration::ZERO).as_secs();
                self.event(pod, "Normal", "BackOff", &format!("Back-off {wait}s pulling image {:?}", c.image)).await;
                false
            }
        }
    }

    async fn sync_pod(&self, pod: &pb::Pod, containers: Vec<ContainerInfo>) -> Result<(), KubeletError> {
        let m = meta(pod);
        let spec = pod.spec.clone().unwrap_or_default();
        if let Err(why) = self.runtime.check(&spec).and_then(|()| probes_supported(&spec)) {
            if !self.refused.lock().unwrap_or_else(|p| p.into_inner()).contains(&m.uid) {
                self.event(pod, "Warning", "Unsupported", &why).await;
                let mut p = pod.clone();
                let st = p.status.get_or_insert_with(Default::default);
                st.phase = "Failed".into();
                st.reason = "Unsupported".into();
                st.message = why;
                self.client.update_status(p).await?;
                // Told only once it is written: a failed write is tried again.
                self.refused.lock().unwrap_or_else(|p| p.into_inner()).insert(m.uid.clone());
            }
            return Ok(());
        }
        let mut instances: BTreeMap<String, Vec<ContainerInfo>> = BTreeMap::new();
        for c in containers {
            instances.entry(c.name.clone()).or_default().push(c);
        }
        for list in instances.values_mut() {
            list.sort_by_key(|c| c.attempt);
            // Keep the newest two (the previous one's output is `logs --previous`); an
            // older one still running (its stop failed) is stopped first.
            while list.len() > 2 {
                let old = list.remove(0);
                if matches!(old.state, State::Running { .. }) {
                    self.runtime.stop(&old.id, Duration::from_secs(2)).await?;
                }
                self.runtime.remove(&old.id).await?;
            }
        }
        let now = SystemTime::now();
        let done = matches!(pod.status.as_ref().map(|s| s.phase.as_str()), Some("Succeeded" | "Failed"));
        // Init containers one at a time, each to success; then the containers.
        let (to_start, policy): (Vec<&pb::Container>, &str) = match init_progress(&spec, &instances) {
            _ if done => (vec![], ""),
            Init::Done => (spec.containers.iter().collect(), spec.restart_policy.as_str()),
            Init::At(i) => (vec![&spec.init_containers[i]], init_policy(&spec.restart_policy)),
            Init::Failed(_) => (vec![], ""),
        };
        let pod_ip = if done {
            // Finished: its network goes once nothing runs (its address is free again).
            let all_ended = instances.values().flatten().all(|c| !matches!(c.state, State::Running { .. }));
            if all_ended {
                if let Err(e) = self.runtime.remove_sandbox(&m.uid).await {
                    tracing::debug!(pod = %m.name, error = %e, "cannot tear down a finished pod's sandbox yet");
                }
            }
            pod.status.as_ref().map(|s| s.pod_ip.clone()).unwrap_or_default()
        } else {
            let sandbox = PodSandbox {
                uid: m.uid.clone(),
                pod: format!("{}/{}", m.namespace, m.name),
                host_network: spec.host_network,
                node_ip: self.cfg.node_ip.clone(),
                pod_cidr: self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                ports: crate::network::port_mappings(&spec),
                volumes: spec.volumes.clone(),
                resolv_conf: (!spec.host_network).then(|| self.cfg.resolv_conf(&m.namespace)).flatten(),
            };
            match self.runtime.sandbox(&sandbox).await {
                Ok(ip) => {
                    self.sandbox_failed.lock().unwrap_or_else(|p| p.into_inner()).remove(&m.uid);
                    ip
                }
                Err(e) => {
                    let msg = e.to_string();
                    let said = self
                        .sandbox_failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(m.uid.clone(), msg.clone());
                    if said.as_deref() != Some(msg.as_str()) {
                        self.event(
                            pod,
                            "Warning",
                            "FailedCreatePodSandBox",
                            &format!("Failed to create pod sandbox: {msg}"),
                        )
                        .await;
                    }
                    return Err(e);
                }
            }
        };
        let mut started = Vec::new();
        for c in to_start {
            let newest = instances.get(&c.name).and_then(|l| l.last());
            let decided = next(policy, newest, now);
            if let (Next::Wait(_), Some(n)) = (&decided, newest) {
                if self.say_once(&n.id, "backoff") {
                    let msg = format!("Back-off restarting failed container {}", c.name);
                    self.event(pod, "Warning", "BackOff", &msg).await;
                }
            }
            if let Next::Start(attempt) = decided {
                if !self.image_ready(pod, c, now).await {
                    continue;
                }
                let cs = ContainerSpec {
                    pod_uid: m.uid.clone(),
                    pod: format!("{}/{}", m.namespace, m.name),
                    container: c.clone(),
                    attempt,
                    pod_security: spec.security_context,
                };
                match self.runtime.start(&cs).await {
                    Ok(id) => {
                        started.push(id);
                        let what = if attempt == 0 { "Started" } else { "Restarted" };
                        self.event(pod, "Normal", "Started", &format!("{what} container {}", c.name)).await;
                    }
                    Err(e) => {
                        // Said, and tried again next pass; the other containers go on.
                        self.event(pod, "Warning", "Failed", &format!("Error starting container {}: {e}", c.name))
                            .await;
                        tracing::debug!(pod = %m.name, container = %c.name, error = %e, "start failed");
                    }
                }
            }
        }
        // What was just started, read back (the newest instance of its container).
        for id in started {
            if let Some(info) = self.runtime.inspect(&id).await {
                instances.entry(info.name.clone()).or_default().push(info);
            }
        }
        let grace =
            Duration::from_secs(u64::try_from(spec.termination_grace_period_seconds.unwrap_or(30)).unwrap_or(0));
        for n in instances.values().filter_map(|l| l.last()) {
            if matches!(n.state, State::Running { .. }) {
                match crate::logs::rotate(&n.log, self.cfg.log_max_size, self.cfg.log_max_files) {
                    Ok(true) => tracing::debug!(container = %n.id, "log rotated"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(container = %n.id, error = %e, "cannot rotate a container's log"),
                }
            }
        }
        for c in &spec.containers {
            let Some(n) = instances.get(&c.name).and_then(|l| l.last()) else { continue };
            if !matches!(n.state, State::Running { .. }) {
                continue;
            }
            self.prober.ensure(&n.id, c, &pod_ip);
            match self.prober.results(&n.id).unready {
                Some(why) => {
                    if self.say_once(&n.id, "unready") {
                        self.event(pod, "Warning", "Unhealthy", &why).await;
                    }
                }
                None => {
                    self.said.lock().unwrap_or_else(|p| p.into_inner()).remove(&format!("{}:unready", n.id));
                }
            }
            if let Some(why) = self.prober.results(&n.id).kill {
                if self.killing.lock().unwrap_or_else(|p| p.into_inner()).insert(n.id.clone()) {
                    self.event(pod, "Warning", "Unhealthy", &why).await;
                    self.event(pod, "Normal", "Killing", &format!("Stopping container {}: {why}", c.name)).await;
                    let (runtime, killing, id) = (self.runtime.clone(), self.killing.clone(), n.id.clone());
                    tokio::spawn(async move {
                        if let Err(e) = runtime.stop(&id, grace).await {
                            tracing::warn!(container = %id, error = %e, "killing an unhealthy container failed");
                        }
                        killing.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    });
                }
            }
        }
        let pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let image_of = |name: &str| spec.containers.iter().find(|c| c.name == name).map(|c| c.image.clone());
        let waiting_for = |name: &str| {
            pulls.get(&(m.uid.clone(), name.to_string())).map(|b| b.waiting(&image_of(name).unwrap_or_default()))
        };
        let want =
            status(pod, &instances, &|id| self.prober.results(id), &waiting_for, (&pod_ip, &self.cfg.node_ip), now);
        if pod.status.as_ref() != Some(&want) {
            let mut p = pod.clone();
            p.status = Some(want);
            match self.client.update_status(p).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {} // the next pass sees it
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Refuses probes the kubelet cannot run yet, naming the field.
fn probes_supported(spec: &pb::PodSpec) -> Result<(), String> {
    for (i, c) in spec.containers.iter().enumerate() {
        for (name, p) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if p.as_ref().and_then(|p| p.http_get.as_ref()).is_some_and(|h| h.scheme == "HTTPS") {
                return Err(format!("spec.containers[{i}].{name}.httpGet.scheme: HTTPS probes are not supported yet"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed "now" for the tests.
    fn base() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn exited(attempt: u32, code: i32, ran: u64, ago: u64) -> ContainerInfo {
        let finished_at = base() - Duration::from_secs(ago);
        ContainerInfo {
            id: format!("c-{attempt}"),
            pod_uid: "u".into(),
            name: "main".into(),
            attempt,
            state: State::Exited {
                code,
                signal: None,
                started_at: finished_at - Duration::from_secs(ran),
                finished_at,
                oom_killed: false,
            },
            log: "/dev/null".into(),
        }
    }

    #[test]
    fn restarts_follow_the_policy_and_back_off_as_kubernetes_does() {
        let now = base();
        assert_eq!(next("Always", None, now), Next::Start(0));
        assert_eq!(next("Always", Some(&exited(0, 1, 1, 0)), now), Next::Start(1), "the first restart at once");
        assert!(matches!(next("Always", Some(&exited(1, 1, 1, 0)), now), Next::Wait(d) if d > Duration::from_secs(9)));
        assert_eq!(next("Always", Some(&exited(1, 1, 1, 11)), now), Next::Start(2), "10 s later");
        assert!(matches!(next("Always", Some(&exited(3, 1, 1, 30)), now), Next::Wait(_)), "40 s after the fourth");
        assert_eq!(next("Always", Some(&exited(5, 1, 700, 0)), now), Next::Start(6), "ran 10 min: at once");
        assert_eq!(next("OnFailure", Some(&exited(0, 0, 1, 0)), now), Next::Nothing);
        assert_eq!(next("OnFailure", Some(&exited(0, 2, 1, 0)), now), Next::Start(1));
        assert_eq!(next("Never", Some(&exited(0, 2, 1, 0)), now), Next::Nothing);
        assert_eq!(backoff(9, Duration::ZERO), MAX_BACKOFF);
    }

    #[test]
    fn init_containers_run_in_order_to_success_before_the_containers() {
        let c = |name: &str| pb::Container { name: name.into(), ..Default::default() };
        let mut spec = pb::PodSpec {
            restart_policy: "Always".into(),
            init_containers: vec![c("first"), c("second")],
            containers: vec![c("main")],
            ..Default::default()
        };
        let named = |name: &str, mut i: ContainerInfo| {
            i.name = name.into();
            i
        };
        let mut inst: BTreeMap<String, Vec<ContainerInfo>> = BTreeMap::new();
        assert_eq!(init_progress(&spec, &inst), Init::At(0));
        inst.insert("first".into(), vec![named("first", exited(0, 0, 1, 0))]);
        assert_eq!(init_progress(&spec, &inst), Init::At(1));
        inst.insert("second".into(), vec![named("second", exited(0, 1, 1, 0))]);
        assert_eq!(init_progress(&spec, &inst), Init::At(1), "a failed one runs again");
        spec.restart_policy = "Never".into();
        assert_eq!(init_progress(&spec, &inst), Init::Failed(1), "unless the pod never restarts");
        let pod = pb::Pod { spec: Some(spec.clone()), ..Default::default() };
        let st = status(&pod, &inst, &|_| Results::default(), &|_| None, ("ip", "ip"), base());
        assert_eq!(st.phase, "Failed");
        assert!(st.conditions.iter().any(|c| c.r#type == "Initialized" && c.status == "False"));
        assert_eq!(st.init_container_statuses.len(), 2);
        let main = st.container_statuses[0].state.clone().and_then(|s| s.waiting).expect("waiting");
        assert_eq!(main.reason, "PodInitializing");
        inst.insert("second".into(), vec![named("second", exited(1, 0, 1, 0))]);
        assert_eq!(init_progress(&spec, &inst), Init::Done);
        // Once the containers have started, a lost init record does not hold them back.
        inst.clear();
        inst.insert("main".into(), vec![named("main", exited(0, 0, 1, 0))]);
        assert_eq!(init_progress(&spec, &inst), Init::Done);
    }

    #[test]
    fn the_phase_follows_the_containers() {
        let pod = |policy: &str| pb::Pod {
            spec: Some(pb::PodSpec {
                restart_policy: policy.into(),
                containers: vec![pb::Container { name: "main".into(), ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let one = |c: ContainerInfo| BTreeMap::from([("main".to_string(), vec![c])]);
        let ready = |_: &str| Results { started: true, ready: true, kill: None, unready: None };
        let now = base();
        let st = status(&pod("Always"), &BTreeMap::new(), &ready, &|_| None, ("10.0.0.2", "10.0.0.2"), now);
        assert_eq!((st.phase.as_str(), st.pod_ip.as_str()), ("Pending", ""));
        let st = status(&pod("Never"), &one(exited(0, 0, 1, 0)), &ready, &|_| None, ("ip", "ip"), now);
        assert_eq!(st.phase, "Succeeded");
        let st = status(&pod("Never"), &one(exited(0, 3, 1, 0)), &ready, &|_| None, ("ip", "ip"), now);
        assert_eq!(st.phase, "Failed");
        let t = st.container_statuses[0].state.clone().and_then(|s| s.terminated).expect("terminated");
        assert_eq!((t.exit_code, t.reason.as_str()), (3, "Error"));
        let st = status(&pod("Always"), &one(exited(0, 3, 1, 0)), &ready, &|_| None, ("ip", "ip"), now);
        assert_eq!(st.phase, "Running", "about to restart at once: not Failed");
        let st = status(&pod("Always"), &one(exited(1, 3, 1, 0)), &ready, &|_| None, ("ip", "ip"), now);
        assert_eq!(st.phase, "Running", "restarting");
        let w = st.container_statuses[0].state.clone().and_then(|s| s.waiting).expect("waiting");
        assert_eq!(w.reason, "CrashLoopBackOff");
        assert_eq!(st.container_statuses[0].restart_count, 1);
        assert!(st.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "False"));
    }
}
