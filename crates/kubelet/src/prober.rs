//! Probes: startup, liveness and readiness, one task per running container (as the
//! kubelet's probe workers), each probe on its own period after its initial delay.
//!
//! * **startup**: until it has succeeded, the other two do not run; `failureThreshold`
//!   failures in a row kill the container;
//! * **liveness**: `failureThreshold` failures in a row kill the container (the pod's
//!   restartPolicy then decides whether it starts again);
//! * **readiness**: the container is ready after `successThreshold` successes in a row,
//!   not ready after `failureThreshold` failures in a row; without a readiness probe a
//!   started container is ready.
//!
//! A probe is an exec in the container (exit 0), a TCP connect, or an HTTP GET answered
//! with 200-399, each within `timeoutSeconds`. The sync loop reads the results and is
//! woken when one changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::api as pb;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use crate::runtime::Runtime;

/// What the probes of one container say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Results {
    /// The startup probe succeeded (or there is none).
    pub started: bool,
    /// Ready (see the module doc).
    pub ready: bool,
    /// Why the container must be killed, once a startup or liveness probe gave up on it.
    pub kill: Option<String>,
    /// Why it is not ready, while its readiness probe fails.
    pub unready: Option<String>,
}

/// Runs one probe; Ok(()) on success, Err(why) on failure.
pub async fn probe_once<R: Runtime>(runtime: &R, id: &str, p: &pb::Probe, pod_ip: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::try_from(p.timeout_seconds.max(1)).unwrap_or(1));
    if let Some(e) = &p.exec {
        return match runtime.exec(id, &e.command, timeout).await {
            Ok(Some(0)) => Ok(()),
            Ok(Some(code)) => Err(format!("exec {:?} exited with {code}", e.command)),
            Ok(None) => Err(format!("exec {:?} timed out after {timeout:?} or could not run", e.command)),
            Err(err) => Err(err.to_string()),
        };
    }
    if let Some(t) = &p.tcp_socket {
        let host = if t.host.is_empty() { pod_ip } else { t.host.as_str() };
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port(t.port)))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{}: {e}", t.port)),
            Err(_) => Err(format!("dial tcp {host}:{}: timed out", t.port)),
        };
    }
    if let Some(h) = &p.http_get {
        let host = if h.host.is_empty() { pod_ip } else { h.host.as_str() };
        return match tokio::time::timeout(timeout, http_get(host, port(h.port), &h.path)).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Err(format!("Get http://{host}:{}{}: {e}", h.port, h.path)),
            Err(_) => Err(format!("Get http://{host}:{}{}: timed out after {timeout:?}", h.port, h.path)),
        };
    }
    Err("the probe has no handler".into())
}

