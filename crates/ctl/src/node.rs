//! `flotctl cordon|uncordon|drain`: taking a node out of service for maintenance, as
//! `kubectl` does it. Cordoning sets the node's `spec.unschedulable` (the scheduler then
//! places nothing new there); draining cordons, then deletes the node's pods gracefully
//! — each given its own termination grace period, or `--grace-period` — and waits until
//! they are gone, so their controllers recreate them elsewhere.
//!
//! A pod no controller owns would not come back anywhere: drain refuses to delete one
//! (naming it) unless `--force`. Finished pods are deleted without a second thought.

use std::time::{Duration, Instant};

use flotilla_client::{Client, DeleteParams, ListParams};
use flotilla_proto::api as pb;

use crate::CtlError;

/// Arguments of `drain`.
#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// Node name.
    pub node: String,
    /// Also delete pods that no controller owns (they will not be recreated).
    #[arg(long)]
    pub force: bool,
    /// Seconds each pod gets to stop [default: the pod's own terminationGracePeriodSeconds].
    #[arg(long)]
    pub grace_period: Option<i64>,
    /// Give up waiting for the pods to go after this long (e.g. 90s, 5m).
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

/// Sets or clears `spec.unschedulable`: what `cordon` and `uncordon` print.
pub async fn cordon(client: &Client, node: &str, on: bool) -> Result<String, CtlError> {
    let n: pb::Node = client.get("", node).await?;
    let now = n.spec.as_ref().is_some_and(|s| s.unschedulable);
    let word = if on { "cordoned" } else { "uncordoned" };
    if now == on {
        return Ok(format!("node/{node} already {word}"));
    }
    let uid = n.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
    let patch = serde_json::json!({"metadata": {"uid": uid}, "spec": {"unschedulable": on}});
    client.patch::<pb::Node>("", node, &patch).await?;
    Ok(format!("node/{node} {word}"))
}

fn pod_name(p: &pb::Pod) -> String {
    p.metadata.as_ref().map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default()
}

/// Whether a controller owns `p` (it will be recreated elsewhere).
fn managed(p: &pb::Pod) -> bool {
    p.metadata.as_ref().is_some_and(|m| m.owner_references.iter().any(|r| r.controller))
}

fn finished(p: &pb::Pod) -> bool {
    p.status.as_ref().is_some_and(|s| matches!(s.phase.as_str(), "Succeeded" | "Failed"))
}

/// Which of `pods` drain may not delete without `--force`.
pub fn unmanaged(pods: &[pb::Pod]) -> Vec<String> {
    pods.iter().filter(|p| !managed(p) && !finished(p)).map(pod_name).collect()
}

/// Cordons `a.node`, deletes its pods and waits until they are gone; one line per step.
pub async fn drain(client: &Client, a: DrainArgs) -> Result<(), CtlError> {
    let timeout = humantime::parse_duration(&a.timeout)
        .map_err(|e| CtlError::Usage(format!("--timeout {:?}: {e} (examples: 90s, 5m)", a.timeout)))?;
    if a.grace_period.is_some_and(|g| g < 0) {
        return Err(CtlError::Usage("--grace-period must not be negative".into()));
    }
    let on_node = ListParams { field_selector: format!("spec.nodeName={}", a.node), ..Default::default() };
    // Refuse before changing anything.
    client.get::<pb::Node>("", &a.node).await?;
    let pods = client.list::<pb::Pod>(&on_node).await?.items;
    let refused = unmanaged(&pods);
    if !a.force && !refused.is_empty() {
        return Err(CtlError::Usage(format!(
            "cannot drain node/{}: no controller owns {} (they would not be recreated; --force deletes them)",
            a.node,
            refused.join(", ")
        )));
    }
    let line = cordon(client, &a.node, true).await?;
    outln!("{line}");
    for p in &pods {
        let m = p.metadata.clone().unwrap_or_default();
        if !m.deletion_timestamp.is_empty() {
            continue;
        }
        let params = DeleteParams { uid: m.uid.clone(), grace_period_seconds: a.grace_period, ..Default::default() };
        match client.delete::<pb::Pod>(&m.namespace, &m.name, &params).await {
            Ok(_) => {
                outln!("evicting pod {}", pod_name(p));
            }
            Err(e) if e.is_not_found() || e.code() == Some(tonic::Code::FailedPrecondition) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = client.list::<pb::Pod>(&on_node).await?.items;
        if left.is_empty() {
            outln!("node/{} drained", a.node);
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = left.iter().map(pod_name).collect();
            return Err(CtlError::Usage(format!(
                "node/{} not drained after {}: pods still there: {} (the node stays cordoned)",
                a.node,
                a.timeout,
                names.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, owned: bool, phase: &str) -> pb::Pod {
        pb::Pod {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                owner_references: if owned {
                    vec![pb::OwnerReference {
                        kind: "ReplicaSet".into(),
                        name: "rs".into(),
                        controller: true,
                        ..Default::default()
                    }]
                } else {
                    vec![]
                },
                ..Default::default()
            }),
            spec: None,
            status: Some(pb::PodStatus { phase: phase.into(), ..Default::default() }),
        }
    }

    #[test]
    fn drain_refuses_only_running_pods_no_controller_owns() {
        let pods = [pod("a", true, "Running"), pod("b", false, "Running"), pod("c", false, "Succeeded")];
        assert_eq!(unmanaged(&pods), vec!["default/b".to_string()]);
    }
}
