//! The verbs of the resource API over a [`Storage`]: create, get, list, update,
//! updateStatus, patch, delete, watch and pods/binding.
//!
//! Every write is one store transaction whose compares make it safe against concurrent
//! writers: create requires the key to be absent and its namespace unchanged; update,
//! patch, delete and bind require the object's `mod_revision` to be the one read. An
//! object's `resourceVersion` is its `mod_revision`; it is never stored in the value.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_core::keys::prefix_end;
use flotilla_core::limits::MAX_REQUEST_BYTES;
use flotilla_proto::api::{self as pb, object::Kind as O};
use flotilla_proto::etcdserverpb::{self as ep, compare, request_op};
use flotilla_store::StoreError;

use crate::error::ApiError;
use crate::keys;
use crate::storage::{Feed, Storage};
use flotilla_api::kinds::{self, meta, meta_mut, Kind};
use flotilla_api::select::Selectors;
use flotilla_api::Fence;
use flotilla_api::{defaults, validate};

/// Largest stored object (Kubernetes' etcd request limit).
pub const MAX_OBJECT_BYTES: usize = MAX_REQUEST_BYTES;
/// Attempts of a read-modify-write before giving up on a contended object.
const MAX_RETRIES: usize = 16;
/// Keys read per store request while listing.
const LIST_CHUNK: i64 = 500;
/// How often an idle watch with bookmarks allowed gets one.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
/// Store prefix of allocated service IPs: one key per address.
const SERVICE_IPS: &str = "/registry/serviceips/";
/// Node port reservations: `<prefix><PROTOCOL>/<port>` → the owning service's key.
const NODE_PORTS: &str = "/registry/servicenodeports/";
/// The node port range (Kubernetes' default).
const NODE_PORT_RANGE: std::ops::RangeInclusive<i32> = 30000..=32767;

/// Settings of the apiserver.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Range service cluster IPs are allocated from.
    pub service_cidr: (Ipv4Addr, u8),
    /// How long Events live (zero: forever).
    pub event_ttl: Duration,
    /// How kubelets are dialled (for pod logs): in TLS with this (the cluster CA, the
    /// master's certificate) when given, else plaintext.
    pub kubelet_tls: Option<std::sync::Arc<flotilla_tls::ClientTls>>,
    /// How requests are authorized.
    pub authorization: crate::authz::Mode,
    /// Where writes and refusals are recorded.
    pub audit: Option<std::sync::Arc<flotilla_store::audit::AuditLog>>,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            service_cidr: (Ipv4Addr::new(10, 96, 0, 0), 12),
            event_ttl: Duration::from_secs(3600),
            kubelet_tls: None,
            authorization: crate::authz::Mode::AlwaysAllow,
            audit: None,
        }
    }
}

/// Events created within this long (or a tenth of the event TTL, if less) share one store
/// lease, whose TTL is the event TTL plus that window, so each Event lives at least the
/// event TTL (as kube-apiserver shares leases among Events).
const EVENT_LEASE_REUSE: Duration = Duration::from_secs(60);

pub use flotilla_core::cidr::parse as parse_cidr;

/// Read-modify-write attempts ran out: other writers kept changing the object. Nothing
/// was written by this request.
fn contended() -> ApiError {
    ApiError::Contended(format!("the object kept changing under {MAX_RETRIES} attempts; nothing was written, retry"))
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn rv_string(rev: i64) -> String {
    rev.to_string()
}

fn parse_rv(field: &str, s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .ok()
        .filter(|r| *r > 0)
        .ok_or_else(|| ApiError::invalid(field, format!("{s:?} is not a resourceVersion (a positive integer)")))
}

fn cmp_mod(key: &str, rev: i64) -> ep::Compare {
    ep::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        range_end: vec![],
    }
}

fn op_put(key: &str, value: Vec<u8>) -> ep::RequestOp {
    op_put_leased(key, value, 0)
}

/// A put attached to store lease `lease` (0: none; a put without a lease detaches the key
/// from the one it had, so rewrites of leased keys pass theirs again).
fn op_put_leased(key: &str, value: Vec<u8>, lease: i64) -> ep::RequestOp {
    ep::RequestOp {
        request: Some(request_op::Request::RequestPut(ep::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

/// The numbers of `r`, starting at a random one and wrapping around.
fn rotated<T>(r: std::ops::Range<T>) -> impl Iterator<Item = T>
where
    T: Copy + PartialOrd + rand::distr::uniform::SampleUniform,
    std::ops::Range<T>: Iterator<Item = T>,
{
    let start = if r.start < r.end { rand::random_range(r.start..r.end) } else { r.start };
    (start..r.end).chain(r.start..start)
}

/// Deletes the reservation `key` only if it still names `owner` (a nested transaction),
/// so that a stale read can never free what another object now holds.
fn release_if_owned(key: &str, owner: &str) -> ep::RequestOp {
    ep::RequestOp {
        request: Some(request_op::Request::RequestTxn(ep::TxnRequest {
            compare: vec![ep::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(compare::TargetUnion::Value(owner.as_bytes().to_vec())),
                range_end: vec![],
            }],
            success: vec![op_delete(key)],
            failure: vec![],
        })),
    }
}

/// The node port reservation keys a service holds.
fn node_port_keys(s: &pb::Service) -> BTreeSet<String> {
    let Some(spec) = s.spec.as_ref() else { return BTreeSet::new() };
    spec.ports
        .iter()
        .filter(|p| p.node_port != 0)
        .map(|p| {
            format!("{NODE_PORTS}{}/{}", if p.protocol.is_empty() { "TCP" } else { p.protocol.as_str() }, p.node_port)
        })
        .collect()
}

fn op_delete(key: &str) -> ep::RequestOp {
    ep::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(ep::DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn op_delete_prefix(prefix: &str) -> ep::RequestOp {
    ep::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(ep::DeleteRangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        })),
    }
}

fn store_err(e: ApiError) -> ApiError {
    match e {
        ApiError::Store(StoreError::Compacted { compact_revision }) => {
            ApiError::Expired { requested: 0, compacted: compact_revision }
        }
        other => other,
    }
}

fn expired_at(requested: i64) -> impl Fn(ApiError) -> ApiError {
    move |e| match store_err(e) {
        ApiError::Expired { compacted, .. } => ApiError::Expired { requested, compacted },
        other => other,
    }
}

/// The bytes stored for `o`: its encoding without resourceVersion.
fn stored_bytes(o: &O) -> Result<Vec<u8>, ApiError> {
    let mut o = o.clone();
    meta_mut(&mut o).resource_version.clear();
    let bytes = kinds::encode(&o);
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::invalid(
            "object",
            format!("is {} bytes encoded, more than the limit of {MAX_OBJECT_BYTES}", bytes.len()),
        ));
    }
    Ok(bytes)
}

