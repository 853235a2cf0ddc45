//! Machines for worker tests: hosts as network namespaces on a bridge (as chaos/ makes
//! them), a private containerd, Debian's docker-registry, and the busybox image
//! `scripts/busybox-image` builds. Everything is started by the test and stopped when
//! its guard drops. Under `CI=true` a missing prerequisite (root, a package) fails the
//! test; elsewhere it is installed when possible.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use flotilla_proto::api as pb;

/// Runs a command that must succeed; its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails (CI) or says why a prerequisite is missing: these tests never skip quietly.
pub fn require(what: &str, ok: bool) {
    assert!(ok, "this test needs {what} (run as root; scripts/setup installs the packages)");
}

/// Checks root and the packages the containerd and proxy tests need.
pub fn require_worker_prerequisites() {
    require("root", is_root());
    for (bin, pkg) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ("/usr/bin/docker-registry", "docker-registry"),
        ("/usr/bin/skopeo", "skopeo"),
        ("/usr/bin/htpasswd", "apache2-utils"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/sbin/nft", "nftables"),
        ("/usr/sbin/conntrack", "conntrack"),
    ] {
        require(&format!("{bin} (package {pkg})"), Path::new(bin).exists());
    }
}

fn is_root() -> bool {
    sh(&["id", "-u"]).trim() == "0"
}

/// Hosts on one network: a bridge in a hub namespace, this machine on it through a veth
/// (`host_ip`), and each host a namespace with `eth0` on the bridge.
pub struct Hosts {
    prefix: String,
    /// This machine's address on the hosts' network.
    pub host_ip: String,
    /// The hosts: (namespace, address).
    pub hosts: Vec<(String, String)>,
}

impl Hosts {
    /// `n` hosts on a fresh network (names unique to this process and call).
    pub fn create(n: usize) -> Hosts {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() * 7 + k) % 200 + 20;
        let prefix = format!("fw{id}");
        // Left over by a crashed run with the same id.
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        };
        quiet(&["netns", "del", &format!("{prefix}-hub")]);
        for i in 1..=n {
            quiet(&["netns", "del", &format!("{prefix}-h{i}")]);
        }
        let _ = Command::new("ip").args(["link", "del", &format!("{prefix}-h")]).stderr(Stdio::null()).status();
        let subnet = format!("10.79.{id}");
        let hub = format!("{prefix}-hub");
        let mut h = Hosts { prefix: prefix.clone(), host_ip: format!("{subnet}.1"), hosts: Vec::new() };
        sh(&["ip", "netns", "add", &hub]);
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        let host_if = format!("{prefix}-h");
        sh(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", "hub-h", "netns", &hub]);
        sh(&["ip", "addr", "add", &format!("{subnet}.1/24"), "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&["ip", "-n", &hub, "link", "set", "hub-h", "master", "br0", "up"]);
        for i in 1..=n {
            let ns = format!("{prefix}-h{i}");
            let ip = format!("{subnet}.{}", 10 + i);
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &format!("b{i}"),
                "netns",
                &hub,
            ]);
            sh(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &hub, "link", "set", &format!("b{i}"), "master", "br0", "up"]);
            h.hosts.push((ns, ip));
        }
        h
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (ns, _) in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &format!("{}-hub", self.prefix)]).status();
        let _ = Command::new("ip").args(["link", "del", &format!("{}-h", self.prefix)]).stderr(Stdio::null()).status();
    }
}

/// A containerd of the test's own (root, state and socket under a temp dir); its
/// containers are killed and it is stopped when dropped.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
    /// containerd namespaces the test's workers used (cleaned on drop).
    pub namespaces: std::sync::Mutex<Vec<String>>,
}

