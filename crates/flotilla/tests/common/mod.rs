//! Test harness: real `flotilla master` processes on loopback, driven with the stock
//! `etcdctl` and with gRPC clients generated from our etcd protos.
//!
//! `FLOTILLA_TEST_TLS=1` runs the suite with TLS and RBAC on: every cluster a test does not
//! make plaintext or TLS on purpose serves TLS (client certificates required), and the
//! harness's clients — flotctl, etcdctl, gRPC clients, workers, candidates, bench — carry
//! the admin's or their own certificates (`.ci/run` runs the integration tests both ways).
//!
//! For debugging: `FLOTILLA_TEST_LOG` sets the members' log filter (default: the binary's
//! own, `FLOTILLA_LOG` unset), and `FLOTILLA_TEST_KEEP=1` keeps each cluster's data dirs and
//! logs (the path is printed) instead of deleting them.

#![allow(dead_code)]

pub mod nodes;
pub mod workers;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::etcdserverpb::kv_client::KvClient;
use flotilla_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

/// A free loopback port below the ephemeral range (32768 and up on Linux), so that the
/// many outgoing connections of a test cannot take it while its member is down for a
/// restart; never one this process handed out before (two members of a cluster given
/// the same port would fail to start).
pub fn free_port() -> u16 {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(12_000..32_000);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// One member's addresses and process.
pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    pub metrics: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub extra_args: Vec<String>,
    /// Environment variables of its process (fault switches).
    pub env: Vec<(String, String)>,
    /// The address it listens on for clients and peers (loopback unless a test gives one).
    pub host: String,
    /// The cluster's certificates directory when the member serves TLS (clients and peers).
    pub pki: Option<PathBuf>,
    /// Whether its client port requires a client certificate (TLS only).
    pub client_cert_auth: bool,
    /// The admin's client TLS for it (built once from `pki`, not at every status check).
    pub admin_tls: Option<std::sync::Arc<flotilla_tls::ClientTls>>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.client)
    }
    fn scheme(&self) -> &'static str {
        if self.pki.is_some() {
            "https"
        } else {
            "http"
        }
    }
    pub fn url(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.host, self.client)
    }
    pub fn peer_url(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.host, self.peer)
    }
    /// The TLS flags of its `flotilla master` command line (none without TLS).
    fn tls_flags(&self) -> Vec<String> {
        let Some(pki) = &self.pki else { return vec![] };
        let f = |name: &str| pki.join(name).display().to_string();
        let (crt, key) = (f(&format!("master-{}.crt", self.name)), f(&format!("master-{}.key", self.name)));
        [
            ["--cert-file", &crt],
            ["--key-file", &key],
            ["--trusted-ca-file", &f("ca.crt")],
            ["--peer-cert-file", &crt],
            ["--peer-key-file", &key],
            ["--peer-trusted-ca-file", &f("ca.crt")],
        ]
        .iter()
        .flatten()
        .map(|s| s.to_string())
        .chain(self.client_cert_auth.then(|| "--client-cert-auth".to_string()))
        .collect()
    }
}

/// A member stopped by [`Cluster::freeze`], woken when dropped.
pub struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        let ok = Command::new("kill").args(["-CONT", &self.0.to_string()]).status().is_ok_and(|s| s.success());
        if !ok && !std::thread::panicking() {
            panic!("kill -CONT {}", self.0);
        }
    }
}

