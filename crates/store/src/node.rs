//! A running member: opens the data dir (refusing one from another cluster), starts Raft,
//! and offers the operations the gRPC services need: propose a command (forwarded to the
//! leader when this member is not it), linearizable read barriers, membership changes and
//! response headers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_core::cluster::{cluster_id, member_id};
use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::raft as pb;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ChangeMembershipError, ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};

use crate::config::{ClusterState, NodeConfig};
use crate::error::StoreError;
use crate::lease::Lessor;
use crate::log_store::LogStore;
use crate::metrics::Metrics;
use crate::network::{Network, PeerPool};
use crate::rocks::{Batch, Cf, Db, Sync};
use crate::state_machine::{Shared, StateMachine};
use crate::types::{Member, NodeId, Raft, TypeConfig};

const KEY_MEMBER_ID: &[u8] = b"member_id";
const KEY_CLUSTER_ID: &[u8] = b"cluster_id";

/// A running member. Shared by every service through an `Arc`.
pub struct Node {
    /// This member's id.
    pub id: NodeId,
    /// The cluster's id (0 until a joining member hears from the leader).
    cluster: Arc<AtomicU64>,
    db: Db,
    /// The Raft handle.
    pub raft: Raft,
    /// State machine state shared with the services.
    pub sm: Arc<Shared>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Leader-side lease clock.
    pub lessor: Arc<Lessor>,
    /// Clients to peers, for forwarding.
    pub peers: PeerPool,
    /// The configuration it was started with.
    pub config: NodeConfig,
    /// The member info this member publishes about itself.
    pub me: Member,
    /// Waiting read-index requests, served in rounds by [`read_index_rounds`].
    reads: tokio::sync::mpsc::UnboundedSender<ReadWaiter>,
    /// Writes waiting to be proposed together, see [`propose_batches`].
    proposals: tokio::sync::mpsc::UnboundedSender<(pb::Command, ProposalWaiter)>,
    /// Writes waiting to be forwarded to the leader together (on a follower).
    forwards: tokio::sync::mpsc::UnboundedSender<(pb::Command, ProposalWaiter)>,
    /// When to campaign (openraft's own election timer is off), see [`crate::election`].
    election: Arc<crate::election::Timer>,
}

type ProposalWaiter = tokio::sync::oneshot::Sender<Result<pb::CommandResult, StoreError>>;

/// Most commands in one batch entry.
const MAX_BATCH_COMMANDS: usize = 512;
/// Most encoded bytes of commands in one batch entry (a larger command goes alone).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Batches proposed and not yet answered at once, by where they go. On the leader two
/// entries in flight keep the log busy (openraft 0.10 replicates an entry while the
/// previous one is still being fsynced); a follower's forwarded batches each wait for a
/// whole commit round, so more of them overlap.
const fn max_batches_in_flight(to: BatchTo) -> usize {
    match to {
        BatchTo::Log => 2,
        BatchTo::Leader => 6,
    }
}

/// Whether a command may share a log entry with others: writes to keys do; compaction and
/// lease changes, which read state another command of the batch could change, go alone.
fn batchable(cmd: &pb::Command) -> bool {
    use pb::command::Kind;
    matches!(cmd.kind, Some(Kind::Put(_) | Kind::DeleteRange(_) | Kind::Txn(_)))
}

/// Where a batch goes: appended here (on the leader), or sent to the leader as one
/// Propose call (on a follower).
#[derive(Clone, Copy, PartialEq, Eq)]
enum BatchTo {
    Log,
    Leader,
}