impl Containerd {
    /// Starts one and waits until it answers.
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new().prefix("ctd").tempdir_in("/var/tmp").expect("tempdir");
        let socket = dir.path().join("c.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                sock = socket.display(),
            ),
        )
        .expect("containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { dir, socket, child, namespaces: Default::default() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not answer: {}", c.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr").arg("--address").arg(&self.socket).args(args).output().expect("run ctr")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The tasks of namespace `ns`: (container id, pid, status).
    pub fn tasks(&self, ns: &str) -> Vec<(String, String, String)> {
        let out = self.ctr(&["-n", ns, "tasks", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                Some((w.first()?.to_string(), w.get(1)?.to_string(), w.get(2)?.to_string()))
            })
            .collect()
    }

    /// The root filesystem of a running container (the test reaches into it from here).
    pub fn rootfs(&self, ns: &str, id: &str) -> PathBuf {
        self.dir.path().join("state/io.containerd.runtime.v2.task").join(ns).join(id).join("rootfs")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let namespaces = self.namespaces.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for ns in namespaces {
            for (id, _, _) in self.tasks(&ns) {
                let _ = self.ctr(&["-n", &ns, "tasks", "kill", "-a", "-s", "SIGKILL", &id]);
            }
            std::thread::sleep(Duration::from_millis(300));
            for (id, _, _) in self.tasks(&ns) {
                let _ = self.ctr(&["-n", &ns, "tasks", "delete", "-f", &id]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The cgroups the workers' containers were put under (`--cgroup-parent
        // /flotilla-test/<namespace>`), empty now.
        for ns in self.namespaces.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for ctl in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(ctl.path().join("flotilla-test").join(ns));
                let _ = std::fs::remove_dir(ctl.path().join("flotilla-test"));
            }
        }
        // Whatever is still mounted under its directory (a task that would not go).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.dir.path().display().to_string();
        for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)) {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
}

/// Debian's docker-registry, listening on `addr` (with basic auth for `user` and
/// `password` when given); stopped when dropped.
pub struct Registry {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(addr: &str, auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, sh(&["htpasswd", "-Bbn", user, password])).expect("htpasswd");
            text += &format!("auth:\n  htpasswd:\n    realm: flotilla\n    path: {}\n", htpasswd.display());
        }
        std::fs::write(&config, text).expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the registry on {addr} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { addr: addr.into(), child, _dir: dir }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's `scripts/` directory.
pub fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// The busybox image name `scripts/busybox-image` gives.
pub fn busybox_name() -> String {
    "flotilla.local/busybox:1".into()
}

/// Builds the busybox image archive into `dir/busybox.tar`; with `push`, also pushes it
/// there (REGISTRY/REPO:TAG, and USER:PASS for a registry with basic auth).
pub fn busybox_image(dir: &Path, push: Option<(&str, Option<&str>)>) -> PathBuf {
    let out = dir.join("busybox.tar");
    let mut cmd = Command::new(scripts().join("busybox-image"));
    if let Some((p, creds)) = push {
        cmd.args(["--push", p]);
        if let Some(c) = creds {
            cmd.args(["--creds", c]);
        }
    }
    let status = cmd.arg(&out).status().expect("scripts/busybox-image");
    assert!(status.success(), "scripts/busybox-image failed");
    out
}

/// The first container's status of a pod.
pub fn main_status(p: &pb::Pod) -> pb::ContainerStatus {
    p.status.as_ref().and_then(|s| s.container_statuses.first().cloned()).unwrap_or_default()
}

/// Whether a pod's Ready condition is True.
pub fn ready(p: &pb::Pod) -> bool {
    p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
}

/// An exec probe run every second, failing at the first failure.
pub fn exec_probe(command: &[&str]) -> pb::Probe {
    pb::Probe {
        exec: Some(pb::ExecAction { command: command.iter().map(|s| s.to_string()).collect() }),
        period_seconds: 1,
        failure_threshold: 1,
        ..Default::default()
    }
}

/// The master a worker's /metrics says it talks to.
pub fn kubelet_master(metrics: &str) -> String {
    metrics
        .lines()
        .find(|l| l.starts_with("flotilla_kubelet_master{") && l.ends_with(" 1"))
        .and_then(|l| l.split('"').nth(1))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no master in {metrics}"))
}

/// `/bin/busybox ARGS` inside the network namespace `ns` (a host's or a pod's), killed
/// after `secs` seconds.
pub fn busybox_in(ns: &str, secs: u32, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["timeout", &secs.to_string(), "/bin/busybox"])
        .args(args)
        .output()
        .expect("nsenter")
}

/// An HTTP GET from inside `ns` (2 s timeout; busybox's own -T crashes the static
/// build): the body, or what went wrong.
pub fn get(ns: &str, url: &str) -> Result<String, String> {
    let out = busybox_in(ns, 2, &["wget", "-q", "-O-", url]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
