//! The resource API (`flotilla.api.v1`) against three real masters: CRUD and watch of
//! every kind, compare-and-swap, validation, selectors and pages, service IPs, binding,
//! and watches resumed on another master.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use flotilla_proto::api::{self as pb, api_client::ApiClient, object::Kind as O};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

async fn api(url: &str) -> ApiClient<Channel> {
    let endpoint = Channel::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10));
    ApiClient::new(flotilla_client::pool::channel(endpoint, common::suite_tls().as_ref()))
}

fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        namespace: ns.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    })
}

fn pod_spec(image: &str) -> Option<pb::PodSpec> {
    Some(pb::PodSpec {
        containers: vec![pb::Container { name: "main".into(), image: image.into(), ..Default::default() }],
        ..Default::default()
    })
}

fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> O {
    O::Pod(pb::Pod { metadata: meta(ns, name, labels), spec: pod_spec("busybox:1.36"), status: None })
}

fn template(app: &str) -> Option<pb::PodTemplateSpec> {
    Some(pb::PodTemplateSpec { metadata: meta("", "", &[("app", app)]), spec: pod_spec("nginx:1.25") })
}

fn selector(app: &str) -> Option<pb::LabelSelector> {
    Some(pb::LabelSelector { match_labels: [("app".to_string(), app.to_string())].into(), ..Default::default() })
}

