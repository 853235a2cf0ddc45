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
    fn tail_keeps_the_last_lines() {
        let log = b"a\nb\nc\n";
        assert_eq!(tail(log, None), log);
        assert_eq!(tail(log, Some(2)), b"b\nc\n");
        assert_eq!(tail(log, Some(5)), log);
        assert_eq!(tail(log, Some(0)), b"");
        assert_eq!(tail(b"a\nb", Some(1)), b"b", "a last line without a newline");
    }
}
