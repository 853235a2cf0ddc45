//! Node IPAM: every Node gets a `spec.podCIDR` cut from the cluster's pod range
//! (`--cluster-cidr`, blocks of `--node-cidr-mask-size`), never one another node has; a
//! deleted Node's block is free again. Kubelets give their pods addresses from it.
//!
//! Which blocks are taken is read from the Nodes themselves, never kept elsewhere: before
//! handing out blocks the controller lists the Nodes from the apiserver (a linearizable
//! read, not the cache), so what a previous controller manager wrote before it lost the
//! lock is seen, and what it would write after is refused as fenced. Each block is given
//! with a compare-and-swap on the Node's resourceVersion. A node that already has a
//! podCIDR (set by its kubelet's `--pod-cidr`, or before) keeps it; when the range is
//! used up, the node gets an Event `CIDRNotAvailable` and waits for a block to be freed.
//!
//! Off unless `--cluster-cidr` is given.

use std::collections::BTreeSet;

use flotilla_client::ListParams;
use flotilla_core::cidr::Cidr;
use flotilla_proto::api as pb;

use crate::allocator::{self, Round};
use crate::informers::Informers;
use crate::manager::Context;

/// The pod ranges to hand out: the cluster's range and the size of each node's block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRanges {
    /// The cluster's pod range (`--cluster-cidr`).
    pub cluster: Cidr,
    /// The prefix length of each node's block (`--node-cidr-mask-size`).
    pub node_prefix: u8,
}

impl PodRanges {
    /// Checks `--cluster-cidr` and `--node-cidr-mask-size` together.
    pub fn new(cluster: &str, node_prefix: u8) -> Result<PodRanges, String> {
        let c = Cidr::parse_within(cluster, 8, 28).map_err(|e| format!("--cluster-cidr: {e}"))?;
        if node_prefix < c.prefix || node_prefix > 30 {
            return Err(format!(
                "--node-cidr-mask-size {node_prefix} must be between the cluster range's /{} and /30",
                c.prefix
            ));
        }
        Ok(PodRanges { cluster: c, node_prefix })
    }
}

/// Blocks for `want` nodes, the lowest not in `taken` (blocks' first addresses), in order;
/// fewer when the range runs out.
pub fn allocate(r: &PodRanges, taken: &BTreeSet<Cidr>, want: usize) -> Vec<Cidr> {
    let mut out = Vec::with_capacity(want);
    let mut i = 0;
    while out.len() < want && i < r.cluster.blocks(r.node_prefix) {
        let b = r.cluster.block(r.node_prefix, i);
        if !taken.contains(&b) {
            out.push(b);
        }
        i += 1;
    }
    out
}

/// The blocks `nodes` hold (those inside the cluster's range, of the right size).
pub fn taken(r: &PodRanges, nodes: &[pb::Node]) -> BTreeSet<Cidr> {
    nodes
        .iter()
        .filter_map(|n| n.spec.as_ref())
        .filter_map(|s| Cidr::parse_within(&s.pod_cidr, 0, 32).ok())
        .filter(|c| c.prefix == r.node_prefix && r.cluster.contains(c))
        .collect()
}

/// Starts the informers Node IPAM reads.
pub fn warm(informers: &Informers) {
    informers.get::<pb::Node>();
}

fn needs_cidr(n: &pb::Node) -> bool {
    n.spec.as_ref().is_none_or(|s| s.pod_cidr.is_empty())
}

/// Gives every node without a podCIDR one, from a fresh list of the Nodes.
async fn assign(ctx: &Context, r: &PodRanges) -> Result<Round, flotilla_client::ClientError> {
    let nodes = ctx.client.list::<pb::Node>(&ListParams::default()).await?.items;
    let held = taken(r, &nodes);
    let waiting: Vec<pb::Node> = nodes.into_iter().filter(needs_cidr).collect();
    let blocks = allocate(r, &held, waiting.len());
    let name = |n: &pb::Node| n.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let mut round = Round {
        exhausted: waiting
            .iter()
            .skip(blocks.len())
            .map(|n| pb::ObjectReference { kind: "Node".into(), name: name(n), ..Default::default() })
            .collect(),
        unfinished: blocks.len() < waiting.len(),
    };
    for (n, block) in waiting.iter().zip(blocks) {
        let mut n = n.clone();
        n.spec.get_or_insert_with(Default::default).pod_cidr = block.to_string();
        // The resourceVersion from the list: a node changed meanwhile is looked at again.
        match ctx.client.update(n.clone()).await {
            Ok(_) => tracing::info!(node = %name(&n), pod_cidr = %block, "podCIDR assigned"),
            Err(e) if e.is_not_found() || e.code() == Some(tonic::Code::Aborted) => round.unfinished = true,
            Err(e) => return Err(e),
        }
    }
    Ok(round)
}

/// Runs Node IPAM for one term (until `ctx` says stop); idle without `--cluster-cidr`.
pub async fn start(ctx: Context) {
    let Some(r) = ctx.settings.pod_ranges else {
        tracing::debug!("node IPAM is off: no --cluster-cidr");
        return ctx.stopped().await;
    };
    let msg = format!("no free /{} block is left in {}", r.node_prefix, r.cluster);
    allocator::run(&ctx, "nodeipam", needs_cidr, || assign(&ctx, &r), ("CIDRNotAvailable", &msg)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str) -> pb::Node {
        pb::Node {
            metadata: Some(pb::ObjectMeta { name: name.into(), ..Default::default() }),
            spec: Some(pb::NodeSpec { pod_cidr: cidr.into(), ..Default::default() }),
            status: None,
        }
    }

    #[test]
    fn blocks_go_lowest_free_first_and_never_twice() {
        let r = PodRanges::new("10.244.0.0/22", 24).expect("ranges");
        let nodes = [node("a", "10.244.1.0/24"), node("b", ""), node("c", "192.168.0.0/24")];
        let held = taken(&r, &nodes);
        assert_eq!(held.len(), 1, "a block outside the range is not ours");
        let got: Vec<String> = allocate(&r, &held, 5).iter().map(|c| c.to_string()).collect();
        assert_eq!(got, vec!["10.244.0.0/24", "10.244.2.0/24", "10.244.3.0/24"], "the range holds four");
    }

    #[test]
    fn bad_ranges_are_refused_naming_the_flag() {
        assert!(PodRanges::new("10.244.0.0", 24).expect_err("no prefix").contains("--cluster-cidr"));
        assert!(PodRanges::new("10.244.0.0/16", 12).expect_err("wider").contains("--node-cidr-mask-size"));
        assert!(PodRanges::new("10.244.0.0/16", 31).expect_err("too small").contains("/30"));
    }
}
