//! Workers on containerd with the real CNI plugins, each worker in a network namespace of
//! its own as its own host (as chaos/ makes them), against three real masters with their
//! scheduler and controller manager (Node IPAM gives the podCIDRs). The image is the
//! busybox one `scripts/busybox-image` builds: imported from `--image-dir` on one worker
//! and pulled from Debian's docker-registry on the other. Needs root and the packages
//! scripts/setup installs; with them missing the tests fail, never skip.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::nodes::*;
use common::workers::*;
use common::*;
use flotilla_proto::api as pb;

/// Pods on containerd: one from the image dir and one pulled from the registry run and
/// their output shows in `flotctl logs`; a pod on one worker reaches a pod on the other
/// by its pod IP; a crashing container backs off; a failing liveness probe restarts its
/// container; readiness flips Ready both ways; a pod past its memory limit is OOMKilled;
/// a bad image gives ErrImagePull then ImagePullBackOff while the rest runs on; a pod
/// deleted with grace gets SIGTERM first, and its network namespace goes with it.
#[test]
fn pods_run_on_containerd_reach_each_other_across_workers_and_fail_as_kubernetes_says() {
    let s = setup_with(&["--container-log-max-size", "4Ki"], &[]);
    let (c, ctd) = (&s.c, &s.ctd);
    let local = busybox_name();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    let eps = c.endpoints();
    rt.block_on(async {
        for w in ["w1", "w2"] {
            until(c, "the workers' nodes with a podCIDR", || async {
                let n: pb::Node = client.get("", w).await.ok()?;
                (!n.spec?.pod_cidr.is_empty()).then_some(())
            })
            .await;
        }
        // A web server on w2 (pulled), and a client on w1 (imported) that asks it.
        let mut web = pod("web", "w2", &s.pulled, "echo serving; exec httpd -f -p 8080 -h /www");
        web.spec.as_mut().expect("spec").containers[0].readiness_probe = Some(pb::Probe {
            tcp_socket: Some(pb::TcpSocketAction { port: 8080, ..Default::default() }),
            period_seconds: 1,
            ..Default::default()
        });
        client.create(web).await.expect("web");
        let web = until(c, "web ready", || async {
            let p: pb::Pod = client.get("default", "web").await.ok()?;
            ready(&p).then_some(p)
        })
        .await;
        let web_ip = web.status.as_ref().map(|s| s.pod_ip.clone()).unwrap_or_default();
        assert!(web_ip.starts_with("10.244."), "a pod address from the node's podCIDR: {web_ip}");
        let script =
            format!("until wget -q -O- http://{web_ip}:8080/; do sleep 0.2; done; echo reached from $(hostname)");
        client.create(pod("asker", "w1", &local, &script)).await.expect("asker");
        until(c, "the asker's output in flotctl logs", || async {
            let out = ctl(&eps, &["logs", "asker"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.contains("flotilla busybox") && text.contains("reached from asker")).then_some(())
        })
        .await;
        assert!(ctl_ok(&eps, &["logs", "web"]).contains("serving"));

        // A chatty container's log is rotated past --container-log-max-size (4Ki on w1).
        let chatty = "i=0; while [ $i -lt 400 ]; do echo line $i of chatter; i=$((i+1)); done; sleep 1000";
        client.create(pod("chatty", "w1", &local, chatty)).await.expect("chatty");
        let p = until(c, "chatty running", || async {
            let p: pb::Pod = client.get("default", "chatty").await.ok()?;
            running(&p).then_some(p)
        })
        .await;
        let log = s.dir.path().join("w1/logs").join(format!("{}.log", container_id(&p)));
        let rotated = log.with_extension("log.1");
        until(c, "chatty's log rotated", || async { rotated.exists().then_some(()) }).await;
        let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(u64::MAX);
        assert!(size <= 4096, "the current log was truncated: {size} bytes");
        let current = ctl_ok(&eps, &["logs", "chatty"]);
        assert!(!current.contains("line 0 of chatter"), "the rotated-out start is not in the current log");
        let events = ctl_ok(&eps, &["get", "events"]);
        assert!(events.contains("Successfully pulled image"), "a Pulled event: {events}");

        // An image from a `docker save` archive, and a host port (CNI portmap) that
        // answers on the node's address.
        let mut hp = pod("hostport", "w1", "flotilla.local/busybox-docker:1", "exec httpd -f -p 8080 -h /www");
        let c0 = &mut hp.spec.as_mut().expect("spec").containers[0];
        c0.ports = vec![pb::ContainerPort { container_port: 8080, host_port: 18080, ..Default::default() }];
        c0.readiness_probe = Some(pb::Probe {
            tcp_socket: Some(pb::TcpSocketAction { port: 8080, ..Default::default() }),
            period_seconds: 1,
            ..Default::default()
        });
        client.create(hp).await.expect("hostport");
        until(c, "hostport ready", || async { ready(&client.get("default", "hostport").await.ok()?).then_some(()) }).await;
        let node_addr = format!("{}:18080", s.hosts.hosts[0].1);
        let got = until(c, "the host port answering", || async { http_get(&node_addr) }).await;
        assert!(got.contains("flotilla busybox"), "{got}");

        // A crash loop.
        client.create(pod("crash", "w1", &local, "echo crashing; exit 3")).await.expect("crash");
        until(c, "crash backing off", || async {
            let p: pb::Pod = client.get("default", "crash").await.ok()?;
            let st = main_status(&p);
            let waiting = st.state?.waiting?;
            let last = st.last_state?.terminated?;
            (waiting.reason == "CrashLoopBackOff" && last.exit_code == 3 && st.restart_count >= 1).then_some(())
        })
        .await;

        // A liveness probe that starts failing restarts the container.
        let mut live = pod("live", "w2", &s.pulled, "touch /tmp/alive; sleep 2; rm /tmp/alive; sleep 1000");
        live.spec.as_mut().expect("spec").containers[0].liveness_probe = Some(exec_probe(&["cat", "/tmp/alive"]));
        client.create(live).await.expect("live");
        until(c, "live restarted by its liveness probe", || async {
            let p: pb::Pod = client.get("default", "live").await.ok()?;
            (main_status(&p).restart_count >= 1).then_some(())
        })
        .await;

        // Memory past the limit.
        let mut oom = pod("oom", "w1", &local, "tail /dev/zero");
        let spec = oom.spec.as_mut().expect("spec");
        spec.restart_policy = "Never".into();
        spec.containers[0].resources = Some(pb::ResourceRequirements {
            limits: [("memory".to_string(), "16Mi".to_string())].into(),
            ..Default::default()
        });
        client.create(oom).await.expect("oom");
        until(c, "oom OOMKilled", || async {
            let p: pb::Pod = client.get("default", "oom").await.ok()?;
            let t = main_status(&p).state?.terminated?;
            (t.reason == "OOMKilled" && p.status?.phase == "Failed").then_some(())
        })
        .await;

        // A bad image: ErrImagePull, then ImagePullBackOff; the rest runs on.
        let bad_image = format!("{}/flotilla/no-such-image:1", s.registry.addr);
        client.create(pod("badimage", "w2", &bad_image, "true")).await.expect("badimage");
        let seen = std::sync::Mutex::new(Vec::<String>::new());
        until(c, "badimage: ErrImagePull then ImagePullBackOff", || async {
            let p: pb::Pod = client.get("default", "badimage").await.ok()?;
            let reason = main_status(&p).state.and_then(|s| s.waiting).map(|w| w.reason).unwrap_or_default();
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            if !reason.is_empty() && seen.last() != Some(&reason) {
                seen.push(reason);
            }
            let done = seen.ends_with(&["ErrImagePull".to_string(), "ImagePullBackOff".to_string()]);
            if !done {
                eprintln!("badimage waiting reasons so far: {seen:?}");
            }
            done.then_some(())
        })
        .await;
        // Without the registry's credentials (w1), the pull is refused.
        client.create(pod("nocreds", "w1", &s.pulled, "true")).await.expect("nocreds");
        let why = until(c, "nocreds: ErrImagePull for want of credentials", || async {
            let p: pb::Pod = client.get("default", "nocreds").await.ok()?;
            let w = main_status(&p).state?.waiting?;
            (w.reason == "ErrImagePull" || w.reason == "ImagePullBackOff").then_some(w.message)
        })
        .await;
        assert!(why.contains("Not authorized"), "{why}");
        let web_now: pb::Pod = client.get("default", "web").await.expect("web");
        assert!(ready(&web_now) && main_status(&web_now).restart_count == 0, "web unaffected");

        // Readiness both ways, gated by a file the test puts into the container's root.
        let mut gated = pod("gated", "w1", &local, "sleep 1000");
        gated.spec.as_mut().expect("spec").containers[0].readiness_probe = Some(exec_probe(&["test", "-f", "/gate"]));
        client.create(gated).await.expect("gated");
        let p = until(c, "gated running, not ready", || async {
            let p: pb::Pod = client.get("default", "gated").await.ok()?;
            (running(&p) && main_status(&p).started && !ready(&p)).then_some(p)
        })
        .await;
        let gate = ctd.rootfs(&s.workers[0].ns, &container_id(&p)).join("gate");
        std::fs::write(&gate, "open").expect("open the gate");
        until(c, "gated ready", || async { ready(&client.get("default", "gated").await.ok()?).then_some(()) }).await;
        std::fs::remove_file(&gate).expect("close the gate");
        until(c, "gated not ready again", || async {
            (!ready(&client.get("default", "gated").await.ok()?)).then_some(())
        })
        .await;
        let events = ctl_ok(&eps, &["get", "events"]);
        let said = |pod: &str, reason: &str| events.lines().any(|l| l.contains(pod) && l.contains(reason));
        assert!(said("crash", "BackOff") && said("gated", "Unhealthy"), "BackOff and Unhealthy Events: {events}");

        // Volumes and a security context: an init container fills an emptyDir and a
        // hostPath; the main container, as uid 1000 on a read-only root, reads them and
        // has a memory-backed emptyDir.
        let host_dir = s.dir.path().join("host-w1");
        let mut vols = pod(
            "volumes",
            "w1",
            &local,
            "cat /shared/msg; id -u; touch /x 2>/dev/null || echo root-read-only; \
             grep -q ' /cache tmpfs' /proc/mounts && echo cache-tmpfs; touch /cache/y && echo cache-writable; sleep 1000",
        );
        let spec = vols.spec.as_mut().expect("spec");
        spec.volumes = vec![
            pb::Volume { name: "shared".into(), empty_dir: Some(Default::default()), ..Default::default() },
            pb::Volume {
                name: "cache".into(),
                empty_dir: Some(pb::EmptyDirVolumeSource { medium: "Memory".into(), size_limit: "8Mi".into() }),
                ..Default::default()
            },
            pb::Volume {
                name: "host".into(),
                host_path: Some(pb::HostPathVolumeSource {
                    path: host_dir.display().to_string(),
                    r#type: "DirectoryOrCreate".into(),
                }),
                ..Default::default()
            },
        ];
        let mount = |name: &str, path: &str| pb::VolumeMount { name: name.into(), mount_path: path.into(), ..Default::default() };
        spec.init_containers = vec![pb::Container {
            name: "fill".into(),
            image: local.clone(),
            command: vec!["sh".into(), "-c".into(), "echo from-init > /shared/msg; echo on-the-node > /host/out".into()],
            volume_mounts: vec![mount("shared", "/shared"), mount("host", "/host")],
            ..Default::default()
        }];
        let main = &mut spec.containers[0];
        main.volume_mounts = vec![mount("shared", "/shared"), mount("cache", "/cache")];
        main.security_context = Some(pb::SecurityContext {
            run_as_user: Some(1000),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        });
        client.create(vols).await.expect("volumes");
        until(c, "the volumes pod's output", || async {
            let out = ctl(&eps, &["logs", "volumes"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let want = ["from-init", "1000", "root-read-only", "cache-tmpfs", "cache-writable"];
            want.iter().all(|w| text.lines().any(|l| l == *w)).then_some(())
        })
        .await;
        assert_eq!(std::fs::read_to_string(host_dir.join("out")).expect("hostPath file"), "on-the-node\n");
        let vuid = client.get::<pb::Pod>("default", "volumes").await.expect("volumes").metadata.map(|m| m.uid).unwrap_or_default();
        let vdir = s.dir.path().join("w1/pods").join(&vuid);
        assert!(vdir.join("volumes/shared/msg").exists(), "the emptyDir is on the node");
        let now = flotilla_client::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        client.delete::<pb::Pod>("default", "volumes", &now).await.expect("delete volumes");
        until(c, "the volumes pod's directory gone", || async { (!vdir.exists()).then_some(()) }).await;
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        assert!(!mounts.contains(&vuid), "its tmpfs is unmounted: {mounts}");

        // Graceful deletion: SIGTERM first (seen by a following `flotctl logs -f`).
        let term = "trap 'echo got SIGTERM; exit 0' TERM; echo waiting; while true; do sleep 0.1; done";
        client.create(pod("graceful", "w2", &s.pulled, term)).await.expect("graceful");
        let p = until(c, "graceful running", || async {
            let p: pb::Pod = client.get("default", "graceful").await.ok()?;
            running(&p).then_some(p)
        })
        .await;
        let mut follow = ctl_command(&eps)
            .args(["logs", "-f", "graceful"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("flotctl logs -f");
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let stdout = follow.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(30)).expect("the follower's first line");
        assert_eq!(first, "waiting");
        let began = Instant::now();
        client
            .delete::<pb::Pod>("default", "graceful", &flotilla_client::DeleteParams::default())
            .await
            .expect("delete graceful");
        let text = lines.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let _ = follow.kill();
        let _ = follow.wait();
        assert_eq!(text, "got SIGTERM", "SIGTERM first");
        let events = ctl_ok(&eps, &["get", "events"]);
        assert!(events.lines().any(|l| l.contains("graceful") && l.contains("Killing")), "a Killing Event: {events}");
        until(c, "graceful gone", || async {
            client.get::<pb::Pod>("default", "graceful").await.err().filter(|e| e.is_not_found()).map(|_| ())
        })
        .await;
        assert!(began.elapsed() < Duration::from_secs(10), "ended by its SIGTERM, not the grace period");
        let uid = p.metadata.map(|m| m.uid).unwrap_or_default();
        assert!(!Path::new("/run/netns").join(format!("flotilla-{uid}")).exists(), "its network namespace is gone");
    });
}

/// A worker on containerd keeps its containers through a SIGKILL of its master (a status
/// change reaches the cluster through another master within 2 s, its pod watch resumes
/// without a relist) and through a SIGKILL of itself (started again, it adopts the same
/// container instead of starting another); a deleted pod's containers, log and network
/// namespace all go.
#[test]
fn a_containerd_worker_keeps_its_containers_through_kill_9_of_its_master_and_of_itself() {
    let mut s = setup_with(
        &["--system-reserved", "cpu=500m,memory=256Mi"],
        &["--image-gc-high-threshold", "0", "--image-gc-low-threshold", "0", "--image-gc-period", "1s"],
    );
    let local = busybox_name();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = s.c.client(&rt);
    let mut gated = pod("gated", "w1", &local, "echo started; sleep 1000");
    gated.spec.as_mut().expect("spec").containers[0].readiness_probe = Some(exec_probe(&["test", "-f", "/gate"]));
    let before = rt.block_on(async {
        client.create(gated).await.expect("gated");
        until(&s.c, "gated running, not ready", || async {
            let p: pb::Pod = client.get("default", "gated").await.ok()?;
            (running(&p) && main_status(&p).started && !ready(&p)).then_some(p)
        })
        .await
    });
    let id = container_id(&before);
    rt.block_on(async {
        // w1 keeps 500m cpu and 256Mi back; both say how pressed they are.
        let n: pb::Node = client.get("", "w1").await.expect("w1");
        let st = n.status.expect("status");
        let q = |m: &std::collections::BTreeMap<String, String>, k: &str| {
            flotilla_core::quantity::Quantity::parse(&m[k]).expect("quantity").millis()
        };
        assert_eq!(q(&st.capacity, "cpu") - q(&st.allocatable, "cpu"), 500);
        assert_eq!(q(&st.capacity, "memory") - q(&st.allocatable, "memory"), 256 * 1024 * 1024 * 1000);
        for kind in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            until(&s.c, "the pressure conditions", || async {
                let n: pb::Node = client.get("", "w2").await.ok()?;
                n.status?.conditions.iter().any(|c| c.r#type == kind).then_some(())
            })
            .await;
        }

        // Image GC on w2 (every unused image, every second): the image stays while a
        // container uses it, and goes after.
        client.create(pod("user", "w2", &s.open, "sleep 1000")).await.expect("user");
        until(&s.c, "user running", || async { running(&client.get("default", "user").await.ok()?).then_some(()) })
            .await;
        let passes = |m: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix("flotilla_kubelet_housekeeping_passes_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let at = passes(&s.workers[1].metrics()).expect("housekeeping passes");
        until(&s.c, "two more housekeeping passes on w2", || async {
            (passes(&s.workers[1].metrics())? >= at + 2).then_some(())
        })
        .await;
        let images =
            || String::from_utf8_lossy(&s.ctd.ctr(&["-n", &s.workers[1].ns, "images", "ls", "-q"]).stdout).into_owned();
        assert!(images().contains(&s.open), "in use, kept: {}", images());
        let now = flotilla_client::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        client.delete::<pb::Pod>("default", "user", &now).await.expect("delete user");
        until(&s.c, "the unused image removed", || async { (!images().contains(&s.open)).then_some(()) }).await;
    });
    let w1 = &s.workers[0];
    let metrics = w1.metrics();
    assert!(metrics.contains("flotilla_kubelet_pod_lists 1\n"), "{metrics}");
    let master = kubelet_master(&metrics);
    let i = s.c.members.iter().position(|m| m.url() == master).unwrap_or_else(|| panic!("{master} is not a member"));
    s.c.kill(i);
    let killed = Instant::now();
    std::fs::write(s.ctd.rootfs(&w1.ns, &id).join("gate"), "open").expect("open the gate");
    rt.block_on(async {
        let p = until(&s.c, "gated ready, reported through another master", || async {
            let p: pb::Pod = client.get("default", "gated").await.ok()?;
            ready(&p).then_some(p)
        })
        .await;
        let took = killed.elapsed();
        eprintln!("status through another master {} ms after the SIGKILL of the worker's master", took.as_millis());
        assert!(took <= Duration::from_secs(2), "took {took:?}");
        assert_eq!((main_status(&p).restart_count, container_id(&p)), (0, id.clone()), "the same container ran on");
    });
    let metrics = w1.metrics();
    assert!(metrics.contains("flotilla_kubelet_pod_lists 1\n"), "the watch resumed without a relist: {metrics}");

    // SIGKILL of the worker: the container runs on, and is adopted by the next worker.
    let ns = w1.ns.clone();
    s.workers[0].kill();
    let pid_before = s.ctd.tasks(&ns).into_iter().find(|t| t.0 == id).map(|t| t.1).expect("the task after the kill");
    s.workers[0].spawn();
    rt.block_on(async {
        // Three passes of the restarted worker: had it not adopted the container, it
        // would have started another by then.
        until(&s.c, "the restarted worker's third sync pass", || async {
            let m = s.workers[0].metrics();
            let passes = m.lines().find_map(|l| l.strip_prefix("flotilla_kubelet_sync_passes_total "))?;
            (passes.trim().parse::<u64>().ok()? >= 3).then_some(())
        })
        .await;
        // Readiness is probed afresh by the new worker (as a restarted kubelet does).
        let p = until(&s.c, "gated ready again", || async {
            let p: pb::Pod = client.get("default", "gated").await.ok()?;
            ready(&p).then_some(p)
        })
        .await;
        assert_eq!((main_status(&p).restart_count, container_id(&p)), (0, id.clone()), "adopted, not restarted");
    });
    let tasks = s.ctd.tasks(&ns);
    assert_eq!(tasks.len(), 1, "one container: {tasks:?}");
    assert_eq!((tasks[0].0.as_str(), tasks[0].1.as_str()), (id.as_str(), pid_before.as_str()), "the same process");

    // Deleted: containers, log and network namespace go.
    let uid = before.metadata.map(|m| m.uid).unwrap_or_default();
    rt.block_on(async {
        let now = flotilla_client::DeleteParams { grace_period_seconds: Some(1), ..Default::default() };
        client.delete::<pb::Pod>("default", "gated", &now).await.expect("delete");
        until(&s.c, "gated gone", || async {
            client.get::<pb::Pod>("default", "gated").await.err().filter(|e| e.is_not_found()).map(|_| ())
        })
        .await;
    });
    assert!(s.ctd.tasks(&ns).is_empty(), "no task left");
    let listed = String::from_utf8_lossy(&s.ctd.ctr(&["-n", &ns, "containers", "ls", "-q"]).stdout).into_owned();
    assert!(listed.trim().is_empty(), "no container left: {listed}");
    assert!(!Path::new("/run/netns").join(format!("flotilla-{uid}")).exists(), "its network namespace is gone");
    let logs = s.dir.path().join("w1/logs");
    assert_eq!(std::fs::read_dir(&logs).map(|d| d.count()).unwrap_or(0), 0, "its log is gone");
}

/// `GET /` from `addr` (host:port): the response, if one came.
fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// What the README promises: `flotctl apply -f deploy/examples/web.yaml` on workers gives
/// two web servers, one per worker, each answering from the other worker's host.
#[test]
fn the_web_example_runs_on_two_workers_and_answers() {
    let s = setup_with(&[], &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = s.c.client(&rt);
    let eps = s.c.endpoints();
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/web.yaml");
    ctl_ok(&eps, &["apply", "-f", &manifest.display().to_string()]);
    let pods = rt.block_on(async {
        until(&s.c, "two web pods ready on two workers", || async {
            let l = client
                .list::<pb::Pod>(&flotilla_client::ListParams { namespace: "shop".into(), ..Default::default() })
                .await
                .ok()?;
            let ready_pods: Vec<pb::Pod> = l.items.into_iter().filter(ready).collect();
            let nodes: std::collections::BTreeSet<String> =
                ready_pods.iter().filter_map(|p| p.spec.as_ref().map(|s| s.node_name.clone())).collect();
            (ready_pods.len() == 2 && nodes.len() == 2).then_some(ready_pods)
        })
        .await
    });
    for p in &pods {
        let ip = p.status.as_ref().map(|s| s.pod_ip.clone()).unwrap_or_default();
        let node = p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
        // From the other worker's host: across the nodes' routes.
        let other = if node == "w1" { &s.hosts.hosts[1].0 } else { &s.hosts.hosts[0].0 };
        let out = sh(&[
            "nsenter",
            &format!("--net=/run/netns/{other}"),
            "/bin/busybox",
            "wget",
            "-q",
            "-O-",
            &format!("http://{ip}/"),
        ]);
        assert_eq!(out, "flotilla busybox\n", "{ip} on {node}");
    }
    // The Endpoints controller follows the pods' readiness (a moment after it).
    let ips: Vec<String> =
        pods.iter().map(|p| p.status.as_ref().map(|s| s.pod_ip.clone()).unwrap_or_default()).collect();
    s.c.eventually(Duration::from_secs(10), "both pods in the service's endpoints", || {
        let eps_obj = ctl_ok(&eps, &["get", "endpoints", "-n", "shop"]);
        ips.iter().all(|ip| eps_obj.contains(ip.as_str()))
    });
}
