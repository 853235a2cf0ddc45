//! The kubelet's log endpoint (`flotilla.api.v1.Kubelet/ContainerLogs`), which the
//! apiserver's `PodLogs` forwards to: a container's output file, whole or its last lines,
//! and — when following — what it writes next, until it ends or the caller goes.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::api::{self as pb, kubelet_server::Kubelet};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::runtime::{ContainerInfo, Runtime, State};

/// The largest piece of output sent at once.
const CHUNK: usize = 64 << 10;

/// How often a followed log is looked at for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

/// The last `n` lines of `data` (all of it when `n` is None).
pub fn tail(data: &[u8], n: Option<i64>) -> &[u8] {
    let Some(n) = n.and_then(|n| usize::try_from(n).ok()) else { return data };
    if n == 0 {
        return &[];
    }
    // A final newline ends the last line; it does not start another.
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

/// Rotates a container's log once it is larger than `max_size`: `log.1` … `log.<keep>`
/// shift up (the oldest dropped), the log is copied to `log.1` and truncated in place —
/// the runtime keeps writing to it (it appends), so nothing reopens it. Lines written
/// between the copy and the truncation are lost (as with logrotate's copytruncate).
/// Whether it rotated.
pub fn rotate(log: &std::path::Path, max_size: u64, keep: usize) -> std::io::Result<bool> {
    let size = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max_size {
        return Ok(false);
    }
    let numbered = |i: usize| {
        let mut p = log.as_os_str().to_owned();
        p.push(format!(".{i}"));
        std::path::PathBuf::from(p)
    };
    let keep = keep.max(1);
    let _ = std::fs::remove_file(numbered(keep));
    for i in (1..keep).rev() {
        if numbered(i).exists() {
            std::fs::rename(numbered(i), numbered(i + 1))?;
        }
    }
    std::fs::copy(log, numbered(1))?;
    std::fs::OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(true)
}

/// The rotated logs of `log` that exist (`log.1`, `log.2`, ...).
pub fn rotated(log: &std::path::Path) -> Vec<std::path::PathBuf> {
    (1..)
        .map(|i| {
            let mut p = log.as_os_str().to_owned();
            p.push(format!(".{i}"));
            std::path::PathBuf::from(p)
        })
        .take_while(|p| p.exists())
        .collect()
}

/// What was written to `f` since it was last read.
fn read_more(f: &mut Option<std::fs::File>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(f) = f {
        let _ = f.read_to_end(&mut out);
    }
    out
}

/// Serves the logs of the containers `runtime` has.
pub struct LogService<R: Runtime> {
    runtime: Arc<R>,
}

impl<R: Runtime> LogService<R> {
    /// Serves from `runtime`.
    pub fn new(runtime: Arc<R>) -> LogService<R> {
        LogService { runtime }
    }
}

#[tonic::async_trait]
impl<R: Runtime> Kubelet for LogService<R> {
    type ContainerLogsStream = LogStream;

    async fn container_logs(&self, req: Request<pb::ContainerLogsRequest>) -> Result<Response<LogStream>, Status> {
        let r = req.into_inner();
        let mut instances: Vec<ContainerInfo> = self
            .runtime
            .list()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .filter(|c| c.pod_uid == r.pod_uid && c.name == r.container)
            .collect();
        instances.sort_by_key(|c| c.attempt);
        let chosen = if r.previous { instances.len().checked_sub(2) } else { instances.len().checked_sub(1) };
        let Some(c) = chosen.and_then(|i| instances.get(i)).cloned() else {
            let what = if r.previous { "no previous instance" } else { "not started yet" };
            return Err(Status::not_found(format!("container {:?} has {what} on this node", r.container)));
        };
        // One handle throughout: what the container wrote last is read from it even once
        // the kubelet has removed the container and its file.
        let mut file = std::fs::File::open(&c.log).ok();
        let data = read_more(&mut file);
        let first = tail(&data, r.tail_lines).to_vec();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::LogChunk, Status>>(16);
        let runtime = self.runtime.clone();
        let follow = r.follow && !r.previous;
        tokio::spawn(async move {
            // In pieces well under gRPC's message limit.
            for piece in first.chunks(CHUNK) {
                if tx.send(Ok(pb::LogChunk { data: piece.to_vec() })).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                // Whether it still runs, asked before reading: what it wrote before
                // ending is read in this same round.
                let running = runtime.inspect(&c.id).await.is_some_and(|x| matches!(x.state, State::Running { .. }));
                let more = read_more(&mut file);
                for piece in more.chunks(CHUNK) {
                    if tx.send(Ok(pb::LogChunk { data: piece.to_vec() })).await.is_err() {
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
                if !running {
                    // The runtime may still be copying its last output (the shim copies
                    // from the process's pipes): once more, after a pause.
                    tokio::time::sleep(FOLLOW_EVERY).await;
                    let last = read_more(&mut file);
                    for piece in last.chunks(CHUNK) {
                        if tx.send(Ok(pb::LogChunk { data: piece.to_vec() })).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_size_is_rotated_in_place() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.log");
        // A writer that appends, as the shims do, and keeps its handle.
        let mut w = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open");
        w.write_all(&[b'a'; 100]).expect("write");
        assert!(!rotate(&log, 200, 2).expect("rotate"), "small enough");
        w.write_all(&[b'b'; 150]).expect("write");
        assert!(rotate(&log, 200, 2).expect("rotate"));
        assert_eq!(std::fs::metadata(&log).expect("log").len(), 0);
        assert_eq!(std::fs::metadata(dir.path().join("c.log.1")).expect("log.1").len(), 250);
        w.write_all(b"after\n").expect("write");
        assert_eq!(std::fs::read(&log).expect("log"), b"after\n", "the writer goes on at the start");
        w.write_all(&[b'c'; 300]).expect("write");
        assert!(rotate(&log, 200, 2).expect("rotate"));
        assert_eq!(rotated(&log).len(), 2, "log.1 moved to log.2");
        w.write_all(&[b'd'; 300]).expect("write");
        assert!(rotate(&log, 200, 2).expect("rotate"));
        assert_eq!(rotated(&log).len(), 2, "the oldest dropped");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let log = b"a\nb\nc\n";
        assert_eq!(tail(log, None), log);
        assert_eq!(tail(log, Some(2)), b"b\nc\n");
        assert_eq!(tail(log, Some(5)), log);
        assert_eq!(tail(log, Some(0)), b"");
        assert_eq!(tail(b"a\nb", Some(1)), b"b", "a last line without a newline");
    }
}