fn port(p: i32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

/// An HTTP/1.1 GET; the status code.
async fn http_get(host: &str, port: u16, path: &str) -> Result<u16, String> {
    use http_body_util::Empty;
    let stream = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = if path.is_empty() { "/" } else { path };
    let req = http::Request::get(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::USER_AGENT, "flotilla-probe/1")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

fn seconds(n: i32) -> Duration {
    Duration::from_secs(u64::try_from(n.max(0)).unwrap_or(0))
}

/// Probe tasks and their results, by container id.
pub struct Prober<R: Runtime> {
    runtime: Arc<R>,
    results: Arc<Mutex<HashMap<String, Results>>>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    changed: UnboundedSender<()>,
}

impl<R: Runtime> Prober<R> {
    /// A prober that says on `changed` when a result changes.
    pub fn new(runtime: Arc<R>, changed: UnboundedSender<()>) -> Prober<R> {
        Prober { runtime, results: Arc::default(), tasks: Mutex::default(), changed }
    }

    /// The results for container `id` (a container without a task yet: not started).
    pub fn results(&self, id: &str) -> Results {
        self.results.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned().unwrap_or_default()
    }

    /// Makes sure running container `id` (of `c`, at `pod_ip`) is being probed.
    pub fn ensure(&self, id: &str, c: &pb::Container, pod_ip: &str) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.contains_key(id) {
            return;
        }
        // Known at once, without waiting for the task: a container without a startup
        // probe has started, and without a readiness probe too it is ready (so a worker
        // that restarts and adopts it never reports it unready meanwhile).
        let started = c.startup_probe.is_none();
        let first = Results { started, ready: started && c.readiness_probe.is_none(), kill: None, unready: None };
        self.results.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_insert(first);
        let (runtime, results, changed) = (self.runtime.clone(), self.results.clone(), self.changed.clone());
        let (id_owned, c, ip) = (id.to_string(), c.clone(), pod_ip.to_string());
        let set = move |f: &dyn Fn(&mut Results)| {
            let mut all = results.lock().unwrap_or_else(|p| p.into_inner());
            let r = all.entry(id_owned.clone()).or_default();
            let before = r.clone();
            f(r);
            if *r != before {
                let _ = changed.send(());
            }
        };
        let key = id.to_string();
        let id = id.to_string();
        let task = tokio::spawn(async move {
            // Startup first.
            if let Some(p) = &c.startup_probe {
                tokio::time::sleep(seconds(p.initial_delay_seconds)).await;
                let mut failures = 0;
                loop {
                    match probe_once(runtime.as_ref(), &id, p, &ip).await {
                        Ok(()) => break,
                        Err(why) => {
                            failures += 1;
                            if failures >= p.failure_threshold.max(1) {
                                set(&|r| r.kill = Some(format!("Startup probe failed: {why}")));
                                return;
                            }
                        }
                    }
                    tokio::time::sleep(seconds(p.period_seconds.max(1))).await;
                }
            }
            set(&|r| {
                r.started = true;
                if c.readiness_probe.is_none() {
                    r.ready = true;
                }
            });
            let start = tokio::time::Instant::now();
            let due = |p: &Option<pb::Probe>| p.as_ref().map(|p| start + seconds(p.initial_delay_seconds));
            let (mut live_due, mut ready_due) = (due(&c.liveness_probe), due(&c.readiness_probe));
            let (mut live_failures, mut ready_run, mut ready_ok) = (0, 0i32, None::<bool>);
            loop {
                let next = [live_due, ready_due].into_iter().flatten().min();
                let Some(next) = next else { return };
                tokio::time::sleep_until(next).await;
                let now = tokio::time::Instant::now();
                if let (Some(p), Some(d)) = (&c.liveness_probe, live_due) {
                    if d <= now {
                        match probe_once(runtime.as_ref(), &id, p, &ip).await {
                            Ok(()) => live_failures = 0,
                            Err(why) => {
                                live_failures += 1;
                                if live_failures >= p.failure_threshold.max(1) {
                                    set(&|r| r.kill = Some(format!("Liveness probe failed: {why}")));
                                    return;
                                }
                            }
                        }
                        live_due = Some(now + seconds(p.period_seconds.max(1)));
                    }
                }
                if let (Some(p), Some(d)) = (&c.readiness_probe, ready_due) {
                    if d <= now {
                        let outcome = probe_once(runtime.as_ref(), &id, p, &ip).await;
                        let ok = outcome.is_ok();
                        // Count runs of the same outcome.
                        ready_run = if ready_ok == Some(ok) { ready_run + 1 } else { 1 };
                        ready_ok = Some(ok);
                        let threshold = if ok { p.success_threshold.max(1) } else { p.failure_threshold.max(1) };
                        if ready_run >= threshold {
                            let why = outcome.err().map(|w| format!("Readiness probe failed: {w}"));
                            set(&|r| {
                                r.ready = ok;
                                r.unready.clone_from(&why);
                            });
                        }
                        ready_due = Some(now + seconds(p.period_seconds.max(1)));
                    }
                }
            }
        });
        tasks.insert(key, task);
    }

    /// Stops probing every container not in `running`, and forgets its results.
    pub fn retain(&self, running: &HashSet<String>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|id, t| {
            let keep = running.contains(id);
            if !keep {
                t.abort();
            }
            keep
        });
        self.results.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| running.contains(id));
    }
}

impl<R: Runtime> Drop for Prober<R> {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).values() {
            t.abort();
        }
    }
}
