//! The audit log: one JSON line per write and per refusal on the client port (who, what,
//! on what, and how it ended), appended to a file that is rotated by size
//! (`audit.log` → `audit.log.1` → … → `audit.log.<backups>`, the oldest dropped).
//!
//! Lines are handed to a writer thread, so a request never waits on the disk; they are
//! written as they come (not fsynced: an audit line may be lost with the machine, never
//! half-written into the next). If the writer falls more than [`QUEUE`] lines behind,
//! further lines are dropped and counted, and the count is written when it catches up.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use serde::Serialize;

use crate::auth::User;
use crate::error::StoreError;

/// Lines waiting for the writer, at most.
pub const QUEUE: usize = 10_000;

/// One audit record.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The user (empty when not authenticated).
    pub user: &'a str,
    /// Its groups.
    pub groups: &'a [String],
    /// The master acting as `user`, when impersonated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated_by: Option<&'a str>,
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The verb (`create`, `update`, `delete`, ...) or the etcd call (`/etcdserverpb.KV/Put`).
    pub verb: &'a str,
    /// The resource (`pods`, `nodes/status`; `etcd` for the etcd API).
    pub resource: &'a str,
    /// Its namespace.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub namespace: &'a str,
    /// Its name.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'a str,
    /// `allowed` (done), `denied` (refused by authentication or authorization), or
    /// `failed` (allowed, then failed: the reason says how).
    pub result: &'a str,
    /// Why, when not plainly allowed.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: &'a str,
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

const NO_GROUPS: &[String] = &[];

impl<'a> Entry<'a> {
    /// A call on the client port as the authentication layer sees it.
    pub fn call(
        user: Option<&'a User>,
        path: &'a str,
        result: &'a str,
        reason: &'a str,
        peer: Option<&flotilla_tls::PeerInfo>,
    ) -> Entry<'a> {
        let resource = if path.starts_with("/etcdserverpb.") { "etcd" } else { "" };
        Entry {
            time: now(),
            user: user.map_or("", |u| u.name.as_str()),
            groups: user.map_or(NO_GROUPS, |u| u.groups.as_slice()),
            impersonated_by: user.and_then(|u| u.impersonated_by.as_deref()),
            source: peer.and_then(|p| p.remote).map(|a| a.to_string()),
            verb: path,
            resource,
            namespace: "",
            name: "",
            result,
            reason,
        }
    }

    /// A verb on an object of the resource API.
    pub fn resource(
        user: Option<&'a User>,
        verb: &'a str,
        resource: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> Entry<'a> {
        Entry {
            time: now(),
            user: user.map_or("", |u| u.name.as_str()),
            groups: user.map_or(NO_GROUPS, |u| u.groups.as_slice()),
            impersonated_by: user.and_then(|u| u.impersonated_by.as_deref()),
            source: None,
            verb,
            resource,
            namespace,
            name,
            result: "allowed",
            reason: "",
        }
    }
}

/// The audit log of a master.
pub struct AuditLog {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (appending to) `path`, rotated past `max_bytes` keeping `backups` old files.
    pub fn open(path: &Path, max_bytes: u64, backups: usize) -> Result<Arc<AuditLog>, StoreError> {
        let bad = |e: std::io::Error| StoreError::InvalidArgument(format!("audit log {}: {e}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(bad)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(bad)?;
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut w =
            Writer { path: path.to_path_buf(), size: file.metadata().map_err(bad)?.len(), file, max_bytes, backups };
        let lost = dropped.clone();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let n = lost.swap(0, Ordering::Relaxed);
                    if n > 0 {
                        w.write(&format!("{{\"time\":\"{}\",\"dropped\":{n}}}", now()));
                    }
                    w.write(&line);
                }
            })
            .map_err(bad)?;
        Ok(Arc::new(AuditLog { tx, dropped }))
    }

    /// Records `e` (never blocks).
    pub fn record(&self, e: &Entry<'_>) {
        let Ok(line) = serde_json::to_string(e) else { return };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Writer {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    max_bytes: u64,
    backups: usize,
}

impl Writer {
    fn write(&mut self, line: &str) {
        if self.size > 0 && self.size + line.len() as u64 + 1 > self.max_bytes {
            self.rotate();
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        match self.file.write_all(&buf) {
            Ok(()) => self.size += buf.len() as u64,
            Err(e) => tracing::warn!(error = %e, path = %self.path.display(), "cannot write the audit log"),
        }
    }

    fn numbered(&self, i: usize) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) {
        if self.backups == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            for i in (1..self.backups).rev() {
                let _ = std::fs::rename(self.numbered(i), self.numbered(i + 1));
            }
            let _ = std::fs::rename(&self.path, self.numbered(1));
        }
        match std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
            Ok(f) => {
                self.file = f;
                self.size = 0;
            }
            Err(e) => tracing::warn!(error = %e, path = %self.path.display(), "cannot reopen the audit log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_the_file_is_rotated_by_size_keeping_the_backups_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 400, 2).expect("open");
        let user = User { name: "bob".into(), groups: vec!["dev".into()], impersonated_by: None };
        for i in 0..20 {
            let name = format!("web-{i}");
            log.record(&Entry::resource(Some(&user), "create", "pods", "default", &name));
        }
        let all = || -> Vec<String> {
            let mut lines = Vec::new();
            for p in [path.with_extension("log.2"), path.with_extension("log.1"), path.clone()] {
                lines.extend(std::fs::read_to_string(p).unwrap_or_default().lines().map(String::from));
            }
            lines
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !all().last().is_some_and(|l| l.contains("web-19")) {
            assert!(std::time::Instant::now() < deadline, "the writer did not write the last line");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!path.with_extension("log.3").exists(), "more backups than asked for");
        for p in [&path, &path.with_extension("log.1")] {
            assert!(std::fs::metadata(p).expect("file").len() <= 400);
        }
        let last: serde_json::Value = serde_json::from_str(all().last().expect("a line")).expect("json");
        assert_eq!(last["user"], "bob");
        assert_eq!(last["verb"], "create");
        assert_eq!(last["resource"], "pods");
        assert_eq!(last["namespace"], "default");
        assert_eq!(last["result"], "allowed");
        assert!(last.get("reason").is_none());
    }
}
