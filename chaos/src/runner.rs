//! One chaos run: start the cluster in its namespaces, run the workloads (registers, set,
//! watches, leases, cross-member reads) while the nemesis injects faults on a seeded
//! schedule, heal, then judge the histories and the members' state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_proto::etcdserverpb::{self as ep, compare, kv_client::KvClient, maintenance_client::MaintenanceClient};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tonic::transport::Channel;

use crate::checker::lease::LeaseEvent;
use crate::checker::linearizable::{self, Verdict};
use crate::checker::set::{self, Add};
use crate::checker::watch::{self, Seen};
use crate::cross_read::{CrossRead, CrossReadReport};
use crate::history::{Outcome, RegisterEvent, RegisterOp, RegisterOutput};
use crate::topology::Topology;
use crate::ChaosError;

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Fault {
    /// kill -9 the leader, restart it after the hold time.
    KillLeader,
    /// SIGSTOP the leader for the hold time (longer than an election timeout).
    PauseLeader,
    /// Cut the leader off from the other members for the hold time.
    PartitionLeader,
    /// kill -9 a random member.
    KillRandom,
    /// kill -9 a majority of the members (the cluster stops taking writes).
    KillMajority,
    /// kill -9 every member, then restart them all.
    KillAll,
    /// Split the members into two random halves.
    PartitionHalves,
    /// The leader and fewer than half the others on one side.
    LeaderInMinority,
    /// Two groups that cannot talk to each other, and one member that talks to both
    /// (non-transitive).
    Bridge,
    /// The others stop hearing the leader; the leader still hears them.
    OneWayFromLeader,
    /// Remove a follower from the cluster, kill it, wipe its data, add it back; it
    /// rejoins empty at the heal.
    RemoveWipeReadd,
    /// Stop a follower, flip bytes in one of its data files, restart it at the heal: it
    /// must refuse to start or stop on finding the damage (then it is wiped and added
    /// back), and never serve corrupt data.
    CorruptDisk,
    /// Every link to and from the leader: 40 ± 30 ms delay each way, 10% of chunks
    /// stalled 200–600 ms as if retransmitted (userspace proxy).
    SlowLeader,
    /// Every peer link: 10–50 ms delay each way (per link) ± 10 ms, 5% of chunks stalled.
    SlowNetwork,
    /// The leader's wall clock jumps ahead by minutes to an hour (libfaketime).
    ClockSkew,
    /// The leader's wall clock jumps between ahead and behind by minutes to an hour,
    /// every second or so.
    ClockStrobe,
}

impl Fault {
    /// Whether the fault needs the peer links proxied.
    pub fn needs_proxy(self) -> bool {
        matches!(self, Fault::SlowLeader | Fault::SlowNetwork)
    }

    /// Whether the fault needs the members under libfaketime.
    pub fn needs_faketime(self) -> bool {
        matches!(self, Fault::ClockSkew | Fault::ClockStrobe)
    }
}

impl Fault {
    /// Every fault this harness can inject.
    pub const ALL: [Fault; 16] = [
        Fault::KillLeader,
        Fault::PauseLeader,
        Fault::PartitionLeader,
        Fault::KillRandom,
        Fault::KillMajority,
        Fault::KillAll,
        Fault::PartitionHalves,
        Fault::LeaderInMinority,
        Fault::Bridge,
        Fault::OneWayFromLeader,
        Fault::RemoveWipeReadd,
        Fault::CorruptDisk,
        Fault::SlowLeader,
        Fault::SlowNetwork,
        Fault::ClockSkew,
        Fault::ClockStrobe,
    ];
}

/// Cuts every link between a member of `a` and a member of `b`.
fn cut(t: &Topology, a: &[usize], b: &[usize]) -> Result<(), ChaosError> {
    for &i in a {
        t.isolate(i, b)?;
    }
    Ok(())
}

/// Removes follower `v` through the leader `l`, kills it, wipes its data and adds it back
/// (it is started, joining, at the heal).
async fn remove_wipe_readd(t: &mut Topology, l: usize, v: usize) -> Result<(), ChaosError> {
    use ep::cluster_client::ClusterClient;
    let cl = |t: &Topology| ClusterClient::new(channel(&t.members[l].client_url()));
    let err = |what: &str, e: tonic::Status| ChaosError::Cluster(format!("{what}: {}", e.message()));
    let name = t.members[v].name.clone();
    let members =
        cl(t).member_list(ep::MemberListRequest { linearizable: true }).await.map_err(|e| err("member list", e))?;
    let id = members
        .into_inner()
        .members
        .iter()
        // A member added back has no name until it has started and published it.
        .find(|m| m.name == name || m.peer_ur_ls.contains(&t.members[v].peer_url()))
        .map(|m| m.id)
        .ok_or_else(|| ChaosError::Cluster(format!("{name} is not in the member list")))?;
    cl(t).member_remove(ep::MemberRemoveRequest { id }).await.map_err(|e| err("member remove", e))?;
    t.kill(v);
    let dir = t.members[v].data_dir.clone();
    std::fs::remove_dir_all(&dir).map_err(|e| ChaosError::Setup(format!("wiping {}: {e}", dir.display())))?;
    let peer = t.members[v].peer_url();
    cl(t)
        .member_add(ep::MemberAddRequest { peer_ur_ls: vec![peer], is_learner: false })
        .await
        .map_err(|e| err("member add", e))?;
    t.members[v].rejoin = true;
    Ok(())
}