/// A process killed (and reaped) when the test lets go of it, passing or failing.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `flotilla certs ARGS` (the real command), asserting success.
pub fn certs(args: &[&str]) {
    let out = Command::new(bin()).arg("certs").args(args).output().expect("run flotilla certs");
    assert!(out.status.success(), "flotilla certs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The client flags (etcdctl's and flotctl's names) of the admin certificate in `pki`.
pub fn admin_flags(pki: &Path) -> Vec<String> {
    let f = |name: &str| pki.join(name).display().to_string();
    vec!["--cacert".into(), f("ca.crt"), "--cert".into(), f("user-admin.crt"), "--key".into(), f("user-admin.key")]
}

/// A client TLS configuration from `pki`'s CA and the certificate `name` (`user-admin`,
/// `master-n1`, ...; None: no client certificate).
pub fn client_tls(pki: &Path, name: Option<&str>) -> std::sync::Arc<flotilla_tls::ClientTls> {
    let identity = name.map(|n| (pki.join(format!("{n}.crt")), pki.join(format!("{n}.key"))));
    flotilla_tls::ClientTls::new(flotilla_tls::ClientFiles { ca: pki.join("ca.crt"), identity }).expect("client TLS")
}

/// Whether this run's clusters serve TLS unless a test says otherwise (`FLOTILLA_TEST_TLS=1`).
pub fn tls_suite() -> bool {
    std::env::var("FLOTILLA_TEST_TLS").is_ok_and(|v| v == "1")
}

/// The running cluster's certificates and admin client TLS when it serves TLS because of
/// [`tls_suite`] (a test's own TLS cluster is not here: its tests name their credentials,
/// and check what happens without them). One cluster runs at a time in a test binary.
static SUITE_TLS: std::sync::Mutex<Option<(PathBuf, std::sync::Arc<flotilla_tls::ClientTls>)>> =
    std::sync::Mutex::new(None);

/// The certificates directory of the cluster that serves TLS because of [`tls_suite`].
pub fn suite_pki() -> Option<PathBuf> {
    SUITE_TLS.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(p, _)| p.clone())
}

/// The admin's client TLS for the cluster that serves TLS because of [`tls_suite`].
pub fn suite_tls() -> Option<std::sync::Arc<flotilla_tls::ClientTls>> {
    SUITE_TLS.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, t)| t.clone())
}

/// A gRPC channel to `url` (connected at first use), the admin's TLS under [`tls_suite`].
pub fn channel(url: &str) -> Channel {
    let endpoint = Channel::from_shared(url.to_string()).expect("url").connect_timeout(Duration::from_secs(1));
    flotilla_client::pool::channel(endpoint, suite_tls().as_ref())
}

/// A resource-API client over `endpoints` (made inside a runtime, which drives it); the
/// admin's under [`tls_suite`].
pub fn admin_client(endpoints: &[String]) -> Result<flotilla_client::Client, flotilla_client::ClientError> {
    let opts = flotilla_client::Options { tls: suite_tls(), ..Default::default() };
    flotilla_client::Client::with_options(endpoints, opts)
}

/// Clusters in one test binary run one at a time: on a two-core machine, two clusters
/// under load would turn timing assertions (failover, lease expiry) into noise.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A cluster of real processes under a temp dir; killed when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub initial_cluster: String,
    _turn: std::sync::MutexGuard<'static, ()>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_flotilla")
}

impl Cluster {
    /// A new member `name` with fresh ports and a data dir under the cluster's temp dir
    /// (not started, not yet in `members`).
    pub fn new_member(&self, name: &str) -> Member {
        let host = self.members.first().map_or_else(|| "127.0.0.1".into(), |m| m.host.clone());
        if let Some(pki) = self.pki().filter(|p| !p.join(format!("master-{name}.crt")).exists()) {
            let d = pki.display().to_string();
            certs(&["issue", "--dir", &d, "master", name, "--address", &host, "--address", "localhost"]);
        }
        Member {
            name: name.into(),
            client: free_port(),
            peer: free_port(),
            metrics: free_port(),
            data_dir: self.dir.path().join(name),
            log: self.dir.path().join(format!("{name}.log")),
            child: None,
            extra_args: vec![],
            env: vec![],
            host,
            pki: self.pki().map(Path::to_path_buf),
            admin_tls: self.members.first().and_then(|m| m.admin_tls.clone()),
            client_cert_auth: self.members.first().is_none_or(|m| m.client_cert_auth),
        }
    }

