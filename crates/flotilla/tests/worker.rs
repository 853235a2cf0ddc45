//! A worker with the process runtime against real masters (their scheduler and controller
//! manager): it registers its Node, renews its Lease and puts its Ready condition back
//! when it was marked Unknown; a pod placed on it runs, with
//! its output in the container's log, and reports Running and Ready; a pod deleted
//! gracefully gets SIGTERM and goes; a crashing container is restarted with back-off
//! (CrashLoopBackOff, the exit code in lastState); a pod that runs to its end Succeeds; a
//! pod the runtime cannot run (resource limits) fails saying why; a worker killed with
//! SIGKILL and started again adopts its running container instead of starting another;
//! probes decide readiness and restarts; a worker rides out a SIGKILL of its master.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::nodes::{exec_probe, kubelet_master, main_status, ready};
use common::*;
use flotilla_client::DeleteParams;
use flotilla_proto::api as pb;

/// A running `flotilla worker`; killed when dropped (its log printed if the test failed).
struct Worker {
    child: Child,
    log: PathBuf,
    dir: PathBuf,
}

impl Worker {
    /// Kills what the worker started (each container's process group, then the shims).
    fn kill_containers(&self) {
        let containers = self.dir.join("containers");
        for d in std::fs::read_dir(&containers).into_iter().flatten().flatten() {
            if let Ok(pid) = std::fs::read_to_string(d.path().join("pid")) {
                let _ = Command::new("kill").args(["-9", "--", &format!("-{}", pid.trim())]).status();
            }
        }
        let _ = Command::new("pkill").args(["-9", "-f", &containers.display().to_string()]).status();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- worker log ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            self.kill_containers();
        }
    }
}

/// Starts `flotilla worker --runtime process` named `name`, keeping its state in `dir`
/// (its log appended to `dir/<name>.log`).
fn worker(c: &Cluster, name: &str, dir: &Path) -> Worker {
    worker_with(c, name, dir, &[])
}

/// [`worker`] with more flags.
fn worker_with(c: &Cluster, name: &str, dir: &Path, extra: &[&str]) -> Worker {
    let path = dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("log file");
    let child = Command::new(bin())
        // No service proxy: these workers share this machine's own network namespace.
        .args(["worker", "--runtime", "process", "--disable-proxy", "--name", name, "--node-ip", "127.0.0.1"])
        .args(["--masters", &c.endpoints(), "--dir"])
        .arg(dir.join(name))
        .args(["--kubelet-port", &free_port().to_string()])
        .args(c.pki().map(|pki| common::workers::node_tls_flags(pki, name, "127.0.0.1")).unwrap_or_default())
        .args(extra)
        .env("FLOTILLA_LOG", "info,flotilla_kubelet=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start worker");
    Worker { child, log: path, dir: dir.join(name) }
}