/// After a recovery window: a member that stopped by itself is restarted, after a wipe
/// and re-add if its data was damaged (the expected way out of [`Fault::CorruptDisk`]);
/// any other exit is reported in `unexpected`. A damaged member still running is first
/// asked for the hash of everything it stores, so damage it has not read yet is found.
async fn settle(
    t: &mut Topology,
    shared: &Shared,
    timeline: &mut Vec<TimelineEntry>,
    unexpected: &mut Vec<String>,
) -> Result<(), ChaosError> {
    for i in 0..t.members.len() {
        let mut exit = t.exited(i);
        if exit.is_none() && t.members[i].damaged && t.running(i) {
            let mut m = MaintenanceClient::new(channel(&t.members[i].client_url()));
            let hashed = tokio::time::timeout(OP_TIMEOUT * 5, m.hash_kv(ep::HashKvRequest { revision: 0 })).await;
            if !matches!(hashed, Ok(Ok(_))) {
                // It may be stopping on what it found: give it a moment.
                let deadline = Instant::now() + Duration::from_secs(3);
                while exit.is_none() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    exit = t.exited(i);
                }
            }
        }
        let Some(how) = exit else {
            continue;
        };
        let name = t.members[i].name.clone();
        // Only the two ways a member may stop on damaged data count as expected.
        let on_damage = how.contains("data directory refused") || how.contains("damaged data");
        if t.members[i].damaged && on_damage {
            let l = leader(t, Duration::from_secs(30)).await?;
            remove_wipe_readd(t, l, i).await?;
            t.members[i].damaged = false;
            t.start(i)?;
            // Let it join before the next fault.
            let deadline = Instant::now() + Duration::from_secs(10);
            while status(&t.members[i].client_url()).await.is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            timeline.push(TimelineEntry {
                at: shared.secs(),
                what: format!("{name} stopped on its damaged data ({how}); wiped and added back"),
            });
        } else {
            unexpected.push(format!("{name} exited by itself: {how}"));
            timeline
                .push(TimelineEntry { at: shared.secs(), what: format!("{name} exited by itself ({how}); restarted") });
            t.start(i)?;
        }
    }
    Ok(())
}

fn proxies(t: &Topology) -> Result<&crate::proxy::Proxies, ChaosError> {
    t.proxies.as_ref().ok_or_else(|| ChaosError::Setup("the peer-link proxies are not running".into()))
}

