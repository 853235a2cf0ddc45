//! Slow links: a userspace TCP proxy on every peer link (the kernel here has no netem).
//!
//! In each member's namespace, an iptables `REDIRECT` sends the member's outgoing
//! connections to another member's peer port into a proxy listening on the member's own
//! loopback (one port per destination); the proxy, running on a harness thread that has
//! entered that namespace, connects on to the real peer from the member's own address.
//! Its sockets carry a firewall mark the redirect skips. So partitions (rules on the
//! members' addresses) still apply to proxied traffic, and the proxy is in place from the
//! start: slowing a link affects connections that are already open.
//!
//! A link's settings: every chunk read is delivered `delay ± jitter` later (order kept);
//! with `loss`, a chunk is held back as if its segment had been lost and retransmitted
//! (a stall of 200–600 ms): a TCP stream cannot lose bytes, it stalls.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::ChaosError;

/// The firewall mark on the proxy's own connections (not redirected again).
pub const MARK: u32 = 0x464c;
/// Bytes a slowed link holds back per direction before it stops reading.
const HELD_CAP: usize = 4 << 20;
/// The proxy for destination member `j` (0-based) listens on `PORT_BASE + j`.
pub const PORT_BASE: u16 = 23800;

/// One direction-agnostic link's settings (`from` → `to` connections, both ways).
#[derive(Debug, Default)]
pub struct Link {
    delay_ms: AtomicU32,
    jitter_ms: AtomicU32,
    /// Per mille of chunks stalled.
    loss_permille: AtomicU32,
}

impl Link {
    /// Sets delay, jitter and loss (per mille).
    pub fn set(&self, delay_ms: u32, jitter_ms: u32, loss_permille: u32) {
        self.delay_ms.store(delay_ms, Ordering::Relaxed);
        self.jitter_ms.store(jitter_ms, Ordering::Relaxed);
        self.loss_permille.store(loss_permille, Ordering::Relaxed);
    }

    /// Back to a plain pipe.
    pub fn clear(&self) {
        self.set(0, 0, 0);
    }

    /// When a chunk read now should be delivered.
    fn due(&self, now: Instant) -> Instant {
        let (d, j, l) = (
            self.delay_ms.load(Ordering::Relaxed),
            self.jitter_ms.load(Ordering::Relaxed),
            self.loss_permille.load(Ordering::Relaxed),
        );
        if d == 0 && j == 0 && l == 0 {
            return now;
        }
        let mut rng = rand::rng();
        let mut ms = i64::from(d) + rng.random_range(-i64::from(j)..=i64::from(j));
        if rng.random_range(0..1000) < l {
            ms += rng.random_range(200..600);
        }
        now + Duration::from_millis(ms.max(0) as u64)
    }
}

/// The proxies of a run: `links[i][j]` is member `i`'s connections to member `j`.
pub struct Proxies {
    /// Link settings, by source and destination member.
    pub links: Vec<Vec<Arc<Link>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Proxies {
    /// Starts a proxy thread in each member's namespace (`netns[i]`, address `ips[i]`);
    /// the redirect rules are the topology's. Returns once every listener is bound.
    pub fn start(netns: &[String], ips: &[String], peer_port: u16) -> Result<Proxies, ChaosError> {
        let n = netns.len();
        let links: Vec<Vec<Arc<Link>>> = (0..n).map(|_| (0..n).map(|_| Arc::new(Link::default())).collect()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, ns) in netns.iter().enumerate() {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let ns = ns.clone();
            let targets: Vec<(usize, String)> = ips
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, ip)| (j, format!("{ip}:{peer_port}")))
                .collect();
            let my_links = links[i].clone();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let r = serve_in(&ns, targets, my_links, stop, &ready_tx);
                if let Err(e) = r {
                    let _ = ready_tx.send(Err(e));
                }
            }));
            ready_rx.recv().map_err(|_| ChaosError::Setup("a proxy thread ended before it was ready".into()))??;
        }
        Ok(Proxies { links, stop, threads })
    }

    /// Clears every link's settings.
    pub fn clear(&self) {
        self.links.iter().flatten().for_each(|l| l.clear());
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The body of one proxy thread: enter namespace `ns`, listen for each target, proxy
/// until `stop`.
fn serve_in(
    ns: &str,
    targets: Vec<(usize, String)>,
    links: Vec<Arc<Link>>,
    stop: Arc<AtomicBool>,
    ready: &std::sync::mpsc::Sender<Result<(), ChaosError>>,
) -> Result<(), ChaosError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| ChaosError::Setup(format!("proxy in {ns}: {what}: {e}"));
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|e| setup("open namespace", &e))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| setup("enter namespace", &e))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| setup("runtime", &e))?;
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for (j, target) in targets {
            let l = TcpListener::bind(("127.0.0.1", PORT_BASE + j as u16))
                .await
                .map_err(|e| setup(&format!("listen for {target}"), &e))?;
            tasks.push(tokio::spawn(accept_loop(l, target, links[j].clone())));
        }
        let _ = ready.send(Ok(()));
        while !stop.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for t in tasks {
            t.abort();
        }
        Ok(())
    })
}