    /// Starts `n` members with extra flags, and waits for a leader. The masters' own
    /// scheduler and controller-manager candidates are switched off (they would place,
    /// or mark unschedulable, the pods API tests create, and act on their ReplicaSets):
    /// see [`Cluster::start_with_scheduler`].
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let mut flags = vec!["--disable-scheduler", "--disable-controller-manager"];
        flags.extend_from_slice(extra);
        Cluster::start_with_scheduler(n, &flags)
    }

    /// Starts `n` members with extra flags (each running a scheduler and a
    /// controller-manager candidate unless the flags say otherwise), and waits for a
    /// leader.
    pub fn start_with_scheduler(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_env(n, extra, &[])
    }

    /// Like [`Cluster::start_with_scheduler`], with environment variables for every member.
    pub fn start_with_env(n: usize, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        Cluster::start_at("127.0.0.1", n, extra, env)
    }

    /// Like [`Cluster::start_with_env`], the members listening on `host` (an address of
    /// this machine, e.g. of a link to network namespaces a test made).
    pub fn start_at(host: &str, n: usize, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        Cluster::start_full(host, n, extra, env, None)
    }

    /// Like [`Cluster::start_with_scheduler`], every member serving TLS to clients (a
    /// client certificate required) and to peers, with certificates of a CA made for the
    /// cluster by `flotilla certs` in `<dir>/pki` (`master-nI` for the members,
    /// `user-admin` in system:masters for tests' clients).
    pub fn start_tls(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_full("127.0.0.1", n, extra, &[], Some(Some(true)))
    }

    /// Like [`Cluster::start_tls`], a client certificate optional (tokens, anonymous).
    pub fn start_tls_certs_optional(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_full("127.0.0.1", n, extra, &[], Some(Some(false)))
    }

    /// Like [`Cluster::start`], plaintext even under [`tls_suite`] (a test of the
    /// insecure mode itself).
    pub fn start_plaintext(n: usize, extra: &[&str]) -> Cluster {
        let mut flags = vec!["--disable-scheduler", "--disable-controller-manager"];
        flags.extend_from_slice(extra);
        Cluster::start_full("127.0.0.1", n, &flags, &[], Some(None))
    }

    /// `tls`: None for the suite's default (plaintext, TLS under [`tls_suite`]); Some(None)
    /// for plaintext; Some(Some(required)) for TLS, `required` saying whether a client
    /// certificate is.
    fn start_full(host: &str, n: usize, extra: &[&str], env: &[(&str, &str)], tls: Option<Option<bool>>) -> Cluster {
        let turn = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let by_suite = tls.is_none() && tls_suite();
        let tls = if by_suite { Some(true) } else { tls.flatten() };
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = tls.map(|_| dir.path().join("pki"));
        if let Some(pki) = &pki {
            let d = pki.display().to_string();
            certs(&["init", "--dir", &d]);
            for i in 1..=n {
                certs(&["issue", "--dir", &d, "master", &format!("n{i}"), "--address", host, "--address", "localhost"]);
            }
            certs(&["issue", "--dir", &d, "admin", "admin"]);
        }
        *SUITE_TLS.lock().unwrap_or_else(|p| p.into_inner()) =
            pki.as_ref().filter(|_| by_suite).map(|p| (p.clone(), client_tls(p, Some("user-admin"))));
        let mut members = Vec::new();
        for i in 1..=n {
            members.push(Member {
                name: format!("n{i}"),
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
                data_dir: dir.path().join(format!("n{i}")),
                log: dir.path().join(format!("n{i}.log")),
                child: None,
                extra_args: extra.iter().map(|s| s.to_string()).collect(),
                env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                host: host.into(),
                pki: pki.clone(),
                admin_tls: pki.as_deref().map(|p| client_tls(p, Some("user-admin"))),
                client_cert_auth: tls.unwrap_or(false),
            });
        }
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
        let mut c = Cluster { dir, members, initial_cluster, _turn: turn };
        for i in 0..n {
            c.spawn(i, "new");
        }
        c.wait_leader(Duration::from_secs(20));
        c.wait_bootstrapped(Duration::from_secs(20));
        c
    }

    /// Waits until the masters have made what every cluster starts with: the built-in
    /// namespaces, and with authentication on the default RBAC policy. Each master
    /// creates what is missing in the background once there is a leader (backing off
    /// while there is none); a test that counts revisions must not see those writes land
    /// in its middle.
    pub fn wait_bootstrapped(&self, within: Duration) {
        use flotilla_api::kinds::{meta, Kind};
        use flotilla_apiserver::keys::key;
        let rbac = self.pki().is_some() || self.members[0].extra_args.iter().any(|a| a == "--token-auth-file");
        let mut keys: Vec<String> =
            flotilla_apiserver::BUILTIN_NAMESPACES.iter().map(|n| key(Kind::Namespace, "", n)).collect();
        if rbac {
            keys.extend(
                flotilla_apiserver::authz::default_policy().iter().map(|o| key(Kind::of(o), "", &meta(o).name)),
            );
        }
        let leader = &self.members[self.wait_leader(within)];
        let rt = rt();
        self.eventually(within, "the cluster's built-in namespaces and policy exist", || {
            rt.block_on(async {
                let Ok(endpoint) = Channel::from_shared(leader.url()) else { return false };
                let endpoint = endpoint.connect_timeout(Duration::from_millis(300)).timeout(Duration::from_secs(3));
                let mut kv = KvClient::new(flotilla_client::pool::channel(endpoint, leader.admin_tls.as_ref()));
                for k in &keys {
                    let req =
                        ep::RangeRequest { key: k.clone().into_bytes(), serializable: true, ..Default::default() };
                    if !kv.range(req).await.is_ok_and(|r| r.get_ref().count == 1) {
                        return false;
                    }
                }
                true
            })
        });
    }

    /// Starts member `i`'s process.
    pub fn spawn(&mut self, i: usize, state: &str) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).expect("log file");
        let mut cmd = Command::new(bin());
        // The binary's own log filter unless the test run asks for another.
        match std::env::var("FLOTILLA_TEST_LOG") {
            Ok(filter) => cmd.env("FLOTILLA_LOG", filter),
            Err(_) => cmd.env_remove("FLOTILLA_LOG"),
        };
        let child = cmd
            .args(["master", "--name", &m.name, "--data-dir"])
            .arg(&m.data_dir)
            .args(["--listen-client", &m.url(), "--listen-peer", &m.peer_url()])
            .args(["--listen-metrics", &format!("http://127.0.0.1:{}", m.metrics)])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(m.tls_flags())
            .args(&m.extra_args)
            .envs(m.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn flotilla master");
        m.child = Some(child);
    }

    /// Freezes member `i` with SIGSTOP until the returned guard is dropped (then SIGCONT):
    /// a test that fails meanwhile never leaves it stopped.
    pub fn freeze(&self, i: usize) -> Frozen {
        let pid = self.members[i].child.as_ref().expect("running").id();
        let ok = Command::new("kill").args(["-STOP", &pid.to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -STOP {pid}");
        Frozen(pid)
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts member `i` (after a kill), as an existing member.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, "new");
    }

    /// The certificates directory of a TLS cluster.
    pub fn pki(&self) -> Option<&Path> {
        self.members.first().and_then(|m| m.pki.as_deref())
    }

    /// A resource-API client over every member (made inside `rt`, which drives it); an
    /// admin in a TLS cluster.
    pub fn client(&self, rt: &tokio::runtime::Runtime) -> flotilla_client::Client {
        let endpoints: Vec<String> = self.members.iter().map(|m| m.endpoint()).collect();
        let opts = flotilla_client::Options {
            tls: self.members.first().and_then(|m| m.admin_tls.clone()),
            ..Default::default()
        };
        rt.block_on(async { flotilla_client::Client::with_options(&endpoints, opts) }).expect("client")
    }

    pub fn endpoints(&self) -> String {
        self.members.iter().filter(|m| m.child.is_some()).map(|m| m.endpoint()).collect::<Vec<_>>().join(",")
    }

    /// Index of the member that every running member agrees is the leader, once they do.
    pub fn wait_leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                seen.push(status(m).map(|s| s.leader));
            }
            if let Some(Some(l)) = seen.first() {
                if *l != 0 && seen.iter().all(|s| s.as_ref() == Some(l)) {
                    if let Some(i) = self
                        .members
                        .iter()
                        .position(|m| status(m).map(|s| s.header.map(|h| h.member_id)) == Some(Some(*l)))
                    {
                        return i;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("no agreed leader within {within:?}: {seen:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like [`eventually`], but a timeout shows the members' logs.
    pub fn eventually(&self, within: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            if Instant::now() > deadline {
                panic!("timed out after {within:?} waiting for: {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// All members' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            s.push_str(&format!("--- {} ---\n{}\n", m.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
        s
    }

    /// Runs the stock etcdctl against `endpoints` (as the admin in a TLS cluster).
    pub fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Output {
        let own = self.pki().filter(|_| suite_pki().is_none());
        let mut all: Vec<String> = own.map(admin_flags).unwrap_or_default();
        all.extend(args.iter().map(|s| s.to_string()));
        etcdctl(endpoints, &all.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        *SUITE_TLS.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if std::env::var_os("FLOTILLA_TEST_KEEP").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            eprintln!("FLOTILLA_TEST_KEEP: the cluster's data and logs are in {}", kept.display());
        }
    }
}

/// Runs the stock etcdctl (v3 API) with a short dial timeout (as the admin under
/// [`tls_suite`]).
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=2s", "--command-timeout=10s"])
        .args(suite_pki().as_deref().map(admin_flags).unwrap_or_default())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl is installed (Debian package etcd-client)")
}

/// etcdctl's stdout, asserting success.
pub fn etcdctl_ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args);
    assert!(out.status.success(), "etcdctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One blocking Status call (tests are synchronous; each call gets its own runtime).
pub fn status(m: &Member) -> Option<ep::StatusResponse> {
    rt().block_on(async {
        let endpoint = Channel::from_shared(m.url())
            .ok()?
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_secs(1));
        let ch = flotilla_client::pool::channel(endpoint, m.admin_tls.as_ref());
        MaintenanceClient::new(ch).status(ep::StatusRequest {}).await.ok().map(|r| r.into_inner())
    })
}

/// A current-thread runtime for blocking on one client call.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// A KV client to `url` with a request timeout (the admin's under [`tls_suite`]).
pub async fn kv(url: &str, timeout: Duration) -> KvClient<Channel> {
    let endpoint = Channel::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_millis(300))
        .timeout(timeout);
    KvClient::new(flotilla_client::pool::channel(endpoint, suite_tls().as_ref()))
}

/// Waits (polling, bounded) until `f` holds.
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn data_dir_of(c: &Cluster, i: usize) -> &Path {
    &c.members[i].data_dir
}

/// Reads one metric's value from member `m`'s /metrics endpoint (plain HTTP/1.0 GET).
pub fn metric(m: &Member, name: &str) -> Option<f64> {
    scrape(m.metrics)?
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Puts `key=value` through member url; `Ok` only when acknowledged.
pub async fn put(url: &str, key: &str, value: &str) -> Result<ep::PutResponse, tonic::Status> {
    let mut c = kv(url, Duration::from_secs(3)).await;
    c.put(ep::PutRequest { key: key.into(), value: value.into(), ..Default::default() }).await.map(|r| r.into_inner())
}

/// Serializable (local) read of every key under `prefix` from member url.
pub async fn local_range(url: &str, prefix: &str) -> Result<Vec<(String, String)>, tonic::Status> {
    let mut c = kv(url, Duration::from_secs(3)).await;
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let r = c
        .range(ep::RangeRequest { key: prefix.into(), range_end: end, serializable: true, ..Default::default() })
        .await?
        .into_inner();
    Ok(r.kvs
        .into_iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned()))
        .collect())
}

/// The text of `/metrics` on 127.0.0.1:`port`.
pub fn scrape(port: u16) -> Option<String> {
    scrape_at(&format!("127.0.0.1:{port}"))
}

/// The text of `/metrics` on `addr` (host:port).
pub fn scrape_at(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Labels from pairs.
pub fn labels(kv: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A ReplicaSet `default/<name>` of `replicas` pods labelled `app=<name>`, each one
/// busybox container asking for 100m CPU.
pub fn replicaset(name: &str, replicas: i32) -> flotilla_proto::api::ReplicaSet {
    use flotilla_proto::api as pb;
    let requests = labels(&[("cpu", "100m")]);
    pb::ReplicaSet {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::ReplicaSetSpec {
            replicas: Some(replicas),
            selector: Some(pb::LabelSelector { match_labels: labels(&[("app", name)]), ..Default::default() }),
            template: Some(pb::PodTemplateSpec {
                metadata: Some(pb::ObjectMeta { labels: labels(&[("app", name)]), ..Default::default() }),
                spec: Some(pb::PodSpec {
                    containers: vec![pb::Container {
                        name: "main".into(),
                        image: "busybox:1.36".into(),
                        resources: Some(pb::ResourceRequirements { requests, ..Default::default() }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            min_ready_seconds: 0,
        }),
        status: None,
    }
}

/// Runs `flotilla ctl --endpoints <endpoints> <args>` (as the admin under [`tls_suite`]).
pub fn ctl(endpoints: &str, args: &[&str]) -> Output {
    ctl_command(endpoints).args(args).output().expect("run flotilla ctl")
}

/// `flotilla ctl --endpoints <endpoints>` to add to and run (the admin's certificate in
/// its environment under [`tls_suite`]).
pub fn ctl_command(endpoints: &str) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("ctl").args(["--endpoints", endpoints]);
    if let Some(pki) = suite_pki() {
        let f = |name: &str| pki.join(name);
        cmd.env("FLOTILLA_CACERT", f("ca.crt"))
            .env("FLOTILLA_CERT", f("user-admin.crt"))
            .env("FLOTILLA_KEY", f("user-admin.key"));
    }
    cmd
}

/// Runs flotctl, which must succeed; its stdout.
pub fn ctl_ok(endpoints: &str, args: &[&str]) -> String {
    let out = ctl(endpoints, args);
    assert!(out.status.success(), "flotctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs flotctl, which must fail with one `error: ` line on stderr; that line.
pub fn ctl_fails(endpoints: &str, args: &[&str]) -> String {
    let out = ctl(endpoints, args);
    assert!(!out.status.success(), "flotctl {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// A Deployment `default/<name>` of `replicas` pods, with [`replicaset`]'s template.
pub fn deployment(name: &str, replicas: i32) -> flotilla_proto::api::Deployment {
    use flotilla_proto::api as pb;
    let rs = replicaset(name, replicas).spec.expect("spec");
    pb::Deployment {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::DeploymentSpec {
            replicas: Some(replicas),
            selector: rs.selector,
            template: rs.template,
            ..Default::default()
        }),
        status: None,
    }
}

/// Starts hollow nodes `names` (in this process) and waits until they are registered;
/// they stop when the sender is used or dropped.
pub async fn hollow_nodes(client: &flotilla_client::Client, names: &[&str]) -> tokio::sync::oneshot::Sender<()> {
    use flotilla_proto::api as pb;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let nodes = tokio::spawn(flotilla_bench::hollow::run(
        client.clone(),
        names.iter().map(|s| s.to_string()).collect(),
        std::collections::BTreeMap::new(),
        async move {
            let _ = stopped.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in names {
        while client.get::<pb::Node>("", n).await.is_err() {
            assert!(!nodes.is_finished(), "the hollow nodes stopped early");
            assert!(Instant::now() < deadline, "hollow node {n} did not register");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop
}

/// Waits until `f` gives Some (looking every 50 ms), at most 30 s; panics with `what`
/// and the cluster's logs when it does not.
pub async fn until<T, F, Fut>(c: &Cluster, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "waiting for: {what}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `flotilla ARGS`, which must fail before doing anything, saying `want` on stderr.
pub fn refused(args: &[&str], want: &str) {
    let out = Command::new(bin()).args(args).output().expect("run flotilla");
    assert!(!out.status.success(), "{args:?} accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(want), "{args:?}: {err}");
}
