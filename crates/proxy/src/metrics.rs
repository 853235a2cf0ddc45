//! The proxy's Prometheus metrics: syncs (full and partial), failed transactions, nft
//! operations per transaction, how long a sync takes, and relists of its reflectors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The label of a sync's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `full` (the whole table replaced) or `partial` (only what changed).
    pub kind: String,
}

/// Every metric the proxy exports.
pub struct ProxyMetrics {
    registry: Registry,
    /// Transactions committed, by kind.
    pub syncs: Family<KindLabel, Counter<u64, AtomicU64>>,
    /// Transactions the kernel refused (each followed by a full sync).
    pub sync_failures: Counter<u64, AtomicU64>,
    /// nft operations (commands) per committed transaction.
    pub nft_operations: Histogram,
    /// nft operations committed in all.
    pub nft_operations_total: Counter<u64, AtomicU64>,
    /// Seconds from a change seen to its transaction committed.
    pub sync_seconds: Histogram,
    /// Service ports programmed.
    pub service_ports: Gauge,
    /// Lists of Services and Endpoints (2 at start; each more is a relist).
    pub lists: Gauge<u64, AtomicU64>,
    /// Load-balancer addresses this node announces.
    pub announced: Gauge,
    /// DNS queries answered, by rcode.
    pub dns_queries: Family<RcodeLabel, Counter<u64, AtomicU64>>,
    counters: Mutex<Vec<Arc<AtomicU64>>>,
}

/// The label of a DNS answer's code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RcodeLabel {
    /// NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...
    pub rcode: String,
}

impl Default for ProxyMetrics {
    fn default() -> ProxyMetrics {
        ProxyMetrics::new()
    }
}

impl ProxyMetrics {
    /// The metrics, registered under `flotilla_proxy_`.
    pub fn new() -> ProxyMetrics {
        let mut registry = Registry::with_prefix("flotilla_proxy");
        let m = ProxyMetrics {
            registry: Registry::default(),
            syncs: Family::default(),
            sync_failures: Counter::default(),
            nft_operations: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            nft_operations_total: Counter::default(),
            sync_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            service_ports: Gauge::default(),
            lists: Gauge::default(),
            announced: Gauge::default(),
            dns_queries: Family::default(),
            counters: Mutex::default(),
        };
        registry.register("syncs", "nft transactions committed, by kind (full or partial)", m.syncs.clone());
        registry.register(
            "sync_failures",
            "nft transactions refused (each followed by a full sync)",
            m.sync_failures.clone(),
        );
        registry.register("nft_operations", "nft operations per committed transaction", m.nft_operations.clone());
        registry.register("nft_operations_total", "nft operations committed", m.nft_operations_total.clone());
        registry.register(
            "sync_seconds",
            "Seconds from a change of Services or Endpoints seen to its transaction committed",
            m.sync_seconds.clone(),
        );
        registry.register("service_ports", "Service ports programmed", m.service_ports.clone());
        registry.register("lists", "Lists of Services and Endpoints: 2, plus one per relist", m.lists.clone());
        registry.register(
            "announced_addresses",
            "Load-balancer addresses this node answers ARP for",
            m.announced.clone(),
        );
        registry.register("dns_queries", "DNS queries answered, by response code", m.dns_queries.clone());
        ProxyMetrics { registry, ..m }
    }

    /// Adds a reflector's list counter to `lists`.
    pub fn count_lists(&self, counter: Arc<AtomicU64>) {
        self.counters.lock().unwrap_or_else(|p| p.into_inner()).push(counter);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let lists: u64 =
            self.counters.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|c| c.load(Ordering::Relaxed)).sum();
        self.lists.set(lists);
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