async fn accept_loop(l: TcpListener, target: String, link: Arc<Link>) {
    loop {
        let inbound = match l.accept().await {
            Ok((inbound, _)) => inbound,
            Err(e) => {
                // Out of descriptors or an aborted handshake: keep serving the link.
                eprintln!("flotilla-chaos: proxy to {target}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let target = target.clone();
        let link = link.clone();
        tokio::spawn(async move {
            if let Ok(outbound) = connect_marked(&target).await {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                // Either direction ending closes both.
                tokio::select! {
                    () = pump(ir, ow, link.clone()) => {}
                    () = pump(or, iw, link) => {}
                }
            }
        });
    }
}

/// Connects to `target` with [`MARK`] on the socket, so the redirect lets it through.
async fn connect_marked(target: &str) -> std::io::Result<TcpStream> {
    let addr: std::net::SocketAddr =
        target.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{target}: {e}")))?;
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_mark(MARK)?;
    s.set_nonblocking(true)?;
    let s = tokio::net::TcpSocket::from_std_stream(s.into());
    tokio::time::timeout(Duration::from_secs(2), s.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Copies `from` to `to`, delivering each chunk when the link says it is due (in order;
/// straight through while the link is clear and nothing is held back).
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, link: Arc<Link>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut held_bytes = 0usize;
    let mut last = Instant::now();
    loop {
        let next = held.front().map(|h| h.0);
        tokio::select! {
            // Past the cap, stop reading: the sender feels backpressure as on a slow link.
            r = from.read(&mut buf), if held_bytes < HELD_CAP => {
                let n = match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let now = Instant::now();
                last = link.due(now).max(last);
                if held.is_empty() && last <= now {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                } else {
                    held_bytes += n;
                    held.push_back((last, buf[..n].to_vec()));
                }
            }
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while held.front().is_some_and(|h| h.0 <= now) {
                    if let Some((_, chunk)) = held.pop_front() {
                        held_bytes -= chunk.len();
                        if to.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
    // The sender is done: deliver what is held, on time, then pass the end on.
    for (due, chunk) in held {
        tokio::time::sleep_until(due).await;
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_link_delivers_at_once_and_a_slow_one_within_its_settings() {
        let link = Link::default();
        let now = Instant::now();
        assert_eq!(link.due(now), now);
        link.set(100, 20, 0);
        for _ in 0..100 {
            let d = link.due(now) - now;
            assert!((Duration::from_millis(80)..=Duration::from_millis(120)).contains(&d), "{d:?}");
        }
        // Every chunk "lost": held back by a retransmission-like stall on top.
        link.set(100, 0, 1000);
        for _ in 0..100 {
            let d = link.due(now) - now;
            assert!((Duration::from_millis(300)..Duration::from_millis(700)).contains(&d), "{d:?}");
        }
        link.clear();
        assert_eq!(link.due(now), now);
    }
}
