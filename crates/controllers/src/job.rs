//! The Job controller: runs pods until `completions` of them have succeeded, at most
//! `parallelism` at a time.
//!
//! [`plan`] is a pure function of the Job, its pods and the time: how many pods to make
//! (what is still needed, up to parallelism, minus what runs), which to delete (beyond
//! parallelism, or all once the Job is finished) and the status — active, ready,
//! succeeded and failed counts, the start and completion times, and the `Complete` or
//! `Failed` condition (reasons `BackoffLimitExceeded`, when more than `backoffLimit` pods
//! failed, and `DeadlineExceeded`, when `activeDeadlineSeconds` passed since the start).
//! Succeeded and failed counts never go down: a finished pod deleted later still counts.
//!
//! A pod that failed is replaced after a back-off, 1 s doubled per failure up to 60 s
//! (Kubernetes starts at 10 s; this control plane aims to recover in seconds), timed in
//! memory: a new controller manager starts it afresh. A finished Job with
//! `ttlSecondsAfterFinished` is deleted that long after it finished, its pods with it
//! (the garbage collector's background cascade).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flotilla_client::reflector::Cache;
use flotilla_client::{Client, DeleteParams};
use flotilla_proto::api as pb;

use crate::informers::Informers;
use crate::manager::Context;
use crate::podcontrol::{owner_ref, PodControl};
use crate::pods::{active, meta, phase, ready_since};
use crate::queue::WorkQueue;
use crate::worker::Reconcile;
use crate::ControllerError;

/// The back-off before replacing a pod after `failed` failures.
pub fn backoff(failed: i32) -> Duration {
    let shift = u32::try_from(failed.saturating_sub(1)).unwrap_or(0).min(6);
    Duration::from_secs(1 << shift).min(Duration::from_secs(60))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The finished condition of a Job (Complete or Failed), if any.
pub fn finished(job: &pb::Job) -> Option<&pb::Condition> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.status == "True" && matches!(c.r#type.as_str(), "Complete" | "Failed"))
}

/// What the controller does for one Job.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods to make.
    pub create: usize,
    /// Pods to delete: (name, uid).
    pub delete: Vec<(String, String)>,
    /// The status to write.
    pub status: pb::JobStatus,
    /// When to look again (the active deadline).
    pub again_in: Option<Duration>,
}

/// The plan for `job` given its pods, at `now`.
pub fn plan(job: &pb::Job, pods: &[&pb::Pod], now: SystemTime) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let (parallelism, completions) = (spec.parallelism.unwrap_or(1).max(0), spec.completions.unwrap_or(1).max(0));
    let old = job.status.clone().unwrap_or_default();
    let mut st = pb::JobStatus { conditions: old.conditions.clone(), ..Default::default() };
    st.start_time = if old.start_time.is_empty() { rfc3339(now) } else { old.start_time.clone() };
    st.completion_time = old.completion_time.clone();
    let count = |ph: &str| i32::try_from(pods.iter().filter(|p| phase(p) == ph).count()).unwrap_or(i32::MAX);
    st.succeeded = old.succeeded.max(count("Succeeded"));
    st.failed = old.failed.max(count("Failed"));
    let mut running: Vec<&pb::Pod> = pods.iter().copied().filter(|p| active(p)).collect();
    // Newest first: they are the ones given up when there are too many.
    running.sort_by(|a, b| {
        meta(b).creation_timestamp.cmp(&meta(a).creation_timestamp).then(meta(b).name.cmp(&meta(a).name))
    });
    st.active = i32::try_from(running.len()).unwrap_or(i32::MAX);
    st.ready = i32::try_from(running.iter().filter(|p| ready_since(p).is_some()).count()).unwrap_or(i32::MAX);
    let mut out = Plan::default();
    let id = |p: &&pb::Pod| (meta(p).name.clone(), meta(p).uid.clone());

    let started = humantime::parse_rfc3339(&st.start_time).unwrap_or(now);
    let elapsed = now.duration_since(started).unwrap_or_default();
    let deadline = spec.active_deadline_seconds.map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
    let finish = if finished(job).is_some() {
        None
    } else if st.succeeded >= completions {
        Some(("Complete", "Completed", format!("{} of {completions} pods succeeded", st.succeeded)))
    } else if st.failed > spec.backoff_limit.unwrap_or(6) {
        Some((
            "Failed",
            "BackoffLimitExceeded",
            format!("{} pods failed, more than the backoffLimit {}", st.failed, spec.backoff_limit.unwrap_or(6)),
        ))
    } else if deadline.is_some_and(|d| elapsed >= d) {
        Some((
            "Failed",
            "DeadlineExceeded",
            format!(
                "the Job was active longer than activeDeadlineSeconds ({}s)",
                deadline.unwrap_or_default().as_secs()
            ),
        ))
    } else {
        None
    };
    let finishing = finish.is_some();
    if let Some((kind, reason, message)) = finish {
        st.conditions.push(pb::Condition {
            r#type: kind.into(),
            status: "True".into(),
            reason: reason.into(),
            message,
            last_transition_time: rfc3339(now),
            last_heartbeat_time: rfc3339(now),
        });
        if kind == "Complete" {
            st.completion_time = rfc3339(now);
        }
    }
    if finished(job).is_some() || finishing {
        // Finished: nothing more runs.
        out.delete = running.iter().map(id).collect();
        out.status = st;
        return out;
    }
    let wanted = parallelism.min(completions - st.succeeded).max(0);
    let wanted = usize::try_from(wanted).unwrap_or(0);
    if running.len() > wanted {
        out.delete = running[..running.len() - wanted].iter().map(id).collect();
    } else {
        out.create = wanted - running.len();
    }
    out.again_in = deadline.map(|d| d.saturating_sub(elapsed));
    out.status = st;
    out
}