fn with_rv(mut o: O, rev: i64) -> O {
    meta_mut(&mut o).resource_version = rv_string(rev);
    o
}

/// What writing `o` must also write: for a Lease, its fence key (the holder and term
/// fencing tokens are compared with), in the same transaction.
fn lock_ops(o: &O) -> Vec<ep::RequestOp> {
    match o {
        O::Lease(l) => {
            let m = meta(o);
            let spec = l.spec.clone().unwrap_or_default();
            vec![op_put(
                &keys::fence_key(&m.namespace, &m.name),
                keys::fence_value(spec.lease_transitions, &spec.holder_identity),
            )]
        }
        _ => vec![],
    }
}

/// A stored object and its revision.
struct Current {
    obj: O,
    rev: i64,
    /// The store lease the key is attached to (0: none).
    lease: i64,
    /// The value as stored, to tell whether a write would change anything.
    stored: Vec<u8>,
}

/// Hex for continue tokens (opaque to clients).
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The resource API's logic, shared by every connection.
pub struct Registry {
    store: Arc<dyn Storage>,
    cfg: ApiConfig,
    /// The store lease Events are created with now, and when it was granted.
    event_lease: tokio::sync::Mutex<Option<(i64, tokio::time::Instant)>>,
}

/// What a delete did.
pub struct Deleted {
    /// The object as deleted, or as marked for deletion.
    pub object: O,
    /// Whether it is gone.
    pub gone: bool,
}

impl Registry {
    /// A registry over `store`.
    /// The apiserver's settings.
    pub fn config(&self) -> &ApiConfig {
        &self.cfg
    }

    pub fn new(store: Arc<dyn Storage>, cfg: ApiConfig) -> Registry {
        Registry { store, cfg, event_lease: tokio::sync::Mutex::new(None) }
    }

    /// The store lease a new Event is created with (None: Events do not expire).
    async fn event_lease(&self, renew: bool) -> Result<Option<i64>, ApiError> {
        if self.cfg.event_ttl.is_zero() {
            return Ok(None);
        }
        let reuse = EVENT_LEASE_REUSE.min(self.cfg.event_ttl / 10);
        let mut cur = self.event_lease.lock().await;
        match *cur {
            Some((id, at)) if !renew && at.elapsed() < reuse => Ok(Some(id)),
            _ => {
                let ttl = (self.cfg.event_ttl + reuse).as_secs_f64().ceil() as i64;
                let id = self.store.lease_grant(ttl).await?;
                *cur = Some((id, tokio::time::Instant::now()));
                Ok(Some(id))
            }
        }
    }

    async fn read(&self, kind: Kind, ns: &str, name: &str) -> Result<Option<Current>, ApiError> {
        let key = keys::key(kind, ns, name);
        let r = self.store.range(ep::RangeRequest { key: key.into_bytes(), ..Default::default() }).await?;
        match r.kvs.into_iter().next() {
            None => Ok(None),
            Some(kv) => {
                let obj = with_rv(kinds::decode(kind, &kv.value)?, kv.mod_revision);
                Ok(Some(Current { obj, rev: kv.mod_revision, lease: kv.lease, stored: kv.value }))
            }
        }
    }

    async fn read_existing(&self, kind: Kind, ns: &str, name: &str) -> Result<Current, ApiError> {
        self.read(kind, ns, name)
            .await?
            .ok_or_else(|| ApiError::NotFound { kind: kind.name().into(), name: kind.display_name(ns, name) })
    }

    fn check_scope(kind: Kind, ns: &str, name: &str) -> Result<(), ApiError> {
        if name.is_empty() {
            return Err(ApiError::invalid("name", "is required"));
        }
        if kind.namespaced() && ns.is_empty() {
            return Err(ApiError::invalid("namespace", format!("is required for {}", kind.name())));
        }
        Ok(())
    }

