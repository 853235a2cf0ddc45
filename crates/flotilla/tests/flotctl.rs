//! flotctl (`flotilla ctl`) end to end against three real masters, checked on what it
//! prints: apply a multi-document manifest, get, scale, label, delete; bad input is one
//! line on stderr and a non-zero exit, and writes nothing.

mod common;

use common::*;

use common::{ctl_fails as fails, ctl_ok as ok};

const APP: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        resources:
          requests: {cpu: 100m, memory: 64Mi}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
";

/// apply (twice: created, then unchanged), get as table / yaml / name, scale, label,
/// delete -f, all through `flotilla ctl` against the masters.
#[test]
fn flotctl_applies_gets_scales_and_deletes_a_manifest() {
    let c = Cluster::start(3, &[]);
    let eps = c.endpoints();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, APP).expect("write manifest");
    let f = file.to_str().expect("path");

    assert_eq!(ok(&eps, &["apply", "-f", f]), "namespace/shop created\ndeployment/web created\nservice/web created\n");
    assert_eq!(
        ok(&eps, &["apply", "-f", f]),
        "namespace/shop unchanged\ndeployment/web unchanged\nservice/web unchanged\n"
    );

    let table = ok(&eps, &["get", "deployments", "-n", "shop"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..4], ["web", "0/2", "0", "0"], "{table}");
    assert!(row[4].ends_with('s'), "AGE column: {table}");
    // Columns line up: every row starts its second column where the header does.
    let col = lines[0].find("READY").expect("READY");
    assert_eq!(&lines[1][col..col + 3], "0/2");

    let svc = ok(&eps, &["get", "svc", "-A"]);
    assert!(svc.starts_with("NAMESPACE"), "{svc}");
    assert!(svc.contains("shop") && svc.contains("ClusterIP") && svc.contains("80/TCP"), "{svc}");
    // The cluster IP is one of the service range (10.96.0.0/12), chosen at random.
    let ip: std::net::Ipv4Addr = svc
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|s| s.parse().ok())
        .expect("a cluster IP");
    assert!(ip.octets()[0] == 10 && (96..112).contains(&ip.octets()[1]), "{svc}");

    assert_eq!(ok(&eps, &["scale", "deployment", "web", "-n", "shop", "--replicas", "5"]), "deployment/web scaled\n");
    let yaml = ok(&eps, &["get", "deploy", "web", "-n", "shop", "-o", "yaml"]);
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml output parses");
    assert_eq!(v["spec"]["replicas"].as_i64(), Some(5), "{yaml}");
    assert_eq!(v["metadata"]["generation"].as_i64(), Some(2), "{yaml}");
    assert_eq!(v["apiVersion"].as_str(), Some("apps/v1"));

    // Several names, some missing: the found ones are shown, each missing one reported.
    let out = ctl(&eps, &["get", "ns", "shop", "nosuch", "default", "gone", "-o", "name"]);
    assert!(!out.status.success(), "a missing name fails the command");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "namespace/shop\nnamespace/default\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(err.contains("nosuch") && err.contains("gone") && err.contains("not found"), "{err}");

    assert_eq!(ok(&eps, &["label", "deploy", "web", "-n", "shop", "tier=front"]), "deployment/web labeled\n");
    assert_eq!(ok(&eps, &["get", "deploy", "-n", "shop", "-l", "tier=front", "-o", "name"]), "deployment/web\n");
    let e = fails(&eps, &["label", "deploy", "web", "-n", "shop", "tier=back"]);
    assert!(e.contains("--overwrite"), "{e}");

    // The cluster commands.
    let members = ok(&eps, &["cluster", "members"]);
    assert_eq!(members.lines().count(), 4, "{members}");
    assert_eq!(members.lines().filter(|l| l.trim_end().ends_with("yes")).count(), 1, "one leader: {members}");
    let leader = ok(&eps, &["cluster", "leader"]);
    assert!(["n1\n", "n2\n", "n3\n"].contains(&leader.as_str()), "{leader}");
    let snap = dir.path().join("backup.snap");
    let saved = ok(&eps, &["cluster", "snapshot", "save", snap.to_str().expect("path")]);
    assert!(saved.starts_with("snapshot saved to"), "{saved}");
    let bytes = std::fs::read(&snap).expect("snapshot file");
    assert!(bytes.starts_with(b"FLOTSNAP1") && bytes.windows(13).any(|w| w == b"/registry/dep"), "holds the data");

    assert_eq!(
        ok(&eps, &["delete", "-f", f]),
        "service/web deleted\ndeployment/web deleted\nnamespace/shop marked for deletion\n"
    );
    // No controller manager runs here to empty it: it stays Terminating.
    let ns = ok(&eps, &["get", "ns", "shop", "-o", "yaml"]);
    assert!(ns.contains("phase: Terminating") && ns.contains("- kubernetes"), "{ns}");
}

/// Malformed YAML, an unknown kind, a wrong apiVersion, a wrong field type, an unknown
/// field, an invalid quantity and a bad selector each give one clear line and write
/// nothing.
#[test]
fn flotctl_bad_input_is_one_line_and_writes_nothing() {
    let c = Cluster::start(3, &[]);
    let eps = c.endpoints();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = |extra: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: busybox\n{extra}")
    };
    let cases: Vec<(String, &str)> = vec![
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p\n".into(), "not valid YAML"),
        ("apiVersion: v1\nkind: Gadget\nmetadata: {name: p}\n".into(), "unknown kind"),
        ("apiVersion: apps/v1\nkind: Pod\nmetadata: {name: p}\n".into(), "apiVersion"),
        (pod("  restartPolicy: 3\n"), "spec.restartPolicy"),
        (pod("    imagePullPolicee: Always\n"), "spec.containers[0].imagePullPolicee"),
        (pod("    resources: {limits: {memory: 12 parsecs}}\n"), "spec.containers[0].resources.limits[memory]"),
        // The second document is bad: the first must not be created either.
        (
            format!("{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: q}}\nspec: {{bogus: 1}}\n", pod("")),
            "spec.bogus",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&file, text).expect("write");
        let e = fails(&eps, &["apply", "-f", file.to_str().expect("path")]);
        assert!(e.contains(want), "case {i}: {e}");
    }
    let e = fails(&eps, &["get", "pods", "-l", "app in (a"]);
    assert!(e.contains("unbalanced"), "{e}");
    let e = fails(&eps, &["get", "gadgets"]);
    assert!(e.contains("unknown kind"), "{e}");
    let e = fails(&eps, &["get", "pod", "missing"]);
    assert!(e.contains("not found"), "{e}");
    let out = ok(&eps, &["get", "pods", "-o", "name"]);
    assert_eq!(out, "", "nothing was written");
}
