//! The workloads: put, range, txn (compare-and-swap on hot keys), watch (put → event
//! latency) and failover (kill the leader under steady writes).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::etcdserverpb::kv_client::KvClient;
use flotilla_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use flotilla_proto::etcdserverpb::watch_client::WatchClient;
use rand::{Rng, SeedableRng};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::report::{Recorder, Report};
use crate::BenchError;

/// Settings shared by every workload (named like etcd's own benchmark tool's flags).
#[derive(Debug, Clone)]
pub struct Common {
    /// Endpoints, `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// gRPC connections, spread over the endpoints.
    pub conns: usize,
    /// Concurrent clients, spread over the connections.
    pub clients: usize,
    /// Stop after this many requests...
    pub total: Option<u64>,
    /// ...or after this long.
    pub duration: Option<Duration>,
    /// Key size in bytes.
    pub key_size: usize,
    /// Value size in bytes.
    pub val_size: usize,
    /// Number of distinct keys.
    pub key_space_size: u64,
    /// Write keys 0, 1, 2, ... instead of random ones from the key space.
    pub sequential_keys: bool,
    /// Print a progress line on stderr while running.
    pub progress: bool,
}

/// Read consistency for the range workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable (the default of etcd clients).
    Linearizable,
    /// Serializable (served from the member's local state).
    Serializable,
}

/// What to run.
#[derive(Debug, Clone)]
pub enum Workload {
    /// Puts of `val_size` values.
    Put,
    /// Single-key ranges over a prefilled key space.
    Range(Consistency),
    /// Read, then compare-and-swap on `mod_revision`, over a key space of hot keys.
    Txn,
    /// `watchers` watchers on one key; puts carry their send time, events measure latency.
    Watch {
        /// Watchers, spread over `conns` streams.
        watchers: usize,
    },
    /// Steady writes; the leader is killed with `kill_cmd` (`{endpoint}` is replaced by the
    /// leader's endpoint) after `kill_after`.
    Failover {
        /// Shell command that kills a member.
        kill_cmd: String,
        /// When to kill, from the start.
        kill_after: Duration,
        /// Total writes per second across clients (0 = as fast as possible).
        rate: u64,
    },
}

impl Workload {
    /// The workload's short name.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range(Consistency::Linearizable) => "range-l",
            Workload::Range(Consistency::Serializable) => "range-s",
            Workload::Txn => "txn",
            Workload::Watch { .. } => "watch",
            Workload::Failover { .. } => "failover",
        }
    }
}

/// TLS for every connection this process makes (set once, before the first).
static TLS: std::sync::OnceLock<std::sync::Arc<flotilla_tls::ClientTls>> = std::sync::OnceLock::new();

/// Makes every connection of this process TLS with `tls` (the cluster's CA and a client
/// certificate): endpoints without a scheme become https.
pub fn use_tls(tls: std::sync::Arc<flotilla_tls::ClientTls>) -> Result<(), BenchError> {
    TLS.set(tls).map_err(|_| BenchError::Invalid("TLS was set twice".into()))
}

/// A resource-API client of `endpoints`, in TLS when [`use_tls`] was called.
pub fn api_client(endpoints: &[String]) -> Result<flotilla_client::Client, flotilla_client::ClientError> {
    let opts = flotilla_client::Options { tls: TLS.get().cloned(), ..Default::default() };
    flotilla_client::Client::with_options(endpoints, opts)
}

async fn connect(ep: &str) -> Result<Channel, BenchError> {
    let bad = |reason: String| BenchError::Unreachable { endpoint: ep.to_string(), reason };
    // The client's own reading of an endpoint: no scheme means https with TLS, and a
    // scheme that contradicts the TLS given is refused.
    let url = flotilla_client::pool::endpoint_url(ep, TLS.get().is_some()).map_err(|e| bad(e.to_string()))?;
    let endpoint = Endpoint::from_shared(url)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2));
    match TLS.get() {
        Some(tls) => endpoint.connect_with_connector(flotilla_tls::Connector::new(tls.clone())).await,
        None => endpoint.connect().await,
    }
    .map_err(|e| bad(e.to_string()))
}

