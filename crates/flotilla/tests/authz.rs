//! Authentication and authorization on a TLS cluster (issue 16): tokens and certificates
//! name the user; RBAC refuses every verb until a role is bound, then allows just that;
//! the node authorizer keeps a kubelet to its own Node, Leases and pods; the scheduler's
//! and controller manager's identities must carry their fence; the etcd API is for
//! admins; `flotctl auth can-i` answers; the audit log records writes and refusals.
//! Every refusal is PERMISSION_DENIED (or UNAUTHENTICATED) naming the user, and writes
//! nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{admin_flags, certs, client_tls, ctl, rt, Cluster};
use flotilla_client::{Client, ClientError, ListParams, Options};
use flotilla_proto::api as pb;
use flotilla_proto::etcdserverpb as ep;

const TOKENS: &str = "bobtoken,bob,1001,\"dev\"\nroottoken,root,1,\"system:masters\"\n";

/// A TLS cluster of one master with a token file and an audit log, client certificates
/// optional; the token file and audit log paths.
fn cluster(dir: &Path) -> (Cluster, PathBuf) {
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, TOKENS).expect("token file");
    let audit = dir.join("audit.log");
    let c = Cluster::start_tls_certs_optional(
        1,
        &["--token-auth-file", &tokens.display().to_string(), "--audit-log-path", &audit.display().to_string()],
    );
    (c, audit)
}

/// A client of `c` with the cluster CA and `token` or the certificate `cert` (`node-w1`).
fn client_as(rt: &tokio::runtime::Runtime, c: &Cluster, token: Option<&str>, cert: Option<&str>) -> Client {
    let pki = c.pki().expect("tls");
    let opts = Options {
        tls: Some(client_tls(pki, cert)),
        token: token.map(String::from),
        retry_budget: Duration::from_secs(2),
        ..Default::default()
    };
    let eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    rt.block_on(async { Client::with_options(&eps, opts) }).expect("client")
}

fn pod(name: &str, node: &str) -> pb::Pod {
    pb::Pod {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::PodSpec {
            node_name: node.into(),
            containers: vec![pb::Container { name: "main".into(), image: "busybox".into(), ..Default::default() }],
            ..Default::default()
        }),
        status: None,
    }
}

fn denied(r: Result<impl std::fmt::Debug, ClientError>, want: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
            assert!(e.to_string().contains(want), "{want:?} not in: {e}");
        }
        Ok(v) => panic!("allowed ({want}): {v:?}"),
    }
}

#[test]
fn tokens_name_users_bad_ones_are_refused_and_the_etcd_api_is_for_admins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, audit) = cluster(dir.path());
    let rt = rt();
    let bob = client_as(&rt, &c, Some("bobtoken"), None);
    let nobody = client_as(&rt, &c, None, None);
    let liar = client_as(&rt, &c, Some("guessed"), None);
    let all = ListParams { namespace: "default".into(), ..Default::default() };
    // Known, but no role: refused by RBAC, naming him.
    denied(rt.block_on(bob.list::<pb::Pod>(&all)), "user \"bob\" may not list pods");
    // Not known at all: refused before anything looks at the request.
    for (who, client, want) in [
        ("a wrong token", &liar, "the bearer token is not valid"),
        ("no certificate and no token", &nobody, "anonymous requests are not allowed"),
    ] {
        let e = rt.block_on(client.create(pod("sneaky", ""))).expect_err(who);
        assert_eq!(e.code(), Some(tonic::Code::Unauthenticated), "{who}: {e}");
        assert!(e.to_string().contains(want), "{who}: {e}");
    }
    let admin = c.client(&rt);
    let e = rt.block_on(admin.get::<pb::Pod>("default", "sneaky")).expect_err("nothing written");
    assert!(e.is_not_found(), "{e}");

    // The etcd API: a token of system:masters may, bob may not (only its Status, the
    // clients' health check).
    let kv = |token: &str| {
        let pki = c.pki().expect("tls").to_path_buf();
        let url = c.members[0].url();
        let token = token.to_string();
        rt.block_on(async move {
            let endpoint = tonic::transport::Endpoint::from_shared(url).expect("url").timeout(Duration::from_secs(3));
            let creds = flotilla_client::pool::Credentials::new(&Options { token: Some(token), ..Default::default() })
                .expect("credentials");
            let conn = flotilla_client::pool::Conn::new(
                flotilla_client::pool::channel(endpoint, Some(&client_tls(&pki, None))),
                creds,
            );
            let range = ep::RangeRequest {
                key: b"/registry/".to_vec(),
                range_end: b"/registry0".to_vec(),
                count_only: true,
                ..Default::default()
            };
            let status =
                ep::maintenance_client::MaintenanceClient::new(conn.clone()).status(ep::StatusRequest {}).await;
            (ep::kv_client::KvClient::new(conn).range(range).await, status)
        })
    };
    let (range, status) = kv("roottoken");
    assert!(range.expect("an admin reads the etcd API").into_inner().count > 0);
    assert!(status.is_ok());
    let (range, status) = kv("bobtoken");
    let e = range.expect_err("bob on the etcd API");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("\"bob\"") && e.message().contains("system:masters only"), "{e:?}");
    status.expect("the health check is open to every user");

    // The refusals are in the audit log, with who and why.
    common::eventually(Duration::from_secs(5), "the refusals audited", || {
        let log = std::fs::read_to_string(&audit).unwrap_or_default();
        log.lines().any(|l| {
            l.contains("\"user\":\"bob\"") && l.contains("\"verb\":\"list\"") && l.contains("\"result\":\"denied\"")
        }) && log.lines().any(|l| l.contains("the bearer token is not valid") && l.contains("\"result\":\"denied\""))
            && log.lines().any(|l| l.contains("/etcdserverpb.KV/Range") && l.contains("\"user\":\"bob\""))
    });
}

