//! Configuration from a YAML file, and the HTTP endpoints operators poll.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    let code = body.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body)
}

/// A member configured only by `--config-file` starts, becomes ready, and exports its
/// metrics in Prometheus text.
#[test]
fn member_runs_from_a_yaml_config_file_and_serves_health_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("flotilla.yaml");
    std::fs::write(
        &cfg,
        format!(
            "name: solo\ndata-dir: {}\nlisten-client: http://127.0.0.1:{client}\nlisten-peer: http://127.0.0.1:{peer}\n\
             listen-metrics: http://127.0.0.1:{metrics}\ninitial-cluster: solo=http://127.0.0.1:{peer}\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let mut child = Command::new(bin()).args(["master", "--config-file"]).arg(&cfg).spawn().expect("spawn");
    eventually(Duration::from_secs(30), "/readyz says ready", || {
        std::net::TcpStream::connect(("127.0.0.1", metrics)).is_ok() && http_get(metrics, "/readyz").0 == 200
    });
    assert_eq!(http_get(metrics, "/healthz").0, 200);
    etcdctl_ok(&format!("127.0.0.1:{client}"), &["put", "k", "v"]);
    let (code, body) = http_get(metrics, "/metrics");
    assert_eq!(code, 200);
    for name in [
        "flotilla_raft_term",
        "flotilla_leader_changes_total",
        "flotilla_raft_applied_index",
        "flotilla_proposals_total",
        "flotilla_wal_fsync_duration_seconds_bucket",
        "flotilla_watchers",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
    assert!(metric_from(&body, "flotilla_proposals_total") >= 1.0);
    let _ = child.kill();
    let _ = child.wait();
}

fn metric_from(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

/// A config file with a misspelt setting is refused, naming it.
#[test]
fn config_file_with_unknown_setting_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "name: a\ndata-dirr: /tmp/x\n").expect("write");
    let out = Command::new(bin()).args(["master", "--config-file"]).arg(&cfg).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `data-dirr`"), "{err}");
}

/// The annotated master config in deploy/config parses whole (every key is known): a
/// master started from it (its certificates' paths given on the command line, which
/// wins) gets as far as binding its example address.
#[test]
fn the_example_master_config_is_accepted_key_by_key() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/master.yaml");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let pki = dir.path().join("pki");
    let pd = pki.display().to_string();
    common::certs(&["init", "--dir", &pd]);
    common::certs(&["issue", "--dir", &pd, "master", "n1", "--address", "10.0.0.1"]);
    let f = |n: &str| pki.join(n).display().to_string();
    let (crt, key, ca) = (f("master-n1.crt"), f("master-n1.key"), f("ca.crt"));
    let audit = dir.path().join("audit.log").display().to_string();
    refused(
        &[
            "master",
            "--config-file",
            &example.display().to_string(),
            "--data-dir",
            &data.display().to_string(),
            "--cert-file",
            &crt,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca,
            "--peer-cert-file",
            &crt,
            "--peer-key-file",
            &key,
            "--peer-trusted-ca-file",
            &ca,
            "--audit-log-path",
            &audit,
        ],
        "cannot listen for clients on https://10.0.0.1:2379",
    );
}