/// The pod `job` makes.
fn new_pod(job: &pb::Job) -> pb::Pod {
    let m = job.metadata.clone().unwrap_or_default();
    let template = job.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    pb::Pod {
        metadata: Some(pb::ObjectMeta {
            generate_name: format!("{}-", m.name),
            namespace: m.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            owner_references: vec![owner_ref::<pb::Job>(&m, "batch/v1")],
            ..Default::default()
        }),
        spec: template.spec,
        status: None,
    }
}

/// The running controller.
pub struct JobController {
    client: Client,
    jobs: Cache<pb::Job>,
    pods: Cache<pb::Pod>,
    control: PodControl<pb::Job>,
    /// Per Job: the failures seen, and when the count last grew.
    failures: Mutex<HashMap<String, (i32, Instant)>>,
}

impl JobController {
    /// A controller over these caches, writing through `client`.
    pub fn new(client: Client, jobs: Cache<pb::Job>, pods: Cache<pb::Pod>) -> JobController {
        let control = PodControl::new(client.clone(), jobs.clone(), "job-controller");
        JobController { client, jobs, pods, control, failures: Mutex::new(HashMap::new()) }
    }

    /// How long until a replacement may be made after `failed` failures (zero: now).
    fn backoff_left(&self, key: &str, failed: i32) -> Duration {
        if failed == 0 {
            return Duration::ZERO;
        }
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let seen = f.entry(key.to_string()).or_insert((failed, Instant::now()));
        if seen.0 != failed {
            *seen = (failed, Instant::now());
        }
        backoff(failed).saturating_sub(seen.1.elapsed())
    }

    /// Deletes a finished Job whose ttlSecondsAfterFinished passed; else when to look again.
    async fn expire(&self, job: &pb::Job) -> Result<Option<Duration>, ControllerError> {
        let (Some(ttl), Some(done)) = (job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished), finished(job))
        else {
            return Ok(None);
        };
        let at = humantime::parse_rfc3339(&done.last_transition_time).unwrap_or_else(|_| SystemTime::now())
            + Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
        if let Ok(left) = at.duration_since(SystemTime::now()) {
            return Ok(Some(left.max(Duration::from_millis(100))));
        }
        let m = job.metadata.clone().unwrap_or_default();
        let p = DeleteParams { uid: m.uid.clone(), ..Default::default() };
        match self.client.delete::<pb::Job>(&m.namespace, &m.name, &p).await {
            Ok(_) => tracing::info!(job = %m.name, "finished Job deleted after its ttlSecondsAfterFinished"),
            Err(e) if e.is_not_found() || e.code() == Some(tonic::Code::FailedPrecondition) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(None)
    }
}