#[test]
fn rbac_refuses_every_verb_until_a_role_is_bound_then_allows_just_that_and_the_audit_log_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, audit) = cluster(dir.path());
    let rt = rt();
    let admin = c.client(&rt);
    let bob = client_as(&rt, &c, Some("bobtoken"), None);
    // Bound already (to a node that never comes), so that nothing else writes it.
    let web = rt.block_on(admin.create(pod("web", "nowhere"))).expect("admin creates a pod");
    let rv = web.metadata.as_ref().expect("meta").resource_version.clone();
    let in_default = ListParams { namespace: "default".into(), ..Default::default() };

    // Every verb, refused, naming user, verb and resource; nothing written.
    denied(
        rt.block_on(bob.get::<pb::Pod>("default", "web")),
        "user \"bob\" may not get pods \"web\" in namespace \"default\"",
    );
    denied(rt.block_on(bob.list::<pb::Pod>(&in_default)), "user \"bob\" may not list pods");
    let watch = rt.block_on(async {
        let req = pb::WatchRequest {
            kind: "Pod".into(),
            namespace: "default".into(),
            resource_version: rv.clone(),
            ..Default::default()
        };
        pb::api_client::ApiClient::new(bob.channel()).watch(req).await.map(|_| ())
    });
    let e = watch.expect_err("bob watches");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("user \"bob\" may not watch pods"), "{e:?}");
    denied(rt.block_on(bob.create(pod("bobs", ""))), "user \"bob\" may not create pods");
    denied(rt.block_on(bob.update(web.clone())), "user \"bob\" may not update pods \"web\"");
    denied(rt.block_on(bob.update_status(web.clone())), "user \"bob\" may not update pods/status \"web\"");
    denied(
        rt.block_on(bob.patch::<pb::Pod>("default", "web", &serde_json::json!({"metadata": {"labels": {"x": "y"}}}))),
        "user \"bob\" may not patch pods \"web\"",
    );
    denied(
        rt.block_on(bob.delete::<pb::Pod>("default", "web", &Default::default())),
        "user \"bob\" may not delete pods \"web\"",
    );
    let now: pb::Pod = rt.block_on(admin.get("default", "web")).expect("web");
    assert_eq!(now.metadata.as_ref().expect("meta").resource_version, rv, "a refused write changed web");
    assert!(rt.block_on(admin.get::<pb::Pod>("default", "bobs")).is_err_and(|e| e.is_not_found()));

    // A Role that reads pods, bound to bob in default: reads there, nothing else.
    let read = pb::Role {
        metadata: Some(pb::ObjectMeta { name: "pod-reader".into(), namespace: "default".into(), ..Default::default() }),
        rules: vec![pb::PolicyRule {
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            resources: vec!["pods".into()],
            ..Default::default()
        }],
    };
    rt.block_on(admin.create_object(pb::object::Kind::Role(read))).expect("role");
    let binding = pb::RoleBinding {
        metadata: Some(pb::ObjectMeta { name: "bob-reads".into(), namespace: "default".into(), ..Default::default() }),
        subjects: vec![pb::Subject { kind: "User".into(), name: "bob".into(), ..Default::default() }],
        role_ref: Some(pb::RoleRef { kind: "Role".into(), name: "pod-reader".into(), ..Default::default() }),
    };
    rt.block_on(admin.create_object(pb::object::Kind::RoleBinding(binding))).expect("binding");
    common::eventually(Duration::from_secs(5), "bob may read pods in default", || {
        rt.block_on(bob.get::<pb::Pod>("default", "web")).is_ok()
    });
    assert_eq!(rt.block_on(bob.list::<pb::Pod>(&in_default)).expect("list").items.len(), 1);
    denied(rt.block_on(bob.delete::<pb::Pod>("default", "web", &Default::default())), "may not delete pods");
    let elsewhere = ListParams { namespace: "kube-system".into(), ..Default::default() };
    denied(rt.block_on(bob.list::<pb::Pod>(&elsewhere)), "may not list pods");

    // flotctl auth can-i: for bob himself, and for bob as an admin asks with --as.
    let eps = c.members[0].url();
    let ca = c.pki().expect("tls").join("ca.crt").display().to_string();
    let can_i = |extra: &[&str]| {
        let mut args = vec!["--cacert", ca.as_str()];
        args.extend_from_slice(extra);
        ctl(&eps, &args)
    };
    let yes = can_i(&["--token", "bobtoken", "auth", "can-i", "get", "pods"]);
    assert!(yes.status.success(), "{}", String::from_utf8_lossy(&yes.stderr));
    assert_eq!(String::from_utf8_lossy(&yes.stdout).trim(), "yes");
    let no = can_i(&["--token", "bobtoken", "auth", "can-i", "delete", "pods"]);
    assert!(!no.status.success());
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");
    assert!(String::from_utf8_lossy(&no.stderr).contains("user \"bob\" may not delete pods"));
    let mut admin_args = admin_flags(c.pki().expect("tls"));
    admin_args.extend(["--as", "bob", "auth", "can-i", "list", "pods", "-n", "kube-system"].map(String::from));
    let out = ctl(&eps, &admin_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{}", String::from_utf8_lossy(&out.stderr));
    // Only admins impersonate.
    let out = can_i(&["--token", "bobtoken", "--as", "root", "auth", "can-i", "get", "pods"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not impersonate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The audit log: the admin's create allowed, bob's delete denied.
    common::eventually(Duration::from_secs(5), "writes and refusals audited", || {
        let log = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let has = |user: &str, verb: &str, result: &str| {
            lines.iter().any(|l| {
                l["user"] == user
                    && l["verb"] == verb
                    && l["resource"] == "pods"
                    && l["name"] == "web"
                    && l["result"] == result
            })
        };
        has("admin", "create", "allowed") && has("bob", "delete", "denied") && has("bob", "update", "denied")
    });
}

#[test]
fn a_node_reads_what_it_needs_and_writes_only_its_own_node_lease_and_pods() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, _) = cluster(dir.path());
    let pd = c.pki().expect("tls").display().to_string();
    certs(&["issue", "--dir", &pd, "node", "w1", "--address", "127.0.0.1"]);
    let rt = rt();
    let admin = c.client(&rt);
    let w1 = client_as(&rt, &c, None, Some("node-w1"));
    let node = |name: &str| pb::Node {
        metadata: Some(pb::ObjectMeta { name: name.into(), ..Default::default() }),
        ..Default::default()
    };
    // Its own Node: registered, status written, labels changed; not another's, not its spec.
    let n = rt.block_on(w1.create(node("w1"))).expect("w1 registers itself");
    denied(rt.block_on(w1.create(node("w2"))), "user \"system:node:w1\" may not create nodes \"w2\"");
    let mut st = n.clone();
    st.status = Some(pb::NodeStatus {
        addresses: vec![pb::NodeAddress { r#type: "InternalIP".into(), address: "127.0.0.1".into() }],
        ..Default::default()
    });
    let n = rt.block_on(w1.update_status(st)).expect("its status");
    let mut labelled = n.clone();
    labelled.metadata.as_mut().expect("meta").labels.insert("zone".into(), "a".into());
    let n = rt.block_on(w1.update(labelled)).expect("its labels");
    let mut tainted = n.clone();
    tainted.spec.get_or_insert_with(Default::default).taints.push(pb::Taint {
        key: "k".into(),
        value: "v".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    });
    denied(rt.block_on(w1.update(tainted)), "not its spec");
    rt.block_on(admin.create(node("w2"))).expect("admin registers w2");

    // Pods: the status of its own, not of another node's; reads of what it runs.
    rt.block_on(admin.create(pod("mine", "w1"))).expect("pod on w1");
    let theirs = rt.block_on(admin.create(pod("theirs", "w2"))).expect("pod on w2");
    let mut mine: pb::Pod = rt.block_on(w1.get("default", "mine")).expect("w1 reads its pod");
    mine.status = Some(pb::PodStatus { phase: "Running".into(), ..Default::default() });
    rt.block_on(w1.update_status(mine)).expect("its pod's status");
    let mut forged = theirs.clone();
    forged.status = Some(pb::PodStatus { phase: "Failed".into(), ..Default::default() });
    denied(rt.block_on(w1.update_status(forged)), "bound to \"w2\", not to this node (w1)");
    let after: pb::Pod = rt.block_on(admin.get("default", "theirs")).expect("theirs");
    assert_ne!(after.status.map(|s| s.phase).unwrap_or_default(), "Failed", "a refused status was written");
    denied(rt.block_on(w1.delete::<pb::Pod>("default", "theirs", &Default::default())), "bound to \"w2\"");

    // Its Lease, not another's; and nothing else (a Deployment).
    let lease = |name: &str| pb::Lease {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "kube-node-lease".into(), ..Default::default() }),
        spec: Some(pb::LeaseSpec { holder_identity: name.into(), ..Default::default() }),
    };
    rt.block_on(w1.create(lease("w1"))).expect("its lease");
    denied(rt.block_on(w1.create(lease("w2"))), "may not create leases \"w2\"");
    denied(rt.block_on(w1.create(common::deployment("web", 1))), "may not create deployments");
}