/// Group commit: writes that arrive together are put in one batch entry, applied in order
/// with a revision each — one log entry, one fsync on each member and one share of a
/// replication round trip for all of them. On the leader batches go into the log; on a
/// follower the writes its clients send are batched the same way and forwarded as one
/// Propose call (one request for the leader to decode and answer instead of one per
/// write). While [`max_batches_in_flight`] batches are in flight, new writes wait and
/// join the next one.
async fn propose_batches(
    node: std::sync::Weak<Node>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(pb::Command, ProposalWaiter)>,
    to: BatchTo,
) {
    use prost::Message;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut carry: Option<(pb::Command, ProposalWaiter)> = None;
    loop {
        let first = match carry.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => return,
            },
        };
        while in_flight.len() >= max_batches_in_flight(to) {
            in_flight.join_next().await;
        }
        // A write whose requester has gone (its client gave up, or it was told the
        // request timed out) is never proposed afterwards: proposed late, it would land
        // after writes its client made since, bringing an old value back (chaos seeds 603
        // and 606: a put that timed out while queued behind batches sent to a cut-off
        // leader overwrote the ten puts its client made after it).
        let (mut batch, mut bytes, mut abandoned) = (Vec::new(), 0, 0);
        let mut next = Some(first);
        while let Some(c) = next.take() {
            if c.1.is_closed() {
                abandoned += 1;
            } else {
                let len = c.0.encoded_len();
                // A command larger than the limit goes alone.
                if !batch.is_empty() && bytes + len > MAX_BATCH_BYTES {
                    carry = Some(c);
                    break;
                }
                bytes += len;
                batch.push(c);
            }
            if batch.len() < MAX_BATCH_COMMANDS {
                next = rx.try_recv().ok();
            }
        }
        let Some(node) = node.upgrade() else { return };
        node.metrics.proposals_abandoned.inc_by(abandoned);
        if batch.is_empty() {
            continue;
        }
        in_flight.spawn(async move {
            let (commands, mut waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let single = commands.len() == 1;
            let cmd = if single {
                commands.into_iter().next().unwrap_or_default()
            } else {
                pb::Command { kind: Some(pb::command::Kind::Batch(pb::CommandBatch { commands })) }
            };
            let answer = match to {
                BatchTo::Log => node.client_write(cmd).await,
                BatchTo::Leader => {
                    // A forward nobody waits for any more is abandoned (the RPC dropped):
                    // while it is not yet on the wire — the leader unreachable, the
                    // connection still being made — it never leaves; already sent, the
                    // leader is told it was cancelled. Otherwise it would land whenever
                    // the link came back, after writes its clients made since (chaos
                    // seed 610: puts that timed out on a member cut off from the leader
                    // were proposed 4 s later, when the partition healed).
                    tokio::select! {
                        answer = node.propose_routed(cmd) => answer,
                        () = all_gone(&mut waiters) => {
                            node.metrics.proposals_abandoned.inc_by(waiters.len() as u64);
                            return;
                        }
                    }
                }
            };
            match answer {
                Ok(r) if single => {
                    if let Some(tx) = waiters.pop() {
                        let _ = tx.send(Ok(r));
                    }
                }
                Ok(pb::CommandResult { kind: Some(pb::command_result::Kind::Batch(b)) })
                    if b.results.len() == waiters.len() =>
                {
                    for (tx, r) in waiters.into_iter().zip(b.results) {
                        let _ = tx.send(Ok(r));
                    }
                }
                Ok(other) => {
                    let e = StoreError::Fatal(format!("a batch entry applied to an unexpected result: {other:?}"));
                    for tx in waiters {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for tx in waiters {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Completes once every waiter's receiver has gone.
async fn all_gone(waiters: &mut [ProposalWaiter]) {
    for w in waiters.iter_mut() {
        w.closed().await;
    }
}

type ReadWaiter = tokio::sync::oneshot::Sender<Result<u64, StoreError>>;

/// A leader as seen at one moment: who, and in which term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leadership {
    id: NodeId,
    term: u64,
}

/// Serves read-index requests in rounds: every request that arrived while a round ran is
/// answered by the next round, which starts after it arrived.
async fn read_index_rounds(node: std::sync::Weak<Node>, mut rx: tokio::sync::mpsc::UnboundedReceiver<ReadWaiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiting.push(w);
        }
        let Some(node) = node.upgrade() else { return };
        let r = node.read_index_round().await;
        drop(node);
        for w in waiting {
            let _ = w.send(r.clone());
        }
    }
}

fn read_u64(db: &Db, key: &[u8]) -> Result<Option<u64>, StoreError> {
    match db.get(Cf::RaftMeta, key)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt(format!("identity record {key:?} is damaged")))?;
            Ok(Some(u64::from_be_bytes(b)))
        }
    }
}

fn has_any(db: &Db, cf: Cf) -> Result<bool, StoreError> {
    let mut any = false;
    db.scan(cf, &[], crate::rocks::Dir::Forward, |_, _| {
        any = true;
        Ok(false)
    })?;
    Ok(any)
}

/// Checks (or, for a fresh data dir, records) which cluster and member this data dir
/// belongs to. Returns `(member_id, cluster_id)`.
fn check_identity(db: &Db, cfg: &NodeConfig) -> Result<(u64, u64), StoreError> {
    let me = member_id(&cfg.initial_cluster_token, &cfg.advertise_peer);
    let flags_cluster = cluster_id(&cfg.initial_cluster_token, &cfg.initial_cluster);
    let stored_member = read_u64(db, KEY_MEMBER_ID)?;
    let stored_cluster = read_u64(db, KEY_CLUSTER_ID)?;
    match (stored_member, stored_cluster) {
        (Some(m), Some(c)) => {
            if m != me {
                return Err(StoreError::Corrupt(format!(
                    "{} belongs to member {m:x}, but --advertise-peer {} and --initial-cluster-token {:?} make this member {me:x}",
                    cfg.data_dir.display(),
                    cfg.advertise_peer,
                    cfg.initial_cluster_token
                )));
            }
            if cfg.initial_cluster_state == ClusterState::New && c != flags_cluster {
                return Err(StoreError::Corrupt(format!(
                    "{} belongs to cluster {c:x}, but --initial-cluster and --initial-cluster-token describe cluster {flags_cluster:x}",
                    cfg.data_dir.display()
                )));
            }
            Ok((m, c))
        }
        (None, None) => {
            if has_any(db, Cf::RaftLog)? || has_any(db, Cf::KvIndex)? || has_any(db, Cf::RaftMeta)? {
                return Err(StoreError::Corrupt(format!(
                    "{} holds Raft or key-value data but no member identity; refusing to guess",
                    cfg.data_dir.display()
                )));
            }
            // A joining member learns the real cluster id from the leader; the founding
            // members all compute the same one from their flags.
            let c = if cfg.initial_cluster_state == ClusterState::New { flags_cluster } else { 0 };
            let mut b = Batch::new();
            b.put(Cf::RaftMeta, KEY_MEMBER_ID, me.to_be_bytes());
            b.put(Cf::RaftMeta, KEY_CLUSTER_ID, c.to_be_bytes());
            db.write(b, Sync::Yes)?;
            Ok((me, c))
        }
        _ => Err(StoreError::Corrupt(format!("{} has a partial member identity", cfg.data_dir.display()))),
    }
}

/// Builds the data dir of member `name` of a new cluster (`initial_cluster`, `token`)
/// from a saved snapshot, as `etcdutl snapshot restore` does: the member's identity and
/// the snapshot's keys, revisions and leases. Start the member afterwards with the same
/// `--initial-cluster`, `--initial-cluster-token` and `--initial-cluster-state new`; every
/// member restored from the same file starts from the same state. Refuses a data dir
/// that holds anything. Returns the revision restored.
pub fn restore(
    data_dir: &std::path::Path,
    name: &str,
    initial_cluster: &[flotilla_core::cluster::InitialMember],
    token: &str,
    snapshot: &[u8],
    opts: crate::state_machine::RestoreOptions,
) -> Result<i64, StoreError> {
    let me = initial_cluster
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| StoreError::InvalidArgument(format!("--name {name:?} is not in --initial-cluster")))?;
    let empty = match std::fs::read_dir(data_dir) {
        Ok(mut d) => d.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(StoreError::Storage(format!("cannot read data dir {}: {e}", data_dir.display()))),
    };
    if !empty {
        return Err(StoreError::InvalidArgument(format!(
            "{} is not empty: a restore makes a new data dir, it never writes over one",
            data_dir.display()
        )));
    }
    // A file that is no snapshot, or options that cannot apply to it, are refused before
    // anything is written.
    let saved = crate::state_machine::check_snapshot(snapshot)?;
    opts.bumped(saved)?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| StoreError::Storage(format!("cannot create data dir {}: {e}", data_dir.display())))?;
    let db = Db::open(&data_dir.join("db"))?;
    let revision = crate::state_machine::restore(&db, snapshot, opts)?;
    let mut b = Batch::new();
    b.put(Cf::RaftMeta, KEY_MEMBER_ID, member_id(token, &me.peer_url).to_be_bytes());
    b.put(Cf::RaftMeta, KEY_CLUSTER_ID, cluster_id(token, initial_cluster).to_be_bytes());
    db.write(b, Sync::Yes)?;
    Ok(revision)
}

