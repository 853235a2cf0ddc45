//! The Endpoints controller against real masters (their elected controller manager): a
//! Service's Endpoints list its pods' addresses, ready and not ready apart, with a named
//! target port resolved in each pod; a readiness change reaches the Endpoints in well
//! under a second; deleting the Service deletes its Endpoints.
//!
//! The test plays the kubelet: it creates pods already bound to a node and writes their
//! status itself, so readiness flips exactly when it says.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, DeleteParams};
use flotilla_proto::api as pb;

fn service() -> pb::Service {
    pb::Service {
        metadata: Some(pb::ObjectMeta { name: "web".into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::ServiceSpec {
            selector: labels(&[("app", "web")]),
            ports: vec![pb::ServicePort {
                name: "http".into(),
                port: 80,
                target_port_name: "http".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// Pod `name` on node `n1`, labelled `app=web`, whose container calls port `port` "http".
fn pod(name: &str, port: i32) -> pb::Pod {
    pb::Pod {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            labels: labels(&[("app", "web")]),
            ..Default::default()
        }),
        spec: Some(pb::PodSpec {
            node_name: "n1".into(),
            containers: vec![pb::Container {
                name: "main".into(),
                image: "busybox:1.36".into(),
                ports: vec![pb::ContainerPort { name: "http".into(), container_port: port, ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// Reports `name` Running with address `ip`, Ready or not, as a kubelet would.
async fn report(client: &Client, name: &str, ip: &str, ready: bool) {
    let mut p: pb::Pod = client.get("default", name).await.expect("pod");
    let status = if ready { "True" } else { "False" };
    p.status = Some(pb::PodStatus {
        phase: "Running".into(),
        pod_ip: ip.into(),
        conditions: vec![pb::Condition { r#type: "Ready".into(), status: status.into(), ..Default::default() }],
        ..Default::default()
    });
    client.update_status(p).await.expect("status");
}

/// Endpoints as (port, ready IPs, not-ready IPs) per subset; None if absent.
type View = Option<Vec<(i32, Vec<String>, Vec<String>)>>;

/// The Endpoints of `web`.
async fn view(client: &Client) -> View {
    let e: pb::Endpoints = client.get("default", "web").await.ok()?;
    let ips = |a: &[pb::EndpointAddress]| a.iter().map(|a| a.ip.clone()).collect::<Vec<_>>();
    Some(
        e.subsets
            .iter()
            .map(|s| (s.ports.first().map_or(0, |p| p.port), ips(&s.addresses), ips(&s.not_ready_addresses)))
            .collect(),
    )
}

/// Waits until the Endpoints look like `want`; how long that took.
async fn until(c: &Cluster, client: &Client, want: View) -> Duration {
    let start = Instant::now();
    loop {
        let now = view(client).await;
        if now == want {
            return start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!("endpoints {now:?}, not {want:?}\n{}", c.logs());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ips(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_services_endpoints_follow_its_pods_readiness_and_resolve_named_ports() {
    let c = Cluster::start_with_scheduler(3, &["--disable-scheduler"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    rt.block_on(async {
        client.create(service()).await.expect("service");
        // Two pods call 8080 "http", one calls 9090 "http": two subsets.
        for (name, port) in [("a", 8080), ("b", 8080), ("c", 9090)] {
            client.create(pod(name, port)).await.expect("pod");
        }
        report(&client, "a", "10.1.0.2", true).await;
        report(&client, "b", "10.1.0.3", false).await;
        report(&client, "c", "10.1.0.4", true).await;
        until(
            &c,
            &client,
            Some(vec![(8080, ips(&["10.1.0.2"]), ips(&["10.1.0.3"])), (9090, ips(&["10.1.0.4"]), vec![])]),
        )
        .await;

        // Readiness flips, one way then the other: each reaches the Endpoints fast.
        let mut took = Vec::new();
        report(&client, "b", "10.1.0.3", true).await;
        took.push(
            until(
                &c,
                &client,
                Some(vec![(8080, ips(&["10.1.0.2", "10.1.0.3"]), vec![]), (9090, ips(&["10.1.0.4"]), vec![])]),
            )
            .await,
        );
        report(&client, "a", "10.1.0.2", false).await;
        took.push(
            until(
                &c,
                &client,
                Some(vec![(8080, ips(&["10.1.0.3"]), ips(&["10.1.0.2"])), (9090, ips(&["10.1.0.4"]), vec![])]),
            )
            .await,
        );
        eprintln!("readiness changes reached the Endpoints in {took:?}");
        for t in &took {
            assert!(*t < Duration::from_secs(1), "a readiness change took {t:?} to reach the Endpoints");
        }

        // A pod being deleted leaves at once.
        let grace = DeleteParams { grace_period_seconds: Some(30), ..Default::default() };
        client.delete::<pb::Pod>("default", "c", &grace).await.expect("delete c");
        until(&c, &client, Some(vec![(8080, ips(&["10.1.0.3"]), ips(&["10.1.0.2"]))])).await;

        // The Service goes, and its Endpoints with it.
        client.delete::<pb::Service>("default", "web", &DeleteParams::default()).await.expect("delete service");
        until(&c, &client, None).await;
    });
}
