//! The parts of a plane run besides the masters: a containerd of the run's own, workers
//! (`flotilla worker --runtime containerd`, each in a host namespace on the masters'
//! bridge), and the service's clients, one thread inside each worker's namespace.
//! Everything here is stopped and removed when dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checker::plane::Request;
use crate::ChaosError;

fn setup(what: &str, e: impl std::fmt::Display) -> ChaosError {
    ChaosError::Setup(format!("{what}: {e}"))
}

/// `ctr` against one containerd socket.
#[derive(Debug, Clone)]
pub struct Ctr {
    /// The socket.
    pub socket: PathBuf,
}

impl Ctr {
    /// Runs `ctr ARGS` (a failure to start it is a failed output).
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("--address").arg(&self.socket).args(args).output().unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
            stdout: Vec::new(),
            stderr: e.to_string().into_bytes(),
        })
    }

    /// The running tasks of namespace `ns`: their container ids.
    pub fn running(&self, ns: &str) -> Vec<String> {
        let out = self.run(&["-n", ns, "tasks", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(2) == Some("RUNNING"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// The pod uid a container was made for (its `io.flotilla.pod.uid` label).
    pub fn pod_uid(&self, ns: &str, id: &str) -> Option<String> {
        let out = self.run(&["-n", ns, "containers", "info", id]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["Labels"]["io.flotilla.pod.uid"].as_str().map(str::to_string)
    }
}

/// A containerd with its root, state and socket under a directory of the run's.
pub struct Containerd {
    dir: PathBuf,
    /// Its `ctr`.
    pub ctr: Ctr,
    child: Child,
    /// The containerd namespaces of the run's workers (their containers are killed at
    /// the end).
    pub namespaces: Vec<String>,
}

impl Containerd {
    /// Starts one under `dir` and waits until it answers.
    pub fn start(dir: &Path) -> Result<Containerd, ChaosError> {
        std::fs::create_dir_all(dir).map_err(|e| setup("containerd dir", e))?;
        let socket = dir.join("c.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
            ),
        )
        .map_err(|e| setup("containerd config", e))?;
        let log = std::fs::File::create(dir.join("containerd.log")).map_err(|e| setup("containerd log", e))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| setup("cannot start containerd", e))?;
        let c = Containerd { dir: dir.to_path_buf(), ctr: Ctr { socket }, child, namespaces: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr.run(&["version"]).status.success() {
            if Instant::now() > deadline {
                return Err(ChaosError::Setup(format!("containerd did not answer; see {}", c.dir.display())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let ctr = &self.ctr;
        for ns in &self.namespaces {
            for id in ctr.running(ns) {
                let _ = ctr.run(&["-n", ns, "tasks", "kill", "-a", "-s", "SIGKILL", &id]);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while !ctr.running(ns).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let out = ctr.run(&["-n", ns, "containers", "ls", "-q"]);
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = ctr.run(&["-n", ns, "tasks", "delete", "-f", id]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for ns in &self.namespaces {
            for ctl in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(ctl.path().join("flotilla-chaos").join(ns));
                let _ = std::fs::remove_dir(ctl.path().join("flotilla-chaos"));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.dir.display().to_string();
        for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)) {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = std::fs::remove_dir_all(self.dir.join("root"));
        let _ = std::fs::remove_dir_all(self.dir.join("state"));
    }
}

/// A worker process in its host's namespace.
pub struct Worker {
    /// Node name (`w1`...).
    pub name: String,
    /// The host's network namespace.
    pub netns: String,
    /// The host's address.
    pub ip: String,
    /// Its containerd namespace.
    pub ctd_ns: String,
    /// Its log.
    pub log: PathBuf,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Worker {
    /// A worker (binary `bin`) for host (`netns`, `ip`) with the given flags (not started).
    pub fn new(
        bin: &Path,
        name: &str,
        host: &(String, String),
        dir: &Path,
        ctd_ns: &str,
        flags: Vec<String>,
    ) -> Worker {
        let mut args = vec![
            format!("--net=/run/netns/{}", host.0),
            "--".into(),
            bin.display().to_string(),
            "worker".into(),
            "--name".into(),
            name.into(),
            "--node-ip".into(),
            host.1.clone(),
            "--containerd-namespace".into(),
            ctd_ns.into(),
            "--cgroup-parent".into(),
            format!("/flotilla-chaos/{ctd_ns}"),
            "--listen-metrics".into(),
            format!("{}:10255", host.1),
            "--dir".into(),
            dir.join(name).display().to_string(),
        ];
        args.extend(flags);
        Worker {
            name: name.into(),
            netns: host.0.clone(),
            ip: host.1.clone(),
            ctd_ns: ctd_ns.into(),
            log: dir.join(format!("{name}.log")),
            dir: dir.join(name),
            args,
            child: None,
        }
    }

    /// Starts it (only the network namespace is the host's: the pod namespaces it mounts
    /// under /run/netns must be seen by containerd and runc).
    pub fn start(&mut self) -> Result<(), ChaosError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| setup("worker log", e))?;
        let child = Command::new("nsenter")
            .args(&self.args)
            .env("FLOTILLA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| setup("cannot start a worker", e))?;
        self.child = Some(child);
        Ok(())
    }

    /// kill -9, reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// If it exited by itself: how.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.to_string())
    }

    /// Whether its process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs iptables in its namespace.
    pub fn iptables(&self, rule: &[&str]) -> Result<(), ChaosError> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "iptables"])
            .args(rule)
            .output()
            .map_err(|e| setup("iptables", e))?;
        if !out.status.success() {
            return Err(ChaosError::Setup(format!(
                "iptables {} in {}: {}",
                rule.join(" "),
                self.netns,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        // The pods' network namespaces it made.
        for e in std::fs::read_dir(self.dir.join("sandboxes")).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let netns = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["netns"].as_str().map(String::from));
            if let Some(ns) = netns.filter(|n| !n.is_empty()) {
                let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
            }
        }
    }
}

/// The service's clients: a thread per worker namespace calling `http://addr/` every
/// 100 ms (connect within 1 s, answer within 2 s), recording every request; and per
/// namespace a `conntrack -E` listing each new connection to the service with the
/// endpoint it was translated to, so a failed request names its endpoint.
pub struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    trackers: Vec<Child>,
    /// Every request made so far.
    pub requests: Arc<Mutex<Vec<Request>>>,
}

/// Local port → the endpoint its connection to the service was sent to.
type Translations = Arc<Mutex<HashMap<u16, String>>>;

impl Clients {
    /// Starts a client in each of `netns` (indexed as the workers), timing from `start`.
    pub fn start(netns: &[String], addr: SocketAddr, start: Instant) -> Result<Clients, ChaosError> {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (mut threads, mut trackers) = (Vec::new(), Vec::new());
        for (i, ns) in netns.iter().enumerate() {
            let translations: Translations = Arc::default();
            let mut tracker = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .args(["conntrack", "-E", "-e", "NEW", "-p", "tcp", "--orig-dst", &addr.ip().to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| setup("cannot start conntrack -E", e))?;
            let out = tracker.stdout.take().ok_or_else(|| ChaosError::Setup("conntrack -E: no stdout".into()))?;
            trackers.push(tracker);
            {
                let translations = translations.clone();
                threads.push(std::thread::spawn(move || {
                    use std::io::BufRead;
                    for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                        if let Some((port, endpoint)) = parse_translation(&line) {
                            translations.lock().unwrap_or_else(|p| p.into_inner()).insert(port, endpoint);
                        }
                    }
                }));
            }
            let f = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| setup("open namespace", e))?;
            let (stop, requests) = (stop.clone(), requests.clone());
            threads.push(std::thread::spawn(move || {
                if nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    let at = start.elapsed().as_secs_f64();
                    let (error, port) = get(addr, &translations);
                    let ok = error.is_none();
                    let endpoint = if ok { None } else { port.and_then(|p| endpoint_of(&translations, p)) };
                    let r = Request { client: i, at, ok, endpoint, error };
                    requests.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }));
        }
        Ok(Clients { stop, threads, trackers, requests })
    }

    /// Stops the clients; every request they made.
    pub fn finish(mut self) -> Vec<Request> {
        self.stop.store(true, Ordering::Relaxed);
        for t in &mut self.trackers {
            let _ = t.kill();
            let _ = t.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        std::mem::take(&mut *self.requests.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &mut self.trackers {
            let _ = t.kill();
            let _ = t.wait();
        }
    }
}

/// One HTTP/1.0 GET of `/`: how it failed (None: answered with 200 and a body), and the
/// local port it was made from.
fn get(addr: SocketAddr, translations: &Translations) -> (Option<String>, Option<u16>) {
    let sock = match socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP)) {
        Ok(s) => s,
        Err(e) => return (Some(format!("socket: {e}")), None),
    };
    // Bound first, so that the local port is known even when the connect fails.
    let any: SocketAddr = ([0, 0, 0, 0], 0).into();
    if let Err(e) = sock.bind(&any.into()) {
        return (Some(format!("bind: {e}")), None);
    }
    let port = sock.local_addr().ok().and_then(|a| a.as_socket()).map(|a| a.port());
    // An earlier connection from the same port must not name this one's endpoint.
    if let Some(p) = port {
        translations.lock().unwrap_or_else(|p| p.into_inner()).remove(&p);
    }
    let sent = Instant::now();
    let failed = (|| {
        sock.connect_timeout(&addr.into(), Duration::from_secs(1)).map_err(|e| format!("connect: {e}"))?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n").map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| format!("answer: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let status = text.lines().next().unwrap_or("").to_string();
        let ok_status = status.split_whitespace().nth(1) == Some("200");
        match text.split_once("\r\n\r\n") {
            Some((_, body)) if ok_status && !body.trim().is_empty() => Ok(()),
            _ => Err(format!("answered {status:?} ({} bytes)", buf.len())),
        }
    })()
    .err()
    .map(|e| format!("{e} after {} ms", sent.elapsed().as_millis()));
    (failed, port)
}

/// The endpoint the connection from local `port` was sent to, once `conntrack -E` has
/// told. It lags the request, and by more than half a second when the machine is busiest
/// (a worker just lost, its pods being moved: one CI run saw a failed request left
/// unattributed at 500 ms, and so counted against its fault's allowance); a failed
/// request waits for it up to 2 s.
fn endpoint_of(translations: &Translations, port: u16) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(e) = translations.lock().unwrap_or_else(|p| p.into_inner()).get(&port) {
            return Some(e.clone());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `conntrack -E` line: the original source port, and the reply direction's source
/// (the second `src=`: where the connection was translated to).
fn parse_translation(line: &str) -> Option<(u16, String)> {
    let port = line.split_whitespace().find_map(|w| w.strip_prefix("sport="))?.parse().ok()?;
    let endpoint = line.split_whitespace().filter_map(|w| w.strip_prefix("src=")).nth(1)?;
    Some((port, endpoint.to_string()))
}

/// A plain HTTP GET from this namespace (for /metrics): the body.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Option<String> {
    let sa: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sa, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// The value of metric line `name` (exactly, labels included) in an exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.rsplit_once(' ').is_some_and(|(n, _)| n == name))?.rsplit_once(' ')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_endpoint_is_the_reply_source_of_its_conntrack_event() {
        let line = "    [NEW] tcp      6 120 SYN_SENT src=10.77.1.31 dst=10.96.5.5 sport=40000 dport=80 [UNREPLIED] \
                    src=10.244.2.3 dst=10.77.1.31 sport=80 dport=27854";
        assert_eq!(parse_translation(line), Some((40000, "10.244.2.3".to_string())));
        assert_eq!(parse_translation("conntrack v1.4.7 (conntrack-tools): 0 flow events"), None);
    }

    #[test]
    fn metric_lines_are_matched_whole() {
        let text = "a_total 3\na{x=\"1\"} 1\nab 2\n";
        assert_eq!(metric(text, "a_total"), Some(3.0));
        assert_eq!(metric(text, "a{x=\"1\"}"), Some(1.0));
        assert_eq!(metric(text, "a"), None);
    }
}
