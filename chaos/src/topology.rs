//! The cluster under test: N `flotilla master` processes, each in its own Linux network
//! namespace, joined by veth pairs to a bridge in a hub namespace; the harness reaches
//! them through one more veth pair from the host. Needs root. Everything is named after
//! the harness's pid, so runs do not collide, and removed on drop.
//!
//! With TLS (the default), every port is TLS with certificates made for the run by
//! `flotilla certs` under `<dir>/pki` (client certificates required); the harness's
//! clients speak as an admin (see [`client_tls`]).
//!
//! Faults are applied here too: signals to a member's process, and iptables rules inside
//! a member's namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::proxy::Proxies;
use crate::ChaosError;

/// Client port of every member (each has its own address).
pub const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// One member.
pub struct Member {
    /// Name (`m1`...).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its address on the bridge.
    pub ip: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// Removed, wiped and added back: starts as a joining member.
    pub rejoin: bool,
    /// Its data files were damaged (and it has not been wiped since).
    pub damaged: bool,
    /// Its wall-clock offset file (libfaketime).
    pub clock: PathBuf,
    /// `https` with TLS, else `http`.
    scheme: &'static str,
    child: Option<Child>,
}

impl Member {
    /// `https://ip:2380` (`http://` without TLS).
    pub fn peer_url(&self) -> String {
        format!("{}://{}:{PEER_PORT}", self.scheme, self.ip)
    }