fn raft_config(cfg: &NodeConfig) -> Result<openraft::Config, StoreError> {
    let election = cfg.election_timeout.as_millis() as u64;
    let c = openraft::Config {
        cluster_name: cfg.initial_cluster_token.clone(),
        heartbeat_interval: cfg.heartbeat_interval.as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
        max_in_snapshot_log_to_keep: 1000.min(cfg.snapshot_count),
        snapshot_max_chunk_size: 4 << 20,
        // Many small entries per AppendEntries; a batch of large ones is split into
        // requests below the peer message limit by crate::network.
        max_payload_entries: 256,
        // Campaigns are started by crate::election, with a fresh random delay each time,
        // each one after a pre-vote round (which is what this switches on for
        // openraft's own timer, were it on).
        enable_elect: false,
        enable_pre_vote: Some(true),
        // Replicate an entry as soon as it is written (readable), not at the end of
        // RaftCore's round of messages.
        broadcast_submitted_on_append: Some(true),
        ..Default::default()
    };
    c.validate().map_err(|e| StoreError::InvalidArgument(format!("invalid raft timing: {e}")))
}

impl Node {
    /// Opens the data dir and starts Raft. Does not start any server.
    pub async fn start(cfg: NodeConfig) -> Result<Arc<Node>, StoreError> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| StoreError::Storage(format!("cannot create data dir {}: {e}", cfg.data_dir.display())))?;
        let db = Db::open(&cfg.data_dir.join("db"))?;
        // What a crashed process wrote without an fsync may still be in the page cache and
        // is read back now; openraft takes the log it finds for durable (a restarted
        // leader counts its own tail toward the quorum). Make it so before Raft starts.
        // (RocksDB's recovery flush usually has already; this does not depend on it.)
        db.sync_wal()?;
        let (id, cluster) = check_identity(&db, &cfg)?;
        let metrics = Arc::new(Metrics::new());
        let log = LogStore::new(db.clone(), metrics.clone());
        let sm = StateMachine::open(db.clone(), metrics.clone(), cfg.data_dir.join("snapshots"))?;
        let shared = sm.shared();
        let cluster = Arc::new(AtomicU64::new(cluster));
        let election = Arc::new(crate::election::Timer::new(cfg.election_timeout, tokio::time::Instant::now()));
        let peer_tls = cfg.peer_tls.as_ref().map(|t| t.client.clone());
        let network = Network {
            id,
            cluster: cluster.clone(),
            election: election.clone(),
            peers: PeerPool::new(peer_tls.clone()),
            replication_timeout: cfg.replication_timeout,
        };
        if cfg.initial_cluster_state == ClusterState::New {
            // Every founding member must write the very same initial membership (at log
            // index 0), so it holds only what all of them know: names and peer URLs. Each
            // member then publishes its client URLs through the log.
            let mut nodes = BTreeMap::new();
            for m in &cfg.initial_cluster {
                let info =
                    Member { name: m.name.clone(), peer_urls: vec![m.peer_url.to_string()], client_urls: vec![] };
                nodes.insert(member_id(&cfg.initial_cluster_token, &m.peer_url), info);
            }
            let voters = BTreeSet::from_iter(nodes.keys().copied());
            let membership = crate::types::Membership::new(vec![voters], nodes)
                .map_err(|e| StoreError::InvalidArgument(format!("--initial-cluster: {e}")))?;
            if log.bootstrap(membership)? {
                tracing::info!(member = format!("{id:x}"), "bootstrapped a new cluster");
            } else {
                tracing::info!("raft state exists; resuming");
            }
        }
        let raft = Raft::new(id, Arc::new(raft_config(&cfg)?), network, log, sm)
            .await
            .map_err(|e| StoreError::Fatal(e.to_string()))?;
        let me = Member {
            name: cfg.name.clone(),
            peer_urls: vec![cfg.advertise_peer.to_string()],
            client_urls: vec![cfg.advertise_client.to_string()],
        };
        let lessor = Lessor::new(shared.mvcc.clone());
        let (reads, reads_rx) = tokio::sync::mpsc::unbounded_channel();
        let (proposals, proposals_rx) = tokio::sync::mpsc::unbounded_channel();
        let (forwards, forwards_rx) = tokio::sync::mpsc::unbounded_channel();
        let node = Arc::new(Node {
            id,
            cluster,
            db,
            raft,
            sm: shared,
            metrics,
            lessor,
            peers: PeerPool::new(peer_tls),
            config: cfg,
            me,
            reads,
            proposals,
            forwards,
            election: election.clone(),
        });
        tokio::spawn(read_index_rounds(Arc::downgrade(&node), reads_rx));
        tokio::spawn(propose_batches(Arc::downgrade(&node), proposals_rx, BatchTo::Log));
        tokio::spawn(propose_batches(Arc::downgrade(&node), forwards_rx, BatchTo::Leader));
        tokio::spawn(crate::election::run(Arc::downgrade(&node), election));
        tokio::spawn(watch_raft_metrics(node.clone()));
        tokio::spawn(crate::lease::run(node.clone()));
        tokio::spawn(crate::compactor::run(Arc::downgrade(&node), node.config.compaction_retention));
        tokio::spawn(publish_self(node.clone()));
        Ok(node)
    }

    /// The cluster's id; 0 while a joining member has not yet heard from the leader.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.load(Ordering::Acquire)
    }

    /// Checks the cluster id a peer sent. A joining member adopts the first one it hears
    /// (and records it); a mismatch means the peer belongs to another cluster.
    pub fn check_peer_cluster(&self, theirs: u64) -> Result<(), StoreError> {
        let mine = self.cluster_id();
        if theirs == 0 || theirs == mine {
            return Ok(());
        }
        if mine != 0 {
            return Err(StoreError::InvalidArgument(format!(
                "peer belongs to cluster {theirs:x}, this member to cluster {mine:x}"
            )));
        }
        let mut b = Batch::new();
        b.put(Cf::RaftMeta, KEY_CLUSTER_ID, theirs.to_be_bytes());
        self.db.write(b, Sync::Yes)?;
        self.cluster.store(theirs, Ordering::Release);
        tracing::info!(cluster = format!("{theirs:x}"), "joined cluster");
        Ok(())
    }

    /// Notes that a leader was heard from (an AppendEntries or snapshot chunk it sent was
    /// accepted).
    pub fn heard_from_leader(&self) {
        self.election.heard(tokio::time::Instant::now());
    }

    /// The known leader, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The member info of `id` from the current membership.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.raft.metrics().borrow_watched().membership_config.membership().get_node(&id).cloned()
    }

    /// A client to the peer service of member `id` (normally the leader).
    pub fn peer_client(
        &self,
        id: NodeId,
    ) -> Result<flotilla_proto::raft::raft_peer_client::RaftPeerClient<tonic::transport::Channel>, StoreError> {
        let member = self.member(id).ok_or(StoreError::NoLeader)?;
        self.peers.get(&member).ok_or(StoreError::NoLeader)
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ep::ResponseHeader> {
        Some(ep::ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow_watched().current_term,
        })
    }

    /// Fills in the header fields apply cannot know (cluster, member, term).
    pub fn fix_header(&self, h: &mut Option<ep::ResponseHeader>) {
        let rev = h.as_ref().map_or_else(|| self.sm.mvcc.revision(), |h| h.revision);
        *h = self.header(rev);
    }

    /// Waits until a leader is known and reachable from here: this member, or one whose
    /// peer URL the membership records (or the request timeout passes).
    async fn wait_leader(&self, deadline: tokio::time::Instant) -> Result<Leadership, StoreError> {
        let mut rx = self.raft.server_metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Some(l) = m.current_leader {
                    let known = m.membership_config.membership().get_node(&l).is_some_and(|n| !n.peer_urls.is_empty());
                    if l == self.id || known {
                        return Ok(Leadership { id: l, term: m.vote.leader_id().term });
                    }
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(StoreError::Stopped),
                Err(_) => return Err(StoreError::NoLeader),
            }
        }
    }

    /// Waits until this member sees a leadership other than `old`: another leader, or the
    /// same member elected again in a later term.
    async fn wait_leader_change(&self, old: Leadership, deadline: tokio::time::Instant) -> Result<(), StoreError> {
        let mut rx = self.raft.server_metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if m.current_leader.is_some_and(|l| l != old.id || m.vote.leader_id().term > old.term) {
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(StoreError::Stopped),
                Err(_) => return Err(StoreError::NoLeader),
            }
        }
    }

    /// Proposes a command and returns what applying it produced. On a follower the command
    /// is sent to the leader. A write is never sent twice: it is retried only when the
    /// member it went to refused it without proposing it.
    pub async fn propose(&self, cmd: pb::Command) -> Result<pb::CommandResult, StoreError> {
        self.metrics.proposals.inc();
        let res = self.propose_inner(cmd).await;
        if res.is_err() {
            self.metrics.proposals_failed.inc();
        }
        let result = res?;
        if let Some(pb::command_result::Kind::Error(e)) = &result.kind {
            return Err(StoreError::Remote { code: e.code, message: e.message.clone() });
        }
        Ok(result)
    }

    async fn propose_inner(&self, cmd: pb::Command) -> Result<pb::CommandResult, StoreError> {
        if batchable(&cmd) && !self.is_leader() {
            // Forwarded together with the other writes waiting here.
            return self.through_queue(&self.forwards, cmd).await;
        }
        self.propose_routed(cmd).await
    }

    /// Hands `cmd` to a batching queue ([`propose_batches`]) and waits for its result, up to
    /// the request timeout. A command still queued when its waiter gives up (here, or
    /// because the caller went away) is dropped unsent.
    async fn through_queue(
        &self,
        queue: &tokio::sync::mpsc::UnboundedSender<(pb::Command, ProposalWaiter)>,
        cmd: pb::Command,
    ) -> Result<pb::CommandResult, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        queue.send((cmd, tx)).map_err(|_| StoreError::Stopped)?;
        match tokio::time::timeout(self.config.request_timeout, rx).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(_)) => Err(StoreError::Stopped),
            Ok(Ok(r)) => r,
        }
    }

    /// Proposes on the leader, wherever it is (this member, or one a command is sent to).
    async fn propose_routed(&self, cmd: pb::Command) -> Result<pb::CommandResult, StoreError> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        loop {
            let leader = self.wait_leader(deadline).await?;
            if leader.id == self.id {
                return self.propose_local(cmd).await;
            }
            let mut client = self.peer_client(leader.id)?;
            let mut req = tonic::Request::new(pb::ProposeRequest { command: Some(cmd.clone()) });
            req.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let answer = tokio::select! {
                answer = client.propose(req) => answer,
                // The leader it went to was deposed meanwhile. Its answer may never come
                // (a cut-off leader's connection dies only with keepalive, seconds later)
                // and must not hold up the writes queued behind this one; whether this
                // one was made is not known.
                changed = self.wait_leader_change(leader, deadline) => {
                    return Err(match changed {
                        Ok(()) | Err(StoreError::NoLeader) => StoreError::Timeout,
                        Err(e) => e,
                    });
                }
            };
            match answer {
                Ok(r) => {
                    return r.into_inner().result.ok_or_else(|| StoreError::Fatal("leader sent an empty result".into()))
                }
                Err(s)
                    if s.code() == tonic::Code::FailedPrecondition
                        && s.message() == StoreError::NotLeader.to_string() =>
                {
                    // Refused before proposing: safe to try the new leader.
                    self.wait_leader_change(leader, deadline).await?;
                }
                Err(s) if crate::network::never_sent(&s) => {
                    // Never reached the leader: safe to retry once a new one is known.
                    self.wait_leader_change(leader, deadline).await?;
                }
                Err(s) if s.code() == tonic::Code::DeadlineExceeded => return Err(StoreError::Timeout),
                Err(s) => return Err(StoreError::Remote { code: s.code() as i32, message: s.message().to_string() }),
            }
        }
    }

    /// Proposes on this member, which must be the leader.
    pub async fn propose_local(&self, cmd: pb::Command) -> Result<pb::CommandResult, StoreError> {
        if !self.is_leader() {
            return Err(StoreError::NotLeader);
        }
        if batchable(&cmd) {
            return self.through_queue(&self.proposals, cmd).await;
        }
        self.client_write(cmd).await
    }

    /// Appends one entry through Raft and waits for its result.
    async fn client_write(&self, cmd: pb::Command) -> Result<pb::CommandResult, StoreError> {
        let fut = self.raft.client_write(cmd);
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok(resp)) => Ok(resp.data),
            // Not appended (ForwardToLeader), or appended and then discarded when another
            // leader's log replaced it (LogEntryDiscarded): either way this member no
            // longer leads, and the write is not retried here (the discarded one may yet
            // have been committed elsewhere).
            Ok(Err(RaftError::APIError(
                ClientWriteError::ForwardToLeader(_) | ClientWriteError::LogEntryDiscarded(_),
            ))) => Err(StoreError::Remote {
                code: tonic::Code::Unavailable as i32,
                message: "etcdserver: leader changed".into(),
            }),
            Ok(Err(RaftError::APIError(e))) => Err(StoreError::InvalidArgument(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(StoreError::Fatal(e.to_string())),
        }
    }

    /// Leader side of a read barrier: confirms leadership with a quorum and returns the log
    /// index reads must wait for.
    pub async fn read_index_local(&self) -> Result<u64, StoreError> {
        // A leader that cannot confirm itself within two election timeouts has most likely
        // been deposed; the caller retries with whoever leads then.
        let round = (self.config.election_timeout * 4).min(self.config.request_timeout);
        match tokio::time::timeout(round, self.raft.get_read_log_id(ReadPolicy::ReadIndex)).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok((read, _))) => Ok(read.index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_)))) => Err(StoreError::NotLeader),
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) => Err(StoreError::Timeout),
            Ok(Err(RaftError::Fatal(e))) => Err(StoreError::Fatal(e.to_string())),
        }
    }

    /// A read index obtained after this call started: the log index a linearizable read
    /// must wait for. Concurrent callers share one round (one quorum check on the leader,
    /// one RPC from a follower), as etcd's read loop does.
    pub async fn read_index(&self) -> Result<u64, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reads.send(tx).map_err(|_| StoreError::Stopped)?;
        match tokio::time::timeout(self.config.request_timeout, rx).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(_)) => Err(StoreError::Stopped),
            Ok(Ok(r)) => r,
        }
    }

    /// One round of the read-index protocol, from here (leader) or via the leader.
    async fn read_index_round(&self) -> Result<u64, StoreError> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        loop {
            let leader = self.wait_leader(deadline).await?;
            let res = if leader.id == self.id {
                self.read_index_local().await
            } else {
                let mut client = self.peer_client(leader.id)?;
                let mut req = tonic::Request::new(pb::ReadIndexRequest {});
                req.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
                let answer = tokio::select! {
                    answer = client.read_index(req) => answer,
                    // Deposed meanwhile: ask the new leader (a read is safe to repeat).
                    _ = self.wait_leader_change(leader, deadline) => {
                        Err(tonic::Status::failed_precondition("leader changed"))
                    }
                };
                match answer {
                    Ok(r) => Ok(r.into_inner().index),
                    Err(s) if s.code() == tonic::Code::DeadlineExceeded => Err(StoreError::Timeout),
                    // Not the leader any more, or unreachable: reads are safe to retry.
                    Err(_) => Err(StoreError::NotLeader),
                }
            };
            match res {
                Err(StoreError::NotLeader) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StoreError::Timeout);
                    }
                    let _ = self.wait_leader_change(leader, deadline).await;
                }
                // A quorum check that did not finish in time: leadership may have moved
                // without this member noticing yet; try again while time is left.
                Err(StoreError::Timeout) if tokio::time::Instant::now() < deadline => {}
                other => return other,
            }
        }
    }

    /// Waits until everything committed before now is applied here: afterwards a local
    /// read is linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), StoreError> {
        if crate::fault::stale_reads() {
            return Ok(());
        }
        let index = self.read_index().await?;
        if self.sm.applied().0.is_some_and(|l| l.index >= index) {
            return Ok(());
        }
        self.raft
            .wait(Some(self.config.request_timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| StoreError::Timeout)?;
        Ok(())
    }

    /// Runs a membership change on the leader (this member must be it). One change is
    /// made at a time: while another (a member publishing its client URLs, say) is still
    /// being committed, this one waits for it, up to the request timeout.
    pub async fn change_member_local(&self, change: pb::member_change_request::Change) -> Result<u64, StoreError> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut rx = self.raft.server_metrics();
        loop {
            match self.change_member_once(change.clone()).await {
                Err(StoreError::MembershipChangeInProgress(what)) => {
                    rx.borrow_and_update();
                    match tokio::time::timeout_at(deadline, rx.changed()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => return Err(StoreError::Stopped),
                        Err(_) => return Err(StoreError::MembershipChangeInProgress(what)),
                    }
                }
                other => return other,
            }
        }
    }

    async fn change_member_once(&self, change: pb::member_change_request::Change) -> Result<u64, StoreError> {
        use pb::member_change_request::Change;
        if !self.is_leader() {
            return Err(StoreError::NotLeader);
        }
        let membership = self.raft.metrics().borrow_watched().membership_config.membership().clone();
        let map_err = |e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NotLeader,
            // Appended, then replaced by another leader's log: whether it was made is not
            // known here; the caller asks again.
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => StoreError::Remote {
                code: tonic::Code::Unavailable as i32,
                message: "etcdserver: leader changed".into(),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
                StoreError::MembershipChangeInProgress(p.to_string())
            }
            // Another change landed between the two steps of this one: the joint config
            // stands committed, and the retry (after that change) finishes it.
            RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => {
                StoreError::MembershipChangeInProgress(p.to_string())
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                StoreError::InvalidArgument(format!("etcdserver: {c}"))
            }
            RaftError::Fatal(f) => StoreError::Fatal(f.to_string()),
        };
        match change {
            Change::Add(add) => {
                let mut urls = Vec::new();
                for u in &add.peer_urls {
                    urls.push(flotilla_core::cluster::Url::parse(u).map_err(|_| StoreError::MemberBadUrls)?);
                }
                let first = urls.first().ok_or(StoreError::MemberBadUrls)?;
                for (_, m) in membership.nodes() {
                    if m.peer_urls.iter().any(|p| urls.iter().any(|u| &u.to_string() == p)) {
                        return Err(StoreError::PeerUrlExists);
                    }
                }
                let id = member_id(&self.config.initial_cluster_token, first);
                let info = Member {
                    name: String::new(),
                    peer_urls: urls.iter().map(|u| u.to_string()).collect(),
                    client_urls: vec![],
                };
                if add.is_learner {
                    self.raft.add_learner(id, info, false).await.map_err(map_err)?;
                } else {
                    // As in etcd, a voter counts from the moment it is added, started or not:
                    // the operator starts it next, with --initial-cluster-state existing.
                    self.raft
                        .change_membership(ChangeMembers::AddVoters(BTreeMap::from([(id, info)])), false)
                        .await
                        .map_err(map_err)?;
                }
                Ok(id)
            }
            Change::Remove(id) => {
                if membership.get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                let is_voter = membership.voter_ids().any(|v| v == id);
                if is_voter {
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(map_err)?;
                }
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await
                    .map_err(map_err)?;
                Ok(id)
            }
            Change::Promote(id) => {
                if membership.get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                if membership.voter_ids().any(|v| v == id) {
                    return Err(StoreError::MemberNotLearner);
                }
                if !self.learner_in_sync(id) {
                    return Err(StoreError::LearnerNotReady);
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                    .await
                    .map_err(map_err)?;
                Ok(id)
            }
            Change::Update(u) => {
                if membership.get_node(&u.id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                let m = u.member.as_ref().map(crate::codec::member_from_pb).unwrap_or_default();
                self.raft
                    .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(u.id, m)])), true)
                    .await
                    .map_err(map_err)?;
                Ok(u.id)
            }
        }
    }

    fn learner_in_sync(&self, id: NodeId) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        let last = m.last_log_index.unwrap_or(0);
        let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map_or(0, |l| l.index);
        // etcd's rule: within 90% of the leader's log.
        matched as f64 >= last as f64 * 0.9
    }

    /// Runs a membership change wherever the leader is.
    pub async fn change_member(&self, change: pb::member_change_request::Change) -> Result<u64, StoreError> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let leader = self.wait_leader(deadline).await?;
        if leader.id == self.id {
            return self.change_member_local(change).await;
        }
        let mut client = self.peer_client(leader.id)?;
        let mut req = tonic::Request::new(pb::MemberChangeRequest { change: Some(change) });
        req.set_timeout(self.config.request_timeout);
        match client.change_member(req).await {
            Ok(r) => Ok(r.into_inner().member_id),
            Err(s) => Err(StoreError::Remote { code: s.code() as i32, message: s.message().to_string() }),
        }
    }

    /// Hands leadership to `target` (this member must be the leader): waits until the
    /// target has the whole log, then asks it to campaign with Raft's leadership-transfer
    /// flag (voters grant it despite their lease on this leader, which steps down on
    /// seeing the higher term), and waits until it leads or the request times out.
    pub async fn move_leader_local(&self, target: NodeId) -> Result<(), StoreError> {
        if !self.is_leader() {
            return Err(StoreError::NotLeader);
        }
        if target == self.id {
            return Ok(());
        }
        let m = self.raft.metrics().borrow_watched().clone();
        if !m.membership_config.membership().voter_ids().any(|v| v == target) {
            return Err(StoreError::BadLeaderTransferee);
        }
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut rx = self.raft.metrics();
        loop {
            let m = rx.borrow_and_update().clone();
            let last = m.last_log_index.unwrap_or(0);
            let matched = m.replication.as_ref().and_then(|r| r.get(&target).cloned().flatten()).map_or(0, |l| l.index);
            if matched >= last {
                break;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Err(StoreError::Timeout);
            }
        }
        // Asked again every election timeout: the target refuses while its log is not yet
        // flushed as far as the leader's, and a request can be lost.
        let mut again = tokio::time::interval(self.config.election_timeout);
        loop {
            tokio::select! {
                _ = again.tick() => {
                    if !self.is_leader() {
                        // Stepped down; done if the target took over, below.
                    } else {
                        self.raft.trigger().transfer_leader(target).await.map_err(|e| StoreError::Fatal(e.to_string()))?;
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(StoreError::Stopped);
                    }
                    if rx.borrow_and_update().current_leader == Some(target) {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Err(StoreError::Timeout),
            }
        }
    }

    /// Hands leadership to `target`, asking the leader wherever it is.
    pub async fn move_leader(&self, target: NodeId) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let leader = self.wait_leader(deadline).await?;
        if leader.id == self.id {
            return self.move_leader_local(target).await;
        }
        let mut client = self.peer_client(leader.id)?;
        let mut req = tonic::Request::new(pb::MoveLeaderRequest { target });
        req.set_timeout(self.config.request_timeout);
        client
            .move_leader(req)
            .await
            .map(|_| ())
            .map_err(|s| StoreError::Remote { code: s.code() as i32, message: s.message().to_string() })
    }
}