    /// Creates `o`; the server sets uid, creationTimestamp, generation and defaults.
    pub async fn create(&self, mut o: O, fence: Option<&Fence>) -> Result<O, ApiError> {
        let kind = Kind::of(&o);
        {
            let m = meta_mut(&mut o);
            if kind.namespaced() {
                if m.namespace.is_empty() {
                    m.namespace = "default".into();
                }
            } else {
                m.namespace.clear();
            }
            if m.name.is_empty() && !m.generate_name.is_empty() {
                let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(5).collect();
                m.name = format!("{}{suffix}", m.generate_name);
            }
            m.uid = uuid::Uuid::new_v4().to_string();
            m.creation_timestamp = now();
            m.generation = 1;
            m.resource_version.clear();
            m.deletion_timestamp.clear();
            m.deletion_grace_period_seconds = None;
        }
        defaults::object(&mut o);
        if let O::Pod(p) = &mut o {
            let st = p.status.get_or_insert_with(Default::default);
            if st.phase.is_empty() {
                st.phase = "Pending".into();
            }
        }
        validate::object(&o)?;
        let (ns, name) = (meta(&o).namespace.clone(), meta(&o).name.clone());
        let key = keys::key(kind, &ns, &name);
        let asked_ip = matches!(&o, O::Service(s) if s.spec.as_ref().is_some_and(|x| !x.cluster_ip.is_empty()));
        let asked_ports: Vec<i32> = match &o {
            O::Service(s) => s.spec.as_ref().map(|x| x.ports.iter().map(|p| p.node_port).collect()).unwrap_or_default(),
            _ => Vec::new(),
        };
        for _ in 0..MAX_RETRIES {
            let mut compares = vec![cmp_mod(&key, 0)];
            let mut ops = vec![];
            if kind.namespaced() {
                let ns_obj = match self.read(Kind::Namespace, "", &ns).await? {
                    Some(n) => n,
                    // The built-in namespaces always exist: a create that comes before the
                    // master has made them (right after the cluster starts) makes them.
                    None if crate::BUILTIN_NAMESPACES.contains(&ns.as_str()) => {
                        let builtin = O::Namespace(pb::Namespace {
                            metadata: Some(pb::ObjectMeta { name: ns.clone(), ..Default::default() }),
                            ..Default::default()
                        });
                        match Box::pin(self.create(builtin, None)).await {
                            Ok(_) | Err(ApiError::AlreadyExists { .. }) => continue,
                            Err(e) => return Err(e),
                        }
                    }
                    None => return Err(ApiError::NotFound { kind: "Namespace".into(), name: ns.clone() }),
                };
                if !meta(&ns_obj.obj).deletion_timestamp.is_empty() {
                    return Err(ApiError::FailedPrecondition(format!(
                        "namespace {ns:?} is being deleted: no new objects may be created in it"
                    )));
                }
                compares.push(cmp_mod(&keys::key(Kind::Namespace, "", &ns), ns_obj.rev));
            }
            if let O::Service(s) = &mut o {
                if let Some(ip_key) = self.allocate_ip(s).await? {
                    compares.push(cmp_mod(&ip_key, 0));
                    ops.push(op_put(&ip_key, key.as_bytes().to_vec()));
                }
                for np_key in self.allocate_node_ports(s, &BTreeSet::new()).await? {
                    compares.push(cmp_mod(&np_key, 0));
                    ops.push(op_put(&np_key, key.as_bytes().to_vec()));
                }
            }
            let lease = if kind == Kind::Event { self.event_lease(false).await?.unwrap_or(0) } else { 0 };
            ops.push(op_put_leased(&key, stored_bytes(&o)?, lease));
            ops.extend(lock_ops(&o));
            let r = match self.txn(fence, ep::TxnRequest { compare: compares, success: ops, failure: vec![] }).await {
                // The shared Event lease expired or was revoked: take a new one.
                Err(ApiError::Store(StoreError::Remote { message, .. }))
                    if lease != 0 && message.contains("lease not found") =>
                {
                    self.event_lease(true).await?;
                    continue;
                }
                other => other?,
            };
            if r.succeeded {
                let rev = r.header.map_or(0, |h| h.revision);
                return Ok(with_rv(o, rev));
            }
            if self.read(kind, &ns, &name).await?.is_some() {
                return Err(ApiError::AlreadyExists { kind: kind.name().into(), name: kind.display_name(&ns, &name) });
            }
            // The namespace changed or the address was taken meanwhile: try again, with a
            // new address if the server chose it.
            if let O::Service(s) = &mut o {
                if let Some(spec) = s.spec.as_mut() {
                    if !asked_ip {
                        spec.cluster_ip.clear();
                    }
                    for (p, asked) in spec.ports.iter_mut().zip(&asked_ports) {
                        p.node_port = *asked;
                    }
                }
            }
        }
        Err(contended())
    }

