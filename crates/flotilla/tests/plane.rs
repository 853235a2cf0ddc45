//! The whole plane end to end: masters with their scheduler and controller manager, two
//! workers on containerd with the pod network and the service proxy, each worker a
//! network namespace of its own; clients call a Service from inside a worker's namespace
//! (pod and service addresses are never reached from the machine's own).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nodes::*;
use common::workers::*;
use common::*;
use flotilla_proto::api as pb;

fn manifest(version: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: httpd
        image: {image}
        command: ["sh", "-c", "mkdir -p /www && echo $VERSION > /www/index.html && exec httpd -f -p 80 -h /www"]
        env:
        - {{name: VERSION, value: "{version}"}}
        ports:
        - {{name: http, containerPort: 80}}
        readinessProbe:
          httpGet: {{path: /, port: 80}}
          periodSeconds: 1
        lifecycle:
          preStop:
            exec: {{command: ["sleep", "2"]}}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
"#,
        image = busybox_name()
    )
}

/// A Deployment of two web servers behind a Service, rolled from v1 to v2 (maxSurge 1,
/// maxUnavailable 0, a preStop pause) while a client calls the Service every 50 ms from a
/// worker's namespace: not one request fails, both versions answer during the rollout,
/// and only v2 after it.
#[test]
fn a_rolling_update_behind_a_service_fails_no_request() {
    let s = setup_with(&["--cluster-cidr", "10.244.0.0/16"], &["--cluster-cidr", "10.244.0.0/16"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = s.c.client(&rt);
    let eps = s.c.endpoints();
    let file = s.dir.path().join("web.yaml");
    std::fs::write(&file, manifest("v1")).expect("manifest");
    ctl_ok(&eps, &["apply", "-f", &file.display().to_string()]);
    let vip = rt.block_on(async {
        until(&s.c, "two ready v1 pods behind the service", || async {
            let svc = client.get::<pb::Service>("default", "web").await.ok()?;
            let pods = client.list::<pb::Pod>(&Default::default()).await.ok()?.items;
            (pods.iter().filter(|p| ready(p)).count() == 2).then_some(())?;
            svc.spec.map(|s| s.cluster_ip)
        })
        .await
    });
    let (w1, url) = (s.hosts.hosts[0].0.clone(), format!("http://{vip}/"));
    let get = move || get(&w1, &url);
    rt.block_on(async { until(&s.c, "the service answering", || async { get().ok() }).await });

    // The client: a request every 50 ms until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::<String>::new())));
    let answers = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let caller = {
        let (stop, ok, failed, answers, get) = (stop.clone(), ok.clone(), failed.clone(), answers.clone(), get.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match get() {
                    Ok(body) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        answers.lock().expect("lock").push((Instant::now(), body));
                    }
                    Err(e) => failed.lock().expect("lock").push(e),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::fs::write(&file, manifest("v2")).expect("manifest");
    let began = Instant::now();
    ctl_ok(&eps, &["apply", "-f", &file.display().to_string()]);
    rt.block_on(async {
        until(&s.c, "the rollout done: two ready v2 pods and nothing else", || async {
            let pods = client.list::<pb::Pod>(&Default::default()).await.ok()?.items;
            let v2 = |p: &pb::Pod| {
                p.spec
                    .as_ref()
                    .is_some_and(|s| s.containers[0].env.iter().any(|e| e.name == "VERSION" && e.value == "v2"))
            };
            (pods.len() == 2 && pods.iter().all(|p| v2(p) && ready(p))).then_some(())
        })
        .await
    });
    let (rolled, done) = (began.elapsed(), Instant::now());
    // A little longer, to see the new version alone.
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(1) {
        assert_eq!(get().expect("an answer"), "v2");
    }
    stop.store(true, Ordering::Relaxed);
    caller.join().expect("caller");
    let failed = failed.lock().expect("lock").clone();
    let ok = ok.load(Ordering::Relaxed);
    println!("rolled v1 -> v2 in {rolled:?}: {ok} requests answered, {} failed", failed.len());
    assert!(failed.is_empty(), "requests failed during the rollout: {failed:?}");
    assert!(ok >= 20, "the client kept calling: {ok}");
    let during: std::collections::BTreeSet<String> = answers
        .lock()
        .expect("lock")
        .iter()
        .filter(|(at, _)| *at >= began && *at <= done)
        .map(|(_, body)| body.clone())
        .collect();
    assert_eq!(during, ["v1", "v2"].map(String::from).into(), "both versions answered while it rolled");
}