impl Reconcile for JobController {
    fn name(&self) -> &str {
        "job"
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let Some(job) = self.jobs.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned() else {
            self.control.expectations.forget(key);
            self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
            return Ok(None);
        };
        let m = job.metadata.clone().unwrap_or_default();
        if !m.deletion_timestamp.is_empty() {
            return Ok(None);
        }
        let satisfied = self.control.expectations.satisfied(key);
        let pods = self.control.owned(&self.pods, &m.namespace, &m.uid);
        let plan = plan(&job, &pods.iter().collect::<Vec<_>>(), SystemTime::now());
        let mut errors = Vec::new();
        let wait = self.backoff_left(key, plan.status.failed);
        let mut again = plan.again_in;
        if satisfied {
            let creates = if wait.is_zero() { plan.create } else { 0 };
            if creates < plan.create {
                again = Some(again.map_or(wait, |a| a.min(wait)));
            }
            let creates = (0..creates).map(|_| new_pod(&job)).collect();
            errors.extend(self.control.sync(key, &job, creates, &plan.delete).await);
        }
        let current = job.status.clone().unwrap_or_default();
        let newly_finished = finished(&job).is_none() && plan.status.conditions.len() > current.conditions.len();
        if plan.status != current {
            let mut updated = job.clone();
            updated.status = Some(plan.status.clone());
            match self.client.update_status(updated).await {
                Ok(j) if newly_finished => {
                    if let Some(c) = finished(&j) {
                        let kind = if c.r#type == "Complete" { "Normal" } else { "Warning" };
                        self.control.event(&j, kind, &c.reason, &c.message).await;
                    }
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(format!("writing status: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(ControllerError::Reconcile(errors.join("; ")));
        }
        if let Some(ttl) = self.expire(&job).await? {
            again = Some(again.map_or(ttl, |a| a.min(ttl)));
        }
        Ok(again)
    }
}

/// Starts the informers the Job controller reads.
pub fn warm(informers: &Informers) {
    informers.get::<pb::Job>();
    informers.get::<pb::Pod>();
}

/// Runs the Job controller for one term (until `ctx` says stop).
pub async fn start(ctx: Context) {
    let (jobs, pods) = (ctx.informers.get::<pb::Job>(), ctx.informers.get::<pb::Pod>());
    let (mut j_rx, mut p_rx) = (jobs.subscribe(), pods.subscribe());
    let ctl = Arc::new(JobController::new(ctx.client.clone(), jobs.cache(), pods.cache()));
    let queue = Arc::new(WorkQueue::default());
    tokio::select! {
        () = ctx.stopped() => return,
        () = async { jobs.wait_synced().await; pods.wait_synced().await; } => {}
    }
    let dispatch = async {
        loop {
            tokio::select! {
                Some(c) = j_rx.recv() => ctl.control.owner_changed(&queue, &c),
                Some(c) = p_rx.recv() => ctl.control.pod_changed(&queue, &c),
                else => return,
            }
        }
    };
    crate::worker::serve(queue.clone(), ctl.clone(), ctx.workers, ctx.metrics("job"), dispatch, ctx.stopped()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(completions: i32, parallelism: i32, backoff_limit: i32) -> pb::Job {
        pb::Job {
            metadata: Some(pb::ObjectMeta { name: "j".into(), namespace: "default".into(), ..Default::default() }),
            spec: Some(pb::JobSpec {
                completions: Some(completions),
                parallelism: Some(parallelism),
                backoff_limit: Some(backoff_limit),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, phase: &str) -> pb::Pod {
        pb::Pod {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                uid: format!("uid-{name}"),
                creation_timestamp: format!("2026-01-01T00:00:0{}Z", name.len() % 10),
                ..Default::default()
            }),
            spec: None,
            status: Some(pb::PodStatus { phase: phase.into(), ..Default::default() }),
        }
    }

    fn run(j: &pb::Job, pods: &[pb::Pod]) -> Plan {
        plan(j, &pods.iter().collect::<Vec<_>>(), SystemTime::now())
    }

    #[test]
    fn pods_run_up_to_parallelism_until_completions_succeed() {
        let j = job(5, 2, 6);
        assert_eq!(run(&j, &[]).create, 2);
        let p = run(&j, &[pod("a", "Succeeded"), pod("b", "Succeeded"), pod("c", "Succeeded"), pod("d", "Running")]);
        assert_eq!((p.create, p.status.succeeded, p.status.active), (1, 3, 1));
        let p = run(&j, &[pod("a", "Succeeded"), pod("b", "Succeeded"), pod("c", "Succeeded"), pod("d", "Succeeded")]);
        assert_eq!(p.create, 1, "only what is still needed");
        let all: Vec<pb::Pod> = ["a", "b", "c", "d", "e"].iter().map(|n| pod(n, "Succeeded")).collect();
        let p = run(&j, &all);
        assert_eq!(p.create, 0);
        assert_eq!(p.status.conditions[0].r#type, "Complete");
        assert!(!p.status.completion_time.is_empty());
    }

    #[test]
    fn failures_beyond_the_backoff_limit_fail_the_job_and_stop_its_pods() {
        let j = job(1, 1, 2);
        let p = run(&j, &[pod("a", "Failed"), pod("b", "Failed"), pod("cc", "Running")]);
        assert!(p.status.conditions.is_empty(), "two failures are within the limit");
        let p = run(&j, &[pod("a", "Failed"), pod("b", "Failed"), pod("c", "Failed"), pod("dd", "Running")]);
        assert_eq!(p.status.conditions[0].reason, "BackoffLimitExceeded");
        assert_eq!(p.delete, vec![("dd".to_string(), "uid-dd".to_string())]);
        assert_eq!(p.create, 0);
    }

    #[test]
    fn the_active_deadline_fails_the_job_and_counts_never_go_down() {
        let mut j = job(3, 3, 6);
        j.spec.as_mut().expect("spec").active_deadline_seconds = Some(5);
        j.status = Some(pb::JobStatus {
            start_time: rfc3339(SystemTime::now() - Duration::from_secs(10)),
            succeeded: 2,
            ..Default::default()
        });
        let p = run(&j, &[pod("a", "Running")]);
        assert_eq!(p.status.conditions[0].reason, "DeadlineExceeded");
        assert_eq!(p.status.succeeded, 2, "pods deleted after succeeding still count");
        assert_eq!(p.delete.len(), 1);
    }

    #[test]
    fn lowering_parallelism_gives_up_the_newest_pods() {
        let j = job(10, 1, 6);
        let p = run(&j, &[pod("a", "Running"), pod("bb", "Running")]);
        assert_eq!(p.delete, vec![("bb".to_string(), "uid-bb".to_string())]);
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(60));
    }
}