/// Mirrors Raft metrics into Prometheus gauges: leadership as it changes, the snapshot
/// and purge points every second (Raft's full metrics change on every write; following
/// them would wake this task as often).
async fn watch_raft_metrics(node: Arc<Node>) {
    let (mut rx, full) = (node.raft.server_metrics(), node.raft.metrics());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_leader = None;
    loop {
        {
            let m = rx.borrow_and_update();
            let term = m.vote.leader_id().term;
            node.metrics.raft_term.set(term as i64);
            node.metrics.has_leader.set(i64::from(m.current_leader.is_some()));
            node.metrics.is_leader.set(i64::from(m.state == ServerState::Leader));
            if m.current_leader.is_some() && m.current_leader != last_leader {
                node.metrics.leader_changes.inc();
                tracing::info!(leader = ?m.current_leader.map(|l| format!("{l:x}")), term, "leader changed");
            }
            last_leader = m.current_leader;
        }
        {
            let m = full.borrow_watched();
            node.metrics.snapshot_index.set(m.snapshot.map_or(0, |l| l.index as i64));
            node.metrics.purged_index.set(m.purged.map_or(0, |l| l.index as i64));
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// Makes sure the membership records this member's name and client URLs (a member added at
/// run time is recorded without them, like an unstarted etcd member).
async fn publish_self(node: Arc<Node>) {
    let mut rx = node.raft.server_metrics();
    loop {
        let known = rx.borrow_and_update().membership_config.membership().get_node(&node.id).cloned();
        if let Some(m) = known {
            if m == node.me {
                // Keep watching: a snapshot or a later change could bring an old record back.
            } else if rx.borrow_watched().current_leader.is_some() {
                let change = pb::member_change_request::Change::Update(pb::UpdateMember {
                    id: node.id,
                    member: Some(crate::codec::member_to_pb(&node.me)),
                });
                match node.change_member(change).await {
                    Ok(_) => tracing::info!("published this member's name and client URLs"),
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing member info failed; will retry")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
