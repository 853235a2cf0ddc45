//! The service proxy on real nftables, with pods on containerd: two workers (each a
//! network namespace of its own as its own host, running kubelet and proxy) and a third
//! host without a worker as the "outside" a client calls from. Pod, service and
//! load-balancer addresses are reached only from inside these namespaces. Needs root and
//! the packages scripts/setup installs; with them missing the tests fail, never skip.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::nodes::*;
use common::workers::*;
use common::*;
use flotilla_proto::api as pb;

/// `nft list table ip flotilla` in a host's namespace: the listing, or None when the
/// table is not there (any other failure of nft fails the test).
fn table(host_ns: &str) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{host_ns}"))
        .args(["nft", "list", "table", "ip", "flotilla"])
        .output()
        .expect("nft");
    if out.status.success() {
        return Some(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No such file or directory"), "nft list table failed: {err}");
    None
}

/// The proxy's table in a host's namespace, which must be there.
fn ruleset(host_ns: &str) -> String {
    table(host_ns).unwrap_or_else(|| panic!("no table ip flotilla in {host_ns}"))
}

/// A web server pod on `node` answering its own name on port 8080, ready while the file
/// `<flags>/<name>-down` does not exist (the test makes and removes it on the machine).
fn web_pod(name: &str, node: &str, flags: &std::path::Path) -> pb::Pod {
    let script = format!("mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p 8080 -h /www");
    let mut p = pod(name, node, &busybox_name(), &script);
    p.metadata.as_mut().expect("meta").labels = [("app".to_string(), "web".to_string())].into();
    let spec = p.spec.as_mut().expect("spec");
    spec.volumes = vec![pb::Volume {
        name: "flags".into(),
        host_path: Some(pb::HostPathVolumeSource {
            path: flags.display().to_string(),
            r#type: "DirectoryOrCreate".into(),
        }),
        ..Default::default()
    }];
    let c = &mut spec.containers[0];
    c.ports = vec![pb::ContainerPort {
        name: "http".into(),
        container_port: 8080,
        protocol: "TCP".into(),
        ..Default::default()
    }];
    c.volume_mounts = vec![pb::VolumeMount { name: "flags".into(), mount_path: "/flags".into(), ..Default::default() }];
    c.readiness_probe = Some(exec_probe(&["sh", "-c", &format!("test ! -e /flags/{name}-down")]));
    p
}

fn service(name: &str, ty: &str, app: &str) -> pb::Service {
    pb::Service {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::ServiceSpec {
            r#type: ty.into(),
            selector: [("app".to_string(), app.to_string())].into(),
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

/// The pods' network namespaces and addresses, by pod name, once all of `names` are ready.
async fn ready_pods(
    c: &Cluster,
    client: &flotilla_client::Client,
    names: &[&str],
) -> BTreeMap<String, (String, String)> {
    until(c, "the web pods ready", || async {
        let l = client.list::<pb::Pod>(&Default::default()).await.ok()?;
        let found: BTreeMap<String, (String, String)> = l
            .items
            .iter()
            .filter(|p| ready(p))
            .filter_map(|p| {
                let m = p.metadata.as_ref()?;
                let ip = p.status.as_ref()?.pod_ip.clone();
                Some((m.name.clone(), (format!("flotilla-{}", m.uid), ip)))
            })
            .filter(|(n, _)| names.contains(&n.as_str()))
            .collect();
        (found.len() == names.len()).then_some(found)
    })
    .await
}

fn cluster_ip(svc: &pb::Service) -> String {
    svc.spec.as_ref().map(|s| s.cluster_ip.clone()).unwrap_or_default()
}

fn node_port(svc: &pb::Service) -> i32 {
    svc.spec.as_ref().and_then(|s| s.ports.first()).map_or(0, |p| p.node_port)
}

/// A Service of three web pods over two workers: its cluster IP answers from a pod, from
/// a pod that is itself an endpoint (hairpin) and from both workers, spreading requests
/// over all three; its node port answers from outside on both workers; a pod that turns
/// unready leaves the rotation within a second of its status saying so, and comes back;
/// a service without endpoints refuses connections at once; its name resolves from a pod
/// through the worker's cluster DNS, short and long; and the ruleset is what docs/ shows.
#[test]
fn a_service_answers_from_pods_nodes_and_outside_spreads_load_follows_readiness_and_refuses_without_endpoints() {
    let s = setup_hosts(3, &[], &["--cluster-cidr", "10.244.0.0/16"], &["--cluster-cidr", "10.244.0.0/16"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = s.c.client(&rt);
    let flags = s.dir.path().join("flags");
    std::fs::create_dir_all(&flags).expect("flags dir");
    let (w1, w2, outside) = (&s.hosts.hosts[0], &s.hosts.hosts[1], &s.hosts.hosts[2].0);
    rt.block_on(async {
        for (name, node) in [("web-1", "w1"), ("web-2", "w1"), ("web-3", "w2")] {
            client.create(web_pod(name, node, &flags)).await.expect("create pod");
        }
        let asker =
            "until nslookup web.default.svc.cluster.local; do sleep 0.5; done; echo SHORT; nslookup web; sleep 3600";
        client.create(pod("asker", "w2", &busybox_name(), asker)).await.expect("create asker");
        client.create(service("web", "NodePort", "web")).await.expect("create service");
        client.create(service("nobody", "ClusterIP", "nothing-matches")).await.expect("create service");
    });
    let pods = rt.block_on(ready_pods(&s.c, &client, &["web-1", "web-2", "web-3"]));
    let asker_ns = rt.block_on(async {
        until(&s.c, "asker running", || async {
            let p = client.get::<pb::Pod>("default", "asker").await.ok()?;
            let uid = p.metadata.as_ref()?.uid.clone();
            running(&p).then(|| format!("flotilla-{uid}"))
        })
        .await
    });
    let svc: pb::Service = rt.block_on(client.get("default", "web")).expect("service");
    let (vip, np) = (cluster_ip(&svc), node_port(&svc));
    assert!(np > 0, "a node port was allocated");
    let url = format!("http://{vip}/");

    // From a pod, from a pod that is an endpoint itself, and from both workers.
    let answered = rt.block_on(async {
        until(&s.c, "the cluster IP answering from a pod", || async { get(&asker_ns, &url).ok() }).await
    });
    assert!(answered.starts_with("web-"), "{answered}");
    for _ in 0..6 {
        get(&pods["web-1"].0, &url).expect("hairpin: a pod reaching its own service");
    }
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        let host = if i % 2 == 0 { &w1.0 } else { &w2.0 };
        seen.insert(get(host, &url).unwrap_or_else(|e| panic!("from {host}: {e}")));
    }
    assert_eq!(seen, ["web-1", "web-2", "web-3"].map(String::from).into(), "60 requests reach all three endpoints");

    // The node port, from outside, on either worker.
    for (_, ip) in [w1, w2] {
        let body = get(outside, &format!("http://{ip}:{np}/")).unwrap_or_else(|e| panic!("node port on {ip}: {e}"));
        assert!(body.starts_with("web-"), "{body}");
    }

    // A service without endpoints refuses at once: no timeout.
    let nobody: pb::Service = rt.block_on(client.get("default", "nobody")).expect("service");
    let began = Instant::now();
    let err = get(&w1.0, &format!("http://{}/", cluster_ip(&nobody))).expect_err("no endpoints");
    assert!(err.contains("refused"), "{err}");
    assert!(began.elapsed() < Duration::from_secs(1), "refused in {:?}", began.elapsed());
    let began = Instant::now();
    let err = get(&asker_ns, &format!("http://{}/", cluster_ip(&nobody))).expect_err("no endpoints");
    assert!(err.contains("refused"), "from a pod: {err}");
    assert!(began.elapsed() < Duration::from_secs(1), "refused in {:?} from a pod", began.elapsed());

    // web-3 turns unready: out of the rotation within a second of its status saying so.
    let ip3 = pods["web-3"].1.clone();
    std::fs::write(flags.join("web-3-down"), "").expect("flag");
    rt.block_on(async {
        until(&s.c, "web-3 unready", || async {
            let p = client.get::<pb::Pod>("default", "web-3").await.ok()?;
            (!ready(&p)).then_some(())
        })
        .await
    });
    let unready_at = Instant::now();
    let gone = |ns: &str| !ruleset(ns).contains(&format!("dnat to {ip3}:8080"));
    while !(gone(&w1.0) && gone(&w2.0)) {
        assert!(unready_at.elapsed() < Duration::from_secs(1), "web-3 still in the rules:\n{}", ruleset(&w1.0));
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("an unready endpoint left both workers' rules {:?} after its status said so", unready_at.elapsed());
    for _ in 0..20 {
        assert_ne!(get(&w2.0, &url).expect("answer"), "web-3", "an unready pod gets no requests");
    }
    std::fs::remove_file(flags.join("web-3-down")).expect("flag");
    rt.block_on(async {
        until(&s.c, "web-3 back in the rules", || async { (!gone(&w1.0) && !gone(&w2.0)).then_some(()) }).await
    });

    // Cluster DNS from a pod: the full name and the short one through the search path.
    let logs = rt.block_on(async {
        until(&s.c, "the asker's lookups", || async {
            let out = ctl(&s.c.endpoints(), &["logs", "asker"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.matches(&format!("Address: {vip}")).count() >= 2).then_some(text)
        })
        .await
    });
    assert!(logs.contains("SHORT"), "{logs}");

    // The generated table, as docs/networking.md shows it.
    let table = ruleset(&w1.0);
    for part in [
        "map service-ips",
        "numgen random mod 3 vmap",
        "masquerade fully-random",
        "jump services",
        &format!("{vip} . tcp . 80 : goto service-"),
        &format!("tcp . {np} : goto external-"),
        &format!("{} . tcp . 80 : goto reject-chain", cluster_ip(&nobody)),
    ] {
        assert!(table.contains(part), "{part:?} missing from\n{table}");
    }
    let metrics = s.workers[0].metrics();
    assert!(metrics.contains("flotilla_proxy_syncs_total{kind=\"full\"} 1\n"), "{metrics}");
    assert!(metrics.contains("flotilla_proxy_sync_failures_total 0\n"), "{metrics}");
    assert!(metrics.contains("flotilla_kubelet_sync_passes_total"), "the kubelet's metrics too");
    assert_eq!(metrics.matches("# EOF").count(), 1, "one exposition, closed once");
    assert!(metrics.ends_with("# EOF\n"));
}

/// A LoadBalancer Service gets an address from the pool on the hosts' network; it answers
/// from outside through the worker that announces it; traffic (cluster IP, node port and
/// load-balancer address) flows on when the proxy's master is killed — the proxy moves
/// without a relist — and while no master answers at all; and when the announcing
/// worker's machine goes (its process killed, its link down), the address answers again
/// from the other within 5 s.
#[test]
fn a_load_balancer_address_answers_from_outside_outlives_the_masters_and_moves_when_its_worker_dies() {
    let mut s = setup_hosts(3, &["--load-balancer-pool", "{subnet}.240/29"], &[], &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = s.c.client(&rt);
    let flags = s.dir.path().join("flags");
    let outside = s.hosts.hosts[2].0.clone();
    rt.block_on(async {
        for (name, node) in [("web-1", "w1"), ("web-2", "w2")] {
            client.create(web_pod(name, node, &flags)).await.expect("create pod");
        }
        client.create(service("web", "LoadBalancer", "web")).await.expect("create service");
    });
    rt.block_on(ready_pods(&s.c, &client, &["web-1", "web-2"]));
    let svc = rt.block_on(async {
        until(&s.c, "a load-balancer address", || async {
            let svc = client.get::<pb::Service>("default", "web").await.ok()?;
            let has = svc.status.as_ref()?.load_balancer.as_ref()?.ingress.first().is_some_and(|i| !i.ip.is_empty());
            has.then_some(svc)
        })
        .await
    });
    let lb =
        svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).map(|l| l.ingress[0].ip.clone()).unwrap_or_default();
    let (vip, np) = (cluster_ip(&svc), node_port(&svc));
    let lb_url = format!("http://{lb}/");
    rt.block_on(async {
        until(&s.c, "the load-balancer address from outside", || async { get(&outside, &lb_url).ok() }).await
    });
    let announcer = rt.block_on(async {
        until(&s.c, "one worker announcing the address", || async {
            let on: Vec<usize> =
                (0..2).filter(|i| s.workers[*i].metrics().contains("flotilla_proxy_announced_addresses 1\n")).collect();
            (on.len() == 1).then(|| on[0])
        })
        .await
    });
    let mac = |host: &str| {
        let link = sh(&["ip", "-n", host, "-br", "link", "show", "eth0"]);
        link.split_whitespace().nth(2).unwrap_or_else(|| panic!("no MAC in {link:?}")).to_string()
    };
    let neigh = || sh(&["ip", "-n", &outside, "neigh", "show", &lb]);
    assert!(
        neigh().contains(&mac(&s.hosts.hosts[announcer].0)),
        "the outside reaches {lb} at the announcer: {}",
        neigh()
    );

    // Every path, from outside and from a worker.
    let all_paths = |s: &Setup| {
        for (ns, url) in [
            (outside.as_str(), lb_url.clone()),
            (outside.as_str(), format!("http://{}:{np}/", s.hosts.hosts[0].1)),
            (s.hosts.hosts[1].0.as_str(), format!("http://{vip}/")),
        ] {
            let body = get(ns, &url).unwrap_or_else(|e| panic!("{url} from {ns}: {e}"));
            assert!(body.starts_with("web-"), "{body}");
        }
    };
    all_paths(&s);

    let stamp = |what: &str| eprintln!("{} {what}", sh(&["date", "+%T.%N"]).trim());
    stamp("killing w1's master");
    // Kill the master w1's proxy talks to: traffic flows on; the proxy moves, no relist.
    let m = kubelet_master(&s.workers[0].metrics());
    let i = s.c.members.iter().position(|x| m.contains(&x.endpoint())).expect("a member");
    s.c.kill(i);
    all_paths(&s);
    rt.block_on(async {
        until(&s.c, "w1 on another master", || async {
            let now = kubelet_master(&s.workers[0].metrics());
            (!now.contains(&s.c.members[i].endpoint())).then_some(())
        })
        .await
    });
    for w in &s.workers {
        let metrics = w.metrics();
        assert!(
            metrics.contains("flotilla_proxy_lists 3\n"),
            "Services, Endpoints, Leases listed once each:\n{metrics}"
        );
    }

    // No master at all, for longer than a proxy's lease: everything still answers, and
    // the announcer keeps answering for its address.
    stamp("killing every master");
    for j in 0..3 {
        s.c.kill(j);
    }
    let dark = Instant::now();
    while dark.elapsed() < Duration::from_secs(5) {
        all_paths(&s);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(s.workers[announcer].metrics().contains("flotilla_proxy_announced_addresses 1\n"));
    stamp("restarting the masters");
    for j in 0..3 {
        s.c.restart(j);
    }
    s.c.wait_leader(Duration::from_secs(20));
    // Both proxies renew their leases again, more than a proxy lease's length (3 s) of
    // renewals: long enough for a proxy to have taken the other for dead, had it done so.
    rt.block_on(async {
        let renewals = std::cell::RefCell::new(BTreeMap::<String, BTreeSet<String>>::new());
        let since = Instant::now();
        until(&s.c, "both proxies' leases renewed for 4 s after the outage", || async {
            let p = flotilla_client::ListParams { namespace: "kube-system".into(), ..Default::default() };
            let leases = client.list::<pb::Lease>(&p).await.ok()?.items;
            let mut renewals = renewals.borrow_mut();
            for l in leases {
                let (Some(m), Some(spec)) = (l.metadata, l.spec) else { continue };
                if m.name.starts_with("flotilla-proxy-") {
                    renewals.entry(m.name).or_default().insert(spec.renew_time);
                }
            }
            let both = renewals.len() == 2 && renewals.values().all(|r| r.len() >= 3);
            (both && since.elapsed() > Duration::from_secs(4)).then_some(())
        })
        .await
    });
    // Still where it was: coming back from the outage moved nothing.
    assert!(s.workers[announcer].metrics().contains("flotilla_proxy_announced_addresses 1\n"));
    assert!(s.workers[1 - announcer].metrics().contains("flotilla_proxy_announced_addresses 0\n"));
    get(&outside, &lb_url).expect("the address answers");
    assert!(neigh().contains(&mac(&s.hosts.hosts[announcer].0)), "still at the announcer: {}", neigh());

    // The announcing worker's machine goes: its process killed, its link down. Its pod is
    // made unready first, so that every answer afterwards comes from the other's pod and
    // depends only on the address moving (a dead node's endpoints go with the node
    // lifecycle controller, later).
    let other = 1 - announcer;
    let doomed = format!("web-{}", announcer + 1);
    std::fs::write(flags.join(format!("{doomed}-down")), "").expect("flag");
    rt.block_on(async {
        until(&s.c, "the doomed pod out of the other worker's rules", || async {
            (ruleset(&s.hosts.hosts[other].0).matches("dnat to").count() == 1).then_some(())
        })
        .await
    });
    stamp("killing the announcer");
    s.workers[announcer].kill();
    sh(&["ip", "-n", &s.hosts.hosts[announcer].0, "link", "set", "eth0", "down"]);
    let lost = Instant::now();
    loop {
        // A request may land on the dead machine's pod (its endpoint is still listed):
        // the first answer is what counts.
        if busybox_in(&outside, 1, &["wget", "-q", "-O-", &lb_url]).status.success() {
            break;
        }
        assert!(lost.elapsed() < Duration::from_secs(5), "{lb} silent 5 s after its worker died: {}", neigh());
    }
    println!("{lb} answered again {:?} after its worker died", lost.elapsed());
    assert!(neigh().contains(&mac(&s.hosts.hosts[other].0)), "now at the other worker: {}", neigh());
    assert!(s.workers[other].metrics().contains("flotilla_proxy_announced_addresses 1\n"));
}

/// The table outlives its proxy: with the worker killed, its node still reaches the
/// service; a new worker replaces the table whole with one transaction at start; and
/// `flotilla proxy --cleanup` removes it. Under sessionAffinity ClientIP one client
/// keeps its endpoint.
#[test]
fn the_table_outlives_its_proxy_is_replaced_at_start_removed_by_cleanup_and_keeps_clients_on_their_endpoint() {
    let mut s = setup_with(&[], &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = s.c.client(&rt);
    let flags = s.dir.path().join("flags");
    let w1 = s.hosts.hosts[0].0.clone();
    rt.block_on(async {
        for (name, node) in [("web-1", "w1"), ("web-2", "w2"), ("web-3", "w2")] {
            client.create(web_pod(name, node, &flags)).await.expect("create pod");
        }
        let mut svc = service("web", "ClusterIP", "web");
        svc.spec.as_mut().expect("spec").session_affinity = "ClientIP".into();
        client.create(svc).await.expect("create service");
    });
    rt.block_on(ready_pods(&s.c, &client, &["web-1", "web-2", "web-3"]));
    let svc: pb::Service = rt.block_on(client.get("default", "web")).expect("service");
    let url = format!("http://{}/", cluster_ip(&svc));
    let first = rt.block_on(async {
        until(&s.c, "the service answering on w1", || async {
            (ruleset(&w1).matches("dnat to").count() == 3).then_some(())?;
            get(&w1, &url).ok()
        })
        .await
    });
    for _ in 0..15 {
        assert_eq!(get(&w1, &url).expect("answer"), first, "ClientIP affinity keeps a client on its endpoint");
    }
    assert!(ruleset(&w1).contains("update @affinity-"), "{}", ruleset(&w1));

    // The worker dies: its table stays, traffic flows.
    let before = ruleset(&w1);
    s.workers[0].kill();
    for _ in 0..5 {
        assert!(get(&w1, &url).expect("answered with no proxy running").starts_with("web-"));
    }
    // A new one replaces the table with one full transaction; nothing in it changes.
    s.workers[0].spawn();
    rt.block_on(async {
        until(&s.c, "the new proxy's full sync", || async {
            s.workers[0].metrics().contains("flotilla_proxy_syncs_total{kind=\"full\"} 1\n").then_some(())
        })
        .await
    });
    assert_eq!(ruleset(&w1).matches("chain ").count(), before.matches("chain ").count(), "the same chains");
    get(&w1, &url).expect("answered after the restart");

    // --cleanup removes the table (the worker stopped first: a running proxy would put it
    // back at its next sync).
    s.workers[0].kill();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{w1}"))
        .args([bin(), "proxy", "--cleanup"])
        .output()
        .expect("flotilla proxy --cleanup");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(table(&w1).is_none(), "the table is gone");
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{w1}"))
        .args([bin(), "proxy", "--cleanup"])
        .output()
        .expect("flotilla proxy --cleanup");
    assert!(out.status.success(), "a second cleanup finds nothing to do: {}", String::from_utf8_lossy(&out.stderr));
}

/// `conntrack ARGS` in a host's namespace: the entries listed.
fn conntrack_list(host_ns: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{host_ns}"))
        .args(["conntrack", "-L"])
        .args(args)
        .output()
        .expect("conntrack");
    // A failed listing must not pass for an empty one.
    assert!(out.status.success(), "conntrack -L {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// A GET of `/` from a host's namespace to `vip:80` from local port `port` (busybox nc).
fn get_from_port(host_ns: &str, vip: &str, port: u16) -> String {
    use std::io::Write;
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{host_ns}"))
        .args(["timeout", "3", "/bin/busybox", "nc", "-w", "1", "-p", &port.to_string(), vip, "80"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nc");
    let _ = child.stdin.take().expect("stdin").write_all(b"GET / HTTP/1.0\r\n\r\n");
    String::from_utf8_lossy(&child.wait_with_output().expect("nc").stdout).into_owned()
}

/// An endpoint that stops answering (its worker drops what is sent to it) leaves
/// unanswered connections in a client node's connection tracking for two minutes, which
/// can catch a new connection reusing one of their source ports and send it to the dead
/// endpoint again. When the endpoint leaves the Service, the proxy forgets them (without
/// that this test fails), and connections from those ports are answered.
#[test]
fn unanswered_connections_to_an_endpoint_that_left_are_forgotten() {
    let s = setup_with(&[], &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = s.c.client(&rt);
    let flags = s.dir.path().join("flags");
    let (w1, w2) = (s.hosts.hosts[0].0.clone(), s.hosts.hosts[1].0.clone());
    rt.block_on(async {
        client.create(web_pod("web-1", "w1", &flags)).await.expect("create pod");
        client.create(web_pod("web-2", "w2", &flags)).await.expect("create pod");
        client.create(service("web", "ClusterIP", "web")).await.expect("create service");
    });
    let pods = rt.block_on(ready_pods(&s.c, &client, &["web-1", "web-2"]));
    let dead = pods["web-2"].1.clone();
    let svc: pb::Service = rt.block_on(client.get("default", "web")).expect("service");
    let vip = cluster_ip(&svc);
    rt.block_on(async {
        until(&s.c, "both endpoints in w1's rules", || async {
            (ruleset(&w1).matches("dnat to").count() == 2).then_some(())
        })
        .await
    });
    // w2 drops everything sent to web-2; connections from w1 go on being balanced to it.
    sh(&["ip", "netns", "exec", &w2, "iptables", "-A", "FORWARD", "-d", &dead, "-j", "DROP"]);
    for port in 41000..41040u16 {
        get_from_port(&w1, &vip, port);
    }
    // The ports whose connections went to the dead endpoint, as conntrack holds them.
    let stale = conntrack_list(&w1, &["-p", "tcp", "--state", "SYN_SENT", "--dst-nat", &dead]);
    let stale_ports: Vec<u16> = stale
        .iter()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("sport="))?.parse().ok())
        .collect();
    assert!(!stale_ports.is_empty(), "some connections went to the dead endpoint: {stale:?}");
    // (While they are there, a new connection from one of these ports may match one —
    // the kernel takes some such SYNs for retransmissions — and go to the dead endpoint:
    // what chaos/run plane saw. Whether it does depends on the kernel, so it is not
    // asserted here; that the entries go is.)

    // It leaves the Service: its unanswered connections are forgotten.
    rt.block_on(client.delete::<pb::Pod>("default", "web-2", &Default::default())).expect("delete");
    s.c.eventually(Duration::from_secs(10), "w1's unanswered connections to the endpoint that left forgotten", || {
        conntrack_list(&w1, &["-p", "tcp", "--state", "SYN_SENT", "--dst-nat", &dead]).is_empty()
    });
    assert_eq!(ruleset(&w1).matches("dnat to").count(), 1, "one endpoint left");
    for &port in stale_ports.iter().take(5) {
        assert!(get_from_port(&w1, &vip, port).contains("web-1"), "a connection from port {port} answered");
    }
    sh(&["ip", "netns", "exec", &w2, "iptables", "-F"]);
}
