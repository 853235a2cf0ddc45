//! The garbage collector against real masters (their elected controller manager): a
//! Deployment deleted with flotctl takes its ReplicaSet and pods with it (background),
//! deletes them before itself (foreground), or leaves them behind without an owner
//! (orphan). A bad propagation policy is refused and deletes nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ListParams};
use flotilla_proto::api as pb;

/// `app`'s ReplicaSets, pods, and whether its Deployment exists.
async fn count(client: &Client, app: &str) -> (usize, usize, bool) {
    let p = ListParams { namespace: "default".into(), label_selector: format!("app={app}"), ..Default::default() };
    let pods = client.list::<pb::Pod>(&p).await.expect("pods").items.len();
    let sets = client.list::<pb::ReplicaSet>(&p).await.expect("replicasets").items.len();
    (sets, pods, client.get::<pb::Deployment>("default", app).await.is_ok())
}

/// Waits until `app` has `sets` ReplicaSets, `pods` pods and (or not) its Deployment.
async fn settles(c: &Cluster, client: &Client, app: &str, sets: usize, pods: usize, deployment: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = count(client, app).await;
        if now == (sets, pods, deployment) {
            return;
        }
        if Instant::now() > deadline {
            let p =
                ListParams { namespace: "default".into(), label_selector: format!("app={app}"), ..Default::default() };
            let meta = |m: Option<&pb::ObjectMeta>| {
                m.map(|m| {
                    format!(
                        "{} deleting:{} finalizers:{:?} owners:{:?}",
                        m.name,
                        !m.deletion_timestamp.is_empty(),
                        m.finalizers,
                        m.owner_references.iter().map(|r| &r.name).collect::<Vec<_>>()
                    )
                })
                .unwrap_or_default()
            };
            let sets: Vec<String> = client
                .list::<pb::ReplicaSet>(&p)
                .await
                .expect("rs")
                .items
                .iter()
                .map(|r| meta(r.metadata.as_ref()))
                .collect();
            let pods: Vec<String> = client
                .list::<pb::Pod>(&p)
                .await
                .expect("pods")
                .items
                .iter()
                .map(|r| meta(r.metadata.as_ref()))
                .collect();
            let d = client.get::<pb::Deployment>("default", app).await.ok().map(|d| meta(d.metadata.as_ref()));
            panic!(
                "{app}: (sets, pods, deployment) {now:?}, not {:?}: sets {sets:?} pods {pods:?} deployment {d:?}\n{}",
                (sets.len(), pods.len(), deployment),
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three Deployments deleted three ways; a bad policy first.
#[test]
fn deleting_a_deployment_cascades_in_the_background_foreground_or_orphans() {
    let c = Cluster::start_with_scheduler(3, &["--disable-scheduler"]);
    let eps = c.endpoints();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    rt.block_on(async {
        for (name, n) in [("bg", 3), ("fg", 2), ("keep", 2)] {
            client.create(deployment(name, n)).await.expect("create deployment");
        }
        settles(&c, &client, "bg", 1, 3, true).await;
        settles(&c, &client, "fg", 1, 2, true).await;
        settles(&c, &client, "keep", 1, 2, true).await;
    });

    // A bad policy is refused (by flotctl, and by the apiserver naming the field), and
    // nothing is deleted.
    let err = ctl_fails(&eps, &["delete", "deployment", "bg", "--cascade", "sideways"]);
    assert!(err.contains("--cascade \"sideways\""), "{err}");
    rt.block_on(async {
        let p = flotilla_client::DeleteParams { propagation_policy: "Sideways".into(), ..Default::default() };
        let e = client.delete_object("Deployment", "default", "bg", &p).await.expect_err("refused");
        assert_eq!(e.code(), Some(tonic::Code::InvalidArgument));
        assert!(e.to_string().contains("propagationPolicy"), "{e}");
        settles(&c, &client, "bg", 1, 3, true).await;
    });

    // A Service owned by the Deployment (any kind may own any kind).
    rt.block_on(async {
        let d: pb::Deployment = client.get("default", "bg").await.expect("deployment");
        let m = d.metadata.expect("meta");
        let svc = pb::Service {
            metadata: Some(pb::ObjectMeta {
                name: "bg".into(),
                namespace: "default".into(),
                owner_references: vec![pb::OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: m.name,
                    uid: m.uid,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                selector: labels(&[("app", "bg")]),
                ports: vec![pb::ServicePort { port: 80, ..Default::default() }],
                ..Default::default()
            }),
            status: None,
        };
        client.create(svc).await.expect("service");
    });

    // Background: the Deployment goes at once, then its ReplicaSet, then the pods; and
    // the Service it owns.
    let out = ctl_ok(&eps, &["delete", "deployment", "bg"]);
    assert!(out.contains("deployment/bg deleted"), "{out}");
    rt.block_on(settles(&c, &client, "bg", 0, 0, false));
    rt.block_on(until(&c, "the owned service goes", || async {
        client.get::<pb::Service>("default", "bg").await.is_err().then_some(())
    }));

    // Foreground: the Deployment stays, marked, until what it owns is gone.
    let out = ctl_ok(&eps, &["delete", "deployment", "fg", "--cascade", "foreground"]);
    assert!(out.contains("deployment/fg marked for deletion"), "{out}");
    rt.block_on(async {
        let d: pb::Deployment = client.get("default", "fg").await.expect("still there");
        let m = d.metadata.expect("meta");
        assert!(!m.deletion_timestamp.is_empty());
        assert!(m.finalizers.contains(&"foregroundDeletion".to_string()), "{:?}", m.finalizers);
        settles(&c, &client, "fg", 0, 0, false).await;
    });

    // Orphan: the Deployment goes; its ReplicaSet and pods stay, the ReplicaSet without
    // an owner, and it still keeps its pods.
    let out = ctl_ok(&eps, &["delete", "deployment", "keep", "--cascade", "orphan"]);
    assert!(out.contains("deployment/keep marked for deletion"), "{out}");
    rt.block_on(async {
        settles(&c, &client, "keep", 1, 2, false).await;
        let p = ListParams { namespace: "default".into(), label_selector: "app=keep".into(), ..Default::default() };
        let rs = client.list::<pb::ReplicaSet>(&p).await.expect("replicasets").items.remove(0);
        assert!(rs.metadata.as_ref().expect("meta").owner_references.is_empty(), "orphaned: {rs:?}");
        let name = rs.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let pods = client.list::<pb::Pod>(&p).await.expect("pods").items;
        assert!(pods
            .iter()
            .all(|p| p.metadata.as_ref().is_some_and(|m| m.owner_references.iter().any(|r| r.name == name))));
    });
}