/// Applies `fault` (the leader is `l`); returns a description.
async fn inject(t: &mut Topology, fault: Fault, l: usize, rng: &mut rand::rngs::StdRng) -> Result<String, ChaosError> {
    let n = t.members.len();
    let name = |t: &Topology, v: &[usize]| v.iter().map(|&i| t.members[i].name.clone()).collect::<Vec<_>>().join(",");
    let mut shuffled: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        shuffled.swap(i, rng.random_range(0..=i));
    }
    Ok(match fault {
        Fault::KillLeader => {
            t.kill(l);
            format!("kill -9 leader {}", name(t, &[l]))
        }
        Fault::PauseLeader => {
            t.signal(l, "STOP");
            format!("SIGSTOP leader {}", name(t, &[l]))
        }
        Fault::PartitionLeader => {
            let others: Vec<usize> = (0..n).filter(|&o| o != l).collect();
            cut(t, &[l], &others)?;
            format!("isolate leader {}", name(t, &[l]))
        }
        Fault::KillRandom => {
            let v = shuffled[0];
            t.kill(v);
            format!("kill -9 {}", name(t, &[v]))
        }
        Fault::KillMajority => {
            let v: Vec<usize> = shuffled[..n / 2 + 1].to_vec();
            for &i in &v {
                t.kill(i);
            }
            format!("kill -9 majority {}", name(t, &v))
        }
        Fault::KillAll => {
            for i in 0..n {
                t.kill(i);
            }
            "kill -9 all".to_string()
        }
        Fault::PartitionHalves => {
            let (a, b) = shuffled.split_at(n / 2);
            cut(t, a, b)?;
            format!("partition {} | {}", name(t, a), name(t, b))
        }
        Fault::LeaderInMinority => {
            let others: Vec<usize> = shuffled.iter().copied().filter(|&o| o != l).collect();
            let mut minority = vec![l];
            // Fewer than half: the leader alone of 3, the leader and one other of 5.
            minority.extend(&others[..(n - 1) / 2 - 1]);
            let majority: Vec<usize> = others.iter().copied().filter(|o| !minority.contains(o)).collect();
            cut(t, &minority, &majority)?;
            format!("partition {} (leader, minority) | {}", name(t, &minority), name(t, &majority))
        }
        Fault::Bridge => {
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            cut(t, a, b)?;
            format!("bridge {} between {} | {}", name(t, &[bridge]), name(t, a), name(t, b))
        }
        Fault::OneWayFromLeader => {
            for o in (0..n).filter(|&o| o != l) {
                t.drop_from(o, l)?;
            }
            format!("others stop hearing leader {}", name(t, &[l]))
        }
        Fault::RemoveWipeReadd => {
            let v = shuffled.iter().copied().find(|&o| o != l).unwrap_or(0);
            remove_wipe_readd(t, l, v).await?;
            format!("remove {0}, wipe its data, add it back", name(t, &[v]))
        }
        Fault::CorruptDisk => {
            let v = shuffled.iter().copied().find(|&o| o != l).unwrap_or(0);
            t.kill(v);
            let what = crate::disk::corrupt(&t.members[v].data_dir, 4, rng)?;
            t.members[v].damaged = true;
            format!("stop {}, {what}", name(t, &[v]))
        }
        Fault::SlowLeader => {
            let p = proxies(t)?;
            for o in (0..n).filter(|&o| o != l) {
                p.links[l][o].set(40, 30, 100);
                p.links[o][l].set(40, 30, 100);
            }
            format!("slow links to and from leader {}: 40±30 ms, 10% stalls", name(t, &[l]))
        }
        Fault::SlowNetwork => {
            let p = proxies(t)?;
            for link in p.links.iter().flatten() {
                link.set(rng.random_range(10..50), 10, 50);
            }
            "slow network: every peer link 10-50 ms ±10 ms, 5% stalls".to_string()
        }
        Fault::ClockSkew => {
            let secs = rng.random_range(60..3600);
            crate::clock::set(&t.members[l].clock, secs)?;
            format!("leader {}'s wall clock {secs:+} s", name(t, &[l]))
        }
        Fault::ClockStrobe => {
            let secs: i64 = rng.random_range(60..3600);
            let file = t.members[l].clock.clone();
            t.strobe = Some(tokio::spawn(async move {
                for k in 0u64.. {
                    let _ = crate::clock::set(&file, if k % 2 == 0 { secs } else { -secs });
                    tokio::time::sleep(Duration::from_millis(1100)).await;
                }
            }));
            format!("leader {}'s wall clock strobes between {secs:+} s and -{secs} s", name(t, &[l]))
        }
    })
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Seeds the fault order, the workload's choices and the timeline.
    pub seed: u64,
    /// Masters (3 or 5).
    pub masters: usize,
    /// The `flotilla` binary.
    pub bin: PathBuf,
    /// Where data dirs, logs and the report go.
    pub dir: PathBuf,
    /// Faults, injected in a seeded order, each once per round.
    pub faults: Vec<Fault>,
    /// Rounds of the fault list.
    pub rounds: usize,
    /// Concurrent sequential clients.
    pub clients: usize,
    /// Register keys.
    pub keys: usize,
    /// Environment for the members (e.g. a debug build's fault switch).
    pub member_env: Vec<(String, String)>,
    /// TLS on every port, client certificates required (else plaintext).
    pub tls: bool,
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// Seconds since the workload started.
    pub at: f64,
    /// What was done.
    pub what: String,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed (reproduce with `--seed`).
    pub seed: u64,
    /// Faults and heals.
    pub timeline: Vec<TimelineEntry>,
    /// Operations by type: [attempted, ok, failed, indeterminate].
    pub ops: BTreeMap<String, [u64; 4]>,
    /// Linearizability verdict.
    pub linearizable: String,
    /// Set workload: [adds attempted, acknowledged and present, unknown and present].
    pub set_adds: [u64; 3],
    /// Acknowledged adds missing at the end (must be 0).
    pub lost_acknowledged_writes: u64,
    /// Elements present that no add may have written (must be 0).
    pub set_unexpected: u64,
    /// Events each watcher received (they must all be equal).
    pub watch_events: u64,
    /// What the watch checker found (must be empty).
    pub watch_problems: Vec<String>,
    /// What the lease checker found.
    pub leases: crate::checker::lease::LeaseReport,
    /// Writes through one member read back through another (no read may miss its write).
    pub cross_reads: CrossReadReport,
    /// Members that exited by themselves, other than on damaged data (must be empty).
    pub unexpected_exits: Vec<String>,
    /// Per-member hash of the key-value state at one revision after healing.
    pub hashes: BTreeMap<String, String>,
    /// Whether every member had the same hash.
    pub hashes_equal: bool,
    /// Lines with "panicked" in member logs.
    pub panics: Vec<String>,
    /// Seconds from each fault to the first acknowledged write invoked after it.
    pub failover_secs: Vec<f64>,
    /// Longest time without an acknowledged write (s).
    pub longest_unavailable_secs: f64,
    /// Acknowledged writes per second before the first fault and during faults.
    pub throughput_before: f64,
    /// As above, during the faults.
    pub throughput_during: f64,
    /// The overall verdict.
    pub passed: bool,
    /// Where data and logs are (kept when the run failed).
    pub dir: String,
}

pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(1);
const HOLD: Duration = Duration::from_secs(3);
const RECOVER: Duration = Duration::from_secs(3);
const CALM: Duration = Duration::from_secs(2);
const SEARCH_BUDGET: u64 = 5_000_000;

/// The etcd range end of a prefix (the prefix with its last byte incremented).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A channel to `url`, connected at first use (TLS as the run's admin when it has TLS).
pub(crate) fn channel(url: &str) -> Channel {
    let endpoint = Channel::from_shared(url.to_string())
        .map(|c| c.connect_timeout(Duration::from_millis(500)).timeout(OP_TIMEOUT))
        .unwrap_or_else(|_| unreachable!("harness URLs are well formed"));
    flotilla_client::pool::channel(endpoint, crate::topology::client_tls().as_ref())
}

/// Whether an error certainly means the request never reached a server.
pub(crate) fn never_sent(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable && flotilla_core::limits::is_connect_failure(s.message())
}

/// What the workloads record into, and the signal to stop.
pub(crate) struct Shared {
    start: Instant,
    history: Mutex<Vec<RegisterEvent>>,
    adds: Mutex<Vec<Add>>,
    pub(crate) leases: Mutex<Vec<LeaseEvent>>,
    /// Acknowledged register writes and the revision each was written at.
    acked: Mutex<BTreeSet<Seen>>,
    pub(crate) stop: AtomicBool,
    /// Watchers stop once they have seen every revision up to this (0: not yet known).
    watch_until: AtomicI64,
}

const REGISTER_PREFIX: &str = "/chaos/r";

/// `/chaos/r7` → 7.
fn key_index(key: &str) -> Option<u32> {
    key.strip_prefix(REGISTER_PREFIX)?.parse().ok()
}

/// The watch workload: one watcher on a member, over the register keys, from `start`;
/// when its stream breaks (the member was killed, paused or cut off) it resumes on the
/// same member from the revision after the last one it saw. Returns what it saw, or
/// None if it never caught up with the final revision.
async fn watcher(shared: Arc<Shared>, url: String, start: i64) -> Option<Vec<Seen>> {
    use flotilla_proto::etcdserverpb::watch_client::WatchClient;
    use futures::StreamExt;
    let endpoint = Channel::from_shared(url)
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(1));
    let ch = flotilla_client::pool::channel(endpoint, crate::topology::client_tls().as_ref());
    let mut seen = Vec::new();
    let mut next = start;
    let deadline_after_stop = Duration::from_secs(30);
    let mut stopped_at: Option<Instant> = None;
    loop {
        let until = shared.watch_until.load(Ordering::Acquire);
        if until > 0 && next > until {
            return Some(seen);
        }
        if until > 0 {
            let t = *stopped_at.get_or_insert_with(Instant::now);
            if t.elapsed() > deadline_after_stop {
                return None;
            }
        }
        let create = ep::WatchRequest {
            request_union: Some(ep::watch_request::RequestUnion::CreateRequest(ep::WatchCreateRequest {
                key: REGISTER_PREFIX.into(),
                range_end: prefix_end(REGISTER_PREFIX),
                start_revision: next,
                ..Default::default()
            })),
        };
        let reqs = futures::stream::iter(vec![create]).chain(futures::stream::pending());
        let mut stream = match WatchClient::new(ch.clone()).watch(reqs).await {
            Ok(s) => s.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            let until = shared.watch_until.load(Ordering::Acquire);
            if until > 0 && next > until {
                return Some(seen);
            }
            if until > 0 && stopped_at.get_or_insert_with(Instant::now).elapsed() > deadline_after_stop {
                return None;
            }
            match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                Err(_) => continue, // re-check whether to stop
                Ok(Some(Ok(resp))) if !resp.canceled => {
                    for e in &resp.events {
                        if let Some(kv) = &e.kv {
                            if let Some(k) = key_index(&String::from_utf8_lossy(&kv.key)) {
                                seen.push(Seen { revision: kv.mod_revision, key: k });
                            }
                            next = next.max(kv.mod_revision + 1);
                        }
                    }
                }
                _ => break, // error, cancel or end: resume
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The set workload: add unique elements (one key each) until stopped.
async fn set_client(shared: Arc<Shared>, id: u64, urls: Vec<String>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (id << 40));
    let mut clients: Vec<KvClient<Channel>> = urls.iter().map(|u| KvClient::new(channel(u))).collect();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        n += 1;
        let element = (id << 32) | n;
        let target = rng.random_range(0..urls.len());
        let put = ep::PutRequest { key: format!("{SET_PREFIX}{element:016x}").into(), ..Default::default() };
        let res = tokio::time::timeout(OP_TIMEOUT, clients[target].put(put)).await;
        let outcome = match res {
            Ok(Ok(_)) => Outcome::Ok(()),
            Ok(Err(s)) if never_sent(&s) => Outcome::Fail,
            _ => Outcome::Info,
        };
        if !matches!(outcome, Outcome::Ok(())) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shared.adds.lock().unwrap_or_else(|p| p.into_inner()).push(Add { element, outcome });
    }
}

