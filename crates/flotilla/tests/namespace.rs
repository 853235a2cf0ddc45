//! The namespace controller against real masters (their elected controller manager):
//! deleting a namespace marks it Terminating; what is inside is deleted through the API —
//! a pod on a node waits for its kubelet, an object held by a finalizer waits for it —
//! while the namespace's conditions say what is left; then the namespace goes, and one of
//! the same name starts empty.
//!
//! The test plays the kubelet of node `n1` and the owner of the finalizer.

mod common;

use common::*;
use flotilla_client::{Client, DeleteParams, ListParams};
use flotilla_proto::api as pb;

fn namespace(name: &str) -> pb::Namespace {
    pb::Namespace { metadata: Some(pb::ObjectMeta { name: name.into(), ..Default::default() }), ..Default::default() }
}

fn in_team<T>(mut o: T, meta: impl FnOnce(&mut T) -> &mut Option<pb::ObjectMeta>) -> T {
    meta(&mut o).get_or_insert_with(Default::default).namespace = "team".into();
    o
}

async fn count<T: flotilla_client::Resource>(client: &Client) -> usize {
    let p = ListParams { namespace: "team".into(), ..Default::default() };
    client.list::<T>(&p).await.expect("list").items.len()
}

async fn conditions(client: &Client) -> Vec<(String, String, String)> {
    let ns: pb::Namespace = client.get("", "team").await.expect("namespace");
    ns.status.unwrap_or_default().conditions.into_iter().map(|c| (c.r#type, c.status, c.message)).collect()
}

#[test]
fn a_deleted_namespace_is_emptied_through_the_api_honouring_grace_and_finalizers() {
    let c = Cluster::start_with_scheduler(3, &["--disable-scheduler"]);
    let eps = c.endpoints();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    rt.block_on(async {
        client.create(namespace("team")).await.expect("namespace");
        client.create(flotilla_bench::hollow::node("n1", Default::default())).await.expect("node");
        // A Deployment (its pods stay unscheduled: no scheduler runs), a Service (with
        // the Endpoints its controller makes), a pod on n1 with 30 s to stop, and a Lease
        // held by a finalizer.
        client.create(in_team(deployment("web", 2), |d| &mut d.metadata)).await.expect("deployment");
        let mut svc = pb::Service {
            metadata: Some(pb::ObjectMeta { name: "web".into(), ..Default::default() }),
            spec: Some(pb::ServiceSpec {
                selector: labels(&[("app", "web")]),
                ports: vec![pb::ServicePort { port: 80, ..Default::default() }],
                ..Default::default()
            }),
            status: None,
        };
        svc = in_team(svc, |s| &mut s.metadata);
        client.create(svc).await.expect("service");
        let mut pod = pb::Pod {
            metadata: Some(pb::ObjectMeta { name: "bound".into(), ..Default::default() }),
            spec: replicaset("x", 1).spec.and_then(|s| s.template).and_then(|t| t.spec),
            status: None,
        };
        let spec = pod.spec.as_mut().expect("spec");
        spec.node_name = "n1".into();
        spec.termination_grace_period_seconds = Some(30);
        client.create(in_team(pod, |p| &mut p.metadata)).await.expect("pod");
        let lease = pb::Lease {
            metadata: Some(pb::ObjectMeta {
                name: "held".into(),
                finalizers: vec!["example.com/hold".into()],
                ..Default::default()
            }),
            spec: Some(pb::LeaseSpec::default()),
        };
        client.create(in_team(lease, |l| &mut l.metadata)).await.expect("lease");
        until(&c, "the deployment's pods and the endpoints exist", || async {
            (count::<pb::Pod>(&client).await == 3 && count::<pb::Endpoints>(&client).await == 1).then_some(())
        })
        .await;
    });

    let out = ctl_ok(&eps, &["delete", "namespace", "team"]);
    assert!(out.contains("namespace/team marked for deletion"), "{out}");

    rt.block_on(async {
        // Nothing new may be made in it.
        let late = in_team(replicaset("late", 1), |r| &mut r.metadata);
        let e = client.create(late).await.expect_err("terminating");
        assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition), "{e}");

        // Everything goes but the pod its kubelet has not confirmed and the held Lease;
        // the namespace says so.
        until(&c, "only the bound pod and the held lease remain, and the conditions say so", || async {
            let left = (
                count::<pb::Deployment>(&client).await,
                count::<pb::ReplicaSet>(&client).await,
                count::<pb::Service>(&client).await,
                count::<pb::Endpoints>(&client).await,
                count::<pb::Pod>(&client).await,
                count::<pb::Lease>(&client).await,
            );
            let cond = conditions(&client).await;
            (left == (0, 0, 0, 0, 1, 1)
                && cond.contains(&(
                    "NamespaceContentRemaining".into(),
                    "True".into(),
                    "objects remain: leases: 1, pods: 1".into(),
                ))
                && cond.contains(&(
                    "NamespaceFinalizersRemaining".into(),
                    "True".into(),
                    "finalizers hold objects: example.com/hold: 1".into(),
                )))
            .then_some(())
        })
        .await;
        let p: pb::Pod = client.get("team", "bound").await.expect("bound pod");
        let m = p.metadata.expect("meta");
        assert!(!m.deletion_timestamp.is_empty(), "deleted gracefully");
        assert_eq!(m.deletion_grace_period_seconds, Some(30), "with its own grace period");
        let ns: pb::Namespace = client.get("", "team").await.expect("still there");
        assert_eq!(ns.status.as_ref().map(|s| s.phase.as_str()), Some("Terminating"));

        // The kubelet confirms; the finalizer's owner lets go: the namespace goes.
        let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        client.delete::<pb::Pod>("team", "bound", &now).await.expect("confirm");
        let mut l: pb::Lease = client.get("team", "held").await.expect("lease");
        l.metadata.as_mut().expect("meta").finalizers.clear();
        client.update(l).await.expect("remove finalizer");
        until(&c, "the namespace is gone", || async {
            client.get::<pb::Namespace>("", "team").await.is_err().then_some(())
        })
        .await;

        // A namespace of the same name starts empty.
        client.create(namespace("team")).await.expect("namespace again");
        assert_eq!(count::<pb::Pod>(&client).await + count::<pb::Lease>(&client).await, 0);
    });
}