async fn channels(c: &Common) -> Result<Vec<Channel>, BenchError> {
    if c.endpoints.is_empty() {
        return Err(BenchError::Invalid("no --endpoints given".into()));
    }
    let mut out = Vec::new();
    for i in 0..c.conns.max(1) {
        out.push(connect(&c.endpoints[i % c.endpoints.len()]).await?);
    }
    Ok(out)
}

/// The key with index `i`, `size` bytes long (at least long enough to be unique).
pub fn key(i: u64, size: usize) -> Vec<u8> {
    let digits = format!("{i:020}");
    let mut k = b"k".to_vec();
    let pad = size.saturating_sub(1 + digits.len());
    k.extend(std::iter::repeat_n(b'_', pad));
    k.extend_from_slice(digits.as_bytes());
    k
}

fn value(size: usize) -> Vec<u8> {
    let mut rng = rand::rng();
    (0..size).map(|_| rng.random_range(b'a'..=b'z')).collect()
}

/// Decides when to stop: after `total` requests were issued, or at the deadline.
struct Budget {
    issued: AtomicU64,
    total: Option<u64>,
    deadline: Option<Instant>,
}

impl Budget {
    fn new(c: &Common) -> Result<Arc<Budget>, BenchError> {
        if c.total.is_none() && c.duration.is_none() {
            return Err(BenchError::Invalid("give --total or --duration".into()));
        }
        Ok(Arc::new(Budget {
            issued: AtomicU64::new(0),
            total: c.total,
            deadline: c.duration.map(|d| Instant::now() + d),
        }))
    }

    /// Claims one request; false when the run is over.
    fn take(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        self.total.is_none_or(|t| n < t)
    }
}

fn spawn_progress(name: &'static str, done: Arc<AtomicU64>, stop: Arc<AtomicBool>, on: bool) {
    if !on {
        return;
    }
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let n = done.load(Ordering::Relaxed);
            eprint!("\r[{name}] {:>6.1}s  {n:>10} ops  {:>10} ops/s   ", start.elapsed().as_secs_f64(), n - last);
            last = n;
        }
        eprintln!();
    });
}

