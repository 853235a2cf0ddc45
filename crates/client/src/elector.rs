//! A fenced leader elector (docs/rfcs/0001-fenced-leadership.md): candidates campaign for
//! a named lock — a `Lease` object such as `kube-system/flotilla-scheduler` — renew it
//! while they hold it, watch the holder while they do not, and release it on a graceful
//! stop so a successor takes over at once.
//!
//! Holding the lock yields a [`Fence`]: give it to [`Client::fenced`] and every write the
//! leader makes carries it, so the store refuses those writes once anyone else holds the
//! lock — even while this process still believes it leads. The elector's own timing only
//! decides how fast leadership moves, never whether two leaders' writes can land.
//!
//! Expiry is timed on this process's monotonic clock, from the moment it last saw the
//! lease change (as Kubernetes' candidates do): clocks of different machines need not
//! agree. `renewTime` is written for people to read; nothing here reads it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_api::Fence;
use flotilla_proto::api as pb;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::client::{Client, ListParams};
use crate::error::ClientError;
use crate::watch::WatchEvent;

/// What an elector campaigns for, and its timing.
#[derive(Debug, Clone)]
pub struct ElectorConfig {
    /// Namespace of the lock (`kube-system`).
    pub namespace: String,
    /// Name of the lock (`flotilla-scheduler`).
    pub name: String,
    /// This candidate's identity; unique among candidates (see [`unique_identity`]).
    pub identity: String,
    /// How long a holder that stopped renewing keeps the lock, as candidates time it.
    /// Written into the lease (`leaseDurationMillis`, and `leaseDurationSeconds` rounded
    /// up) for the other candidates to time it by.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How often a candidate looks at its clock to see whether the holder's time is up.
    pub check_every: Duration,
}

impl ElectorConfig {
    /// A lock with the default timing: an 800 ms lease renewed every 200 ms (a successor
    /// takes over within about a second of the holder's crash), checked every 25 ms.
    pub fn new(namespace: &str, name: &str, identity: &str) -> ElectorConfig {
        ElectorConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_millis(800),
            renew_every: Duration::from_millis(200),
            check_every: Duration::from_millis(25),
        }
    }
}

/// An identity no other candidate has: `<host>/<pid>/<random>`.
pub fn unique_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}/{}/{:08x}", host.trim(), std::process::id(), nanos ^ std::process::id().rotate_left(16))
}

/// Counters an elector keeps (export them with the process's metrics).
#[derive(Debug, Default)]
pub struct ElectorStats {
    /// Whether this candidate holds the lock now.
    pub leading: AtomicBool,
    /// Times this candidate acquired the lock.
    pub acquired: AtomicU64,
    /// Times it lost or gave up the lock.
    pub lost: AtomicU64,
}

/// A running elector. Dropping it stops campaigning without releasing the lock (use
/// [`Elector::release`] on a graceful stop).
pub struct Elector {
    leadership: watch::Receiver<Option<Fence>>,
    stop: Arc<tokio::sync::Notify>,
    task: Option<tokio::task::JoinHandle<bool>>,
    /// Counters.
    pub stats: Arc<ElectorStats>,
}

impl Elector {
    /// Starts campaigning for `cfg`'s lock through `client`.
    pub fn start(client: Client, cfg: ElectorConfig) -> Elector {
        let (tx, rx) = watch::channel(None);
        let stop = Arc::new(tokio::sync::Notify::new());
        let stats = Arc::new(ElectorStats::default());
        let task = tokio::spawn(campaign(client, cfg, tx, stop.clone(), stats.clone()));
        Elector { leadership: rx, stop, task: Some(task), stats }
    }

    /// The fence while this candidate leads, None while it does not; changes as
    /// leadership comes and goes.
    pub fn leadership(&self) -> watch::Receiver<Option<Fence>> {
        self.leadership.clone()
    }

