//! `flotilla certs`: the cluster CA and certificates from the command line — files and
//! their modes, the identities the certificates carry, and bad requests refused with
//! nothing written.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn certs(args: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("certs").args(args).output().expect("flotilla certs")
}

fn ok(args: &[&str]) -> String {
    let out = certs(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn identity_of(p: &Path) -> flotilla_tls::Identity {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(p).expect("certificate");
    flotilla_tls::identity(&der).expect("identity")
}

#[test]
fn certs_init_and_issue_write_a_ca_and_certificates_with_private_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("pki");
    let ds = d.display().to_string();
    assert!(ok(&["init", "--dir", &ds]).contains("made the cluster CA"));
    assert_eq!((mode(&d.join("ca.key")), mode(&d.join("ca.crt"))), (0o600, 0o644));
    ok(&["issue", "master", "n1", "--dir", &ds, "--address", "10.0.0.1", "--address", "m1.example"]);
    ok(&["issue", "node", "w1", "--dir", &ds, "--address", "10.0.0.11"]);
    ok(&["issue", "scheduler", "--dir", &ds]);
    ok(&["issue", "admin", "alice", "--dir", &ds]);
    ok(&["issue", "user", "bob", "--group", "dev", "--dir", &ds]);
    let want = [
        ("master-n1", "system:master:n1", Some("system:masters")),
        ("node-w1", "system:node:w1", Some("system:nodes")),
        ("scheduler", "system:flotilla-scheduler", None),
        ("user-alice", "alice", Some("system:masters")),
        ("user-bob", "bob", Some("dev")),
    ];
    for (file, user, group) in want {
        let id = identity_of(&d.join(format!("{file}.crt")));
        assert_eq!((id.user.as_str(), id.groups.first().map(String::as_str)), (user, group), "{file}");
        assert_eq!(mode(&d.join(format!("{file}.key"))), 0o600, "{file}.key");
    }
    // Rotation only when asked.
    let before = std::fs::read(d.join("node-w1.crt")).expect("read");
    let out = certs(&["issue", "node", "w1", "--dir", &ds, "--address", "10.0.0.11"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read(d.join("node-w1.crt")).expect("read"), before);
    ok(&["issue", "node", "w1", "--dir", &ds, "--address", "10.0.0.11", "--force"]);
    assert_ne!(std::fs::read(d.join("node-w1.crt")).expect("read"), before);
}

#[test]
fn bad_certificate_requests_are_refused_by_name_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ds = dir.path().display().to_string();
    let out = certs(&["issue", "admin", "alice", "--dir", &ds]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca.crt"), "no CA yet: {out:?}");
    ok(&["init", "--dir", &ds]);
    let out = certs(&["init", "--dir", &ds]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a CA"), "{out:?}");
    for (args, want) in [
        (vec!["issue", "master", "n1"], "needs its addresses"),
        (vec!["issue", "master", "--address", "10.0.0.1"], "needs the master's name"),
        (vec!["issue", "node", "w1", "--address", "no such address!"], "neither an IP address nor a DNS name"),
        (vec!["issue", "scheduler", "s1"], "takes no name"),
        (vec!["issue", "admin", "alice", "--group", "dev"], "--group is for user certificates"),
        (vec!["issue", "user", "bob", "--address", "10.0.0.1"], "--address is for master, node, scheduler"),
        (vec!["issue", "proxy", "p"], "invalid value 'proxy'"),
        (vec!["issue", "admin", "alice", "--days", "0"], "--days"),
    ] {
        let mut a = args.clone();
        a.extend(["--dir", &ds]);
        let out = certs(&a);
        assert!(!out.status.success(), "{a:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{a:?}: {err}");
    }
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["ca.crt", "ca.key"], "nothing but the CA was written");
}