#[test]
fn the_scheduler_and_controller_manager_identities_must_carry_their_fence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, _) = cluster(dir.path());
    let pd = c.pki().expect("tls").display().to_string();
    certs(&["issue", "--dir", &pd, "scheduler"]);
    let rt = rt();
    let admin = c.client(&rt);
    rt.block_on(admin.create(pod("web", ""))).expect("pod");
    let sched = client_as(&rt, &c, None, Some("scheduler"));
    // Reads need no fence; its role's writes without one are refused.
    let p: pb::Pod = rt.block_on(sched.get("default", "web")).expect("the scheduler reads pods");
    let e = rt.block_on(sched.bind("default", "web", "n1", "")).expect_err("an unfenced bind");
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    assert!(e.to_string().contains("must carry its fencing token"), "{e}");
    let mut st = p;
    st.status = Some(pb::PodStatus { phase: "Pending".into(), ..Default::default() });
    denied(rt.block_on(sched.update_status(st)), "must carry its fencing token");
    // What its role allows once fenced, as the admin sees it with can-i.
    let eps = c.members[0].url();
    let mut args = admin_flags(c.pki().expect("tls"));
    args.extend(["--as", "system:flotilla-scheduler", "auth", "can-i", "create", "pods/binding"].map(String::from));
    let out = ctl(&eps, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes", "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_namespace_holding_roles_is_emptied_and_removed_by_the_controller_manager_under_rbac() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, _) = cluster(dir.path());
    let rt = rt();
    let admin = c.client(&rt);
    let ns = pb::Namespace {
        metadata: Some(pb::ObjectMeta { name: "team".into(), ..Default::default() }),
        ..Default::default()
    };
    rt.block_on(admin.create(ns)).expect("namespace");
    let role = pb::Role {
        metadata: Some(pb::ObjectMeta { name: "reader".into(), namespace: "team".into(), ..Default::default() }),
        rules: vec![pb::PolicyRule { verbs: vec!["get".into()], resources: vec!["pods".into()], ..Default::default() }],
    };
    rt.block_on(admin.create_object(pb::object::Kind::Role(role))).expect("role");
    rt.block_on(admin.delete::<pb::Namespace>("", "team", &Default::default())).expect("delete namespace");
    // The controller manager, acting as its own user, deletes the Role (its role allows
    // deleting RBAC objects, not making them), then the namespace goes.
    rt.block_on(common::until(&c, "namespace team gone", || async {
        admin.get::<pb::Namespace>("", "team").await.err().filter(|e| e.is_not_found()).map(|_| ())
    }));
}