    /// `https://ip:2379` (`http://` without TLS).
    pub fn client_url(&self) -> String {
        format!("{}://{}:{CLIENT_PORT}", self.scheme, self.ip)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// The namespaces, links and member processes of one run.
pub struct Topology {
    prefix: String,
    subnet: String,
    /// The members.
    pub members: Vec<Member>,
    bin: PathBuf,
    initial_cluster: String,
    /// Extra flags for every member.
    pub extra_args: Vec<String>,
    /// Extra environment for every member (fault switches).
    pub env: Vec<(String, String)>,
    /// Run members under libfaketime (see [`crate::clock`]); set before starting them.
    pub faketime: bool,
    /// The proxies on the peer links (see [`crate::proxy`]).
    pub proxies: Option<Proxies>,
    /// A clock strobe under way (stopped at the heal).
    pub strobe: Option<tokio::task::JoinHandle<()>>,
    /// The run's certificates (`<dir>/pki`) with TLS; None in plaintext.
    pub pki: Option<PathBuf>,
}

/// The admin's client TLS of the run under way (None in plaintext): the workloads'
/// channels are made far from the topology, and one run goes at a time in a process.
static CLIENT_TLS: std::sync::Mutex<Option<std::sync::Arc<flotilla_tls::ClientTls>>> = std::sync::Mutex::new(None);

/// The client TLS the harness's clients use against the current run's members.
pub fn client_tls() -> Option<std::sync::Arc<flotilla_tls::ClientTls>> {
    CLIENT_TLS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Runs `flotilla certs ARGS` into `pki`.
fn certs(bin: &Path, pki: &Path, args: &[&str]) -> Result<(), ChaosError> {
    let mut cmd = vec![bin.to_str().unwrap_or_default(), "certs"];
    cmd.extend_from_slice(args);
    let d = pki.display().to_string();
    cmd.extend_from_slice(&["--dir", &d]);
    run(&cmd).map(|_| ())
}

fn run(cmd: &[&str]) -> Result<String, ChaosError> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| ChaosError::Setup(format!("cannot run {}: {e}", cmd.join(" "))))?;
    if !out.status.success() {
        return Err(ChaosError::Setup(format!(
            "`{}` failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Topology {
    /// Creates the namespaces and links for `n` members (data under `dir`), without
    /// starting them; with `proxied`, every peer link goes through a proxy
    /// ([`crate::proxy`]) that can slow it; with `tls`, certificates for them and for
    /// the harness (an admin) are made under `<dir>/pki`.
    pub fn create(n: usize, dir: &Path, bin: &Path, proxied: bool, tls: bool) -> Result<Topology, ChaosError> {
        // A free id: another run's namespaces are never touched (a crashed run's are left
        // for `ip netns del`; the names say which run they were).
        let taken = run(&["ip", "netns", "list"])?;
        let links = run(&["ip", "-o", "link", "show"])?;
        let start = std::process::id() % 200;
        let id = (0..200)
            .map(|k| (start + k) % 200 + 20)
            .find(|id| !taken.contains(&format!("fc{id}-hub")) && !links.contains(&format!("fc{id}-h@")))
            .ok_or_else(|| ChaosError::Setup("no free namespace id (clean up old fc*-hub namespaces)".into()))?;
        let prefix = format!("fc{id}");
        let subnet = format!("10.77.{id}");
        let hub = format!("{prefix}-hub");
        let mut t = Topology {
            prefix: prefix.clone(),
            subnet: subnet.clone(),
            members: Vec::new(),
            bin: bin.to_path_buf(),
            initial_cluster: String::new(),
            extra_args: Vec::new(),
            env: Vec::new(),
            faketime: false,
            proxies: None,
            strobe: None,
            pki: tls.then(|| dir.join("pki")),
        };
        if let Some(pki) = &t.pki {
            let _ = std::fs::remove_dir_all(pki);
            certs(bin, pki, &["init"])?;
            certs(bin, pki, &["issue", "admin", "chaos"])?;
            for i in 1..=n {
                certs(bin, pki, &["issue", "master", &format!("m{i}"), "--address", &format!("{subnet}.{}", 10 + i)])?;
            }
        }
        let tls = match &t.pki {
            Some(pki) => Some(
                flotilla_tls::ClientTls::new(flotilla_tls::ClientFiles {
                    ca: pki.join("ca.crt"),
                    identity: Some((pki.join("user-chaos.crt"), pki.join("user-chaos.key"))),
                })
                .map_err(|e| ChaosError::Setup(format!("the harness's client TLS: {e}")))?,
            ),
            None => None,
        };
        *CLIENT_TLS.lock().unwrap_or_else(|p| p.into_inner()) = tls;
        run(&["ip", "netns", "add", &hub])?;
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        run(&["ip", "-n", &hub, "link", "set", "lo", "up"])?;
        // The harness's own link: host side `<prefix>-h`, hub side attached to the bridge.
        let host_if = format!("{prefix}-h");
        run(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", "hub-h", "netns", &hub])?;
        run(&["ip", "addr", "add", &format!("{subnet}.1/24"), "dev", &host_if])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        run(&["ip", "-n", &hub, "link", "set", "hub-h", "master", "br0", "up"])?;
        for i in 1..=n {
            let ns = format!("{prefix}-m{i}");
            let ip = format!("{subnet}.{}", 10 + i);
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&[
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
            ])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &hub, "link", "set", &format!("b{i}"), "master", "br0", "up"])?;
            t.members.push(Member {
                name: format!("m{i}"),
                netns: ns,
                ip,
                data_dir: dir.join(format!("m{i}")),
                log: dir.join(format!("m{i}.log")),
                rejoin: false,
                damaged: false,
                clock: crate::clock::file_for(&dir.join(format!("m{i}.log"))),
                scheme: if t.pki.is_some() { "https" } else { "http" },
                child: None,
            });
        }
        t.initial_cluster =
            t.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
        if !proxied {
            return Ok(t);
        }
        // Every peer connection goes through the proxy of the member that opens it.
        for (i, m) in t.members.iter().enumerate() {
            for (j, o) in t.members.iter().enumerate().filter(|(j, _)| *j != i) {
                let port = (crate::proxy::PORT_BASE + j as u16).to_string();
                let mark = format!("0x{:x}", crate::proxy::MARK);
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &m.netns,
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-d",
                    &o.ip,
                    "--dport",
                    &PEER_PORT.to_string(),
                    "-m",
                    "mark",
                    "!",
                    "--mark",
                    &mark,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &port,
                ])?;
            }
        }
        let netns: Vec<String> = t.members.iter().map(|m| m.netns.clone()).collect();
        let ips: Vec<String> = t.members.iter().map(|m| m.ip.clone()).collect();
        t.proxies = Some(Proxies::start(&netns, &ips, PEER_PORT)?);
        Ok(t)
    }

    /// Starts member `i` (bootstrapping with the others, or joining when it was added
    /// back with `member add`).
    pub fn start(&mut self, i: usize) -> Result<(), ChaosError> {
        let state = if self.members[i].rejoin { "existing" } else { "new" };
        let clock = if self.faketime { crate::clock::env(&self.members[i].clock)? } else { Vec::new() };
        let m = &mut self.members[i];
        let tls_flags: Vec<String> = match &self.pki {
            Some(pki) => {
                let f = |n: &str| pki.join(n).display().to_string();
                let (crt, key, ca) =
                    (f(&format!("master-{}.crt", m.name)), f(&format!("master-{}.key", m.name)), f("ca.crt"));
                [
                    ["--cert-file", &crt],
                    ["--key-file", &key],
                    ["--trusted-ca-file", &ca],
                    ["--peer-cert-file", &crt],
                    ["--peer-key-file", &key],
                    ["--peer-trusted-ca-file", &ca],
                ]
                .iter()
                .flatten()
                .map(|s| s.to_string())
                .chain(["--client-cert-auth".to_string()])
                .collect()
            }
            None => Vec::new(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| ChaosError::Setup(format!("cannot open {}: {e}", m.log.display())))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &m.netns])
            .arg(&self.bin)
            .args(["master", "--name", &m.name, "--data-dir"])
            .arg(&m.data_dir)
            .args(["--listen-client", &m.client_url()])
            .args(["--listen-peer", &m.peer_url()])
            .args(["--listen-metrics", &format!("http://{}:2381", m.ip)])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(&tls_flags)
            .args(&self.extra_args)
            // The binary's own log filter.
            .env_remove("FLOTILLA_LOG")
            .envs(clock)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| ChaosError::Setup(format!("cannot start {}: {e}", m.name)))?;
        m.child = Some(child);
        Ok(())
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// If member `i` exited by itself, reaps it and returns how, with the last error its
    /// log names.
    pub fn exited(&mut self, i: usize) -> Option<String> {
        let m = &mut self.members[i];
        let status = m.child.as_mut()?.try_wait().ok()??;
        m.child = None;
        let log = std::fs::read_to_string(&m.log).unwrap_or_default();
        let last = log.lines().rev().find(|l| l.contains("ERROR") || l.starts_with("flotilla:")).unwrap_or("");
        Some(format!("{status}: {}", last.trim()))
    }

