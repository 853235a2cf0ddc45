//! Workers for tests: `flotilla worker --runtime containerd` processes, each in a host's
//! network namespace (see [`super::nodes::Hosts`]), against three real masters; and the
//! pods the tests give them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use flotilla_proto::api as pb;

use super::nodes::*;
use super::*;

/// A `flotilla worker --runtime containerd` in its host's namespace; killed when dropped.
pub struct Worker {
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub args: Vec<String>,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(
        c: &Cluster,
        ctd: &Containerd,
        name: &str,
        host: &(String, String),
        dir: &Path,
        extra: &[&str],
    ) -> Worker {
        let namespace = format!("flotilla-test-{}-{name}", std::process::id());
        ctd.namespaces.lock().unwrap_or_else(|p| p.into_inner()).push(namespace.clone());
        // nsenter, not `ip netns exec`: only the network namespace is the host's own; the
        // mount namespace stays the machine's, so the pod namespaces the worker mounts
        // under /run/netns are seen by containerd and runc.
        let mut args: Vec<String> = [
            &format!("--net=/run/netns/{}", host.0),
            bin(),
            "worker",
            "--runtime",
            "containerd",
            "--name",
            name,
            "--node-ip",
            &host.1,
            "--masters",
            &c.endpoints(),
            "--containerd-namespace",
            &namespace,
            "--listen-metrics",
            &format!("{}:10255", host.1),
            "--cgroup-parent",
            &format!("/flotilla-test/{namespace}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--containerd-socket".to_string(), ctd.socket.display().to_string()]);
        args.extend(["--dir".to_string(), dir.join(name).display().to_string()]);
        if let Some(pki) = c.pki() {
            args.extend(node_tls_flags(pki, name, &host.1));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut w = Worker {
            name: name.into(),
            ns: namespace,
            ip: host.1.clone(),
            args,
            child: None,
            log: dir.join(format!("{name}.log")),
        };
        w.spawn();
        w
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new("nsenter")
            .args(&self.args)
            .env("FLOTILLA_LOG", "info,flotilla_kubelet=debug,flotilla_proxy=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start worker");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn metrics(&self) -> String {
        scrape_at(&format!("{}:10255", self.ip)).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        // The network namespaces of the pods it left behind (the test ends with pods).
        let records = self.log.with_file_name(&self.name).join("sandboxes");
        for e in std::fs::read_dir(records).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let netns = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["netns"].as_str().map(String::from));
            if let Some(ns) = netns.filter(|n| !n.is_empty()) {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- worker {} log ---\n{}", self.name, std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// The TLS flags of worker `name` at `ip` in a TLS cluster: its node certificate (issued
/// now, from `pki`'s CA) to the masters and on its kubelet endpoint, which answers masters
/// whose certificates chain to the same CA.
pub fn node_tls_flags(pki: &Path, name: &str, ip: &str) -> Vec<String> {
    let (crt, key) = (pki.join(format!("node-{name}.crt")), pki.join(format!("node-{name}.key")));
    if !crt.exists() {
        certs(&["issue", "--dir", &pki.display().to_string(), "node", name, "--address", ip]);
    }
    let (ca, crt, key) =
        (pki.join("ca.crt").display().to_string(), crt.display().to_string(), key.display().to_string());
    [
        ["--cacert", &ca],
        ["--cert", &crt],
        ["--key", &key],
        ["--tls-cert-file", &crt],
        ["--tls-private-key-file", &key],
        ["--client-ca-file", &ca],
    ]
    .iter()
    .flatten()
    .map(|s| s.to_string())
    .collect()
}

pub fn pod(name: &str, node: &str, image: &str, script: &str) -> pb::Pod {
    pb::Pod {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::PodSpec {
            node_selector: [("kubernetes.io/hostname".to_string(), node.to_string())].into(),
            termination_grace_period_seconds: Some(10),
            containers: vec![pb::Container {
                name: "main".into(),
                image: image.into(),
                command: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn running(p: &pb::Pod) -> bool {
    main_status(p).state.and_then(|s| s.running).is_some()
}

/// The containerd id of a pod's running container.
pub fn container_id(p: &pb::Pod) -> String {
    main_status(p).container_id.trim_start_matches("flotilla://").to_string()
}

pub struct Setup {
    // Dropped in this order: workers, then masters, containerd, the registry, the hosts.
    pub workers: Vec<Worker>,
    pub c: Cluster,
    pub ctd: Containerd,
    pub registry: Registry,
    pub _open_registry: Registry,
    pub hosts: Hosts,
    pub dir: tempfile::TempDir,
    /// The image as the registry (basic auth) serves it.
    pub pulled: String,
    /// The image as the anonymous registry serves it.
    pub open: String,
}

/// Two hosts with a worker each: `w1` imports the busybox image from an image dir, `w2`
/// pulls it from the registry (plain HTTP by its --registry-config); `w1_flags` and
/// `w2_flags` are added to theirs.
pub fn setup_with(w1_flags: &[&str], w2_flags: &[&str]) -> Setup {
    setup_hosts(2, &[], w1_flags, w2_flags)
}

/// Like [`setup_with`], on `hosts` hosts (those past the second run no worker: "outside"
/// machines on the same network), with `master_flags` added to the masters'.
pub fn setup_hosts(hosts: usize, master_flags: &[&str], w1_flags: &[&str], w2_flags: &[&str]) -> Setup {
    require_worker_prerequisites();
    let hosts = Hosts::create(hosts);
    let ctd = Containerd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&format!("{}:{}", hosts.host_ip, free_port()), Some(("alice", "s3cret")));
    let pulled = format!("{}/flotilla/busybox:1", registry.addr);
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("image dir");
    busybox_image(&images, Some((&pulled, Some("alice:s3cret"))));
    let open_registry = Registry::start(&format!("{}:{}", hosts.host_ip, free_port()), None);
    let open = format!("{}/flotilla/busybox:1", open_registry.addr);
    busybox_image(dir.path(), Some((&open, None)));
    // The same image as a `docker save` archive, beside the OCI one.
    let status = Command::new(scripts().join("busybox-image"))
        .arg("--docker")
        .arg(images.join("busybox-docker.tar"))
        .arg("flotilla.local/busybox-docker:1")
        .status()
        .expect("scripts/busybox-image --docker");
    assert!(status.success());
    // w2 has the first registry's credentials; w1 reaches it but has none.
    let regs = dir.path().join("registries.yaml");
    let with_creds = format!(
        "{}:\n  insecure: true\n  username: alice\n  password: s3cret\n{}:\n  insecure: true\n",
        registry.addr, open_registry.addr
    );
    std::fs::write(&regs, with_creds).expect("registry config");
    let regs_w1 = dir.path().join("registries-w1.yaml");
    std::fs::write(&regs_w1, format!("{}:\n  insecure: true\n", registry.addr)).expect("registry config");
    // "{subnet}" in a master flag is the hosts' network (its first three octets).
    let subnet = hosts.host_ip.rsplit_once('.').map(|(s, _)| s.to_string()).unwrap_or_default();
    let master_flags: Vec<String> = master_flags.iter().map(|f| f.replace("{subnet}", &subnet)).collect();
    let master_flags: Vec<&str> = master_flags.iter().map(String::as_str).collect();
    let flags = [&["--cluster-cidr", "10.244.0.0/16", "--node-cidr-mask-size", "24"][..], &master_flags].concat();
    let c = Cluster::start_at(&hosts.host_ip, 3, &flags, &[]);
    let images_flag = images.display().to_string();
    let regs_flag = regs.display().to_string();
    let regs_w1_flag = regs_w1.display().to_string();
    let w1_all =
        [&["--image-dir", images_flag.as_str(), "--registry-config", regs_w1_flag.as_str()][..], w1_flags].concat();
    let w2_all =
        [&["--image-dir", images_flag.as_str(), "--registry-config", regs_flag.as_str()][..], w2_flags].concat();
    let w1 = Worker::start(&c, &ctd, "w1", &hosts.hosts[0], dir.path(), &w1_all);
    let w2 = Worker::start(&c, &ctd, "w2", &hosts.hosts[1], dir.path(), &w2_all);
    Setup { workers: vec![w1, w2], c, ctd, registry, _open_registry: open_registry, hosts, dir, pulled, open }
}