fn pod(name: &str, script: &str, policy: &str) -> pb::Pod {
    pb::Pod {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::PodSpec {
            restart_policy: policy.into(),
            termination_grace_period_seconds: Some(10),
            containers: vec![pb::Container {
                name: "main".into(),
                image: "busybox".into(),
                command: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// The log of the newest container of the pod with uid `uid` under the worker's `dir`.
fn log_of(dir: &Path, uid: &str) -> String {
    let containers = dir.join("containers");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&containers)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(uid)));
    logs.sort();
    logs.last().map(|p| std::fs::read_to_string(p.join("log")).unwrap_or_default()).unwrap_or_default()
}

#[test]
fn a_process_worker_runs_restarts_stops_and_adopts_pods() {
    let c = Cluster::start_with_scheduler(3, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = worker(&c, "w1", dir.path());
    let wdir = dir.path().join("w1");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    rt.block_on(async {
        // The Node, Ready, with the machine's capacity, and its Lease.
        let node = until(&c, "the worker's node", || async { client.get::<pb::Node>("", "w1").await.ok() }).await;
        let st = node.status.expect("status");
        assert!(st.capacity.contains_key("cpu") && st.capacity.contains_key("memory"), "{:?}", st.capacity);
        assert!(st.node_info.is_some_and(|i| i.container_runtime_version.starts_with("process://")));
        until(&c, "the node lease", || async { client.get::<pb::Lease>("kube-node-lease", "w1").await.ok() }).await;
        // Marked Unknown (as the controller manager does after a silence): put back.
        let mut n: pb::Node = client.get("", "w1").await.expect("node");
        for cond in n.status.as_mut().expect("status").conditions.iter_mut().filter(|c| c.r#type == "Ready") {
            cond.status = "Unknown".into();
        }
        client.update_status(n).await.expect("mark unknown");
        until(&c, "the node Ready again", || async {
            let n: pb::Node = client.get("", "w1").await.ok()?;
            let st = n.status?;
            st.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True").then_some(())
        })
        .await;

        // A pod runs: Running, Ready, its output in the log.
        let script = "echo hello; trap 'echo bye > $MARK; exit 0' TERM; while true; do sleep 0.1; done";
        let mark = dir.path().join("web-terminated");
        let mut web = pod("web", script, "Always");
        web.spec.as_mut().expect("spec").containers[0].env =
            vec![pb::EnvVar { name: "MARK".into(), value: mark.display().to_string() }];
        client.create(web).await.expect("pod");
        let p = until(&c, "web running and ready", || async {
            let p: pb::Pod = client.get("default", "web").await.ok()?;
            (p.status.as_ref().is_some_and(|s| s.phase == "Running") && ready(&p)).then_some(p)
        })
        .await;
        let uid = p.metadata.as_ref().map(|m| m.uid.clone()).expect("uid");
        assert_eq!(p.status.as_ref().map(|s| s.pod_ip.as_str()), Some("127.0.0.1"), "host network");
        until(&c, "hello in the log", || async { log_of(&wdir, &uid).contains("hello").then_some(()) }).await;
        // flotctl logs, through a master, from the worker's kubelet endpoint.
        let eps = c.endpoints();
        assert_eq!(ctl_ok(&eps, &["logs", "web"]), "hello\n");
        assert_eq!(ctl_ok(&eps, &["logs", "pod/web", "-c", "main", "--tail", "1"]), "hello\n");
        let err = ctl_fails(&eps, &["logs", "web", "-c", "sidecar"]);
        assert!(err.contains("\"sidecar\" is not a container") && err.contains("main"), "{err}");
        let err = ctl_fails(&eps, &["logs", "nosuch"]);
        assert!(err.contains("not found"), "{err}");

        // SIGKILL of the worker, and a new one: the same container goes on (no restart).
        w.child.kill().expect("kill worker");
        let _ = w.child.wait();
        w = worker(&c, "w1", dir.path());
        // A pod made now runs once the new worker has made a pass over all its pods.
        client.create(pod("after", "sleep 1000", "Always")).await.expect("pod");
        until(&c, "the new worker runs a new pod", || async {
            let p: pb::Pod = client.get("default", "after").await.ok()?;
            ready(&p).then_some(())
        })
        .await;
        let p: pb::Pod = client.get("default", "web").await.expect("pod");
        assert_eq!(main_status(&p).restart_count, 0, "adopted, not restarted: {:?}", main_status(&p));
        assert!(ready(&p));
        assert_eq!(log_of(&wdir, &uid).matches("hello").count(), 1, "one container, started once");

        // Deleted gracefully: SIGTERM reaches it, and the pod goes.
        let grace = DeleteParams { grace_period_seconds: Some(10), ..Default::default() };
        client.delete::<pb::Pod>("default", "web", &grace).await.expect("delete");
        client.delete::<pb::Pod>("default", "after", &grace).await.expect("delete");
        until(&c, "web gone", || async { client.get::<pb::Pod>("default", "web").await.is_err().then_some(()) }).await;
        assert_eq!(std::fs::read_to_string(&mark).unwrap_or_default(), "bye\n", "SIGTERM reached it");
        assert!(log_of(&wdir, &uid).is_empty(), "its container was removed before the pod went");

        // A crashing container: restarted once at once, then backing off.
        client.create(pod("crash", "echo crashing; exit 3", "Always")).await.expect("pod");
        let p = until(&c, "crash backing off", || async {
            let p: pb::Pod = client.get("default", "crash").await.ok()?;
            let cs = main_status(&p);
            let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref()).map(|w| w.reason.clone());
            (waiting.as_deref() == Some("CrashLoopBackOff")).then_some(p)
        })
        .await;
        let cs = main_status(&p);
        assert!(cs.restart_count >= 1, "{cs:?}");
        let last = cs.last_state.and_then(|s| s.terminated).expect("last state");
        assert_eq!((last.exit_code, last.reason.as_str()), (3, "Error"));
        assert_eq!(ctl_ok(&c.endpoints(), &["logs", "crash", "--previous"]), "crashing\n");

        // Runs to its end: Succeeded.
        client.create(pod("once", "echo started; sleep 0.5; echo done", "Never")).await.expect("pod");
        until(&c, "once running", || async {
            let p: pb::Pod = client.get("default", "once").await.ok()?;
            (p.status.as_ref()?.phase == "Running").then_some(())
        })
        .await;
        // Followed: what it writes, until it ends.
        assert_eq!(ctl_ok(&c.endpoints(), &["logs", "-f", "once"]), "started\ndone\n");
        until(&c, "once succeeded", || async {
            let p: pb::Pod = client.get("default", "once").await.ok()?;
            (p.status.as_ref()?.phase == "Succeeded").then_some(())
        })
        .await;

        // Limits cannot be enforced by host processes: refused, saying so.
        let mut limited = pod("limited", "sleep 100", "Always");
        limited.spec.as_mut().expect("spec").containers[0].resources = Some(pb::ResourceRequirements {
            limits: [("memory".to_string(), "64Mi".to_string())].into(),
            ..Default::default()
        });
        client.create(limited).await.expect("pod");
        let st = until(&c, "limited refused", || async {
            let p: pb::Pod = client.get("default", "limited").await.ok()?;
            p.status.filter(|s| s.phase == "Failed")
        })
        .await;
        assert_eq!(st.reason, "Unsupported");
        assert!(st.message.contains("resources.limits"), "{}", st.message);
    });
    // Nothing of ours is left running.
    w.kill_containers();
}

/// Bad worker flags are refused before anything starts, naming the flag.
#[test]
fn bad_worker_flags_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    for (args, want) in [
        (vec!["--node-ip", "not-an-ip"], "--node-ip"),
        (
            vec!["--node-ip", "127.0.0.1", "--runtime", "containerd", "--containerd-socket", "/nonexistent/c.sock"],
            "cannot reach containerd at /nonexistent/c.sock",
        ),
        (vec!["--node-ip", "127.0.0.1", "--runtime", "containerd", "--image-dir", "/nonexistent"], "--image-dir"),
        (vec!["--node-ip", "127.0.0.1", "--runtime", "process", "--image-dir", "/tmp"], "for --runtime containerd"),
        (
            vec!["--node-ip", "127.0.0.1", "--runtime", "containerd", "--registry-config", "/nonexistent.yaml"],
            "--registry-config",
        ),
        (vec!["--node-ip", "127.0.0.1", "--runtime", "process", "--register-with-taints", "a=b:Sometimes"], "effect"),
        (vec!["--node-ip", "127.0.0.1", "--runtime", "process", "--node-labels", "novalue"], "--node-labels"),
        (vec!["--node-ip", "127.0.0.1", "--runtime", "process", "--pod-cidr", "10.244.1.0"], "--pod-cidr"),
        (vec!["--node-ip", "127.0.0.1", "--runtime", "process", "--lease-interval", "soon"], "--lease-interval"),
    ] {
        refused(&[&["worker", "--masters", "127.0.0.1:1", "--dir", &d][..], &args].concat(), want);
    }
}

/// A worker configured by `--config-file` (deploy/systemd's way) registers as the file
/// says, with the command line winning over it; the example configs in deploy/config are
/// accepted flag by flag; a file naming no flag is refused naming the key.
#[test]
fn a_worker_takes_its_flags_from_a_config_file_and_the_command_line_wins() {
    let c = Cluster::start_with_scheduler(3, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let masters: Vec<String> = c.endpoints().split(',').map(|e| format!("\"{e}\"")).collect();
    let file = dir.path().join("worker.yaml");
    let text = format!(
        "name: from-file\nnode-ip: 127.0.0.1\nmasters: [{}]\nruntime: process\ndisable-proxy: true\nnode-labels: [tier=file]\n",
        masters.join(", ")
    );
    std::fs::write(&file, text).expect("config file");
    let log = dir.path().join("w.log");
    let child = Command::new(bin())
        .args(["worker", "--config-file"])
        .arg(&file)
        .args(["--name", "from-flag", "--dir"])
        .arg(dir.path().join("w"))
        .args(["--kubelet-port", &free_port().to_string()])
        .args(c.pki().map(|pki| common::workers::node_tls_flags(pki, "from-flag", "127.0.0.1")).unwrap_or_default())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start worker");
    let w = Worker { child, log, dir: dir.path().join("w") };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    let node = rt.block_on(async {
        until(&c, "the node from the command line's name", || async {
            client.get::<pb::Node>("", "from-flag").await.ok()
        })
        .await
    });
    drop(w);
    let labels = node.metadata.map(|m| m.labels).unwrap_or_default();
    assert_eq!(labels.get("tier").map(String::as_str), Some("file"), "{labels:?}");
    assert!(rt.block_on(client.get::<pb::Node>("", "from-file")).is_err(), "the command line won");

    // The shipped examples parse: every key is a flag (the bogus runtime is what fails).
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/worker.yaml");
    refused(&["worker", "--config-file", &example.display().to_string(), "--runtime", "bogus"], "'bogus'");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "Node_IP: 1.2.3.4\n").expect("bad file");
    refused(&["worker", "--config-file", &bad.display().to_string()], "\"Node_IP\" is not a flag name");
    std::fs::write(&bad, "node-ipp: 1.2.3.4\n").expect("bad file");
    refused(&["worker", "--config-file", &bad.display().to_string()], "--node-ipp");
}

/// Probes on a process worker: an exec readiness probe gates Ready both ways; a busybox
/// httpd is started and Ready by TCP probes and kept alive by an HTTP probe, and restarted
/// (with an `Unhealthy` Event) once that probe gets a 404.
#[test]
fn probes_decide_readiness_and_restarts() {
    let c = Cluster::start_with_scheduler(3, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = worker(&c, "w2", dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    let is_ready = |name: &'static str| {
        let client = client.clone();
        async move { client.get::<pb::Pod>("default", name).await.ok().map(|p| ready(&p)) }
    };
    rt.block_on(async {
        until(&c, "the worker's node", || async { client.get::<pb::Node>("", "w2").await.ok() }).await;

        // Readiness by exec: not ready until the gate file exists, then not again once
        // it is gone; running all along.
        let gate = dir.path().join("gate");
        let mut gated = pod("gated", "sleep 1000", "Always");
        let c0 = &mut gated.spec.as_mut().expect("spec").containers[0];
        c0.env = vec![pb::EnvVar { name: "GATE".into(), value: gate.display().to_string() }];
        c0.readiness_probe = Some(exec_probe(&["sh", "-c", "test -f $GATE"]));
        client.create(gated).await.expect("pod");
        until(&c, "gated running, not ready", || async {
            let p: pb::Pod = client.get("default", "gated").await.ok()?;
            (p.status.as_ref()?.phase == "Running" && main_status(&p).started && !ready(&p)).then_some(())
        })
        .await;
        std::fs::write(&gate, "open").expect("gate");
        until(&c, "gated ready", || async { is_ready("gated").await.filter(|r| *r) }).await;
        std::fs::remove_file(&gate).expect("close the gate");
        until(&c, "gated not ready again", || async { is_ready("gated").await.filter(|r| !*r) }).await;

        // busybox httpd: ready by TCP, alive by HTTP.
        let port = free_port();
        let site = dir.path().join("site");
        std::fs::create_dir_all(&site).expect("site");
        std::fs::write(site.join("index.html"), "hello").expect("index");
        let mut web = pod("web", "", "Always");
        let c0 = &mut web.spec.as_mut().expect("spec").containers[0];
        c0.command = ["busybox", "httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h", &site.display().to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let tcp = pb::Probe {
            tcp_socket: Some(pb::TcpSocketAction { port: i32::from(port), host: String::new() }),
            period_seconds: 1,
            failure_threshold: 10,
            ..Default::default()
        };
        // Started once it listens; only then does the liveness probe run.
        c0.startup_probe = Some(tcp.clone());
        c0.readiness_probe = Some(tcp);
        c0.liveness_probe = Some(pb::Probe {
            http_get: Some(pb::HttpGetAction {
                path: "/index.html".into(),
                port: i32::from(port),
                ..Default::default()
            }),
            period_seconds: 1,
            failure_threshold: 1,
            ..Default::default()
        });
        client.create(web).await.expect("pod");
        until(&c, "web ready", || async { is_ready("web").await.filter(|r| *r) }).await;
        let before = main_status(&client.get::<pb::Pod>("default", "web").await.expect("pod")).restart_count;
        assert_eq!(before, 0);
        // The page goes: the liveness probe gets 404, and the container is restarted.
        std::fs::remove_file(site.join("index.html")).expect("remove the page");
        until(&c, "web restarted by its liveness probe", || async {
            let p: pb::Pod = client.get("default", "web").await.ok()?;
            (main_status(&p).restart_count >= 1).then_some(())
        })
        .await;
        let events = client.list::<pb::Event>(&flotilla_client::ListParams::default()).await.expect("events").items;
        let unhealthy = events
            .iter()
            .find(|e| e.reason == "Unhealthy" && e.involved_object.as_ref().is_some_and(|o| o.name == "web"))
            .unwrap_or_else(|| panic!("no Unhealthy event: {events:?}"));
        assert!(unhealthy.message.contains("404"), "{}", unhealthy.message);
        for name in ["gated", "web"] {
            let now = DeleteParams { grace_period_seconds: Some(1), ..Default::default() };
            client.delete::<pb::Pod>("default", name, &now).await.expect("delete");
        }
        until(&c, "pods gone", || async {
            let gone = client.get::<pb::Pod>("default", "gated").await.is_err()
                && client.get::<pb::Pod>("default", "web").await.is_err();
            gone.then_some(())
        })
        .await;
    });
    w.kill_containers();
}

/// A worker whose master is killed (SIGKILL): its container keeps running, its next
/// status change reaches the cluster through another master within 2 s, its pod watch
/// resumes there without a relist, and a pod made afterwards runs.
#[test]
fn a_worker_rides_out_the_loss_of_its_master_without_a_relist() {
    let mut c = Cluster::start_with_scheduler(3, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let w = worker_with(&c, "w3", dir.path(), &["--listen-metrics", &listen]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    let gate = dir.path().join("gate");
    let before = rt.block_on(async {
        until(&c, "the worker's node", || async { client.get::<pb::Node>("", "w3").await.ok() }).await;
        let mut gated = pod("gated", "sleep 1000", "Always");
        let c0 = &mut gated.spec.as_mut().expect("spec").containers[0];
        c0.env = vec![pb::EnvVar { name: "GATE".into(), value: gate.display().to_string() }];
        c0.readiness_probe = Some(exec_probe(&["sh", "-c", "test -f $GATE"]));
        client.create(gated).await.expect("pod");
        until(&c, "gated running, not ready", || async {
            let p: pb::Pod = client.get("default", "gated").await.ok()?;
            (p.status.as_ref()?.phase == "Running" && main_status(&p).started && !ready(&p)).then_some(p)
        })
        .await
    });
    let metrics = scrape(port).expect("worker metrics");
    assert!(metrics.contains("flotilla_kubelet_pod_lists 1\n"), "{metrics}");
    let master = kubelet_master(&metrics);
    let i = c.members.iter().position(|m| m.url() == master).unwrap_or_else(|| panic!("{master} is not a member"));
    c.kill(i);
    let killed = std::time::Instant::now();
    std::fs::write(&gate, "open").expect("gate");
    rt.block_on(async {
        let p = until(&c, "gated ready, reported through another master", || async {
            let p: pb::Pod = client.get("default", "gated").await.ok()?;
            ready(&p).then_some(p)
        })
        .await;
        let took = killed.elapsed();
        eprintln!("status through another master {} ms after the SIGKILL of the worker's master", took.as_millis());
        assert!(took <= std::time::Duration::from_secs(2), "took {took:?}");
        let (was, now) = (main_status(&before), main_status(&p));
        assert_eq!((now.restart_count, &now.container_id), (0, &was.container_id), "the same container ran on");
        client.create(pod("after", "sleep 1000", "Always")).await.expect("pod");
        until(&c, "a pod made after the kill runs", || async {
            let p: pb::Pod = client.get("default", "after").await.ok()?;
            ready(&p).then_some(())
        })
        .await;
    });
    let metrics = scrape(port).expect("worker metrics");
    assert!(metrics.contains("flotilla_kubelet_pod_lists 1\n"), "the watch resumed without a relist: {metrics}");
    assert!(!metrics.contains(&format!("flotilla_kubelet_master{{master=\"{master}\"}} 1")), "{metrics}");
    w.kill_containers();
}

/// Init containers run one after another, each to success (a failing one again, after
/// its back-off), before the container starts; a preStop hook runs before SIGTERM when
/// the pod is deleted.
#[test]
fn init_containers_run_first_and_pre_stop_runs_before_sigterm() {
    let c = Cluster::start_with_scheduler(3, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = worker(&c, "w4", dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let sh = |name: &str, script: &str| pb::Container {
        name: name.into(),
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![pb::EnvVar { name: "W".into(), value: work.display().to_string() }],
        ..Default::default()
    };
    let mut p = pod("init", "", "Always");
    let spec = p.spec.as_mut().expect("spec");
    spec.init_containers = vec![
        sh("first", "echo first >> $W/order"),
        // Fails once, then succeeds.
        sh("second", "if [ -f $W/tried ]; then echo second >> $W/order; else touch $W/tried; exit 1; fi"),
    ];
    spec.containers = vec![sh(
        "main",
        "echo main >> $W/order; trap 'echo term >> $W/order; exit 0' TERM; while true; do sleep 0.1; done",
    )];
    spec.containers[0].lifecycle = Some(pb::Lifecycle {
        pre_stop: Some(pb::LifecycleHandler {
            exec: Some(pb::ExecAction { command: vec!["sh".into(), "-c".into(), "echo prestop >> $W/order".into()] }),
        }),
    });
    rt.block_on(async {
        until(&c, "the worker's node", || async { client.get::<pb::Node>("", "w4").await.ok() }).await;
        client.create(p).await.expect("pod");
        let p = until(&c, "init ready", || async {
            let p: pb::Pod = client.get("default", "init").await.ok()?;
            ready(&p).then_some(p)
        })
        .await;
        let st = p.status.expect("status");
        assert!(st.conditions.iter().any(|c| c.r#type == "Initialized" && c.status == "True"));
        let inits: Vec<(String, i32)> =
            st.init_container_statuses.iter().map(|s| (s.name.clone(), s.restart_count)).collect();
        assert_eq!(inits, vec![("first".to_string(), 0), ("second".to_string(), 1)], "second ran twice");
        let grace = DeleteParams { grace_period_seconds: Some(10), ..Default::default() };
        client.delete::<pb::Pod>("default", "init", &grace).await.expect("delete");
        until(&c, "init gone", || async { client.get::<pb::Pod>("default", "init").await.is_err().then_some(()) })
            .await;
    });
    let order = std::fs::read_to_string(work.join("order")).expect("order");
    assert_eq!(order, "first\nsecond\nmain\nprestop\nterm\n");
    w.kill_containers();
}
