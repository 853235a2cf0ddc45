//! TLS on the masters' ports (issue 16): clients and peers with the cluster's
//! certificates get in; everyone else is refused at the handshake and writes nothing;
//! certificates replaced on disk are served without a restart; flags that do not add up
//! are refused before anything starts.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{admin_flags, certs, client_tls, ctl, etcdctl, refused, rt, Cluster};
use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::raft as rp;
use flotilla_tls::{Ca, Kind, OffsetDateTime};

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// etcdctl with the given TLS flags, then `args`.
fn etcdctl_with(endpoint: &str, tls: &[String], args: &[&str]) -> std::process::Output {
    let mut all = strs(tls);
    all.extend_from_slice(args);
    etcdctl(endpoint, &all)
}

fn flags(ca: &Path, crt: &Path, key: &Path) -> Vec<String> {
    ["--cacert", &ca.display().to_string(), "--cert", &crt.display().to_string(), "--key", &key.display().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Writes `issued` as `dir/name.crt` and `.key`; returns their paths.
fn write_pair(dir: &Path, name: &str, issued: &flotilla_tls::Issued) -> (std::path::PathBuf, std::path::PathBuf) {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&crt, &issued.cert_pem).expect("write cert");
    std::fs::write(&key, &issued.key_pem).expect("write key");
    (crt, key)
}

#[test]
fn clients_with_the_clusters_certificates_get_in_and_every_other_client_is_refused_writing_nothing() {
    let c = Cluster::start_tls(3, &[]);
    let pki = c.pki().expect("tls").to_path_buf();
    let admin = admin_flags(&pki);
    let (first, second) = (c.members[0].url(), c.members[1].url());
    assert!(first.starts_with("https://"), "{first}");

    // The stock etcdctl with --cacert/--cert/--key: a write through one member, read back
    // through another (a follower forwards over the peers' TLS).
    let put = etcdctl_with(&first, &admin, &["put", "greeting", "hello"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let got = etcdctl_with(&second, &admin, &["get", "greeting", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello", "{}", String::from_utf8_lossy(&got.stderr));

    // Certificates no member trusts.
    let other = tempfile::tempdir().expect("tempdir");
    let od = other.path().display().to_string();
    certs(&["init", "--dir", &od]);
    certs(&["issue", "--dir", &od, "admin", "mallory"]);
    certs(&["issue", "--dir", &od, "master", "n1", "--address", "127.0.0.1"]);
    let expired = Ca::load(&pki)
        .expect("cluster CA")
        .issue_valid(
            &Kind::Admin { user: "late".into() },
            OffsetDateTime::now_utc() - time_days(30),
            OffsetDateTime::now_utc() - time_days(1),
        )
        .expect("expired certificate");
    let (ex_crt, ex_key) = write_pair(other.path(), "expired", &expired);
    let ca = pki.join("ca.crt");
    let refused_clients: Vec<(&str, String, Vec<String>)> = vec![
        ("no client certificate", first.clone(), vec!["--cacert".into(), ca.display().to_string()]),
        (
            "a certificate from another CA",
            first.clone(),
            flags(&ca, &other.path().join("user-mallory.crt"), &other.path().join("user-mallory.key")),
        ),
        ("an expired certificate from the cluster CA", first.clone(), flags(&ca, &ex_crt, &ex_key)),
        ("plaintext to the TLS port", first.replace("https://", "http://"), vec![]),
        (
            "a client that trusts another CA (the server's certificate is refused)",
            first.clone(),
            flags(
                &other.path().join("ca.crt"),
                &other.path().join("user-mallory.crt"),
                &other.path().join("user-mallory.key"),
            ),
        ),
    ];
    for (i, (what, endpoint, tls)) in refused_clients.iter().enumerate() {
        let out = etcdctl_with(endpoint, tls, &["--command-timeout=3s", "put", &format!("refused-{i}"), "x"]);
        assert!(!out.status.success(), "{what}: the write was accepted");
    }
    // Why, in the member's log: the handshake was refused, naming the client's address.
    let log = std::fs::read_to_string(&c.members[0].log).expect("log");
    assert!(log.contains("TLS handshake refused") && log.contains("peer sent no certificates"), "{log}");
    assert!(log.contains("expired"), "the expired certificate is named so in the log:\n{log}");
    // Nothing of theirs was written.
    let left = etcdctl_with(&second, &admin, &["get", "refused", "--prefix", "--keys-only"]);
    assert!(left.status.success());
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "", "refused clients wrote keys");

    // flotctl takes the same flags; without them an https endpoint is refused up front.
    let eps = c.members.iter().map(|m| m.url()).collect::<Vec<_>>().join(",");
    let mut args = admin.clone();
    args.extend(["cluster".into(), "members".into()]);
    let members = common::ctl_ok(&eps, &strs(&args));
    assert_eq!(members.matches("https://").count(), 6, "peer and client URLs of 3 members:\n{members}");
    let err = common::ctl_fails(&eps, &["get", "nodes"]);
    assert!(err.contains("no CA certificate was given") && err.contains("--cacert"), "{err}");
    let plain = c.members.iter().map(|m| m.url().replace("https://", "http://")).collect::<Vec<_>>().join(",");
    let mut args = admin.clone();
    args.extend(["get".into(), "nodes".into()]);
    let err = common::ctl_fails(&plain, &strs(&args));
    assert!(err.contains("plaintext http but TLS certificates were given"), "{err}");
    let out = ctl(&eps, &["--cacert", &ca.display().to_string(), "get", "nodes"]);
    assert!(!out.status.success(), "flotctl without a client certificate was let in");
}

fn time_days(d: i64) -> flotilla_tls::time::Duration {
    flotilla_tls::time::Duration::days(d)
}

#[test]
fn a_peer_without_a_certificate_from_the_cluster_ca_is_refused_and_writes_nothing() {
    let c = Cluster::start_tls(3, &[]);
    let pki = c.pki().expect("tls").to_path_buf();
    let leader = &c.members[c.wait_leader(Duration::from_secs(10))];
    let peer = format!("127.0.0.1:{}", leader.peer);
    let other = tempfile::tempdir().expect("tempdir");
    let od = other.path().display().to_string();
    certs(&["init", "--dir", &od]);
    certs(&["issue", "--dir", &od, "master", "n9", "--address", "127.0.0.1"]);
    let foreign = flotilla_tls::ClientTls::new(flotilla_tls::ClientFiles {
        ca: pki.join("ca.crt"),
        identity: Some((other.path().join("master-n9.crt"), other.path().join("master-n9.key"))),
    })
    .expect("foreign TLS");

    // A proposal straight to the leader's peer port, as a member forwards a write.
    let propose = |url: String, tls: Option<Arc<flotilla_tls::ClientTls>>, key: &str| {
        let key = key.to_string();
        rt().block_on(async move {
            let endpoint = tonic::transport::Endpoint::from_shared(url)
                .expect("url")
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(3));
            let ch = flotilla_client::pool::channel(endpoint, tls.as_ref());
            let put = ep::PutRequest { key: key.into_bytes(), value: b"x".to_vec(), ..Default::default() };
            let cmd = rp::Command { kind: Some(rp::command::Kind::Put(put)) };
            rp::raft_peer_client::RaftPeerClient::new(ch).propose(rp::ProposeRequest { command: Some(cmd) }).await
        })
    };
    let attempts = [
        ("plaintext", format!("http://{peer}"), None),
        ("TLS without a certificate", format!("https://{peer}"), Some(client_tls(&pki, None))),
        ("TLS with another CA's master certificate", format!("https://{peer}"), Some(foreign)),
    ];
    for (i, (what, url, tls)) in attempts.into_iter().enumerate() {
        let r = propose(url, tls, &format!("intruder-{i}"));
        assert!(r.is_err(), "{what}: the peer port accepted a proposal");
    }
    // The same proposal with a member's certificate goes through: the refusals above are
    // the certificates', not the request's.
    propose(format!("https://{peer}"), Some(client_tls(&pki, Some("master-n2"))), "member-write")
        .expect("a member's certificate is a peer's");
    let admin = admin_flags(&pki);
    let keys = etcdctl_with(&leader.url(), &admin, &["get", "", "--prefix", "--keys-only"]);
    let keys = String::from_utf8_lossy(&keys.stdout).to_string();
    assert!(keys.contains("member-write"), "{keys}");
    assert!(!keys.contains("intruder"), "a refused peer wrote: {keys}");
    let log = std::fs::read_to_string(&leader.log).expect("log");
    assert!(log.contains("TLS handshake refused"), "{log}");
}

/// The leaf certificate a TLS server at `addr` presents (DER), trusting `ca`.
fn served_cert(addr: &str, ca: &Path, name: &str) -> Vec<u8> {
    let tls = flotilla_tls::ClientTls::new(flotilla_tls::ClientFiles { ca: ca.to_path_buf(), identity: None })
        .expect("client TLS");
    rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let s = tokio_rustls::TlsConnector::from(tls.current()).connect(name, tcp).await.expect("handshake");
        s.get_ref().1.peer_certificates().expect("certificates")[0].to_vec()
    })
}

fn pem_der(path: &Path) -> Vec<u8> {
    flotilla_tls::reload::load_certs(path).expect("certificate")[0].to_vec()
}

/// An HTTP/1.1 GET over TLS; the status line and body.
fn https_get(addr: &str, path: &str, tls: &Arc<flotilla_tls::ClientTls>) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut cfg = (*tls.current()).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        Some(out)
    })
}