    /// Chooses the service's cluster IP (or checks the one asked for); returns the key
    /// reserving it, or None for a headless service.
    async fn allocate_ip(&self, s: &mut pb::Service) -> Result<Option<String>, ApiError> {
        let spec = s.spec.get_or_insert_with(Default::default);
        if spec.cluster_ip == "None" {
            return Ok(None);
        }
        let (base, prefix) = self.cfg.service_cidr;
        let size = 1u32 << (32 - prefix);
        let first = u32::from(base);
        if !spec.cluster_ip.is_empty() {
            let ip: Ipv4Addr =
                spec.cluster_ip.parse().map_err(|_| ApiError::invalid("spec.clusterIP", "is not an IPv4 address"))?;
            let n = u32::from(ip);
            if n <= first || n >= first + size - 1 {
                return Err(ApiError::invalid(
                    "spec.clusterIP",
                    format!("{ip} is not in the service range {base}/{prefix}"),
                ));
            }
            let key = format!("{SERVICE_IPS}{ip}");
            let taken =
                self.store.range(ep::RangeRequest { key: key.clone().into_bytes(), ..Default::default() }).await?;
            if !taken.kvs.is_empty() {
                return Err(ApiError::invalid("spec.clusterIP", format!("{ip} is already allocated")));
            }
            return Ok(Some(key));
        }
        let r = self
            .store
            .range(ep::RangeRequest {
                key: SERVICE_IPS.as_bytes().to_vec(),
                range_end: prefix_end(SERVICE_IPS.as_bytes()),
                keys_only: true,
                ..Default::default()
            })
            .await?;
        let used: BTreeSet<u32> = r
            .kvs
            .iter()
            .filter_map(|kv| std::str::from_utf8(&kv.key).ok()?.strip_prefix(SERVICE_IPS)?.parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .collect();
        // Skip the network address, and .1 which Kubernetes keeps for its own service.
        // The search starts at a random address, so that services created at once do
        // not all reach for the same one (and retry).
        let free = rotated(first + 2..first + size - 1).find(|n| !used.contains(n)).ok_or_else(|| {
            ApiError::Exhausted(format!("no free cluster IP left in the service range {base}/{prefix}"))
        })?;
        let ip = Ipv4Addr::from(free);
        spec.cluster_ip = ip.to_string();
        Ok(Some(format!("{SERVICE_IPS}{ip}")))
    }

    /// Gives every port of a NodePort or LoadBalancer service a node port (checking those
    /// asked for), and clears them on other types. Returns the reservation keys to take:
    /// those of `held` (already the service's) are not taken again.
    async fn allocate_node_ports(&self, s: &mut pb::Service, held: &BTreeSet<String>) -> Result<Vec<String>, ApiError> {
        let spec = s.spec.get_or_insert_with(Default::default);
        if !matches!(spec.r#type.as_str(), "NodePort" | "LoadBalancer") {
            for p in &mut spec.ports {
                p.node_port = 0;
            }
            return Ok(Vec::new());
        }
        let r = self
            .store
            .range(ep::RangeRequest {
                key: NODE_PORTS.as_bytes().to_vec(),
                range_end: prefix_end(NODE_PORTS.as_bytes()),
                keys_only: true,
                ..Default::default()
            })
            .await?;
        let mut used: BTreeSet<String> =
            r.kvs.iter().filter_map(|kv| std::str::from_utf8(&kv.key).ok().map(String::from)).collect();
        // Ports asked for are set aside first, so that a chosen one never takes them.
        let asked: BTreeSet<String> = spec
            .ports
            .iter()
            .filter(|p| p.node_port != 0)
            .map(|p| {
                format!(
                    "{NODE_PORTS}{}/{}",
                    if p.protocol.is_empty() { "TCP" } else { p.protocol.as_str() },
                    p.node_port
                )
            })
            .collect();
        let mut take = Vec::new();
        for (i, p) in spec.ports.iter_mut().enumerate() {
            let proto = if p.protocol.is_empty() { "TCP" } else { p.protocol.as_str() };
            let key_of = |port: i32| format!("{NODE_PORTS}{proto}/{port}");
            if p.node_port != 0 {
                let k = key_of(p.node_port);
                if take.contains(&k) {
                    return Err(ApiError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        format!("{} is used twice in this service", p.node_port),
                    ));
                }
                if !held.contains(&k) {
                    if used.contains(&k) {
                        return Err(ApiError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            format!("{} is already allocated", p.node_port),
                        ));
                    }
                    used.insert(k.clone());
                    take.push(k);
                } else {
                    take.push(k);
                }
                continue;
            }
            let (lo, hi) = (*NODE_PORT_RANGE.start(), *NODE_PORT_RANGE.end());
            let free =
                rotated(lo..hi + 1).find(|n| !used.contains(&key_of(*n)) && !asked.contains(&key_of(*n))).ok_or_else(
                    || ApiError::Exhausted(format!("no free node port left in {NODE_PORT_RANGE:?} for {proto}")),
                )?;
            p.node_port = free;
            used.insert(key_of(free));
            take.push(key_of(free));
        }
        Ok(take.into_iter().filter(|k| !held.contains(k)).collect())
    }

    /// Reads one object.
    pub async fn get(&self, kind: Kind, ns: &str, name: &str) -> Result<O, ApiError> {
        Self::check_scope(kind, ns, name)?;
        Ok(self.read_existing(kind, ns, name).await?.obj)
    }

    /// Lists objects of `kind` (in `ns`, or everywhere when empty) as one snapshot.
    pub async fn list(&self, kind: Kind, req: &pb::ListRequest) -> Result<pb::ListResponse, ApiError> {
        let sel = Selectors::parse(kind, &req.label_selector, &req.field_selector)?;
        if req.limit < 0 {
            return Err(ApiError::invalid("limit", "must not be negative"));
        }
        let prefix = keys::prefix_in(kind, &req.namespace);
        let end = prefix_end(prefix.as_bytes());
        let (mut rev, mut from) = if req.r#continue.is_empty() {
            let rev =
                if req.resource_version.is_empty() { 0 } else { parse_rv("resourceVersion", &req.resource_version)? };
            (rev, prefix.as_bytes().to_vec())
        } else {
            let bad = || ApiError::BadRequest("continue: not a token this server issued".into());
            let (r, k) = req.r#continue.split_once(':').ok_or_else(bad)?;
            let from = unhex(k).ok_or_else(bad)?;
            if !from.starts_with(prefix.as_bytes()) {
                return Err(ApiError::BadRequest("continue: the token belongs to another list".into()));
            }
            (r.parse::<i64>().map_err(|_| bad())?, from)
        };
        let requested = rev;
        let mut items = Vec::new();
        let mut next: Option<Vec<u8>> = None;
        loop {
            let r = self
                .store
                .range(ep::RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    revision: rev,
                    limit: LIST_CHUNK,
                    ..Default::default()
                })
                .await
                .map_err(expired_at(requested))?;
            if rev == 0 {
                rev = r.header.as_ref().map_or(0, |h| h.revision);
            }
            let n = r.kvs.len();
            for kv in r.kvs {
                if req.limit > 0 && items.len() as i64 == req.limit {
                    next = Some(kv.key);
                    break;
                }
                let o = with_rv(kinds::decode(kind, &kv.value)?, kv.mod_revision);
                if sel.matches(&o) {
                    items.push(kinds::wrap(o));
                }
                from = kv.key;
                from.push(0);
            }
            if next.is_some() || !r.more || n == 0 {
                break;
            }
        }
        Ok(pb::ListResponse {
            items,
            resource_version: rv_string(rev),
            r#continue: next.map(|k| format!("{rev}:{}", hex(&k))).unwrap_or_default(),
            remaining_item_count: 0,
        })
    }

    /// Replaces an object (compare-and-swap when `metadata.resourceVersion` is set).
    /// With `status_only`, only the status is taken from `o`.
    pub async fn update(&self, o: O, status_only: bool, fence: Option<&Fence>) -> Result<O, ApiError> {
        let kind = Kind::of(&o);
        if status_only && !kind.has_status() {
            return Err(ApiError::BadRequest(format!("{} has no status", kind.name())));
        }
        let ns = kind.namespace_or_default(&meta(&o).namespace).to_string();
        let name = meta(&o).name.clone();
        Self::check_scope(kind, &ns, &name)?;
        let expected = match meta(&o).resource_version.as_str() {
            "" => None,
            s => Some(parse_rv("metadata.resourceVersion", s)?),
        };
        for _ in 0..MAX_RETRIES {
            let cur = self.read_existing(kind, &ns, &name).await?;
            if let Some(want) = expected {
                if want != cur.rev {
                    return Err(self.conflict(kind, &ns, &name, want, cur.rev));
                }
            }
            let merged = merge_update(&cur.obj, o.clone(), status_only)?;
            match self.write_over(kind, &cur, merged, fence).await? {
                Some(done) => return Ok(done),
                None if expected.is_some() => {
                    let now = self.read_existing(kind, &ns, &name).await?;
                    return Err(self.conflict(kind, &ns, &name, cur.rev, now.rev));
                }
                None => continue,
            }
        }
        Err(contended())
    }

    fn conflict(&self, kind: Kind, ns: &str, name: &str, expected: i64, current: i64) -> ApiError {
        ApiError::Conflict {
            kind: kind.name().into(),
            name: kind.display_name(ns, name),
            expected: rv_string(expected),
            current: rv_string(current),
        }
    }

    /// Writes `new` over `cur` if it is still current: Some(result), or None when the
    /// object changed meanwhile. An object marked for deletion whose finalizers are all
    /// gone is deleted instead.
    async fn write_over(
        &self,
        kind: Kind,
        cur: &Current,
        mut new: O,
        fence: Option<&Fence>,
    ) -> Result<Option<O>, ApiError> {
        defaults::object(&mut new);
        validate::object(&new)?;
        validate::update(&cur.obj, &new)?;
        if kinds::spec_bytes(&new) != kinds::spec_bytes(&cur.obj) {
            meta_mut(&mut new).generation = meta(&cur.obj).generation + 1;
        }
        let m = meta(&new);
        let key = keys::key(kind, &m.namespace, &m.name);
        if !m.deletion_timestamp.is_empty() && finalized(&new) && !self.waits_for_kubelet(&new) {
            let mut ops = vec![op_delete(&key)];
            ops.extend(self.release_ops(&cur.obj));
            if kind == Kind::Namespace {
                // The namespace controller emptied it through the API; this sweeps up
                // anything left if its finalizer was removed by hand.
                ops.extend(self.namespace_content_ops(&m.name).await?);
            }
            return Ok(self.if_unchanged(&key, cur.rev, ops, fence).await?.map(|rev| with_rv(new, rev)));
        }
        // A service's node ports: new ones reserved, those it gave up released.
        let (mut compares, mut ops) = (vec![cmp_mod(&key, cur.rev)], vec![]);
        if let (O::Service(old), O::Service(svc)) = (&cur.obj, &mut new) {
            let held = node_port_keys(old);
            for k in self.allocate_node_ports(svc, &held).await? {
                compares.push(cmp_mod(&k, 0));
                ops.push(op_put(&k, key.as_bytes().to_vec()));
            }
            let now = node_port_keys(svc);
            ops.extend(held.difference(&now).map(|k| release_if_owned(k, &key)));
        }
        let bytes = stored_bytes(&new)?;
        if bytes == cur.stored {
            return Ok(Some(cur.obj.clone()));
        }
        ops.push(op_put_leased(&key, bytes, cur.lease));
        ops.extend(lock_ops(&new));
        let r = self.txn(fence, ep::TxnRequest { compare: compares, success: ops, failure: vec![] }).await?;
        Ok(r.succeeded.then(|| with_rv(new, r.header.map_or(0, |h| h.revision))))
    }

    /// Runs `ops` if `key` is still at revision `rev` (0: absent): the revision written,
    /// or None when the key changed meanwhile.
    async fn if_unchanged(
        &self,
        key: &str,
        rev: i64,
        ops: Vec<ep::RequestOp>,
        fence: Option<&Fence>,
    ) -> Result<Option<i64>, ApiError> {
        let r =
            self.txn(fence, ep::TxnRequest { compare: vec![cmp_mod(key, rev)], success: ops, failure: vec![] }).await?;
        Ok(r.succeeded.then(|| r.header.map_or(0, |h| h.revision)))
    }

    /// Runs a write transaction. With a fencing token, the transaction also requires the
    /// lock to still have the token's holder and term, in the same transaction (nothing is
    /// written otherwise), and a refusal for that reason is answered `fenced: ...`.
    async fn txn(&self, fence: Option<&Fence>, mut req: ep::TxnRequest) -> Result<ep::TxnResponse, ApiError> {
        let Some(f) = fence.filter(|_| !crate::fault::no_fence()) else {
            return self.store.txn(req).await;
        };
        let fence_key = keys::fence_key(&f.namespace, &f.name);
        let want = keys::fence_value(f.term, &f.holder);
        req.compare.push(ep::Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: fence_key.clone().into_bytes(),
            target_union: Some(compare::TargetUnion::Value(want.clone())),
            range_end: vec![],
        });
        req.failure.push(ep::RequestOp {
            request: Some(request_op::Request::RequestRange(ep::RangeRequest {
                key: fence_key.into_bytes(),
                ..Default::default()
            })),
        });
        let r = self.store.txn(req).await?;
        if r.succeeded {
            return Ok(r);
        }
        let held = r.responses.last().and_then(|op| match &op.response {
            Some(ep::response_op::Response::ResponseRange(rr)) => Some(rr.kvs.first().map(|kv| kv.value.clone())),
            _ => None,
        });
        match held {
            Some(v) if v.as_deref() != Some(want.as_slice()) => Err(ApiError::Fenced(format!(
                "lock {} is {}; this write carried term {} of {:?}",
                f.lock(),
                v.as_deref().map_or("not held (no such lease)".to_string(), keys::describe_fence_value),
                f.term,
                f.holder
            ))),
            _ => Ok(r),
        }
    }

    /// A pod being deleted gracefully stays until its kubelet confirms it stopped (by
    /// deleting it with grace 0).
    fn waits_for_kubelet(&self, o: &O) -> bool {
        matches!(o, O::Pod(_)) && meta(o).deletion_grace_period_seconds.is_some_and(|g| g > 0)
    }

    /// Store operations that free what an object holds (a service's cluster IP).
    /// The address is freed only if its reservation still names this service (a nested
    /// transaction), so a stale read can never free an address another service now holds.
    fn release_ops(&self, o: &O) -> Vec<ep::RequestOp> {
        match o {
            O::Lease(_) => {
                let m = meta(o);
                vec![op_delete(&keys::fence_key(&m.namespace, &m.name))]
            }
            O::Service(s) => {
                let m = meta(o);
                let owner = keys::key(Kind::Service, &m.namespace, &m.name);
                let mut held: Vec<String> = node_port_keys(s).into_iter().collect();
                match s.spec.as_ref().map(|x| x.cluster_ip.as_str()) {
                    Some(ip) if !ip.is_empty() && ip != "None" => held.push(format!("{SERVICE_IPS}{ip}")),
                    _ => {}
                }
                held.iter().map(|k| release_if_owned(k, &owner)).collect()
            }
            _ => vec![],
        }
    }

    /// Store operations deleting everything in namespace `name` (and freeing its services'
    /// addresses), read after the namespace was marked, so nothing new can appear in it.
    async fn namespace_content_ops(&self, name: &str) -> Result<Vec<ep::RequestOp>, ApiError> {
        let mut ops = Vec::new();
        let services =
            self.list(Kind::Service, &pb::ListRequest { namespace: name.into(), ..Default::default() }).await?;
        for s in services.items.into_iter().filter_map(|o| o.kind) {
            ops.extend(self.release_ops(&s));
        }
        for k in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
            ops.push(op_delete_prefix(&keys::prefix_in(k, name)));
        }
        ops.push(op_delete_prefix(&keys::fences_in(name)));
        Ok(ops)
    }

    /// Applies a JSON merge patch (RFC 7386) to the object's JSON form, then updates it.
    pub async fn patch(&self, req: &pb::PatchRequest) -> Result<O, ApiError> {
        let fence = Fence::from_request(req.fence.as_ref())?;
        let kind = Kind::parse(&req.kind)?;
        let ns = kind.namespace_or_default(&req.namespace);
        Self::check_scope(kind, ns, &req.name)?;
        let patch: serde_json::Value = serde_json::from_slice(&req.merge_patch)
            .map_err(|e| ApiError::invalid("mergePatch", format!("is not JSON: {e}")))?;
        if !patch.is_object() {
            return Err(ApiError::invalid("mergePatch", "must be a JSON object"));
        }
        let expected = patch
            .pointer("/metadata/resourceVersion")
            .and_then(|v| v.as_str())
            .map(|s| parse_rv("metadata.resourceVersion", s))
            .transpose()?;
        // A uid in the patch is a precondition, as in Kubernetes: never patch a namesake.
        let uid = patch.pointer("/metadata/uid").and_then(|v| v.as_str()).filter(|u| !u.is_empty());
        for _ in 0..MAX_RETRIES {
            let cur = self.read_existing(kind, ns, &req.name).await?;
            if let Some(want) = expected {
                if want != cur.rev {
                    return Err(self.conflict(kind, ns, &req.name, want, cur.rev));
                }
            }
            if let Some(u) = uid {
                if u != meta(&cur.obj).uid {
                    return Err(ApiError::FailedPrecondition(format!(
                        "precondition failed: uid {u:?} was asked for, the object's is {:?}",
                        meta(&cur.obj).uid
                    )));
                }
            }
            let mut doc = kinds::to_json(&cur.obj);
            json_patch::merge(&mut doc, &patch);
            let mut patched = kinds::from_json(kind, doc)?;
            {
                let (m, old) = (meta_mut(&mut patched), meta(&cur.obj));
                if m.name != old.name || (kind.namespaced() && m.namespace != old.namespace) {
                    return Err(ApiError::invalid("metadata.name", "a patch may not rename an object"));
                }
                m.resource_version.clear();
            }
            let merged = merge_update(&cur.obj, patched, req.status)?;
            if let Some(done) = self.write_over(kind, &cur, merged, fence.as_ref()).await? {
                return Ok(done);
            }
            if expected.is_some() {
                let now = self.read_existing(kind, ns, &req.name).await?;
                return Err(self.conflict(kind, ns, &req.name, cur.rev, now.rev));
            }
        }
        Err(contended())
    }

    /// Deletes an object: at once, or by marking it (deletionTimestamp) when finalizers
    /// remain or a pod on a node is given time to stop.
    pub async fn delete(&self, req: &pb::DeleteRequest) -> Result<Deleted, ApiError> {
        let fence = Fence::from_request(req.fence.as_ref())?;
        let fence = fence.as_ref();
        let kind = Kind::parse(&req.kind)?;
        let ns = kind.namespace_or_default(&req.namespace);
        Self::check_scope(kind, ns, &req.name)?;
        if req.grace_period_seconds.is_some_and(|g| g < 0) {
            return Err(ApiError::invalid("gracePeriodSeconds", "must not be negative"));
        }
        let finalizer = match req.propagation_policy.as_str() {
            "" | "Background" => None,
            "Foreground" => Some(flotilla_api::FOREGROUND_FINALIZER),
            "Orphan" => Some(flotilla_api::ORPHAN_FINALIZER),
            other => {
                return Err(ApiError::invalid(
                    "propagationPolicy",
                    format!("{other:?} is not one of Background, Foreground, Orphan"),
                ))
            }
        };
        for _ in 0..MAX_RETRIES {
            let cur = self.read_existing(kind, ns, &req.name).await?;
            if let Some(p) = &req.preconditions {
                let m = meta(&cur.obj);
                if !p.uid.is_empty() && p.uid != m.uid {
                    return Err(ApiError::FailedPrecondition(format!(
                        "precondition failed: uid {:?} was asked for, the object's is {:?}",
                        p.uid, m.uid
                    )));
                }
                if !p.resource_version.is_empty()
                    && parse_rv("preconditions.resourceVersion", &p.resource_version)? != cur.rev
                {
                    return Err(self.conflict(
                        kind,
                        ns,
                        &req.name,
                        parse_rv("preconditions.resourceVersion", &p.resource_version)?,
                        cur.rev,
                    ));
                }
            }
            if kind == Kind::Namespace && crate::BUILTIN_NAMESPACES.contains(&req.name.as_str()) {
                return Err(ApiError::FailedPrecondition(format!(
                    "namespace {:?} is built in and cannot be deleted",
                    req.name
                )));
            }
            let result = if kind == Kind::Namespace {
                self.delete_namespace(&cur, fence).await?
            } else {
                let mut cur = cur;
                if let Some(f) = finalizer {
                    // The garbage collector finishes the delete once it has dealt with
                    // the dependents, by removing this finalizer.
                    let m = meta_mut(&mut cur.obj);
                    if m.deletion_timestamp.is_empty() && !m.finalizers.iter().any(|x| x == f) {
                        m.finalizers.push(f.to_string());
                    }
                }
                self.delete_one(kind, &cur, req.grace_period_seconds, fence).await?
            };
            if let Some(d) = result {
                return Ok(d);
            }
        }
        Err(contended())
    }

    async fn delete_one(
        &self,
        kind: Kind,
        cur: &Current,
        grace: Option<i64>,
        fence: Option<&Fence>,
    ) -> Result<Option<Deleted>, ApiError> {
        let m = meta(&cur.obj);
        let key = keys::key(kind, &m.namespace, &m.name);
        let grace = match &cur.obj {
            O::Pod(p) if p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()) => {
                grace.or(p.spec.as_ref().and_then(|s| s.termination_grace_period_seconds)).unwrap_or(0)
            }
            _ => 0,
        };
        if !m.finalizers.is_empty() || grace > 0 {
            if !m.deletion_timestamp.is_empty() && (grace > 0) == m.deletion_grace_period_seconds.is_some_and(|g| g > 0)
            {
                return Ok(Some(Deleted { object: cur.obj.clone(), gone: false }));
            }
            let mut marked = cur.obj.clone();
            let mm = meta_mut(&mut marked);
            if mm.deletion_timestamp.is_empty() {
                mm.deletion_timestamp = now();
            }
            mm.deletion_grace_period_seconds = Some(grace);
            let done = self.if_unchanged(&key, cur.rev, vec![op_put(&key, stored_bytes(&marked)?)], fence).await?;
            return Ok(done.map(|rev| Deleted { object: with_rv(marked, rev), gone: false }));
        }
        let mut ops = vec![op_delete(&key)];
        ops.extend(self.release_ops(&cur.obj));
        let Some(rev) = self.if_unchanged(&key, cur.rev, ops, fence).await? else { return Ok(None) };
        Ok(Some(Deleted { object: with_rv(cur.obj.clone(), rev), gone: true }))
    }

    /// Deletes a namespace: marks it Terminating (so no create in it can succeed any more)
    /// with the `kubernetes` finalizer in its spec. The namespace controller then deletes
    /// what is inside through the API — pods gracefully, finalizers honoured — and removes
    /// that finalizer, which deletes the namespace (see [`Registry::write_over`]).
    async fn delete_namespace(&self, cur: &Current, fence: Option<&Fence>) -> Result<Option<Deleted>, ApiError> {
        let name = meta(&cur.obj).name.clone();
        let key = keys::key(Kind::Namespace, "", &name);
        if !meta(&cur.obj).deletion_timestamp.is_empty() {
            return Ok(Some(Deleted { object: cur.obj.clone(), gone: false }));
        }
        let mut marked = cur.obj.clone();
        if let O::Namespace(n) = &mut marked {
            n.status.get_or_insert_with(Default::default).phase = "Terminating".into();
            let spec = n.spec.get_or_insert_with(Default::default);
            if !spec.finalizers.iter().any(|f| f == flotilla_api::NAMESPACE_FINALIZER) {
                spec.finalizers.push(flotilla_api::NAMESPACE_FINALIZER.into());
            }
        }
        meta_mut(&mut marked).deletion_timestamp = now();
        let done = self.if_unchanged(&key, cur.rev, vec![op_put(&key, stored_bytes(&marked)?)], fence).await?;
        Ok(done.map(|rev| Deleted { object: with_rv(marked, rev), gone: false }))
    }

    /// pods/binding: sets a pod's nodeName, once.
    pub async fn bind(&self, req: &pb::BindRequest) -> Result<O, ApiError> {
        let fence = Fence::from_request(req.fence.as_ref())?;
        let ns = Kind::Pod.namespace_or_default(&req.namespace);
        Self::check_scope(Kind::Pod, ns, &req.name)?;
        flotilla_core::names::dns1123_subdomain(&req.node_name).map_err(|e| ApiError::invalid("nodeName", e))?;
        for _ in 0..MAX_RETRIES {
            let cur = self.read_existing(Kind::Pod, ns, &req.name).await?;
            let O::Pod(mut pod) = cur.obj.clone() else {
                return Err(ApiError::Internal("a pod key holds another kind".into()));
            };
            let m = pod.metadata.clone().unwrap_or_default();
            if !req.uid.is_empty() && req.uid != m.uid {
                return Err(ApiError::FailedPrecondition(format!(
                    "pod {ns}/{} has uid {:?}, not {:?} (it was replaced)",
                    req.name, m.uid, req.uid
                )));
            }
            if !m.deletion_timestamp.is_empty() {
                return Err(ApiError::FailedPrecondition(format!("pod {ns}/{} is being deleted", req.name)));
            }
            let spec = pod.spec.get_or_insert_with(Default::default);
            if !spec.node_name.is_empty() {
                return Err(ApiError::FailedPrecondition(format!(
                    "pod {ns}/{} is already bound to node {:?}",
                    req.name, spec.node_name
                )));
            }
            spec.node_name = req.node_name.clone();
            let key = keys::key(Kind::Pod, ns, &req.name);
            let node_key = keys::key(Kind::Node, "", &req.node_name);
            let new = O::Pod(pod);
            // The pod is unchanged since read, and the node exists: checked in the same
            // transaction, so a pod is never bound to a node deleted meanwhile.
            let node_exists = ep::Compare {
                result: compare::CompareResult::Greater as i32,
                target: compare::CompareTarget::Create as i32,
                key: node_key.clone().into_bytes(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                range_end: vec![],
            };
            let txn = ep::TxnRequest {
                compare: vec![cmp_mod(&key, cur.rev), node_exists],
                success: vec![op_put(&key, stored_bytes(&new)?)],
                failure: vec![],
            };
            let r = self.txn(fence.as_ref(), txn).await?;
            if r.succeeded {
                return Ok(with_rv(new, r.header.map_or(0, |h| h.revision)));
            }
            if self.read(Kind::Node, "", &req.node_name).await?.is_none() {
                return Err(ApiError::FailedPrecondition(format!(
                    "node {:?} does not exist; pod {ns}/{} was not bound",
                    req.node_name, req.name
                )));
            }
        }
        Err(contended())
    }

    /// Starts a watch; events go to `tx` until it is closed or the watch fails (the error
    /// is sent last).
    pub fn watch(
        self: &Arc<Self>,
        kind: Kind,
        req: &pb::WatchRequest,
        tx: tokio::sync::mpsc::Sender<Result<pb::WatchEvent, ApiError>>,
    ) -> Result<(), ApiError> {
        let sel = Selectors::parse(kind, &req.label_selector, &req.field_selector)?;
        let start = match req.resource_version.as_str() {
            "" | "0" => 0,
            s => parse_rv("resourceVersion", s)? + 1,
        };
        let requested = start - 1;
        let prefix = keys::prefix_in(kind, &req.namespace);
        let mut feed = self.store.watch(prefix.as_bytes(), start);
        let bookmarks = req.allow_bookmarks;
        let mut seen = if start == 0 { self.store.revision() } else { start - 1 };
        // The feed is read in its own task: it is not safe to cancel mid-read, and the
        // sender side wakes for bookmarks.
        let (ftx, mut frx) = tokio::sync::mpsc::channel::<Result<Feed, ApiError>>(16);
        tokio::spawn(async move {
            loop {
                // Stop as soon as the watcher is gone (dropping a cursor mid-read is fine:
                // it is never read again).
                let item = tokio::select! {
                    item = feed.next() => item,
                    _ = ftx.closed() => return,
                };
                let stop = !matches!(item, Ok(Feed::Events(..)));
                if ftx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BOOKMARK_EVERY);
            tick.tick().await;
            loop {
                let item = tokio::select! {
                    item = frx.recv() => item,
                    _ = tick.tick(), if bookmarks => {
                        let mut o = kind_template(kind);
                        meta_mut(&mut o).resource_version = rv_string(seen);
                        let ev = pb::WatchEvent { r#type: "BOOKMARK".into(), object: Some(kinds::wrap(o)) };
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    _ = tx.closed() => return,
                };
                let events = match item {
                    None => return,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Some(Ok(Feed::Compacted(c))) => {
                        let _ = tx.send(Err(ApiError::Expired { requested, compacted: c })).await;
                        return;
                    }
                    Some(Ok(Feed::Events(events, rev))) => {
                        seen = rev;
                        events
                    }
                };
                let mut sent = false;
                for e in events {
                    match translate(kind, &sel, &e) {
                        Ok(Some(ev)) => {
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                            sent = true;
                        }
                        Ok(None) => {}
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    }
                }
                // Changes the selectors filtered out do not count as traffic: an idle
                // watcher still gets its bookmarks.
                if sent {
                    tick.reset();
                }
            }
        });
        Ok(())
    }
}

/// An empty object of `kind` (for bookmarks).
fn kind_template(kind: Kind) -> O {
    match kind {
        Kind::Namespace => O::Namespace(Default::default()),
        Kind::Node => O::Node(Default::default()),
        Kind::Pod => O::Pod(Default::default()),
        Kind::ReplicaSet => O::ReplicaSet(Default::default()),
        Kind::Deployment => O::Deployment(Default::default()),
        Kind::Service => O::Service(Default::default()),
        Kind::Endpoints => O::Endpoints(Default::default()),
        Kind::Lease => O::Lease(Default::default()),
        Kind::Event => O::Event(Default::default()),
        Kind::DaemonSet => O::DaemonSet(Default::default()),
        Kind::Job => O::Job(Default::default()),
        Kind::Role => O::Role(Default::default()),
        Kind::ClusterRole => O::ClusterRole(Default::default()),
        Kind::RoleBinding => O::RoleBinding(Default::default()),
        Kind::ClusterRoleBinding => O::ClusterRoleBinding(Default::default()),
    }
}

/// One store event as an API watch event, seen through the selectors: an object that
/// starts matching is ADDED, one that stops matching is DELETED.
fn translate(
    kind: Kind,
    sel: &Selectors,
    e: &flotilla_proto::mvccpb::Event,
) -> Result<Option<pb::WatchEvent>, ApiError> {
    use flotilla_proto::mvccpb::event::EventType;
    let Some(kv) = &e.kv else { return Ok(None) };
    let prev = match &e.prev_kv {
        Some(p) if !p.value.is_empty() => Some(kinds::decode(kind, &p.value)?),
        _ => None,
    };
    let was = prev.as_ref().is_some_and(|p| sel.matches(p));
    let ev = |t: &str, o: O| {
        Some(pb::WatchEvent { r#type: t.into(), object: Some(kinds::wrap(with_rv(o, kv.mod_revision))) })
    };
    if e.r#type == EventType::Delete as i32 {
        return Ok(if was { prev.and_then(|p| ev("DELETED", p)) } else { None });
    }
    let now = kinds::decode(kind, &kv.value)?;
    let is = sel.matches(&now);
    Ok(match (was, is) {
        (false, true) => ev("ADDED", now),
        (true, true) => ev("MODIFIED", now),
        (true, false) => ev("DELETED", now),
        (false, false) => None,
    })
}

/// The object an update writes: for a status update, the stored object with the new
/// status; otherwise the new object with the server-managed metadata and the status of
/// the stored one.
/// Whether no finalizer holds `o` back any more (a namespace's spec has its own).
fn finalized(o: &O) -> bool {
    meta(o).finalizers.is_empty()
        && match o {
            O::Namespace(n) => n.spec.as_ref().is_none_or(|s| s.finalizers.is_empty()),
            _ => true,
        }
}

fn merge_update(cur: &O, new: O, status_only: bool) -> Result<O, ApiError> {
    if Kind::of(cur) != Kind::of(&new) {
        return Err(ApiError::Internal("update of a different kind".into()));
    }
    let old_meta = meta(cur).clone();
    if status_only {
        let mut out = cur.clone();
        kinds::copy_status(&new, &mut out);
        meta_mut(&mut out).resource_version.clear();
        return Ok(out);
    }
    let mut out = new;
    if Kind::of(cur).has_status() {
        kinds::copy_status(cur, &mut out);
    }
    // An update that leaves the allocated cluster IP out keeps it (as Kubernetes does).
    if let (O::Service(old), O::Service(new)) = (cur, &mut out) {
        let old_ip = old.spec.as_ref().map(|s| s.cluster_ip.clone()).unwrap_or_default();
        if let Some(spec) = new.spec.as_mut().filter(|s| s.cluster_ip.is_empty()) {
            spec.cluster_ip = old_ip;
        }
        // ...and so does one that leaves a port's node port out.
        if let (Some(was), Some(spec)) = (old.spec.as_ref(), new.spec.as_mut()) {
            for p in spec.ports.iter_mut().filter(|p| p.node_port == 0) {
                let proto = |x: &str| if x.is_empty() { "TCP".to_string() } else { x.to_string() };
                let same = was
                    .ports
                    .iter()
                    .find(|o| o.name == p.name && proto(&o.protocol) == proto(&p.protocol) && o.port == p.port);
                if let Some(o) = same {
                    p.node_port = o.node_port;
                }
            }
        }
    }
    let m = meta_mut(&mut out);
    m.name = old_meta.name;
    m.namespace = old_meta.namespace;
    m.uid = old_meta.uid;
    m.creation_timestamp = old_meta.creation_timestamp;
    m.generation = old_meta.generation;
    m.deletion_timestamp = old_meta.deletion_timestamp;
    m.deletion_grace_period_seconds = old_meta.deletion_grace_period_seconds;
    m.generate_name = old_meta.generate_name;
    m.resource_version.clear();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let k = b"/registry/pods/default/web\x00";
        assert_eq!(unhex(&hex(k)).as_deref(), Some(&k[..]));
        assert_eq!(unhex("zz"), None);
    }
}