    /// Sends `signal` (`STOP`, `CONT`) to member `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(pid) = self.members[i].pid() {
            let _ = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
        }
    }

    /// Drops all traffic between member `i` and each of `others` (both directions, in
    /// `i`'s namespace; the harness can still reach it).
    pub fn isolate(&self, i: usize, others: &[usize]) -> Result<(), ChaosError> {
        let ns = &self.members[i].netns;
        for &o in others {
            let ip = &self.members[o].ip;
            run(&["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", ip, "-j", "DROP"])?;
            run(&["ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Member `i` stops hearing from `from` (one way: `from` still hears `i`).
    pub fn drop_from(&self, i: usize, from: usize) -> Result<(), ChaosError> {
        let (ns, ip) = (&self.members[i].netns, &self.members[from].ip);
        run(&["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", ip, "-j", "DROP"])?;
        Ok(())
    }

    /// Removes every rule, resumes every paused member, clears slow links and sets every
    /// clock right.
    pub fn heal(&mut self) -> Result<(), ChaosError> {
        if let Some(s) = self.strobe.take() {
            s.abort();
        }
        for (i, m) in self.members.iter().enumerate() {
            run(&["ip", "netns", "exec", &m.netns, "iptables", "-F"])?;
            self.signal(i, "CONT");
            if self.faketime {
                crate::clock::set(&m.clock, 0)?;
            }
        }
        if let Some(p) = &self.proxies {
            p.clear();
        }
        Ok(())
    }

    /// Adds `n` more hosts on the members' bridge (namespaces `<prefix>-w1`..., addresses
    /// `.31`...), for workers: (namespace, address) each. Removed with the rest.
    pub fn add_hosts(&mut self, n: usize) -> Result<Vec<(String, String)>, ChaosError> {
        let hub = format!("{}-hub", self.prefix);
        let mut hosts = Vec::new();
        for i in 1..=n {
            let ns = format!("{}-w{i}", self.prefix);
            let ip = format!("{}.{}", self.subnet, 30 + i);
            let peer = format!("bw{i}");
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&["ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &hub])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &hub, "link", "set", &peer, "master", "br0", "up"])?;
            hosts.push((ns, ip));
        }
        Ok(hosts)
    }

    /// The TLS flags of worker `name` at `ip` (none in plaintext): its node certificate,
    /// issued now, to the masters and on its kubelet endpoint, which answers masters.
    pub fn worker_tls_flags(&self, name: &str, ip: &str) -> Result<Vec<String>, ChaosError> {
        let Some(pki) = &self.pki else { return Ok(Vec::new()) };
        certs(&self.bin, pki, &["issue", "node", name, "--address", ip, "--force"])?;
        let f = |n: &str| pki.join(n).display().to_string();
        let (crt, key, ca) = (f(&format!("node-{name}.crt")), f(&format!("node-{name}.key")), f("ca.crt"));
        Ok([
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
        .collect())
    }

    /// Client URLs of every member.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url()).collect()
    }

    /// Whether member `i`'s process is running (not killed).
    pub fn running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    fn teardown_links(&self) {
        let _ = Command::new("ip").args(["link", "del", &format!("{}-h", self.prefix)]).stderr(Stdio::null()).status();
        let list = Command::new("ip").args(["netns", "list"]).output();
        if let Ok(out) = list {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                if name.starts_with(&format!("{}-", self.prefix)) {
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                }
            }
        }
    }

    /// The subnet's first three octets (for messages).
    pub fn subnet(&self) -> &str {
        &self.subnet
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // The proxy threads hold the namespaces open: stop them first.
        self.proxies = None;
        for i in 0..self.members.len() {
            self.signal(i, "CONT");
            self.kill(i);
        }
        self.teardown_links();
    }
}
