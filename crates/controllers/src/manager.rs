//! The controller manager: campaigns for its lock, and while it holds it runs the
//! selected controllers, every write carrying the lock's fencing token.
//!
//! Each term of leadership starts the controllers afresh (new queues, new expectations)
//! over the informers, which live as long as the process: a candidate keeps them warm
//! while it waits, so a successor does not list the cluster before acting. When the lock
//! is lost the term's controllers are stopped (reconciles in flight may finish; a write
//! they make after the loss is refused as fenced); on shutdown the lock is released so a
//! successor takes over at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::Fence;
use flotilla_client::{Client, Elector, ElectorConfig, EventRecorder};
use tokio::sync::watch;

use crate::descriptor::{self, Descriptor};
use crate::informers::Informers;
use crate::metrics::{ControllerMetrics, PerController};
use crate::ControllerError;

/// Every controller, in the order they start.
pub const CONTROLLERS: &[Descriptor] = &[
    Descriptor {
        name: "replicaset",
        on_by_default: true,
        about: "keeps each ReplicaSet's count of pods (adopts, releases, creates, deletes), and its status",
        start: |ctx| Box::pin(crate::replicaset::start(ctx)),
        warm: crate::replicaset::warm,
    },
    Descriptor {
        name: "deployment",
        on_by_default: true,
        about: "rolls Deployments from template to template through a ReplicaSet each (RollingUpdate, Recreate), \
                keeps revisions, and their status and conditions",
        start: |ctx| Box::pin(crate::deployment::start(ctx)),
        warm: crate::deployment::warm,
    },
    Descriptor {
        name: "daemonset",
        on_by_default: true,
        about: "keeps one pod of each DaemonSet on every node it is eligible for (node selector, affinity, \
                taints), rolling to a new template within maxUnavailable",
        start: |ctx| Box::pin(crate::daemonset::start(ctx)),
        warm: crate::daemonset::warm,
    },
    Descriptor {
        name: "job",
        on_by_default: true,
        about: "runs each Job's pods until its completions succeed (parallelism, backoffLimit, \
                activeDeadlineSeconds), then deletes it after ttlSecondsAfterFinished",
        start: |ctx| Box::pin(crate::job::start(ctx)),
        warm: crate::job::warm,
    },
    Descriptor {
        name: "endpoints",
        on_by_default: true,
        about: "keeps an Endpoints object per Service with a selector: its ready and not-ready pods' \
                addresses and ports (named target ports resolved per pod)",
        start: |ctx| Box::pin(crate::endpoints::start(ctx)),
        warm: crate::endpoints::warm,
    },
    Descriptor {
        name: "nodelifecycle",
        on_by_default: true,
        about: "marks nodes that stopped renewing their Lease (Ready Unknown, unreachable taints) and evicts \
                their pods, unless half the nodes (or of a zone) went silent at once",
        start: |ctx| Box::pin(crate::nodelifecycle::start(ctx)),
        warm: crate::nodelifecycle::warm,
    },
    Descriptor {
        name: "garbagecollector",
        on_by_default: true,
        about: "deletes objects whose owners are gone (background), before their owner (foreground), or \
                frees them (orphan), as ownerReferences and the delete's propagationPolicy say",
        start: |ctx| Box::pin(crate::gc::start(ctx)),
        warm: crate::gc::warm,
    },
    Descriptor {
        name: "namespace",
        on_by_default: true,
        about: "empties namespaces being deleted through the API (pods gracefully, finalizers honoured), then \
                removes their `kubernetes` finalizer",
        start: |ctx| Box::pin(crate::namespace::start(ctx)),
        warm: crate::namespace::warm,
    },
    Descriptor {
        name: "nodeipam",
        on_by_default: true,
        about: "gives every Node a podCIDR from --cluster-cidr, never one another node has (off without \
                --cluster-cidr)",
        start: |ctx| Box::pin(crate::nodeipam::start(ctx)),
        warm: crate::nodeipam::warm,
    },
    Descriptor {
        name: "loadbalancer",
        on_by_default: true,
        about: "gives each Service of type LoadBalancer an address of --load-balancer-pool (status.loadBalancer), \
                never one another has, freed when it goes (off without --load-balancer-pool)",
        start: |ctx| Box::pin(crate::loadbalancer::start(ctx)),
        warm: crate::loadbalancer::warm,
    },
    Descriptor {
        name: "podgc",
        on_by_default: true,
        about: "force-deletes pods bound to nodes that do not exist, and finished pods beyond a threshold",
        start: |ctx| Box::pin(crate::podgc::start(ctx)),
        warm: crate::podgc::warm,
    },
];

/// Settings of individual controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a node may go without renewing its Lease (or posting status) before it is
    /// taken as silent.
    pub node_monitor_grace_period: Duration,
    /// Finished pods kept before the oldest are deleted.
    pub terminated_pod_gc_threshold: usize,
    /// The pod ranges Node IPAM hands out (`--cluster-cidr`); None: Node IPAM is off.
    pub pod_ranges: Option<crate::nodeipam::PodRanges>,
    /// The addresses LoadBalancer Services get (`--load-balancer-pool`); None: the
    /// allocator is off.
    pub load_balancer_pool: Option<crate::loadbalancer::Pool>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            node_monitor_grace_period: Duration::from_secs(15),
            terminated_pod_gc_threshold: 12_500,
            pod_ranges: None,
            load_balancer_pool: None,
        }
    }
}

/// How long the controllers of a term that ended may take to finish what they were
/// doing before they are cut off.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a controller manager runs, and how it campaigns.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The lock and its timing.
    pub elector: ElectorConfig,
    /// The controllers to run (names from [`CONTROLLERS`]).
    pub controllers: BTreeSet<&'static str>,
    /// Workers per controller (keys reconciled at once).
    pub workers: usize,
    /// Settings of individual controllers.
    pub settings: Settings,
}