const SET_PREFIX: &str = "/chaos/set/";

impl Shared {
    /// Nanoseconds since the workload started.
    pub(crate) fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Seconds since the workload started (for the timeline).
    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// Runs one register operation; for a write (or a CAS that applied) also the revision it
/// was written at.
async fn one_op(
    kv: &mut KvClient<Channel>,
    key: &str,
    op: &RegisterOp,
) -> Result<(RegisterOutput, Option<i64>), tonic::Status> {
    let fut = async {
        match op {
            RegisterOp::Read => {
                let r = kv.range(ep::RangeRequest { key: key.into(), ..Default::default() }).await?.into_inner();
                Ok((
                    RegisterOutput::Value(r.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())),
                    None,
                ))
            }
            RegisterOp::Write(v) => {
                let r =
                    kv.put(ep::PutRequest { key: key.into(), value: v.clone().into(), ..Default::default() }).await?;
                Ok((RegisterOutput::Written, r.into_inner().header.map(|h| h.revision)))
            }
            RegisterOp::Cas { expected, new } => {
                let cmp = match expected {
                    Some(v) => ep::Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Value as i32,
                        key: key.into(),
                        target_union: Some(compare::TargetUnion::Value(v.clone().into())),
                        range_end: vec![],
                    },
                    None => ep::Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Create as i32,
                        key: key.into(),
                        target_union: Some(compare::TargetUnion::CreateRevision(0)),
                        range_end: vec![],
                    },
                };
                let put = ep::RequestOp {
                    request: Some(ep::request_op::Request::RequestPut(ep::PutRequest {
                        key: key.into(),
                        value: new.clone().into(),
                        ..Default::default()
                    })),
                };
                let r = kv.txn(ep::TxnRequest { compare: vec![cmp], success: vec![put], failure: vec![] }).await?;
                let r = r.into_inner();
                Ok((RegisterOutput::Cas(r.succeeded), r.header.filter(|_| r.succeeded).map(|h| h.revision)))
            }
        }
    };
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer in time")),
    }
}

async fn client(shared: Arc<Shared>, process: u32, urls: Vec<String>, pinned: Option<usize>, keys: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (u64::from(process) << 32));
    let mut clients: Vec<KvClient<Channel>> = urls.iter().map(|u| KvClient::new(channel(u))).collect();
    let mut last_seen: HashMap<String, Option<String>> = HashMap::new();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        n += 1;
        let key = format!("/chaos/r{}", rng.random_range(0..keys));
        let op = match rng.random_range(0..10) {
            0..=3 => RegisterOp::Read,
            4..=6 => RegisterOp::Write(format!("p{process}-{n}")),
            _ => RegisterOp::Cas { expected: last_seen.get(&key).cloned().flatten(), new: format!("p{process}-{n}") },
        };
        let target = pinned.unwrap_or_else(|| rng.random_range(0..urls.len()));
        let invoke = shared.now();
        let res = one_op(&mut clients[target], &key, &op).await;
        let complete = shared.now();
        let outcome = match &res {
            Ok((o, written_at)) => {
                if let RegisterOutput::Value(v) = o {
                    last_seen.insert(key.clone(), v.clone());
                }
                if let (Some(rev), Some(k)) = (written_at, key_index(&key)) {
                    shared.acked.lock().unwrap_or_else(|p| p.into_inner()).insert(Seen { revision: *rev, key: k });
                }
                Outcome::Ok(o.clone())
            }
            Err(_) if op == RegisterOp::Read => Outcome::Fail,
            Err(s) if never_sent(s) => Outcome::Fail,
            Err(_) => Outcome::Info,
        };
        if res.is_err() {
            // Do not hammer a dead member.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shared.history.lock().unwrap_or_else(|p| p.into_inner()).push(RegisterEvent {
            process,
            key,
            op,
            invoke,
            complete,
            outcome,
        });
    }
}