#[test]
fn a_certificate_replaced_on_disk_is_served_to_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let pd = pki.display().to_string();
    certs(&["init", "--dir", &pd]);
    certs(&["issue", "--dir", &pd, "master", "m1", "--address", "127.0.0.1"]);
    certs(&["issue", "--dir", &pd, "admin", "admin"]);
    let (client, peer, metrics) = (common::free_port(), common::free_port(), common::free_port());
    let (crt, key, ca) = (pki.join("master-m1.crt"), pki.join("master-m1.key"), pki.join("ca.crt"));
    let log = dir.path().join("m1.log");
    let _master = common::Killed(
        Command::new(common::bin())
            .args(["master", "--name", "m1", "--data-dir"])
            .arg(dir.path().join("m1"))
            .args(["--listen-client", &format!("https://127.0.0.1:{client}")])
            .args(["--listen-peer", &format!("https://127.0.0.1:{peer}")])
            .args(["--listen-metrics", &format!("https://127.0.0.1:{metrics}")])
            .args(["--disable-scheduler", "--disable-controller-manager", "--client-cert-auth"])
            .args(["--cert-file", &crt.display().to_string(), "--key-file", &key.display().to_string()])
            .args(["--trusted-ca-file", &ca.display().to_string()])
            .args(["--peer-cert-file", &crt.display().to_string(), "--peer-key-file", &key.display().to_string()])
            .args(["--peer-trusted-ca-file", &ca.display().to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn master"),
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    // Metrics over https (HTTP/1.1 inside TLS), with a client certificate.
    let admin_tls = client_tls(&pki, Some("user-admin"));
    let metrics_addr = format!("127.0.0.1:{metrics}");
    common::eventually(Duration::from_secs(20), "the member is ready (https /readyz)", || {
        https_get(&metrics_addr, "/readyz", &admin_tls).is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    assert!(https_get(&metrics_addr, "/readyz", &client_tls(&pki, None)).is_none_or(|r| !r.contains("200 OK")));

    let addr = format!("127.0.0.1:{client}");
    let endpoint = format!("https://{addr}");
    let admin = admin_flags(&pki);
    let first = pem_der(&crt);
    assert_eq!(served_cert(&addr, &ca, "127.0.0.1"), first);

    // A certificate written without its key does not load: the old pair stays served.
    let ca_obj = Ca::load(&pki).expect("CA");
    let kind = Kind::Master { name: "m1".into(), addresses: vec!["127.0.0.1".into()] };
    let next = ca_obj.issue(&kind, 30).expect("new certificate");
    std::fs::write(&crt, &next.cert_pem).expect("write certificate");
    common::eventually(Duration::from_secs(10), "the member notices the mismatched pair", || {
        let _ = served_cert(&addr, &ca, "127.0.0.1");
        logs().contains("still using the previous ones")
    });
    assert_eq!(served_cert(&addr, &ca, "127.0.0.1"), first, "a half-written rotation was served");
    let put = etcdctl_with(&endpoint, &admin, &["put", "during", "rotation"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));

    // The key follows: the new certificate is served, without a restart.
    let started = Instant::now();
    std::fs::write(&key, &next.key_pem).expect("write key");
    let second = pem_der(&crt);
    assert_ne!(first, second);
    common::eventually(Duration::from_secs(10), "the new certificate is served", || {
        served_cert(&addr, &ca, "127.0.0.1") == second
    });
    eprintln!("new certificate served {:?} after its key was written", started.elapsed());
    assert!(logs().contains("certificates reloaded"));
    let got = etcdctl_with(&endpoint, &admin, &["get", "during", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "rotation", "{}", String::from_utf8_lossy(&got.stderr));
}

#[test]
fn the_master_refuses_tls_flags_that_do_not_add_up_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let pd = pki.display().to_string();
    certs(&["init", "--dir", &pd]);
    certs(&["issue", "--dir", &pd, "master", "m1", "--address", "127.0.0.1"]);
    certs(&["issue", "--dir", &pd, "master", "m2", "--address", "127.0.0.1"]);
    let f = |n: &str| pki.join(n).display().to_string();
    let data = dir.path().join("data");
    let d = data.display().to_string();
    let base = |client: &str, peer: &str| -> Vec<String> {
        ["master", "--name", "m1", "--data-dir", &d, "--listen-client", client, "--listen-peer", peer]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let tls = |prefix: &str, crt: &str, key: &str| -> Vec<String> {
        vec![
            format!("--{prefix}cert-file"),
            f(crt),
            format!("--{prefix}key-file"),
            f(key),
            format!("--{prefix}trusted-ca-file"),
            f("ca.crt"),
        ]
    };
    let (hc, hp, sc, sp) = ("http://127.0.0.1:1", "http://127.0.0.1:2", "https://127.0.0.1:1", "https://127.0.0.1:2");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base(sc, hp), "--listen-client https://127.0.0.1:1 is https: give the certificates"),
        (
            [base(hc, hp), tls("", "master-m1.crt", "master-m1.key")].concat(),
            "is plaintext http but certificates were given",
        ),
        ([base(hc, sp)].concat(), "--listen-peer https://127.0.0.1:2 is https"),
        ([base(sc, hp), vec!["--cert-file".into(), f("master-m1.crt")]].concat(), "--cert-file needs --key-file"),
        ([base(hc, hp), vec!["--client-cert-auth".into()]].concat(), "--client-cert-auth needs --cert-file"),
        (
            [base(sc, hp), vec!["--cert-file".into(), f("master-m1.crt"), "--key-file".into(), f("master-m1.key")]]
                .concat(),
            "--cert-file needs --trusted-ca-file",
        ),
        ([base(sc, hp), tls("", "master-m1.crt", "master-m2.key")].concat(), "is not the key of"),
        (
            [base(hc, sp), tls("peer-", "master-m1.crt", "master-m1.key")[..4].to_vec()].concat(),
            "peer TLS needs --peer-trusted-ca-file",
        ),
        (
            [
                base(hc, sp),
                tls("peer-", "master-m1.crt", "master-m1.key"),
                vec!["--initial-cluster".into(), "m1=https://127.0.0.1:2,m2=http://127.0.0.1:3".into()],
            ]
            .concat(),
            "--initial-cluster gives m2 the peer URL http://127.0.0.1:3, but this member's peers talk TLS",
        ),
        (
            [base(hc, hp), vec!["--peer-client-cert-auth".into()]].concat(),
            "--peer-client-cert-auth needs --peer-cert-file",
        ),
    ];
    for (args, want) in cases {
        refused(&strs(&args), want);
        assert!(!data.exists(), "{args:?} created the data dir");
    }
    // Valid flags (https metrics included) but for a taken client port: the checks above
    // do not refuse everything, and get as far as binding.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_url = format!("https://127.0.0.1:{}", taken.local_addr().expect("addr").port());
    let valid = [
        base(&taken_url, hp),
        tls("", "master-m1.crt", "master-m1.key"),
        vec!["--listen-metrics".into(), "https://127.0.0.1:4".into()],
    ]
    .concat();
    refused(&strs(&valid), &format!("cannot listen for clients on {taken_url}"));
    // A file that is not a certificate is named.
    std::fs::write(dir.path().join("junk.crt"), "not a certificate").expect("write");
    let junk = dir.path().join("junk.crt").display().to_string();
    refused(
        &strs(
            &[
                base(sc, hp),
                vec![
                    "--cert-file".into(),
                    junk.clone(),
                    "--key-file".into(),
                    f("master-m1.key"),
                    "--trusted-ca-file".into(),
                    f("ca.crt"),
                ],
            ]
            .concat(),
        ),
        &format!("{junk}: holds no certificate"),
    );
    assert!(!data.exists());
}

#[test]
fn a_tls_cluster_schedules_and_reconciles_through_its_own_tls_port() {
    // The masters' scheduler and controller manager reach their apiserver over TLS with
    // the master's certificate: a Deployment becomes bound pods.
    let c = Cluster::start_tls(3, &[]);
    let rt = rt();
    let client = c.client(&rt);
    let stop = rt.block_on(common::hollow_nodes(&client, &["h1", "h2"]));
    rt.block_on(client.create(common::deployment("web", 3))).expect("create deployment");
    let all = flotilla_client::ListParams { namespace: "default".into(), ..Default::default() };
    rt.block_on(common::until(&c, "3 pods of web bound", || async {
        let pods = client.list::<flotilla_proto::api::Pod>(&all).await.ok()?;
        let bound = pods.items.iter().filter(|p| p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty())).count();
        (bound == 3).then_some(())
    }));
    drop(stop);
    let eps = c.members.iter().map(|m| m.url()).collect::<Vec<_>>().join(",");
    let mut args = admin_flags(c.pki().expect("tls"));
    args.extend(["get".into(), "pods".into()]);
    let out = common::ctl_ok(&eps, &strs(&args));
    assert_eq!(out.lines().filter(|l| l.starts_with("web-")).count(), 3, "{out}");
}

#[test]
fn pod_logs_travel_from_a_tls_kubelet_to_a_tls_master_and_the_kubelet_answers_masters_only() {
    use flotilla_proto::api as pb;
    let c = Cluster::start_tls(3, &[]);
    let pki = c.pki().expect("tls").to_path_buf();
    let pd = pki.display().to_string();
    certs(&["issue", "--dir", &pd, "node", "w1", "--address", "127.0.0.1"]);
    certs(&["issue", "--dir", &pd, "node", "w2", "--address", "127.0.0.1"]);
    let f = |n: &str| pki.join(n).display().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let (kubelet_port, metrics_port) = (common::free_port(), common::free_port());
    let log = dir.path().join("w1.log");
    // A worker whose every connection is TLS: to the masters with its node certificate,
    // and its kubelet endpoint serving the same certificate.
    let _worker = common::Killed(
        Command::new(common::bin())
            .args(["worker", "--runtime", "process", "--disable-proxy", "--name", "w1", "--node-ip", "127.0.0.1"])
            .args(["--masters", &c.endpoints(), "--dir"])
            .arg(dir.path().join("w1"))
            .args(["--kubelet-port", &kubelet_port.to_string()])
            .args(["--listen-metrics", &format!("https://127.0.0.1:{metrics_port}")])
            .args(["--cacert", &f("ca.crt"), "--cert", &f("node-w1.crt"), "--key", &f("node-w1.key")])
            .args(["--tls-cert-file", &f("node-w1.crt"), "--tls-private-key-file", &f("node-w1.key")])
            .args(["--client-ca-file", &f("ca.crt")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start worker"),
    );
    let rt = rt();
    let client = c.client(&rt);
    let pod = pb::Pod {
        metadata: Some(pb::ObjectMeta { name: "web".into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::PodSpec {
            node_name: "w1".into(),
            termination_grace_period_seconds: Some(2),
            containers: vec![pb::Container {
                name: "main".into(),
                image: "busybox".into(),
                command: vec!["sh".into(), "-c".into(), "echo hello; while true; do sleep 0.1; done".into()],
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    rt.block_on(client.create(pod)).expect("create pod");
    let eps = c.members.iter().map(|m| m.url()).collect::<Vec<_>>().join(",");
    let mut args = admin_flags(&pki);
    args.extend(["logs".into(), "web".into()]);
    // Polled until it answers (the worker registers, the pod starts); on a timeout the
    // assertion below shows the last answer and the worker's log.
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = ctl(&eps, &strs(&args));
        last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() && last == "hello\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        last,
        "hello\n",
        "flotctl logs through a TLS master from a TLS kubelet\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // The kubelet's endpoint itself: another node's certificate from the same CA is
    // refused by name; no certificate at all is refused at the handshake.
    let logs_at = |tls: Arc<flotilla_tls::ClientTls>| {
        rt.block_on(async {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{kubelet_port}"))
                .expect("url")
                .timeout(Duration::from_secs(3));
            let ch = flotilla_client::pool::channel(endpoint, Some(&tls));
            let req = pb::ContainerLogsRequest { pod_uid: "x".into(), container: "main".into(), ..Default::default() };
            pb::kubelet_client::KubeletClient::new(ch).container_logs(req).await.map(|_| ())
        })
    };
    let e = logs_at(client_tls(&pki, Some("node-w2"))).expect_err("another node read logs");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("system:node:w2") && e.message().contains("system:masters"), "{e:?}");
    assert!(logs_at(client_tls(&pki, None)).is_err(), "a client without a certificate read logs");

    // Its metrics in TLS, for scrapers with a certificate from the cluster's CA only.
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let scraped = https_get(&metrics_addr, "/metrics", &client_tls(&pki, Some("user-admin"))).unwrap_or_default();
    assert!(scraped.starts_with("HTTP/1.1 200") && scraped.contains("flotilla_kubelet_"), "{scraped}");
    assert!(https_get(&metrics_addr, "/metrics", &client_tls(&pki, None)).is_none_or(|r| !r.contains("200 OK")));

    // Gone before the worker stops, so that its container does not outlive the test.
    rt.block_on(client.delete::<pb::Pod>("default", "web", &Default::default())).expect("delete");
    rt.block_on(common::until(&c, "web gone", || async {
        client.get::<pb::Pod>("default", "web").await.err().filter(|e| e.is_not_found()).map(|_| ())
    }));
}

/// The scheduler's, controller manager's and proxy's /metrics in TLS when asked
/// (`--listen-metrics https://...` with a serving certificate): a scraper without a
/// certificate from `--client-ca-file` is refused; plaintext is refused on that port; the
/// certificate flags without an https address, or an https address without them, are
/// refused up front.
#[test]
fn components_serve_their_metrics_in_tls_when_asked() {
    let c = Cluster::start_tls(1, &[]);
    let pki = c.pki().expect("tls").to_path_buf();
    let pd = pki.display().to_string();
    // Its certificate with an address: it serves its metrics as well as being a client.
    certs(&["issue", "--dir", &pd, "scheduler", "--address", "127.0.0.1"]);
    let f = |n: &str| pki.join(n).display().to_string();
    let port = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("scheduler.log");
    let _scheduler = common::Killed(
        Command::new(common::bin())
            .args(["scheduler", "--masters", &c.endpoints()])
            .args(["--cacert", &f("ca.crt"), "--cert", &f("scheduler.crt"), "--key", &f("scheduler.key")])
            .args(["--listen-metrics", &format!("https://127.0.0.1:{port}")])
            .args(["--tls-cert-file", &f("scheduler.crt"), "--tls-private-key-file", &f("scheduler.key")])
            .args(["--client-ca-file", &f("ca.crt")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start scheduler"),
    );
    let addr = format!("127.0.0.1:{port}");
    let admin = client_tls(&pki, Some("user-admin"));
    common::eventually(Duration::from_secs(20), "the scheduler's https /metrics", || {
        https_get(&addr, "/metrics", &admin)
            .is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.contains("flotilla_scheduler_"))
    });
    assert!(https_get(&addr, "/metrics", &client_tls(&pki, None)).is_none_or(|r| !r.contains("200 OK")));
    assert!(common::scrape(port).is_none_or(|r| !r.contains("200 OK")), "plain HTTP answered on the TLS port");

    for (command, extra, want) in [
        (
            "scheduler",
            vec!["--listen-metrics", "https://127.0.0.1:1"],
            "give --tls-cert-file and --tls-private-key-file",
        ),
        ("controller-manager", vec!["--listen-metrics", "127.0.0.1:1", "--tls-cert-file", "x"], "are for an https://"),
        ("scheduler", vec!["--listen-metrics", "ftp://127.0.0.1:1"], "use http:// or https://"),
    ] {
        common::refused(&[&[command, "--masters", "127.0.0.1:1"][..], &extra].concat(), want);
    }
}

/// A linearizable read confirms the leader's leadership with a quorum over the peer
/// connections it already holds: 300 reads, one at a time (each its own read-index
/// round), open next to no new connection to the followers — a connection per round
/// would be a TLS handshake per round, and halved linearizable reads with TLS on.
#[test]
fn linearizable_reads_reuse_the_leaders_peer_connections() {
    let c = Cluster::start_tls(3, &[]);
    let l = c.wait_leader(Duration::from_secs(20));
    let accepted = || -> f64 {
        (0..3)
            .filter(|i| *i != l)
            .map(|i| common::metric(&c.members[i], "flotilla_peer_connections_accepted_total").expect("metric"))
            .sum()
    };
    let leader = &c.members[l];
    rt().block_on(async {
        let endpoint =
            tonic::transport::Endpoint::from_shared(leader.url()).expect("url").timeout(Duration::from_secs(5));
        let mut kv = ep::kv_client::KvClient::new(flotilla_client::pool::channel(endpoint, leader.admin_tls.as_ref()));
        kv.put(ep::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.expect("put");
        let before = accepted();
        for _ in 0..300 {
            let r = kv.range(ep::RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.expect("read");
            assert_eq!(r.into_inner().kvs.len(), 1);
        }
        let opened = accepted() - before;
        assert!(opened <= 4.0, "300 linearizable reads opened {opened} peer connections to the followers");
    });
}