    /// Stops campaigning; if this candidate holds the lock, releases it (an empty holder)
    /// so that a successor takes over at once. Whether it held the lock and released it.
    pub async fn release(mut self) -> bool {
        self.stop.notify_one();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(false),
            None => false,
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What a candidate knows of the lock.
struct Seen {
    lease: Option<pb::Lease>,
    /// When (on this process's clock) the lease last changed, or was first seen.
    since: Instant,
}

fn spec(l: &pb::Lease) -> pb::LeaseSpec {
    l.spec.clone().unwrap_or_default()
}

fn rv(l: &pb::Lease) -> &str {
    l.metadata.as_ref().map_or("", |m| m.resource_version.as_str())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// How long the holder of `l` keeps it unless renewed, as its lease says (or `default`).
fn duration_of(l: &pb::Lease, default: Duration) -> Duration {
    let s = spec(l);
    match (s.lease_duration_millis.filter(|m| *m > 0), s.lease_duration_seconds.filter(|s| *s > 0)) {
        (Some(ms), _) => Duration::from_millis(ms as u64),
        (None, Some(secs)) => Duration::from_secs(secs as u64),
        (None, None) => default,
    }
}

fn lease_object(cfg: &ElectorConfig, base: Option<&pb::Lease>, holder: &str, term: i32) -> pb::Lease {
    let mut meta = base.and_then(|l| l.metadata.clone()).unwrap_or_default();
    meta.name = cfg.name.clone();
    meta.namespace = cfg.namespace.clone();
    let secs = cfg.lease_duration.as_secs_f64().ceil().max(1.0) as i32;
    let mut spec = base.map(spec).unwrap_or_default();
    if spec.holder_identity != holder && !holder.is_empty() {
        spec.acquire_time = now_rfc3339();
    }
    spec.holder_identity = holder.into();
    spec.lease_transitions = term;
    spec.lease_duration_seconds = Some(secs);
    spec.lease_duration_millis = Some(cfg.lease_duration.as_millis().min(i32::MAX as u128) as i32);
    spec.renew_time = now_rfc3339();
    pb::Lease { metadata: Some(meta), spec: Some(spec) }
}

/// Whether the fault switch that makes a deposed leader go on acting is set (debug builds
/// only; for the fencing test, which must show the store refuses such a leader's writes).
fn ignore_leadership_loss() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(debug_assertions)
        && *ON.get_or_init(|| {
            let on = std::env::var("FLOTILLA_FAULT_IGNORE_LEADERSHIP_LOSS").is_ok_and(|v| v == "1");
            if on {
                tracing::warn!(
                    "FAULT INJECTION: a deposed leader keeps acting (FLOTILLA_FAULT_IGNORE_LEADERSHIP_LOSS=1)"
                );
            }
            on
        })
}

async fn campaign(
    client: Client,
    cfg: ElectorConfig,
    tx: watch::Sender<Option<Fence>>,
    stop: Arc<tokio::sync::Notify>,
    stats: Arc<ElectorStats>,
) -> bool {
    let mut seen = Seen { lease: None, since: Instant::now() };
    // Leading: the fence, and when the last successful renewal was sent.
    let mut leading: Option<(Fence, Instant)> = None;
    let (wtx, mut changes) = tokio::sync::mpsc::channel::<Option<pb::Lease>>(16);
    let watcher = tokio::spawn(watch_lock(client.clone(), cfg.clone(), wtx));
    let mut tick = tokio::time::interval(cfg.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_renew = Instant::now();
    loop {
        tokio::select! {
            () = stop.notified() => break,
            change = changes.recv() => {
                let Some(lease) = change else { break };
                if lease.as_ref().map(rv) != seen.lease.as_ref().map(rv) {
                    seen = Seen { lease, since: Instant::now() };
                }
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if let Some((fence, renewed)) = leading.clone() {
            let still_ours = seen.lease.as_ref().is_none_or(|l| {
                let s = spec(l);
                s.holder_identity == fence.holder && s.lease_transitions == fence.term
            });
            let overdue = now.duration_since(renewed) >= cfg.lease_duration;
            if (!still_ours || overdue) && !ignore_leadership_loss() {
                tracing::info!(lock = %fence.lock(), term = fence.term, overdue, "lost the lock");
                leading = None;
                stats.leading.store(false, Ordering::Release);
                stats.lost.fetch_add(1, Ordering::Relaxed);
                tx.send_replace(None);
                continue;
            }
            if now >= next_renew && still_ours {
                next_renew = now + cfg.renew_every;
                let sent = Instant::now();
                let base = seen.lease.clone();
                match client.update(lease_object(&cfg, base.as_ref(), &fence.holder, fence.term)).await {
                    Ok(l) => {
                        seen = Seen { lease: Some(l), since: Instant::now() };
                        leading = Some((fence, sent));
                    }
                    Err(e) if e.is_conflict() || e.is_not_found() => {
                        // Someone changed the lock: see who holds it now.
                        seen = Seen { lease: get_lock(&client, &cfg).await.ok().flatten(), since: Instant::now() };
                    }
                    Err(e) => tracing::debug!(error = %e, "renewal failed; will retry"),
                }
            }
            continue;
        }
        // Not leading: take the lock if it is free or its holder's time is up.
        let free = match &seen.lease {
            None => true,
            Some(l) => {
                let s = spec(l);
                s.holder_identity.is_empty() || now.duration_since(seen.since) >= duration_of(l, cfg.lease_duration)
            }
        };
        if !free {
            continue;
        }
        let attempt = match &seen.lease {
            None => client.create(lease_object(&cfg, None, &cfg.identity, 0)).await,
            Some(l) => {
                let term = spec(l).lease_transitions + 1;
                client.update(lease_object(&cfg, Some(l), &cfg.identity, term)).await
            }
        };
        match attempt {
            Ok(l) => {
                let fence = Fence {
                    namespace: cfg.namespace.clone(),
                    name: cfg.name.clone(),
                    holder: cfg.identity.clone(),
                    term: spec(&l).lease_transitions,
                };
                tracing::info!(lock = %fence.lock(), term = fence.term, "acquired the lock");
                seen = Seen { lease: Some(l), since: Instant::now() };
                leading = Some((fence.clone(), now));
                next_renew = now + cfg.renew_every;
                stats.leading.store(true, Ordering::Release);
                stats.acquired.fetch_add(1, Ordering::Relaxed);
                tx.send_replace(Some(fence));
            }
            Err(e) => {
                if !(e.is_conflict() || e.code() == Some(tonic::Code::AlreadyExists)) {
                    tracing::debug!(error = %e, "campaign failed; will retry");
                }
                // Lost a race, or the lock changed: read it again.
                if let Ok(l) = get_lock(&client, &cfg).await {
                    if l.as_ref().map(rv) != seen.lease.as_ref().map(rv) {
                        seen = Seen { lease: l, since: Instant::now() };
                    }
                }
            }
        }
    }
    watcher.abort();
    let Some((fence, _)) = leading else { return false };
    tx.send_replace(None);
    stats.leading.store(false, Ordering::Release);
    // Release: an empty holder, same term; candidates take it at once.
    let Some(l) = seen.lease.as_ref() else { return false };
    match client.update(lease_object(&cfg, Some(l), "", fence.term)).await {
        Ok(_) => {
            tracing::info!(lock = %fence.lock(), "released the lock");
            true
        }
        Err(e) => {
            tracing::info!(lock = %fence.lock(), error = %e, "could not release the lock");
            false
        }
    }
}

async fn get_lock(client: &Client, cfg: &ElectorConfig) -> Result<Option<pb::Lease>, ClientError> {
    match client.get::<pb::Lease>(&cfg.namespace, &cfg.name).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sends the lock's state whenever it changes: first as read, then every watch event.
async fn watch_lock(client: Client, cfg: ElectorConfig, tx: tokio::sync::mpsc::Sender<Option<pb::Lease>>) {
    let p = ListParams {
        namespace: cfg.namespace.clone(),
        field_selector: format!("metadata.name={}", cfg.name),
        ..Default::default()
    };
    loop {
        let listed = match client.list::<pb::Lease>(&p).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the lock; will retry");
                tokio::time::sleep(cfg.check_every * 4).await;
                continue;
            }
        };
        if tx.send(listed.items.into_iter().next()).await.is_err() {
            return;
        }
        let mut stream = match client.watch::<pb::Lease>(&p, &listed.resource_version).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        while let Some(ev) = stream.next().await {
            let state = match ev {
                Ok(WatchEvent::Added(l) | WatchEvent::Modified(l)) => Some(l),
                Ok(WatchEvent::Deleted(_)) => None,
                Err(_) => break, // expired or failed: list again
            };
            if tx.send(state).await.is_err() {
                return;
            }
        }
    }
}