/// One valid object of every kind, in namespace `ns` where namespaced.
fn one_of_each(ns: &str) -> Vec<O> {
    vec![
        O::Namespace(pb::Namespace { metadata: meta("", ns, &[]), ..Default::default() }),
        O::Node(pb::Node {
            metadata: meta("", &format!("{ns}-node"), &[("zone", "a")]),
            spec: Some(pb::NodeSpec { pod_cidr: "10.244.1.0/24".into(), ..Default::default() }),
            status: Some(pb::NodeStatus {
                capacity: [("cpu".to_string(), "2".to_string()), ("memory".to_string(), "8Gi".to_string())].into(),
                ..Default::default()
            }),
        }),
        pod(ns, "web-0", &[("app", "web")]),
        O::ReplicaSet(pb::ReplicaSet {
            metadata: meta(ns, "web-rs", &[]),
            spec: Some(pb::ReplicaSetSpec {
                replicas: Some(2),
                selector: selector("web"),
                template: template("web"),
                ..Default::default()
            }),
            status: None,
        }),
        O::Deployment(pb::Deployment {
            metadata: meta(ns, "web", &[]),
            spec: Some(pb::DeploymentSpec {
                selector: selector("web"),
                template: template("web"),
                ..Default::default()
            }),
            status: None,
        }),
        O::Service(pb::Service {
            metadata: meta(ns, "web", &[]),
            spec: Some(pb::ServiceSpec {
                selector: [("app".to_string(), "web".to_string())].into(),
                ports: vec![pb::ServicePort { port: 80, target_port: 8080, ..Default::default() }],
                ..Default::default()
            }),
            status: None,
        }),
        O::Endpoints(pb::Endpoints {
            metadata: meta(ns, "web", &[]),
            subsets: vec![pb::EndpointSubset {
                addresses: vec![pb::EndpointAddress { ip: "10.244.1.5".into(), ..Default::default() }],
                ports: vec![pb::EndpointPort { port: 8080, ..Default::default() }],
                ..Default::default()
            }],
        }),
        O::Lease(pb::Lease {
            metadata: meta(ns, "scheduler", &[]),
            spec: Some(pb::LeaseSpec {
                holder_identity: "m1".into(),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
        }),
        O::Event(pb::Event {
            metadata: meta(ns, "web-0.1", &[]),
            involved_object: Some(pb::ObjectReference {
                kind: "Pod".into(),
                name: "web-0".into(),
                ..Default::default()
            }),
            reason: "Scheduled".into(),
            ..Default::default()
        }),
        O::DaemonSet(pb::DaemonSet {
            metadata: meta(ns, "agent", &[]),
            spec: Some(pb::DaemonSetSpec {
                selector: selector("agent"),
                template: template("agent"),
                ..Default::default()
            }),
            status: None,
        }),
        O::Job(pb::Job {
            metadata: meta(ns, "once", &[]),
            spec: Some(pb::JobSpec {
                completions: Some(2),
                template: template("once").map(|mut t| {
                    t.spec.get_or_insert_with(Default::default).restart_policy = "Never".into();
                    t
                }),
                ..Default::default()
            }),
            status: None,
        }),
    ]
}

fn kind_name(o: &O) -> &'static str {
    match o {
        O::Namespace(_) => "Namespace",
        O::Node(_) => "Node",
        O::Pod(_) => "Pod",
        O::ReplicaSet(_) => "ReplicaSet",
        O::Deployment(_) => "Deployment",
        O::Service(_) => "Service",
        O::Endpoints(_) => "Endpoints",
        O::Lease(_) => "Lease",
        O::Event(_) => "Event",
        O::DaemonSet(_) => "DaemonSet",
        O::Job(_) => "Job",
        O::Role(_) => "Role",
        O::ClusterRole(_) => "ClusterRole",
        O::RoleBinding(_) => "RoleBinding",
        O::ClusterRoleBinding(_) => "ClusterRoleBinding",
    }
}

fn m(o: &O) -> pb::ObjectMeta {
    flotilla_api::kinds::meta(o).clone()
}

fn m_mut(o: &mut O) -> &mut pb::ObjectMeta {
    flotilla_api::kinds::meta_mut(o)
}

fn wrap(o: O) -> Option<pb::Object> {
    Some(pb::Object { kind: Some(o) })
}

fn inner(o: pb::Object) -> O {
    o.kind.expect("object")
}

async fn create(c: &mut ApiClient<Channel>, o: O) -> Result<O, tonic::Status> {
    c.create(pb::CreateRequest { object: wrap(o), ..Default::default() }).await.map(|r| inner(r.into_inner()))
}

async fn get(c: &mut ApiClient<Channel>, kind: &str, ns: &str, name: &str) -> Result<O, tonic::Status> {
    c.get(pb::GetRequest { kind: kind.into(), namespace: ns.into(), name: name.into() })
        .await
        .map(|r| inner(r.into_inner()))
}

/// Every kind can be created, read back with server-set fields, listed, updated (which
/// moves its resourceVersion, and its generation only on a spec change) and deleted, and
/// the calls may go to any master; a watch of the kind on a third master sees ADDED,
/// MODIFIED and DELETED.
#[test]
fn every_kind_round_trips_create_get_list_update_delete() {
    let c = Cluster::start(3, &[]);
    let urls: Vec<String> = c.members.iter().map(|m| m.url()).collect();
    rt().block_on(async {
        for (i, obj) in one_of_each("shop").into_iter().enumerate() {
            let kind = kind_name(&obj);
            let mut a = api(&urls[i % 3]).await;
            let mut b = api(&urls[(i + 1) % 3]).await;
            let mut w = api(&urls[(i + 2) % 3]).await;
            let watch_ns = if kind == "Namespace" || kind == "Node" { "" } else { "shop" };
            let mut events = w
                .watch(pb::WatchRequest { kind: kind.into(), namespace: watch_ns.into(), ..Default::default() })
                .await
                .expect("watch")
                .into_inner();
            let created = create(&mut a, obj.clone()).await.unwrap_or_else(|e| panic!("create {kind}: {e:?}"));
            let cm = m(&created);
            assert!(!cm.uid.is_empty() && !cm.creation_timestamp.is_empty(), "{kind}: server fields set: {cm:?}");
            assert_eq!(cm.generation, 1, "{kind}");
            let ns = cm.namespace.clone();
            let got = get(&mut b, kind, &ns, &cm.name).await.unwrap_or_else(|e| panic!("get {kind}: {e:?}"));
            assert_eq!(got, created, "{kind}: read back from another master");
            let list = b
                .list(pb::ListRequest { kind: kind.into(), namespace: ns.clone(), ..Default::default() })
                .await
                .expect("list")
                .into_inner();
            assert!(list.items.iter().any(|o| o.kind.as_ref() == Some(&created)), "{kind}: listed");

            let mut changed = created.clone();
            m_mut(&mut changed).labels.insert("touched".into(), "yes".into());
            let updated = inner(
                b.update(pb::UpdateRequest { object: wrap(changed), ..Default::default() })
                    .await
                    .expect("update")
                    .into_inner(),
            );
            assert_eq!(m(&updated).labels.get("touched").map(String::as_str), Some("yes"));
            assert!(
                m(&updated).resource_version.parse::<i64>().expect("rv")
                    > cm.resource_version.parse::<i64>().expect("rv")
            );
            assert_eq!(m(&updated).generation, 1, "{kind}: a label change is not a spec change");

            assert_eq!(event_for(&mut events, &cm.name).await, "ADDED", "{kind}");
            assert_eq!(event_for(&mut events, &cm.name).await, "MODIFIED", "{kind}");
            if kind == "Namespace" {
                continue; // deleted at the end, with everything in it
            }
            let d = a
                .delete(pb::DeleteRequest {
                    kind: kind.into(),
                    namespace: ns.clone(),
                    name: cm.name.clone(),
                    ..Default::default()
                })
                .await
                .expect("delete")
                .into_inner();
            assert!(d.deleted, "{kind}: deleted at once");
            let e = get(&mut b, kind, &ns, &cm.name).await.expect_err("gone");
            assert_eq!(e.code(), Code::NotFound, "{kind}: {e:?}");
            assert_eq!(event_for(&mut events, &cm.name).await, "DELETED", "{kind}");
        }
    });
}

/// A spec change bumps generation; an update naming an old resourceVersion is refused
/// with ABORTED naming both versions, and changes nothing.
#[test]
fn stale_update_is_refused_with_both_versions() {
    let c = Cluster::start(3, &[]);
    let url = c.members[0].url();
    rt().block_on(async {
        let mut a = api(&url).await;
        let v1 = create(&mut a, pod("default", "p", &[])).await.expect("create");
        let mut v2 = v1.clone();
        if let O::Pod(p) = &mut v2 {
            p.spec.as_mut().expect("spec").containers[0].image = "busybox:1.37".into();
        }
        let v2 = inner(
            a.update(pb::UpdateRequest { object: wrap(v2), ..Default::default() }).await.expect("update").into_inner(),
        );
        assert_eq!(m(&v2).generation, 2, "image change is a spec change");
        let mut stale = v1.clone();
        m_mut(&mut stale).labels.insert("x".into(), "y".into());
        let e = a.update(pb::UpdateRequest { object: wrap(stale), ..Default::default() }).await.expect_err("stale");
        assert_eq!(e.code(), Code::Aborted);
        assert!(
            e.message().contains(&m(&v1).resource_version) && e.message().contains(&m(&v2).resource_version),
            "{}",
            e.message()
        );
        assert_eq!(get(&mut a, "Pod", "default", "p").await.expect("get"), v2, "nothing written");
    });
}

/// Ten tasks on three masters each update one object 10 times with read-modify-CAS;
/// exactly one update wins per resourceVersion and no increment is lost.
#[test]
fn concurrent_cas_updates_lose_nothing() {
    let c = Cluster::start(3, &[]);
    let urls: Vec<String> = c.members.iter().map(|m| m.url()).collect();
    rt().block_on(async {
        let mut a = api(&urls[0]).await;
        let mut p = pod("default", "counter", &[]);
        m_mut(&mut p).annotations.insert("count".into(), "0".into());
        create(&mut a, p).await.expect("create");
        let mut tasks = Vec::new();
        for t in 0..10 {
            let url = urls[t % 3].clone();
            tasks.push(tokio::spawn(async move {
                let mut c = api(&url).await;
                let mut wins = Vec::new();
                while wins.len() < 10 {
                    let mut cur = get(&mut c, "Pod", "default", "counter").await.expect("get");
                    let read_rv = m(&cur).resource_version.clone();
                    let n: i64 = m(&cur).annotations["count"].parse().expect("count");
                    m_mut(&mut cur).annotations.insert("count".into(), (n + 1).to_string());
                    match c.update(pb::UpdateRequest { object: wrap(cur), ..Default::default() }).await {
                        Ok(_) => wins.push(read_rv),
                        Err(e) if e.code() == Code::Aborted => {}
                        Err(e) => panic!("update: {e:?}"),
                    }
                }
                wins
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        let unique: BTreeSet<&String> = all.iter().collect();
        assert_eq!(unique.len(), 100, "one winner per resourceVersion");
        let fin = get(&mut a, "Pod", "default", "counter").await.expect("get");
        assert_eq!(m(&fin).annotations["count"], "100", "no update lost");
    });
}

/// Invalid objects are refused with INVALID_ARGUMENT naming the field, and nothing is
/// written; creating in a namespace that does not exist is NOT_FOUND.
#[test]
fn invalid_objects_name_the_field_and_write_nothing() {
    let c = Cluster::start(3, &[]);
    let url = c.members[1].url();
    rt().block_on(async {
        let mut a = api(&url).await;
        let mut bad_res = pod("default", "r", &[]);
        if let O::Pod(p) = &mut bad_res {
            p.spec.as_mut().expect("spec").containers[0].resources = Some(pb::ResourceRequirements {
                requests: [("cpu".to_string(), "2".to_string())].into(),
                limits: [("cpu".to_string(), "500m".to_string())].into(),
            });
        }
        let mut no_image = pod("default", "i", &[]);
        if let O::Pod(p) = &mut no_image {
            p.spec.as_mut().expect("spec").containers[0].image.clear();
        }
        let mut bad_qty = pod("default", "q", &[]);
        if let O::Pod(p) = &mut bad_qty {
            p.spec.as_mut().expect("spec").containers[0].resources = Some(pb::ResourceRequirements {
                limits: [("memory".to_string(), "12 parsecs".to_string())].into(),
                ..Default::default()
            });
        }
        let mut huge = pod("default", "huge", &[]);
        if let O::Pod(p) = &mut huge {
            p.spec.as_mut().expect("spec").containers[0].env =
                vec![pb::EnvVar { name: "BLOB".into(), value: "x".repeat(1_600_000) }];
        }
        let cases: Vec<(O, &str)> = vec![
            (pod("default", "Bad_Name", &[]), "metadata.name"),
            (pod("default", "l", &[("-bad", "v")]), "metadata.labels[-bad]"),
            (bad_res, "spec.containers[0].resources.requests[cpu]"),
            (no_image, "spec.containers[0].image"),
            (bad_qty, "spec.containers[0].resources.limits[memory]"),
            (O::Pod(pb::Pod { metadata: meta("default", "nospec", &[]), ..Default::default() }), "spec"),
            (huge, "object"),
        ];
        for (obj, field) in cases {
            let name = m(&obj).name.clone();
            let e = create(&mut a, obj).await.expect_err(field);
            assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
            assert!(e.message().starts_with(field), "{field}: {}", e.message());
            let g = get(&mut a, "Pod", "default", &name).await.expect_err("nothing written");
            assert_eq!(g.code(), Code::NotFound);
        }
        let e = create(&mut a, pod("nowhere", "p", &[])).await.expect_err("no namespace");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(e.message().contains("nowhere"), "{}", e.message());
        let e = create(&mut a, pod("default", "dup", &[])).await.and(create(&mut a, pod("default", "dup", &[])).await);
        assert_eq!(e.expect_err("second create").code(), Code::AlreadyExists);
    });
}

/// Lists filter by label and field selectors, page with limit + continue through one
/// consistent snapshot (writes made between pages do not show), and a malformed selector
/// is INVALID_ARGUMENT.
#[test]
fn list_selectors_and_pages_are_one_snapshot() {
    let c = Cluster::start(3, &[]);
    let url = c.members[2].url();
    rt().block_on(async {
        let mut a = api(&url).await;
        for i in 0..7 {
            let tier = if i % 2 == 0 { "front" } else { "back" };
            create(&mut a, pod("default", &format!("p{i}"), &[("tier", tier)])).await.expect("create");
        }
        let list = |sel: &str, field: &str, limit: i64, cont: &str| pb::ListRequest {
            kind: "Pod".into(),
            namespace: "default".into(),
            label_selector: sel.into(),
            field_selector: field.into(),
            limit,
            r#continue: cont.into(),
            ..Default::default()
        };
        let names = |r: &pb::ListResponse| -> Vec<String> {
            r.items.iter().map(|o| m(o.kind.as_ref().expect("obj")).name.clone()).collect()
        };
        let front = a.list(list("tier=front", "", 0, "")).await.expect("list").into_inner();
        assert_eq!(names(&front), ["p0", "p2", "p4", "p6"]);
        let notin = a.list(list("tier notin (front)", "metadata.name!=p1", 0, "")).await.expect("list").into_inner();
        assert_eq!(names(&notin), ["p3", "p5"]);
        let first = a.list(list("", "", 3, "")).await.expect("page 1").into_inner();
        assert_eq!(names(&first), ["p0", "p1", "p2"]);
        assert!(!first.r#continue.is_empty());
        create(&mut a, pod("default", "p10", &[])).await.expect("create between pages");
        let mut seen = names(&first);
        let mut cont = first.r#continue.clone();
        while !cont.is_empty() {
            let page = a.list(list("", "", 3, &cont)).await.expect("page").into_inner();
            assert_eq!(page.resource_version, first.resource_version, "every page at one revision");
            seen.extend(names(&page));
            cont = page.r#continue;
        }
        assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4", "p5", "p6"], "p10 was created after the snapshot");
        for bad in ["tier in (a", "tier=a b"] {
            let e = a.list(list(bad, "", 0, "")).await.expect_err(bad);
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        }
        let e = a.list(list("", "spec.color=red", 0, "")).await.expect_err("unknown field");
        assert!(e.message().contains("spec.color"), "{}", e.message());
    });
}

/// Services get distinct cluster IPs from the range; a deleted service's IP is freed;
/// a pod binds only to a node that exists, and only once.
#[test]
fn service_ips_are_unique_and_binding_happens_once() {
    let c = Cluster::start(3, &["--service-cluster-ip-range", "10.100.0.0/29"]);
    let url = c.members[0].url();
    rt().block_on(async {
        let mut a = api(&url).await;
        let svc = |name: &str| {
            O::Service(pb::Service {
                metadata: meta("default", name, &[]),
                spec: Some(pb::ServiceSpec {
                    ports: vec![pb::ServicePort { port: 80, ..Default::default() }],
                    ..Default::default()
                }),
                status: None,
            })
        };
        let ip = |o: &O| match o {
            O::Service(s) => s.spec.as_ref().expect("spec").cluster_ip.clone(),
            _ => unreachable!(),
        };
        // A /29 has 8 addresses: network, .1 (kept), broadcast -> 5 for services.
        let mut ips = BTreeSet::new();
        for i in 0..5 {
            ips.insert(ip(&create(&mut a, svc(&format!("s{i}"))).await.expect("create")));
        }
        assert_eq!(ips.len(), 5, "distinct: {ips:?}");
        let e = create(&mut a, svc("s5")).await.expect_err("range full");
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        a.delete(pb::DeleteRequest {
            kind: "Service".into(),
            namespace: "default".into(),
            name: "s2".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
        create(&mut a, svc("s5")).await.expect("the freed address is reused");

        create(&mut a, pod("default", "b", &[])).await.expect("pod");
        let bind = |node: &str| pb::BindRequest {
            namespace: "default".into(),
            name: "b".into(),
            node_name: node.into(),
            ..Default::default()
        };
        let e = a.bind(bind("n1")).await.expect_err("no such node yet");
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("does not exist"), "{}", e.message());
        for n in ["n1", "n2"] {
            let node = O::Node(pb::Node { metadata: meta("", n, &[]), ..Default::default() });
            create(&mut a, node).await.expect("node");
        }
        let bound = inner(a.bind(bind("n1")).await.expect("bind").into_inner());
        let O::Pod(p) = &bound else { unreachable!() };
        assert_eq!(p.spec.as_ref().expect("spec").node_name, "n1");
        let e = a.bind(bind("n2")).await.expect_err("second bind");
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("n1"), "{}", e.message());
    });
}

/// NodePort and LoadBalancer services get a node port per port from 30000-32767, unique
/// per protocol; one asked for is checked (taken: INVALID_ARGUMENT naming the field); an
/// update that leaves it out keeps it; turning the service into a ClusterIP one, or
/// deleting it, frees its ports for others.
#[test]
fn node_ports_are_allocated_unique_kept_on_update_and_freed() {
    let c = Cluster::start(1, &[]);
    let url = c.members[0].url();
    rt().block_on(async {
        let mut a = api(&url).await;
        let svc = |name: &str, ty: &str, node_port: i32| pb::Service {
            metadata: meta("default", name, &[]),
            spec: Some(pb::ServiceSpec {
                r#type: ty.into(),
                ports: vec![pb::ServicePort { port: 80, node_port, ..Default::default() }],
                ..Default::default()
            }),
            status: None,
        };
        let np = |o: &O| match o {
            O::Service(s) => s.spec.as_ref().expect("spec").ports[0].node_port,
            _ => unreachable!(),
        };
        let first = np(&create(&mut a, O::Service(svc("a", "NodePort", 0))).await.expect("create"));
        let second = np(&create(&mut a, O::Service(svc("b", "LoadBalancer", 0))).await.expect("create"));
        assert!((30000..=32767).contains(&first) && (30000..=32767).contains(&second) && first != second);
        assert_eq!(np(&create(&mut a, O::Service(svc("c", "ClusterIP", 0))).await.expect("create")), 0);
        let e = create(&mut a, O::Service(svc("d", "NodePort", first))).await.expect_err("taken");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("spec.ports[0].nodePort") && e.message().contains("already allocated"),
            "{}",
            e.message()
        );
        assert_eq!(np(&create(&mut a, O::Service(svc("d", "NodePort", 31999))).await.expect("asked")), 31999);
        // An update without the node port keeps it.
        let O::Service(mut cur) = get(&mut a, "Service", "default", "a").await.expect("get") else { unreachable!() };
        cur.spec.as_mut().expect("spec").ports[0].node_port = 0;
        cur.metadata.as_mut().expect("meta").labels.insert("x".into(), "1".into());
        let kept = inner(
            a.update(pb::UpdateRequest { object: wrap(O::Service(cur)), ..Default::default() })
                .await
                .expect("update")
                .into_inner(),
        );
        assert_eq!(np(&kept), first);
        // So does a whole new spec without protocol or node port (what `apply` sends).
        let again = inner(
            a.update(pb::UpdateRequest { object: wrap(O::Service(svc("a", "NodePort", 0))), ..Default::default() })
                .await
                .expect("update")
                .into_inner(),
        );
        assert_eq!(np(&again), first, "re-applying keeps the node port");
        // ClusterIP now: its node port is free for another.
        let O::Service(mut cur) = get(&mut a, "Service", "default", "a").await.expect("get") else { unreachable!() };
        cur.spec.as_mut().expect("spec").r#type = "ClusterIP".into();
        let changed = inner(
            a.update(pb::UpdateRequest { object: wrap(O::Service(cur)), ..Default::default() })
                .await
                .expect("update")
                .into_inner(),
        );
        assert_eq!(np(&changed), 0);
        assert_eq!(np(&create(&mut a, O::Service(svc("e", "NodePort", first))).await.expect("freed")), first);
        a.delete(pb::DeleteRequest {
            kind: "Service".into(),
            namespace: "default".into(),
            name: "d".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
        assert_eq!(np(&create(&mut a, O::Service(svc("f", "NodePort", 31999))).await.expect("freed by delete")), 31999);
    });
}

/// A JSON merge patch changes only what it names; a patch with an unknown field is
/// INVALID_ARGUMENT naming its path; a status patch leaves the spec alone; a uid in the
/// patch is a precondition.
#[test]
fn merge_patch_changes_what_it_names() {
    let c = Cluster::start(3, &[]);
    let url = c.members[0].url();
    rt().block_on(async {
        let mut a = api(&url).await;
        create(&mut a, pod("default", "p", &[("a", "1"), ("b", "2")])).await.expect("create");
        let patch = |body: &str, status: bool| pb::PatchRequest {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "p".into(),
            merge_patch: body.as_bytes().to_vec(),
            status,
            ..Default::default()
        };
        let p = inner(
            a.patch(patch(r#"{"metadata":{"labels":{"a":null,"c":"3"}}}"#, false)).await.expect("patch").into_inner(),
        );
        let want: BTreeMap<String, String> =
            [("b", "2"), ("c", "3")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(m(&p).labels, want);
        let e = a
            .patch(patch(r#"{"spec":{"containers":[{"name":"main","image":"x","imagee":"y"}]}}"#, false))
            .await
            .expect_err("unknown");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("spec.containers[0].imagee"), "{}", e.message());
        let s = inner(
            a.patch(patch(
                r#"{"status":{"phase":"Running","podIP":"10.244.0.9"},"spec":{"nodeName":"ignored"}}"#,
                true,
            ))
            .await
            .expect("status patch")
            .into_inner(),
        );
        let O::Pod(pod) = &s else { unreachable!() };
        assert_eq!(pod.status.as_ref().map(|x| x.pod_ip.as_str()), Some("10.244.0.9"));
        assert_eq!(pod.spec.as_ref().map(|x| x.node_name.as_str()), Some(""), "spec untouched by a status patch");
        // A uid in the patch is a precondition: a namesake is left alone.
        let e = a
            .patch(patch(r#"{"metadata":{"uid":"not-this-one","labels":{"d":"4"}}}"#, false))
            .await
            .expect_err("another uid");
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("\"not-this-one\""), "{}", e.message());
        let uid = m(&p).uid.clone();
        let body = format!(r#"{{"metadata":{{"uid":"{uid}","labels":{{"d":"4"}}}}}}"#);
        let p = inner(a.patch(patch(&body, false)).await.expect("its own uid").into_inner());
        assert_eq!(m(&p).labels.get("d").map(String::as_str), Some("4"));
    });
}

/// Deleting an object with finalizers only marks it; it goes when the last finalizer is
/// removed. Deleting a namespace marks it Terminating with the `kubernetes` finalizer
/// (no controller manager runs here to empty it); removing that finalizer by hand deletes
/// it with whatever is left inside, and frees its services' addresses; the built-in
/// namespaces cannot be deleted.
#[test]
fn finalizers_hold_deletion_and_namespace_deletion_cascades() {
    let c = Cluster::start(3, &[]);
    let url = c.members[0].url();
    rt().block_on(async {
        let mut a = api(&url).await;
        create(&mut a, O::Namespace(pb::Namespace { metadata: meta("", "team", &[]), ..Default::default() }))
            .await
            .expect("ns");
        let mut p = pod("team", "held", &[]);
        m_mut(&mut p).finalizers.push("example.com/cleanup".into());
        create(&mut a, p).await.expect("create");
        create(&mut a, pod("team", "plain", &[])).await.expect("create");
        let del = |ns: &str, kind: &str, name: &str| pb::DeleteRequest {
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        };
        let d = a.delete(del("team", "Pod", "held")).await.expect("delete").into_inner();
        assert!(!d.deleted);
        let marked = get(&mut a, "Pod", "team", "held").await.expect("still there");
        assert!(!m(&marked).deletion_timestamp.is_empty());
        let mut cleared = marked.clone();
        m_mut(&mut cleared).finalizers.clear();
        a.update(pb::UpdateRequest { object: wrap(cleared), ..Default::default() }).await.expect("remove finalizer");
        assert_eq!(get(&mut a, "Pod", "team", "held").await.expect_err("gone").code(), Code::NotFound);

        let svc = O::Service(pb::Service {
            metadata: meta("team", "api", &[]),
            spec: Some(pb::ServiceSpec {
                ports: vec![pb::ServicePort { port: 80, ..Default::default() }],
                ..Default::default()
            }),
            status: None,
        });
        create(&mut a, svc).await.expect("service");
        // A linearizable read through the same master, so its local state has the service.
        get(&mut a, "Service", "team", "api").await.expect("barrier");
        let reserved =
            |url: String| async move { local_range(&url, "/registry/serviceips/").await.expect("range").len() };
        let before = reserved(url.clone()).await;
        assert!(before >= 1);

        let d = a.delete(del("", "Namespace", "team")).await.expect("delete ns").into_inner();
        assert!(!d.deleted, "only marked");
        let O::Namespace(mut ns) = get(&mut a, "Namespace", "", "team").await.expect("terminating") else {
            panic!("not a namespace")
        };
        assert_eq!(ns.status.as_ref().map(|s| s.phase.as_str()), Some("Terminating"));
        let spec = ns.spec.as_mut().expect("spec");
        assert_eq!(spec.finalizers, vec!["kubernetes".to_string()]);
        get(&mut a, "Pod", "team", "plain").await.expect("still inside");
        let e = create(&mut a, pod("team", "late", &[])).await.expect_err("terminating");
        assert_eq!(e.code(), Code::FailedPrecondition);
        // No finalizer may be added to a namespace being deleted; removing it deletes it.
        let mut more = ns.clone();
        more.spec.as_mut().expect("spec").finalizers.push("example.com/x".into());
        let e = a.update(pb::UpdateRequest { object: wrap(O::Namespace(more)), ..Default::default() }).await;
        assert_eq!(e.expect_err("may not add").code(), Code::InvalidArgument);
        ns.spec.as_mut().expect("spec").finalizers.clear();
        a.update(pb::UpdateRequest { object: wrap(O::Namespace(ns)), ..Default::default() }).await.expect("finalize");
        get(&mut a, "Namespace", "", "default").await.expect("barrier");
        assert_eq!(reserved(url.clone()).await, before - 1, "the namespace's service address was freed");
        let e = a.delete(del("", "Namespace", "default")).await.expect_err("built in");
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            get(&mut a, "Pod", "team", "plain").await.expect_err("gone with its namespace").code(),
            Code::NotFound
        );
        let e = create(&mut a, pod("team", "late", &[])).await.expect_err("namespace gone");
        assert_eq!(e.code(), Code::NotFound);
    });
}

/// The type of the next event about the object named `name` (masters create the
/// built-in namespaces in the background, so a watch of namespaces may see those too).
async fn event_for(s: &mut tonic::Streaming<pb::WatchEvent>, name: &str) -> String {
    loop {
        let e = next_event(s).await;
        if e.object.as_ref().and_then(|o| o.kind.as_ref()).is_some_and(|o| m(o).name == name) {
            return e.r#type;
        }
    }
}

async fn next_event(s: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(Duration::from_secs(30), s.next()).await.expect("event in time").expect("open").expect("ok")
}

/// A watch sees ADDED/MODIFIED/DELETED through its selector; resumed on another master
/// from the last resourceVersion after the first master is killed, it sees every later
/// event exactly once.
#[test]
fn watch_resumed_on_another_master_sees_every_event_once() {
    let mut c = Cluster::start(3, &[]);
    let urls: Vec<String> = c.members.iter().map(|m| m.url()).collect();
    let leader = c.wait_leader(Duration::from_secs(30));
    let watched = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let (last_rv, seen_before) = rt().block_on(async {
        let mut w = api(&urls[watched]).await;
        let mut s = w
            .watch(pb::WatchRequest {
                kind: "Pod".into(),
                namespace: "default".into(),
                label_selector: "app=w".into(),
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        let mut a = api(&urls[leader]).await;
        create(&mut a, pod("default", "w0", &[("app", "w")])).await.expect("create");
        create(&mut a, pod("default", "other", &[("app", "x")])).await.expect("create unwatched");
        let e = next_event(&mut s).await;
        assert_eq!(e.r#type, "ADDED");
        let mut relabel = get(&mut a, "Pod", "default", "w0").await.expect("get");
        m_mut(&mut relabel).labels.insert("v".into(), "2".into());
        a.update(pb::UpdateRequest { object: wrap(relabel), ..Default::default() }).await.expect("update");
        let e2 = next_event(&mut s).await;
        assert_eq!(e2.r#type, "MODIFIED");
        let rv = m(&inner(e2.object.expect("object"))).resource_version;
        (rv, 2)
    });
    assert_eq!(seen_before, 2);
    c.kill(watched);
    rt().block_on(async {
        let mut a = api(&urls[leader]).await;
        let mut expected = Vec::new();
        for i in 1..=5 {
            let o = create(&mut a, pod("default", &format!("w{i}"), &[("app", "w")])).await.expect("create");
            expected.push(("ADDED".to_string(), m(&o).name));
        }
        a.delete(pb::DeleteRequest {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "w0".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
        expected.push(("DELETED".to_string(), "w0".to_string()));
        let mut w = api(&urls[other]).await;
        let mut s = w
            .watch(pb::WatchRequest {
                kind: "Pod".into(),
                namespace: "default".into(),
                label_selector: "app=w".into(),
                resource_version: last_rv.clone(),
                ..Default::default()
            })
            .await
            .expect("resume")
            .into_inner();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let e = next_event(&mut s).await;
            got.push((e.r#type.clone(), m(&inner(e.object.expect("object"))).name));
        }
        assert_eq!(got, expected, "each event once, in order");
        let extra = tokio::time::timeout(Duration::from_millis(500), s.next()).await;
        assert!(extra.is_err(), "no duplicate or stray event: {extra:?}");
    });
}

/// A watch from a resourceVersion that has been compacted away fails with OUT_OF_RANGE
/// ("expired"), the analogue of HTTP 410.
#[test]
fn watch_from_a_compacted_version_is_expired() {
    let c = Cluster::start(3, &[]);
    let url = c.members[0].url();
    rt().block_on(async {
        let mut a = api(&url).await;
        let first = create(&mut a, pod("default", "c0", &[])).await.expect("create");
        let mut last = first.clone();
        for i in 1..5 {
            last = create(&mut a, pod("default", &format!("c{i}"), &[])).await.expect("create");
        }
        let rev: i64 = m(&last).resource_version.parse().expect("rv");
        let mut kv = kv(&url, Duration::from_secs(5)).await;
        kv.compact(flotilla_proto::etcdserverpb::CompactionRequest { revision: rev, physical: true })
            .await
            .expect("compact");
        // A linearizable read through the watched master: it has applied the compaction.
        get(&mut a, "Pod", "default", "c0").await.expect("read barrier");
        let mut s = a
            .watch(pb::WatchRequest {
                kind: "Pod".into(),
                resource_version: m(&first).resource_version,
                ..Default::default()
            })
            .await
            .expect("watch call")
            .into_inner();
        let e = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("in time")
            .expect("an item")
            .expect_err("expired");
        assert_eq!(e.code(), Code::OutOfRange);
        assert!(e.message().contains("expired"), "{}", e.message());
    });
}

/// With bookmarks allowed, an idle watch gets a BOOKMARK (within the server's 5 s
/// interval) carrying a resourceVersion at or after the one it started from.
#[test]
fn idle_watch_gets_bookmarks() {
    let c = Cluster::start(3, &[]);
    let url = c.members[1].url();
    rt().block_on(async {
        let mut a = api(&url).await;
        let p = create(&mut a, pod("default", "b0", &[])).await.expect("create");
        let rv: i64 = m(&p).resource_version.parse().expect("rv");
        let mut s = a
            .watch(pb::WatchRequest {
                kind: "Pod".into(),
                resource_version: rv.to_string(),
                allow_bookmarks: true,
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        let e = next_event(&mut s).await;
        assert_eq!(e.r#type, "BOOKMARK");
        let at: i64 = m(&inner(e.object.expect("object"))).resource_version.parse().expect("rv");
        assert!(at >= rv, "bookmark at {at}, watch from {rv}");
    });
}

/// Fencing, enforced by the store (docs/rfcs/0001-fenced-leadership.md): a write carrying
/// a lock's token is applied while the lock has that holder and term, and refused as
/// `fenced` — with nothing written — once it has another; a lock's term must grow when
/// its holder changes; a token for a lock that does not exist fences everything.
#[test]
fn fenced_writes_are_refused_once_the_lock_changes_holder() {
    let c = Cluster::start(3, &[]);
    let (u1, u2) = (c.members[0].url(), c.members[1].url());
    rt().block_on(async {
        let (mut a, mut b) = (api(&u1).await, api(&u2).await);
        let lease = |holder: &str, term: i32, rv: &str| {
            let mut m = meta("kube-system", "lock", &[]).expect("meta");
            m.resource_version = rv.into();
            O::Lease(pb::Lease {
                metadata: Some(m),
                spec: Some(pb::LeaseSpec {
                    holder_identity: holder.into(),
                    lease_transitions: term,
                    ..Default::default()
                }),
            })
        };
        let token = |holder: &str, term: i32| pb::FenceToken {
            lease_namespace: "kube-system".into(),
            lease_name: "lock".into(),
            holder_identity: holder.into(),
            term,
        };
        let fenced_create = |name: &str, t: pb::FenceToken| pb::CreateRequest {
            object: wrap(pod("default", name, &[])),
            fence: Some(t),
        };
        let e = a.create(fenced_create("early", token("a", 0))).await.expect_err("no lock yet");
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().starts_with("fenced: "), "{}", e.message());

        let held = create(&mut a, lease("a", 0, "")).await.expect("lease");
        a.create(fenced_create("p1", token("a", 0))).await.expect("the holder writes");
        // Renewals (the holder rewrites its lease) do not fence the holder.
        let renewed = inner(
            a.update(pb::UpdateRequest {
                object: wrap(lease("a", 0, &m(&held).resource_version)),
                ..Default::default()
            })
            .await
            .expect("renew")
            .into_inner(),
        );
        b.create(fenced_create("p2", token("a", 0))).await.expect("still the holder, through any master");

        // Another holder without a new term is refused.
        let e = a
            .update(pb::UpdateRequest {
                object: wrap(lease("b", 0, &m(&renewed).resource_version)),
                ..Default::default()
            })
            .await
            .expect_err("same term");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("spec.leaseTransitions"), "{}", e.message());
        a.update(pb::UpdateRequest {
            object: wrap(lease("b", 1, &m(&renewed).resource_version)),
            ..Default::default()
        })
        .await
        .expect("takeover");

        // The deposed holder's writes are refused and write nothing; the new one's pass.
        let e = b.create(fenced_create("p3", token("a", 0))).await.expect_err("deposed");
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("held by \"b\" in term 1"), "{}", e.message());
        assert_eq!(get(&mut a, "Pod", "default", "p3").await.expect_err("not written").code(), Code::NotFound);
        let bind = pb::BindRequest {
            namespace: "default".into(),
            name: "p1".into(),
            node_name: "n1".into(),
            fence: Some(token("a", 0)),
            ..Default::default()
        };
        let e = a.bind(bind).await.expect_err("deposed bind");
        assert!(e.message().starts_with("fenced: "), "{}", e.message());
        let del = pb::DeleteRequest {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "p1".into(),
            fence: Some(token("a", 0)),
            ..Default::default()
        };
        assert!(a.delete(del).await.expect_err("deposed delete").message().starts_with("fenced: "));
        get(&mut b, "Pod", "default", "p1").await.expect("p1 still there");
        b.create(fenced_create("p4", token("b", 1))).await.expect("the new holder writes");
        // A malformed token is named.
        let e = a.create(fenced_create("p5", token("", 1))).await.expect_err("bad token");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("fence.holderIdentity"), "{}", e.message());
    });
}