impl ManagerConfig {
    /// Every controller on by default, campaigning as `identity` with the default timing.
    pub fn new(identity: &str) -> ManagerConfig {
        ManagerConfig {
            elector: ElectorConfig::new(crate::LOCK.0, crate::LOCK.1, identity),
            controllers: CONTROLLERS.iter().filter(|d| d.on_by_default).map(|d| d.name).collect(),
            workers: 5,
            settings: Settings::default(),
        }
    }

    /// Selects controllers with a `--controllers` value (`*`, `name`, `-name`).
    pub fn select(&mut self, spec: &str) -> Result<(), ControllerError> {
        self.controllers = descriptor::select(CONTROLLERS, spec)?;
        Ok(())
    }
}

/// What a controller gets for one term of leadership.
#[derive(Clone)]
pub struct Context {
    /// Writes through this client carry the term's fencing token.
    pub client: Client,
    /// The process's shared informers.
    pub informers: Arc<Informers>,
    /// Records Events (through [`Context::client`], so they are fenced too).
    pub recorder: Arc<EventRecorder>,
    /// Workers per controller.
    pub workers: usize,
    /// Settings of individual controllers.
    pub settings: Arc<Settings>,
    metrics: Arc<ControllerMetrics>,
    stop: watch::Receiver<bool>,
}

impl Context {
    /// A context outside any election (tests that run one controller in-process): writes
    /// through `client` as given, until `stop` says true.
    pub fn new(client: Client, informers: Arc<Informers>, workers: usize, stop: watch::Receiver<bool>) -> Context {
        Context {
            client,
            informers,
            recorder: Arc::new(EventRecorder::new("flotilla-controller-manager", &hostname())),
            workers,
            settings: Arc::new(Settings::default()),
            metrics: Arc::new(ControllerMetrics::new()),
            stop,
        }
    }

    /// Completes when the term ends (the lock was lost, or the process stops).
    pub async fn stopped(&self) {
        let mut s = self.stop.clone();
        let _ = s.wait_for(|s| *s).await;
    }

    /// The metrics of controller `name`.
    pub fn metrics(&self, name: &str) -> PerController {
        self.metrics.of(name)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

/// The controllers of one term.
struct Term {
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Term {
    fn start(
        cfg: &ManagerConfig,
        client: &Client,
        fence: &Fence,
        informers: &Arc<Informers>,
        metrics: &Arc<ControllerMetrics>,
    ) -> Term {
        let (stop, stopped) = watch::channel(false);
        let ctx = Context {
            client: client.fenced(fence),
            informers: informers.clone(),
            recorder: Arc::new(EventRecorder::new("flotilla-controller-manager", &hostname())),
            workers: cfg.workers,
            settings: Arc::new(cfg.settings.clone()),
            metrics: metrics.clone(),
            stop: stopped,
        };
        let mut tasks = tokio::task::JoinSet::new();
        for d in CONTROLLERS.iter().filter(|d| cfg.controllers.contains(d.name)) {
            tasks.spawn((d.start)(ctx.clone()));
        }
        Term { stop, tasks }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let finish = async {
            while let Some(r) = self.tasks.join_next().await {
                if let Err(e) = r {
                    if e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            }
        };
        if tokio::time::timeout(STOP_GRACE, finish).await.is_err() {
            tracing::warn!("controllers still busy {STOP_GRACE:?} after the term ended: cut off");
            self.tasks.abort_all();
        }
    }
}

/// Runs a controller-manager candidate until `shutdown` completes: informers always (so a
/// successor starts warm), the controllers while it holds its lock. On shutdown it
/// releases the lock; the result says whether it held the lock and released it.
pub async fn run(
    client: Client,
    cfg: ManagerConfig,
    metrics: Arc<ControllerMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<bool, ControllerError> {
    if cfg.controllers.is_empty() {
        return Err(ControllerError::Config("no controllers selected".into()));
    }
    let informers = Arc::new(Informers::new(client.clone()));
    for d in CONTROLLERS.iter().filter(|d| cfg.controllers.contains(d.name)) {
        (d.warm)(&informers);
    }
    let m = metrics.clone();
    let writer = client.on_fenced(move || {
        m.fenced_writes.inc();
    });
    let elector = Elector::start(client, cfg.elector.clone());
    let mut leadership = elector.leadership();
    let mut term: Option<Term> = None;
    tokio::pin!(shutdown);
    loop {
        let ended = async {
            match term.as_mut() {
                Some(t) => t.tasks.join_next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            changed = leadership.changed() => {
                if changed.is_err() {
                    break;
                }
                let fence = leadership.borrow_and_update().clone();
                if let Some(t) = term.take() {
                    tracing::info!("lost the lock: stopping the controllers");
                    metrics.is_leader.set(0);
                    metrics.leader_transitions.inc();
                    t.stop().await;
                }
                if let Some(f) = fence {
                    tracing::info!(lock = %f.lock(), term = f.term, controllers = ?cfg.controllers, "leading: running the controllers");
                    metrics.is_leader.set(1);
                    metrics.leader_transitions.inc();
                    term = Some(Term::start(&cfg, &writer, &f, &informers, &metrics));
                }
            }
            Some(r) = ended => {
                // Controllers run until their term ends: one that returned early panicked.
                if let Err(e) = r {
                    if e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
                tracing::error!("a controller stopped on its own");
            }
        }
    }
    if let Some(t) = term.take() {
        t.stop().await;
        metrics.is_leader.set(0);
    }
    Ok(elector.release().await)
}
