//! The DaemonSet controller against real masters (their elected controller manager; no
//! scheduler runs: daemon pods are placed by the controller) and hollow nodes: one pod
//! per eligible node, none on a node with a taint it does not tolerate, one on a node
//! that joins or whose taint goes, one kept on a cordoned node; a new template rolls
//! node by node with never more than maxUnavailable nodes without a ready pod; deleting
//! the DaemonSet takes its pods.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, DeleteParams, ListParams};
use flotilla_proto::api as pb;

fn daemonset(image: &str) -> pb::DaemonSet {
    let mut template = replicaset("agent", 1).spec.and_then(|s| s.template).expect("template");
    template.spec.as_mut().expect("spec").containers[0].image = image.into();
    pb::DaemonSet {
        metadata: Some(pb::ObjectMeta { name: "agent".into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::DaemonSetSpec {
            selector: Some(pb::LabelSelector { match_labels: labels(&[("app", "agent")]), ..Default::default() }),
            template: Some(template),
            ..Default::default()
        }),
        status: None,
    }
}

/// Node → (image, ready) of the DaemonSet's live pods on it.
async fn placement(client: &Client) -> BTreeMap<String, Vec<(String, bool)>> {
    let p = ListParams { namespace: "default".into(), label_selector: "app=agent".into(), ..Default::default() };
    let mut out: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for pod in client.list::<pb::Pod>(&p).await.expect("pods").items {
        if pod.metadata.as_ref().is_some_and(|m| !m.deletion_timestamp.is_empty()) {
            continue;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let ready =
            pod.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"));
        out.entry(spec.node_name.clone()).or_default().push((spec.containers[0].image.clone(), ready));
    }
    out
}

/// Waits until the placement is `want` (node → image, each ready), at most 30 s.
async fn settles(c: &Cluster, client: &Client, want: &[(&str, &str)]) {
    let want: BTreeMap<String, Vec<(String, bool)>> =
        want.iter().map(|(n, i)| (n.to_string(), vec![(i.to_string(), true)])).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = placement(client).await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "placement {now:?}, not {want:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn taint(client: &Client, node: &str, taints: serde_json::Value) {
    client.patch::<pb::Node>("", node, &serde_json::json!({"spec": {"taints": taints}})).await.expect("taint");
}

#[test]
fn a_daemonset_runs_one_pod_per_eligible_node_and_rolls_node_by_node() {
    let c = Cluster::start_with_scheduler(3, &["--disable-scheduler"]);
    let eps = c.endpoints();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    rt.block_on(async {
        let _nodes = hollow_nodes(&client, &["h1", "h2", "h3"]).await;
        taint(&client, "h3", serde_json::json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])).await;
        client.create(daemonset("agent:v1")).await.expect("daemonset");
        settles(&c, &client, &[("h1", "agent:v1"), ("h2", "agent:v1")]).await;

        // A node joins; a taint goes; a cordoned node keeps its pod.
        let _more = hollow_nodes(&client, &["h4"]).await;
        settles(&c, &client, &[("h1", "agent:v1"), ("h2", "agent:v1"), ("h4", "agent:v1")]).await;
        taint(&client, "h3", serde_json::json!([])).await;
        let all = [("h1", "agent:v1"), ("h2", "agent:v1"), ("h3", "agent:v1"), ("h4", "agent:v1")];
        settles(&c, &client, &all).await;
        // Cordoned, with the taint Kubernetes gives a cordoned node: its pod stays. To
        // know the controller has looked, h4 gets a taint the pods do not tolerate in the
        // same breath: once h4's pod is gone, h2's fate is decided too.
        assert_eq!(ctl_ok(&eps, &["cordon", "h2"]), "node/h2 cordoned\n");
        let unschedulable = serde_json::json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]);
        taint(&client, "h2", unschedulable).await;
        taint(&client, "h4", serde_json::json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])).await;
        settles(&c, &client, &[("h1", "agent:v1"), ("h2", "agent:v1"), ("h3", "agent:v1")]).await;
        taint(&client, "h4", serde_json::json!([])).await;
        settles(&c, &client, &all).await;
        let d: pb::DaemonSet = client.get("default", "agent").await.expect("ds");
        let st = d.status.unwrap_or_default();
        assert_eq!((st.desired_number_scheduled, st.current_number_scheduled, st.number_ready), (4, 4, 4));

        // A new template: at most one node (maxUnavailable 1) without a ready pod at
        // any look, until all four run it.
        let mut d: pb::DaemonSet = client.get("default", "agent").await.expect("ds");
        d.spec.as_mut().and_then(|s| s.template.as_mut()).and_then(|t| t.spec.as_mut()).expect("spec").containers[0]
            .image = "agent:v2".into();
        client.update(d).await.expect("update");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut looks = 0;
        loop {
            let now = placement(&client).await;
            looks += 1;
            let ready = ["h1", "h2", "h3", "h4"]
                .iter()
                .filter(|n| now.get(**n).is_some_and(|ps| ps.iter().any(|(_, r)| *r)))
                .count();
            assert!(ready >= 3, "look {looks}: only {ready} nodes with a ready pod: {now:?}");
            if now.values().all(|ps| ps.len() == 1 && ps[0].0 == "agent:v2") && now.len() == 4 {
                break;
            }
            assert!(Instant::now() < deadline, "rollout stuck: {now:?}\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("rolled 4 nodes in {looks} looks");
        let table = ctl_ok(&eps, &["get", "ds"]);
        assert!(table.contains("UP-TO-DATE") && table.contains("agent"), "{table}");

        // Deleted: its pods go with it.
        client.delete::<pb::DaemonSet>("default", "agent", &DeleteParams::default()).await.expect("delete");
        settles(&c, &client, &[]).await;
    });
}