async fn status(url: &str) -> Option<ep::StatusResponse> {
    let mut m = MaintenanceClient::new(channel(url));
    tokio::time::timeout(OP_TIMEOUT, m.status(ep::StatusRequest {})).await.ok()?.ok().map(|r| r.into_inner())
}

/// A read after healing, retried for up to 30 s (the cluster may still be settling).
async fn final_read(
    kv: &mut KvClient<Channel>,
    what: &str,
    req: ep::RangeRequest,
) -> Result<ep::RangeResponse, ChaosError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match kv.range(req.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(e) if Instant::now() > deadline => return Err(ChaosError::Cluster(format!("{what}: {}", e.message()))),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The index of the member every reachable member calls leader.
pub(crate) async fn leader(t: &Topology, within: Duration) -> Result<usize, ChaosError> {
    let deadline = Instant::now() + within;
    loop {
        let mut ids = Vec::new();
        let mut own = Vec::new();
        for (i, u) in t.client_urls().iter().enumerate() {
            if !t.running(i) {
                continue;
            }
            if let Some(s) = status(u).await {
                ids.push(s.leader);
                own.push((i, s.header.map_or(0, |h| h.member_id)));
            }
        }
        if let Some(&l) = ids.first() {
            if l != 0 && ids.iter().all(|x| *x == l) {
                if let Some((i, _)) = own.iter().find(|(_, id)| *id == l) {
                    return Ok(*i);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(ChaosError::Cluster(format!("no agreed leader within {within:?} (seen {ids:?})")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one seeded chaos run.
pub async fn run(cfg: &RunConfig) -> Result<Report, ChaosError> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| ChaosError::Setup(format!("{}: {e}", cfg.dir.display())))?;
    let mut t = Topology::create(cfg.masters, &cfg.dir, &cfg.bin, cfg.faults.iter().any(|f| f.needs_proxy()), cfg.tls)?;
    t.env = cfg.member_env.clone();
    t.faketime = cfg.faults.iter().any(|f| f.needs_faketime());
    for i in 0..cfg.masters {
        t.start(i)?;
    }
    // Cross-member reads start with the members, before any leader is known.
    let cross = Arc::new(CrossRead::default());
    let mut cross_tasks = Vec::new();
    for id in 0..2 {
        cross_tasks.push(tokio::spawn(crate::cross_read::client(cross.clone(), id + 1, t.client_urls(), cfg.seed)));
    }
    leader(&t, Duration::from_secs(20)).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        history: Mutex::new(Vec::new()),
        adds: Mutex::new(Vec::new()),
        leases: Mutex::new(Vec::new()),
        acked: Mutex::new(BTreeSet::new()),
        stop: AtomicBool::new(false),
        watch_until: AtomicI64::new(0),
    });
    // Watchers on every member, from the revision before any workload write.
    let start_rev = {
        let l = leader(&t, Duration::from_secs(20)).await?;
        status(&t.client_urls()[l]).await.and_then(|s| s.header).map_or(1, |h| h.revision) + 1
    };
    let watchers: Vec<_> =
        t.client_urls().into_iter().map(|u| tokio::spawn(watcher(shared.clone(), u, start_rev))).collect();
    let urls = t.client_urls();
    let mut tasks = Vec::new();
    for p in 0..cfg.clients {
        // Half the clients stay on one member; the others pick one per operation.
        let pinned = (p % 2 == 0).then_some(p / 2 % cfg.masters);
        tasks.push(tokio::spawn(client(shared.clone(), p as u32, urls.clone(), pinned, cfg.keys, cfg.seed)));
    }
    for id in 0..2 {
        tasks.push(tokio::spawn(set_client(shared.clone(), id + 1, urls.clone(), cfg.seed)));
        tasks.push(tokio::spawn(crate::lease::client(shared.clone(), id + 1, urls.clone(), cfg.seed)));
    }
    let mut timeline = Vec::new();
    let mut fault_times = Vec::new();
    let mut exits = Vec::new();
    tokio::time::sleep(CALM).await;
    let first_fault = shared.now();
    for _ in 0..cfg.rounds {
        let mut order = cfg.faults.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        for fault in order {
            let l = leader(&t, Duration::from_secs(30)).await?;
            let what = inject(&mut t, fault, l, &mut rng).await?;
            // From when the fault is in place (iptables rules take a few ms to add).
            fault_times.push(shared.now());
            timeline.push(TimelineEntry { at: shared.secs(), what });
            tokio::time::sleep(HOLD).await;
            t.heal()?;
            for i in 0..cfg.masters {
                if !t.running(i) {
                    t.start(i)?;
                }
            }
            timeline.push(TimelineEntry {
                at: shared.secs(),
                what: "heal: rules removed, paused resumed, killed restarted".into(),
            });
            tokio::time::sleep(RECOVER).await;
            settle(&mut t, &shared, &mut timeline, &mut exits).await?;
        }
    }
    let faults_end = shared.now();
    shared.stop.store(true, Ordering::Release);
    cross.stop();
    let stopped = Instant::now();
    for task in tasks.into_iter().chain(cross_tasks) {
        let _ = task.await;
    }
    let cross_reads = cross.report();
    t.heal()?;
    settle(&mut t, &shared, &mut timeline, &mut exits).await?;
    let history = std::mem::take(&mut *shared.history.lock().unwrap_or_else(|p| p.into_inner()));
    let adds = std::mem::take(&mut *shared.adds.lock().unwrap_or_else(|p| p.into_inner()));
    let lease_events = std::mem::take(&mut *shared.leases.lock().unwrap_or_else(|p| p.into_inner()));

    // Converge: every member reaches the leader's revision, then hash at it.
    let l = leader(&t, Duration::from_secs(20)).await?;
    let mut kv = KvClient::new(channel(&urls[l]));
    let rev = final_read(
        &mut kv,
        "final read",
        ep::RangeRequest { key: "/chaos/".into(), range_end: "/chaos0".into(), count_only: true, ..Default::default() },
    )
    .await?
    .header
    .map_or(0, |h| h.revision);
    let mut final_set = BTreeSet::new();
    let set_read = ep::RangeRequest {
        key: SET_PREFIX.into(),
        range_end: prefix_end(SET_PREFIX),
        keys_only: true,
        ..Default::default()
    };
    let r = final_read(&mut kv, "final set read", set_read).await?;
    for kv in r.kvs {
        let k = String::from_utf8_lossy(&kv.key).into_owned();
        if let Some(e) = k.strip_prefix(SET_PREFIX).and_then(|h| u64::from_str_radix(h, 16).ok()) {
            final_set.insert(e);
        }
    }
    let set_report = set::check(&adds, &final_set);
    // Watches: each must reach the final revision, in order, without duplicates or
    // missing acknowledged writes, and all must have seen the same events.
    // The newest register write: the last revision a watcher of the register keys can see.
    let last_register = final_read(
        &mut kv,
        "final register read",
        ep::RangeRequest {
            key: REGISTER_PREFIX.into(),
            range_end: prefix_end(REGISTER_PREFIX),
            revision: rev,
            keys_only: true,
            ..Default::default()
        },
    )
    .await?
    .kvs
    .iter()
    .map(|kv| kv.mod_revision)
    .max()
    .unwrap_or(0);
    shared.watch_until.store(last_register.max(1), Ordering::Release);
    let acked = std::mem::take(&mut *shared.acked.lock().unwrap_or_else(|p| p.into_inner()));
    let mut watch_problems = Vec::new();
    let mut streams = Vec::new();
    for (i, w) in watchers.into_iter().enumerate() {
        let name = format!("m{}", i + 1);
        match w.await.ok().flatten() {
            None => watch_problems.push(format!("{name}: the watch never caught up with revision {last_register}")),
            Some(stream) => {
                let r = watch::check(&stream, &acked, &stream.iter().copied().collect(), start_rev, last_register);
                if !r.valid() {
                    let first = |v: &[watch::Seen]| {
                        v.iter().take(3).map(|s| format!("r{} k{}", s.revision, s.key)).collect::<Vec<_>>().join(" ")
                    };
                    watch_problems.push(format!(
                        "{name}: {} out of order, {} duplicated [{}], {} acknowledged writes missing [{}]",
                        r.out_of_order.len(),
                        r.duplicates.len(),
                        first(&r.duplicates),
                        r.missing.len(),
                        first(&r.missing)
                    ));
                }
                streams.push((name, stream));
            }
        }
    }
    if let Some((first, reference)) = streams.first() {
        for (name, s) in &streams[1..] {
            if s != reference {
                watch_problems.push(format!("{name} saw different events than {first}"));
            }
        }
    }
    let watch_events = streams.first().map_or(0, |(_, s)| s.len());
    let mut hashes = BTreeMap::new();
    for (i, u) in urls.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let name = t.members[i].name.clone();
        loop {
            let caught_up = status(u).await.is_some_and(|s| s.header.is_some_and(|h| h.revision >= rev));
            if caught_up {
                let mut m = MaintenanceClient::new(channel(u));
                let h = m.hash_kv(ep::HashKvRequest { revision: rev }).await;
                hashes.insert(
                    name,
                    h.map_or_else(|e| format!("error: {}", e.message()), |r| format!("{:08x}", r.into_inner().hash)),
                );
                break;
            }
            if Instant::now() > deadline {
                hashes.insert(name, format!("did not reach revision {rev}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let hashes_equal = {
        let v: Vec<&String> = hashes.values().collect();
        v.windows(2).all(|w| w[0] == w[1]) && !v.iter().any(|h| h.starts_with("error") || h.starts_with("did not"))
    };
    // Every lease promise has run out TTL seconds after the workload stopped; give the
    // leader a few more to notice and commit the revokes, then no lease key may be left.
    let grace = Duration::from_secs(crate::lease::TTL as u64 + 5);
    tokio::time::sleep(grace.saturating_sub(stopped.elapsed())).await;
    // A leader elected while healing gives every lease its full TTL again: allow one
    // more TTL and grace before calling a lease that never expires.
    let lease_read = ep::RangeRequest {
        key: crate::lease::LEASE_PREFIX.into(),
        range_end: prefix_end(crate::lease::LEASE_PREFIX),
        keys_only: true,
        ..Default::default()
    };
    let give_up = Instant::now() + grace;
    let left = loop {
        let r = final_read(&mut kv, "final lease read", lease_read.clone()).await?;
        if r.kvs.is_empty() || Instant::now() >= give_up {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let left: BTreeSet<i64> = left.kvs.iter().filter_map(|kv| crate::lease::lease_of_key(&kv.key)).collect();
    let lease_report = crate::checker::lease::check(&lease_events, &left);
    drop(t);

    let verdict = linearizable::check(&history, SEARCH_BUDGET);
    let mut ops: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    let mut count = |kind: &str, ok: bool, fail: bool| {
        let c = ops.entry(kind.into()).or_default();
        c[0] += 1;
        c[if ok {
            1
        } else if fail {
            2
        } else {
            3
        }] += 1;
    };
    for e in &lease_events {
        let kind = format!("lease {}", format!("{:?}", e.op).to_lowercase());
        count(&kind, matches!(e.outcome, Outcome::Ok(_)), e.outcome == Outcome::Fail);
    }
    let mut ok_writes: Vec<(u64, u64)> = Vec::new(); // (invoke, complete)
    for e in &history {
        let kind = match e.op {
            RegisterOp::Read => "read",
            RegisterOp::Write(_) => "write",
            RegisterOp::Cas { .. } => "cas",
        };
        count(kind, matches!(e.outcome, Outcome::Ok(_)), e.outcome == Outcome::Fail);
        if matches!(e.outcome, Outcome::Ok(_)) && !matches!(e.op, RegisterOp::Read) {
            ok_writes.push((e.invoke, e.complete));
        }
    }
    ok_writes.sort_by_key(|w| w.1);
    let secs = |ns: u64| ns as f64 / 1e9;
    let failover_secs = fault_times
        .iter()
        .map(|&f| ok_writes.iter().filter(|w| w.0 >= f).map(|w| secs(w.1 - f)).fold(f64::INFINITY, f64::min))
        .collect();
    let longest = ok_writes.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or(0);
    let count_in = |a: u64, b: u64| ok_writes.iter().filter(|w| w.1 >= a && w.1 < b).count() as f64;
    let mut panics = Vec::new();
    for i in 1..=cfg.masters {
        let log = std::fs::read_to_string(cfg.dir.join(format!("m{i}.log"))).unwrap_or_default();
        panics.extend(log.lines().filter(|l| l.contains("panicked")).map(|l| format!("m{i}: {l}")));
    }
    let linearizable = match &verdict {
        Verdict::Linearizable => "linearizable".to_string(),
        Verdict::NotLinearizable { key, .. } => format!("NOT linearizable (key {key})"),
        Verdict::Unknown { key } => format!("unknown: search budget exhausted (key {key})"),
    };
    let passed = verdict == Verdict::Linearizable
        && hashes_equal
        && panics.is_empty()
        && set_report.valid()
        && watch_problems.is_empty()
        && lease_report.valid()
        && cross_reads.valid()
        && exits.is_empty();
    let report = Report {
        seed: cfg.seed,
        timeline,
        ops,
        linearizable,
        set_adds: [adds.len() as u64, set_report.ok as u64, set_report.recovered.len() as u64],
        lost_acknowledged_writes: set_report.lost.len() as u64,
        set_unexpected: set_report.unexpected.len() as u64,
        watch_events: watch_events as u64,
        watch_problems,
        leases: lease_report,
        cross_reads,
        unexpected_exits: exits,
        hashes,
        hashes_equal,
        panics,
        failover_secs,
        longest_unavailable_secs: secs(longest),
        throughput_before: count_in(0, first_fault) / secs(first_fault).max(1e-9),
        throughput_during: count_in(first_fault, faults_end) / secs(faults_end - first_fault).max(1e-9),
        passed,
        dir: cfg.dir.display().to_string(),
    };
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    let _ = std::fs::write(cfg.dir.join("report.json"), &json);
    let _ = std::fs::write(cfg.dir.join("history.json"), serde_json::to_string(&history).unwrap_or_default());
    Ok(report)
}