/// Puts every key of the key space once (not measured), so reads find data.
async fn prefill(c: &Common, chans: &[Channel]) -> Result<(), BenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..c.clients.clamp(1, 64) {
        let mut kv = KvClient::new(chans[i % chans.len()].clone());
        let (next, space, ks, vs) = (next.clone(), c.key_space_size, c.key_size, c.val_size);
        tasks.push(tokio::spawn(async move {
            let v = value(vs);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= space {
                    return Ok(());
                }
                kv.put(ep::PutRequest { key: key(k, ks), value: v.clone(), ..Default::default() })
                    .await
                    .map_err(|e| BenchError::Setup(format!("prefill failed: {e}")))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| BenchError::Setup(e.to_string()))??;
    }
    Ok(())
}

/// Runs one workload and reports on it.
pub async fn run(c: &Common, w: &Workload) -> Result<Report, BenchError> {
    if c.clients == 0 {
        return Err(BenchError::Invalid("--clients must be at least 1".into()));
    }
    let chans = channels(c).await?;
    match w {
        Workload::Put => request_loop(c, w, &chans).await,
        Workload::Range(_) | Workload::Txn => {
            if c.key_space_size == 0 {
                return Err(BenchError::Invalid("--key-space-size must be at least 1".into()));
            }
            prefill(c, &chans).await?;
            request_loop(c, w, &chans).await
        }
        Workload::Watch { watchers } => watch(c, *watchers, &chans).await,
        Workload::Failover { kill_cmd, kill_after, rate } => failover(c, kill_cmd, *kill_after, *rate).await,
    }
}

/// Closed-loop clients issuing one kind of request each.
async fn request_loop(c: &Common, w: &Workload, chans: &[Channel]) -> Result<Report, BenchError> {
    let budget = Budget::new(c)?;
    let done = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    spawn_progress(w.name(), done.clone(), stop.clone(), c.progress);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..c.clients {
        let mut kv = KvClient::new(chans[i % chans.len()].clone());
        let (budget, done, conflicts, seq) = (budget.clone(), done.clone(), conflicts.clone(), seq.clone());
        let (c, w) = (c.clone(), w.clone());
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let v = value(c.val_size);
            let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
            while budget.take() {
                let k = if c.sequential_keys {
                    seq.fetch_add(1, Ordering::Relaxed) % c.key_space_size.max(1)
                } else {
                    rng.random_range(0..c.key_space_size.max(1))
                };
                let k = key(k, c.key_size);
                match one_request(&mut kv, &w, k, &v, &conflicts).await {
                    Ok(took) => rec.ok(took),
                    Err(e) => rec.err(&e),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            rec
        }));
    }
    let mut rec = Recorder::new();
    for t in tasks {
        rec.merge(&t.await.map_err(|e| BenchError::Setup(e.to_string()))?);
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut report = Report::new(w.name(), c.clients, &rec, took);
    if matches!(w, Workload::Txn) {
        report.extra.insert("cas_conflicts".into(), conflicts.load(Ordering::Relaxed) as f64);
    }
    Ok(report)
}

/// Issues one request of workload `w` and returns the latency to record.
async fn one_request(
    kv: &mut KvClient<Channel>,
    w: &Workload,
    k: Vec<u8>,
    v: &[u8],
    conflicts: &AtomicU64,
) -> Result<Duration, tonic::Status> {
    let t = Instant::now();
    match w {
        Workload::Put => {
            kv.put(ep::PutRequest { key: k, value: v.to_vec(), ..Default::default() }).await?;
        }
        Workload::Range(cons) => {
            let serializable = *cons == Consistency::Serializable;
            kv.range(ep::RangeRequest { key: k, serializable, ..Default::default() }).await?;
        }
        Workload::Txn => {
            // The apiserver's pattern: read, then write only if nobody else did. The
            // compare-and-swap itself is what is measured.
            let r = kv.range(ep::RangeRequest { key: k.clone(), ..Default::default() }).await?.into_inner();
            let rev = r.kvs.first().map_or(0, |kv| kv.mod_revision);
            let txn = ep::TxnRequest {
                compare: vec![ep::Compare {
                    key: k.clone(),
                    target: ep::compare::CompareTarget::Mod as i32,
                    result: ep::compare::CompareResult::Equal as i32,
                    target_union: Some(ep::compare::TargetUnion::ModRevision(rev)),
                    ..Default::default()
                }],
                success: vec![ep::RequestOp {
                    request: Some(ep::request_op::Request::RequestPut(ep::PutRequest {
                        key: k,
                        value: v.to_vec(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            let t2 = Instant::now();
            if !kv.txn(txn).await?.into_inner().succeeded {
                conflicts.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(t2.elapsed());
        }
        Workload::Watch { .. } | Workload::Failover { .. } => {}
    }
    Ok(t.elapsed())
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

const WATCH_KEY: &[u8] = b"bench-watch-key";

/// `watchers` watchers on one key over `conns` streams; puts carry their send time in the
/// value and every delivered event records put → event latency.
async fn watch(c: &Common, watchers: usize, chans: &[Channel]) -> Result<Report, BenchError> {
    if watchers == 0 {
        return Err(BenchError::Invalid("--watchers must be at least 1".into()));
    }
    let streams = chans.len().min(watchers);
    let mut stream_tasks = Vec::new();
    let received = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(streams);
    let stop = Arc::new(AtomicBool::new(false));
    for (s, ch) in chans.iter().take(streams).enumerate() {
        let n = watchers / streams + usize::from(s < watchers % streams);
        let ch = ch.clone();
        let (received, ready_tx, stop, arrived) = (received.clone(), ready_tx.clone(), stop.clone(), arrived.clone());
        stream_tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let creates: Vec<ep::WatchRequest> = (0..n)
                .map(|_| ep::WatchRequest {
                    request_union: Some(ep::watch_request::RequestUnion::CreateRequest(ep::WatchCreateRequest {
                        key: WATCH_KEY.to_vec(),
                        ..Default::default()
                    })),
                })
                .collect();
            let reqs = tokio_stream::iter(creates).chain(tokio_stream::pending());
            let mut stream = match WatchClient::new(ch).watch(reqs).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    rec.err(&e);
                    let _ = ready_tx.send(()).await;
                    return rec;
                }
            };
            let mut created = 0;
            while created < n {
                match stream.next().await {
                    Some(Ok(r)) if r.created => created += 1,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        rec.err(&e);
                        break;
                    }
                    None => break,
                }
            }
            let _ = ready_tx.send(()).await;
            loop {
                let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
                match next {
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => continue,
                    Ok(Some(Ok(r))) => {
                        let now = now_nanos();
                        for e in r.events {
                            let sent =
                                e.kv.as_ref().and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u128>().ok());
                            if let Some(sent) = sent {
                                rec.ok(Duration::from_nanos(now.saturating_sub(sent) as u64));
                                received.fetch_add(1, Ordering::Relaxed);
                                arrived.notify_one();
                            }
                        }
                    }
                    Ok(Some(Err(e))) => {
                        rec.err(&e);
                        break;
                    }
                    Ok(None) => break,
                }
            }
            rec
        }));
    }
    drop(ready_tx);
    for _ in 0..streams {
        ready_rx.recv().await;
    }
    // Writers.
    let budget = Budget::new(c)?;
    let puts_ok = Arc::new(AtomicU64::new(0));
    spawn_progress("watch", received.clone(), stop.clone(), c.progress);
    let start = Instant::now();
    let mut writers = Vec::new();
    for i in 0..c.clients {
        let mut kv = KvClient::new(chans[i % chans.len()].clone());
        let (budget, puts_ok) = (budget.clone(), puts_ok.clone());
        writers.push(tokio::spawn(async move {
            while budget.take() {
                let v = now_nanos().to_string().into_bytes();
                if kv.put(ep::PutRequest { key: WATCH_KEY.to_vec(), value: v, ..Default::default() }).await.is_ok() {
                    puts_ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in writers {
        let _ = w.await;
    }
    // Wait (bounded) for every watcher to see every acknowledged put.
    let want = puts_ok.load(Ordering::Relaxed) * watchers as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        let _ = tokio::time::timeout_at(deadline.into(), arrived.notified()).await;
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut rec = Recorder::new();
    for t in stream_tasks {
        rec.merge(&t.await.map_err(|e| BenchError::Setup(e.to_string()))?);
    }
    let mut report = Report::new("watch", c.clients, &rec, took);
    report.extra.insert("watchers".into(), watchers as f64);
    report.extra.insert("puts".into(), puts_ok.load(Ordering::Relaxed) as f64);
    report.extra.insert("events_missing".into(), want.saturating_sub(received.load(Ordering::Relaxed)) as f64);
    Ok(report)
}

/// Whether `endpoint` answers a Status call.
pub async fn answers(endpoint: &str) -> bool {
    match connect(endpoint).await {
        Ok(ch) => MaintenanceClient::new(ch).status(ep::StatusRequest {}).await.is_ok(),
        Err(_) => false,
    }
}

/// The endpoint (as given) of the current leader.
pub async fn find_leader(endpoints: &[String]) -> Result<String, BenchError> {
    let mut statuses = Vec::new();
    for e in endpoints {
        if let Ok(ch) = connect(e).await {
            if let Ok(s) = MaintenanceClient::new(ch).status(ep::StatusRequest {}).await {
                let s = s.into_inner();
                statuses.push((e.clone(), s.header.map_or(0, |h| h.member_id), s.leader));
            }
        }
    }
    let leader = statuses.iter().map(|(_, _, l)| *l).find(|l| *l != 0);
    statuses
        .into_iter()
        .find(|(_, id, _)| Some(*id) == leader)
        .map(|(e, _, _)| e)
        .ok_or_else(|| BenchError::Setup("no member reports a reachable leader".into()))
}

/// Steady writes from clients that move to the next endpoint on error; the leader is
/// killed mid-run. Reports the time from the kill to the first acknowledged write sent
/// after it, and the longest stretch with no acknowledged write.
async fn failover(c: &Common, kill_cmd: &str, kill_after: Duration, rate: u64) -> Result<Report, BenchError> {
    let budget = Budget::new(c)?;
    let acks: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    spawn_progress("failover", done.clone(), stop.clone(), c.progress);
    let interval = if rate == 0 { None } else { Some(Duration::from_secs_f64(c.clients as f64 / rate as f64)) };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..c.clients {
        let (budget, acks, done, eps) = (budget.clone(), acks.clone(), done.clone(), c.endpoints.clone());
        let vs = c.val_size;
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let v = value(vs);
            let mut which = i % eps.len();
            let mut kv: Option<KvClient<Channel>> = None;
            let mut n = 0u64;
            let mut tick = interval.map(tokio::time::interval);
            while budget.take() {
                if let Some(t) = &mut tick {
                    t.tick().await;
                }
                if kv.is_none() {
                    kv = connect(&eps[which]).await.ok().map(KvClient::new);
                }
                let sent = Instant::now();
                let res = match &mut kv {
                    Some(kv) => {
                        let mut req = tonic::Request::new(ep::PutRequest {
                            key: format!("failover/{i}/{n}").into_bytes(),
                            value: v.clone(),
                            ..Default::default()
                        });
                        req.set_timeout(Duration::from_secs(2));
                        kv.put(req).await.map(|_| ())
                    }
                    None => Err(tonic::Status::unavailable("cannot connect")),
                };
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
                match res {
                    Ok(()) => {
                        rec.ok(sent.elapsed());
                        acks.lock().unwrap_or_else(|p| p.into_inner()).push((sent, Instant::now()));
                    }
                    Err(e) => {
                        rec.err(&e);
                        // Fail over to the next endpoint, as an etcd client does.
                        which = (which + 1) % eps.len();
                        kv = None;
                    }
                }
            }
            rec
        }));
    }
    tokio::time::sleep(kill_after).await;
    let leader = find_leader(&c.endpoints).await?;
    let cmd = kill_cmd.replace("{endpoint}", &leader);
    let out = tokio::process::Command::new("sh")
        .args(["-c", &cmd])
        .output()
        .await
        .map_err(|e| BenchError::Setup(format!("cannot run the kill command {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "the kill command {cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let killed = Instant::now();
    let mut rec = Recorder::new();
    for t in tasks {
        rec.merge(&t.await.map_err(|e| BenchError::Setup(e.to_string()))?);
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let acks = acks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let first_after = acks.iter().filter(|(s, _)| *s >= killed).map(|(_, a)| *a).min();
    let mut times: Vec<Instant> = acks.iter().map(|(_, a)| *a).collect();
    times.sort();
    let longest_gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let mut report = Report::new("failover", c.clients, &rec, took);
    report.extra.insert("killed_leader".into(), 1.0);
    match first_after {
        Some(a) => report.extra.insert("failover_ms".into(), (a - killed).as_secs_f64() * 1000.0),
        None => {
            return Err(BenchError::Setup("no write was acknowledged after the kill; run longer (--duration)".into()))
        }
    };
    report.extra.insert("longest_gap_ms".into(), longest_gap.as_secs_f64() * 1000.0);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_are_unique() {
        assert_eq!(key(7, 32).len(), 32);
        assert_ne!(key(7, 32), key(70, 32));
        assert!(key(7, 4).len() >= 21, "never shorter than needed to be unique");
    }
}
