//! The Job controller against real masters (their elected controller manager; no
//! scheduler runs, and the test plays the kubelet by writing each pod's phase): pods run
//! up to parallelism until completions succeed; failures beyond backoffLimit fail the
//! Job; activeDeadlineSeconds fails a Job that runs too long; ttlSecondsAfterFinished
//! deletes a finished Job with its pods. A bad Job is refused naming the field.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ListParams};
use flotilla_proto::api as pb;

fn job(name: &str, completions: i32, parallelism: i32, tweak: impl FnOnce(&mut pb::JobSpec)) -> pb::Job {
    let template = replicaset(name, 1).spec.and_then(|s| s.template).map(|mut t| {
        t.spec.get_or_insert_with(Default::default).restart_policy = "Never".into();
        t.metadata = None; // the job-name label and selector are defaulted
        t
    });
    let mut spec =
        pb::JobSpec { completions: Some(completions), parallelism: Some(parallelism), template, ..Default::default() };
    tweak(&mut spec);
    pb::Job {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(spec),
        status: None,
    }
}

/// The Job's pods that are neither finished nor being deleted, by name.
async fn running(client: &Client, job: &str) -> Vec<String> {
    let p = ListParams { namespace: "default".into(), label_selector: format!("job-name={job}"), ..Default::default() };
    let pods = client.list::<pb::Pod>(&p).await.expect("pods").items;
    pods.into_iter()
        .filter(|p| {
            p.metadata.as_ref().is_some_and(|m| m.deletion_timestamp.is_empty())
                && !p.status.as_ref().is_some_and(|s| matches!(s.phase.as_str(), "Succeeded" | "Failed"))
        })
        .filter_map(|p| p.metadata.map(|m| m.name))
        .collect()
}

/// Sets a pod's phase, as its kubelet would.
async fn finish(client: &Client, pod: &str, phase: &str) {
    let mut p: pb::Pod = client.get("default", pod).await.expect("pod");
    p.status.get_or_insert_with(Default::default).phase = phase.into();
    client.update_status(p).await.expect("status");
}

/// The Job's finished condition: (type, reason).
async fn outcome(client: &Client, name: &str) -> Option<(String, String)> {
    let j: pb::Job = client.get("default", name).await.ok()?;
    j.status?.conditions.into_iter().find(|c| c.status == "True").map(|c| (c.r#type, c.reason))
}

#[test]
fn jobs_run_to_completion_fail_on_backoff_or_deadline_and_expire() {
    let c = Cluster::start_with_scheduler(3, &["--disable-scheduler"]);
    let eps = c.endpoints();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    rt.block_on(async {
        // Three completions, two at a time.
        client.create(job("batch", 3, 2, |_| {})).await.expect("job");
        for done in 0..3 {
            let want = if done < 2 { 2 } else { 1 };
            let now = until(&c, "the next pods run", || async {
                let r = running(&client, "batch").await;
                (r.len() == want).then_some(r)
            })
            .await;
            finish(&client, &now[0], "Succeeded").await;
        }
        let out = until(&c, "batch completes", || async { outcome(&client, "batch").await }).await;
        assert_eq!(out, ("Complete".to_string(), "Completed".to_string()));
        let j: pb::Job = client.get("default", "batch").await.expect("job");
        let st = j.status.expect("status");
        assert_eq!((st.succeeded, st.failed, st.active), (3, 0, 0));
        assert!(!st.start_time.is_empty() && !st.completion_time.is_empty());
        assert!(running(&client, "batch").await.is_empty());

        // backoffLimit 1: the second failure fails the Job; a replacement came between.
        client.create(job("flaky", 1, 1, |s| s.backoff_limit = Some(1))).await.expect("job");
        let first = until(&c, "flaky runs", || async { running(&client, "flaky").await.pop() }).await;
        finish(&client, &first, "Failed").await;
        let second = until(&c, "a replacement runs", || async {
            running(&client, "flaky").await.into_iter().find(|n| *n != first)
        })
        .await;
        finish(&client, &second, "Failed").await;
        let out = until(&c, "flaky fails", || async { outcome(&client, "flaky").await }).await;
        assert_eq!(out, ("Failed".to_string(), "BackoffLimitExceeded".to_string()));
        assert!(running(&client, "flaky").await.is_empty(), "nothing more runs");

        // activeDeadlineSeconds 2: its running pod is stopped.
        client.create(job("slow", 1, 1, |s| s.active_deadline_seconds = Some(2))).await.expect("job");
        until(&c, "slow runs", || async { running(&client, "slow").await.pop() }).await;
        let started = Instant::now();
        let out = until(&c, "slow fails", || async { outcome(&client, "slow").await }).await;
        assert_eq!(out, ("Failed".to_string(), "DeadlineExceeded".to_string()));
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        until(&c, "slow's pod is stopped", || async { running(&client, "slow").await.is_empty().then_some(()) }).await;

        // ttlSecondsAfterFinished 1: deleted after finishing, its pods with it.
        client.create(job("short", 1, 1, |s| s.ttl_seconds_after_finished = Some(1))).await.expect("job");
        let pod = until(&c, "short runs", || async { running(&client, "short").await.pop() }).await;
        finish(&client, &pod, "Succeeded").await;
        until(&c, "short is deleted, with its pod", || async {
            let gone = client.get::<pb::Job>("default", "short").await.is_err()
                && client.get::<pb::Pod>("default", &pod).await.is_err();
            gone.then_some(())
        })
        .await;
    });

    // flotctl shows them; a Job whose pods would restart forever is refused.
    let table = ctl_ok(&eps, &["get", "jobs"]);
    assert!(table.contains("COMPLETIONS"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("batch") && l.contains("Complete") && l.contains("3/3")), "{table}");
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: bad\nspec:\n  template:\n    spec:\n      \
         restartPolicy: Always\n      containers:\n      - name: c\n        image: busybox\n",
    )
    .expect("write");
    let err = ctl_fails(&eps, &["apply", "-f", f.to_str().expect("path")]);
    assert!(err.contains("spec.template.spec.restartPolicy"), "{err}");
    assert!(rt.block_on(client.get::<pb::Job>("default", "bad")).is_err(), "nothing written");
}
