//! `flotctl rollout status|history|undo|restart|pause|resume` and `flotctl set image`:
//! Deployments' rollouts, as `kubectl rollout` does them. The Deployment controller does
//! the rolling; these commands only change the Deployment (an undo puts an old
//! ReplicaSet's template back) or read it and its ReplicaSets.

use std::time::{Duration, Instant, SystemTime};

use flotilla_client::{Client, ClientError, ListParams};
use flotilla_proto::api as pb;

use crate::CtlError;

/// The annotation holding a ReplicaSet's (and its Deployment's) revision.
const REVISION: &str = "deployment.kubernetes.io/revision";
/// The label the Deployment controller adds to tell its ReplicaSets' pods apart.
const HASH_LABEL: &str = "pod-template-hash";
/// Why a revision was made, if whoever made it said (shown by `history`).
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// Set in the pod template by `restart`, so that the template (and its pods) change.
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// `flotctl rollout ...`
#[derive(clap::Subcommand, Debug)]
pub enum RolloutCommand {
    /// Wait until a deployment's rollout is done (exit 1 if its progress deadline passes,
    /// or --timeout).
    Status {
        /// deployment/NAME or NAME.
        name: String,
        /// Give up after this long (e.g. 5m) [default: wait for the progress deadline].
        #[arg(long)]
        timeout: Option<String>,
    },
    /// The revisions of a deployment, or one revision's pod template.
    History {
        /// deployment/NAME or NAME.
        name: String,
        /// Show this revision's pod template.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Roll back to the previous revision, or to --to-revision.
    Undo {
        /// deployment/NAME or NAME.
        name: String,
        /// The revision to go back to [default: the one before the current].
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Replace every pod of a deployment, rolling (the template gets a restartedAt
    /// annotation).
    Restart {
        /// deployment/NAME or NAME.
        name: String,
    },
    /// Stop rolling: template changes wait until `resume` (scaling still works).
    Pause {
        /// deployment/NAME or NAME.
        name: String,
    },
    /// Roll again after `pause`.
    Resume {
        /// deployment/NAME or NAME.
        name: String,
    },
}

/// `flotctl set ...`
#[derive(clap::Subcommand, Debug)]
pub enum SetCommand {
    /// Set container images in a deployment's pod template: `set image deployment/web
    /// main=nginx:1.27 sidecar=busybox:1.36` (`*=IMAGE` sets every container).
    Image {
        /// deployment/NAME or NAME.
        name: String,
        /// CONTAINER=IMAGE, one or more.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

/// The name in `deployment/NAME` (or `deploy/NAME`, or a bare NAME).
fn deployment_name(s: &str) -> Result<&str, CtlError> {
    match s.split_once('/') {
        None => Ok(s),
        Some((k, n)) if matches!(k, "deployment" | "deployments" | "deploy" | "deployment.apps") && !n.is_empty() => {
            Ok(n)
        }
        Some((k, _)) => Err(CtlError::Usage(format!("{k:?}: only deployments roll out (deployment/NAME)"))),
    }
}

fn revision(m: &pb::ObjectMeta) -> i64 {
    m.annotations.get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// The deployment's ReplicaSets (those it controls), oldest revision first.
async fn replicasets(client: &Client, ns: &str, d: &pb::Deployment) -> Result<Vec<pb::ReplicaSet>, CtlError> {
    let uid = d.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
    let all = client.list::<pb::ReplicaSet>(&ListParams { namespace: ns.into(), ..Default::default() }).await?;
    let mut mine: Vec<pb::ReplicaSet> = all
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata.as_ref().is_some_and(|m| m.owner_references.iter().any(|r| r.controller && r.uid == uid))
        })
        .collect();
    mine.sort_by_key(|rs| rs.metadata.as_ref().map_or(0, revision));
    Ok(mine)
}

fn images(t: Option<&pb::PodTemplateSpec>) -> String {
    let cs = t.and_then(|t| t.spec.as_ref()).map(|s| s.containers.as_slice()).unwrap_or_default();
    cs.iter().map(|c| c.image.as_str()).collect::<Vec<_>>().join(",")
}

/// Reads the deployment, changes it with `f`, and writes it back; retried when it changed
/// meanwhile.
async fn modify(
    client: &Client,
    ns: &str,
    name: &str,
    mut f: impl FnMut(&mut pb::Deployment) -> Result<(), CtlError>,
) -> Result<(), CtlError> {
    for _ in 0..10 {
        let mut d: pb::Deployment = client.get(ns, name).await?;
        f(&mut d)?;
        match client.update(d).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ClientError::Unavailable(format!("deployment {name} kept changing; try again")).into())
}

/// Runs `flotctl rollout ...`.
pub async fn rollout(client: &Client, ns: &str, c: RolloutCommand) -> Result<(), CtlError> {
    match c {
        RolloutCommand::Status { name, timeout } => {
            let timeout = timeout
                .map(|t| humantime::parse_duration(&t).map_err(|e| CtlError::Usage(format!("--timeout {t:?}: {e}"))))
                .transpose()?;
            status(client, ns, deployment_name(&name)?, timeout).await
        }
        RolloutCommand::History { name, revision: which } => {
            let name = deployment_name(&name)?;
            let d: pb::Deployment = client.get(ns, name).await?;
            let sets = replicasets(client, ns, &d).await?;
            match which {
                Some(r) => {
                    let rs = sets
                        .iter()
                        .find(|rs| rs.metadata.as_ref().map_or(0, revision) == r)
                        .ok_or_else(|| CtlError::Usage(format!("deployment {name} has no revision {r}")))?;
                    let t = rs.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
                    outln!("deployment.apps/{name} with revision #{r}");
                    let json = flotilla_api::kinds::to_json(&pb::object::Kind::ReplicaSet(pb::ReplicaSet {
                        metadata: None,
                        spec: Some(pb::ReplicaSetSpec { template: Some(t), ..Default::default() }),
                        status: None,
                    }));
                    let template = json.get("spec").and_then(|s| s.get("template")).cloned().unwrap_or_default();
                    let yaml = serde_yaml::to_string(&serde_json::json!({ "template": template }))
                        .map_err(|e| CtlError::Io(e.to_string()))?;
                    out!("{yaml}");
                }
                None => {
                    outln!("deployment.apps/{name}");
                    outln!("{:<10}{:<40}{}", "REVISION", "IMAGES", "CHANGE-CAUSE");
                    for rs in &sets {
                        let m = rs.metadata.clone().unwrap_or_default();
                        let cause = m.annotations.get(CHANGE_CAUSE).map_or("<none>", String::as_str);
                        let imgs = images(rs.spec.as_ref().and_then(|s| s.template.as_ref()));
                        outln!("{:<10}{:<40}{cause}", revision(&m), imgs);
                    }
                }
            }
            Ok(())
        }
        RolloutCommand::Undo { name, to_revision } => {
            let name = deployment_name(&name)?;
            let d: pb::Deployment = client.get(ns, name).await?;
            let sets = replicasets(client, ns, &d).await?;
            let current = d.metadata.as_ref().map_or(0, revision);
            let target = match to_revision {
                Some(r) => sets.iter().find(|rs| rs.metadata.as_ref().map_or(0, revision) == r),
                None => sets.iter().rev().find(|rs| rs.metadata.as_ref().map_or(0, revision) < current),
            }
            .ok_or_else(|| match to_revision {
                Some(r) => CtlError::Usage(format!("deployment {name} has no revision {r}")),
                None => CtlError::Usage(format!("deployment {name} has no revision before {current} to go back to")),
            })?;
            let r = target.metadata.as_ref().map_or(0, revision);
            let mut template = target.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
            if let Some(m) = template.metadata.as_mut() {
                m.labels.remove(HASH_LABEL);
            }
            if r == current {
                outln!("deployment.apps/{name} is already at revision {r}: nothing to undo");
                return Ok(());
            }
            modify(client, ns, name, |d| {
                d.spec.get_or_insert_with(Default::default).template = Some(template.clone());
                Ok(())
            })
            .await?;
            outln!("deployment.apps/{name} rolled back to revision {r}");
            Ok(())
        }
        RolloutCommand::Restart { name } => {
            let name = deployment_name(&name)?;
            let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            modify(client, ns, name, |d| {
                let t = d.spec.get_or_insert_with(Default::default).template.get_or_insert_with(Default::default);
                t.metadata.get_or_insert_with(Default::default).annotations.insert(RESTARTED_AT.into(), now.clone());
                Ok(())
            })
            .await?;
            outln!("deployment.apps/{name} restarted");
            Ok(())
        }
        RolloutCommand::Pause { name } => pause(client, ns, deployment_name(&name)?, true).await,
        RolloutCommand::Resume { name } => pause(client, ns, deployment_name(&name)?, false).await,
    }
}

async fn pause(client: &Client, ns: &str, name: &str, paused: bool) -> Result<(), CtlError> {
    let d: pb::Deployment = client.get(ns, name).await?;
    if d.spec.as_ref().is_some_and(|s| s.paused == paused) {
        return Err(CtlError::Usage(format!(
            "deployment.apps/{name} is already {}",
            if paused { "paused" } else { "resumed (not paused)" }
        )));
    }
    modify(client, ns, name, |d| {
        d.spec.get_or_insert_with(Default::default).paused = paused;
        Ok(())
    })
    .await?;
    outln!("deployment.apps/{name} {}", if paused { "paused" } else { "resumed" });
    Ok(())
}

/// Waits until the deployment's newest generation is rolled out, printing progress.
async fn status(client: &Client, ns: &str, name: &str, timeout: Option<Duration>) -> Result<(), CtlError> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let d: pb::Deployment = client.get(ns, name).await?;
        let spec = d.spec.clone().unwrap_or_default();
        let s = d.status.clone().unwrap_or_default();
        let generation = d.metadata.as_ref().map_or(0, |m| m.generation);
        let want = spec.replicas.unwrap_or(1);
        let progressing = s.conditions.iter().find(|c| c.r#type == "Progressing");
        let line = if s.observed_generation < generation {
            "Waiting for deployment spec update to be observed...".to_string()
        } else if progressing.is_some_and(|c| c.reason == "ProgressDeadlineExceeded") {
            return Err(CtlError::Usage(format!("deployment {name:?} exceeded its progress deadline")));
        } else if spec.paused {
            return Err(CtlError::Usage(format!(
                "deployment {name:?} is paused: its rollout cannot finish (flotctl rollout resume deployment/{name})"
            )));
        } else if s.updated_replicas < want {
            format!(
                "Waiting for deployment {name:?} rollout to finish: {} out of {want} new replicas have been updated...",
                s.updated_replicas
            )
        } else if s.replicas > s.updated_replicas {
            format!(
                "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
                s.replicas - s.updated_replicas
            )
        } else if s.available_replicas < s.updated_replicas {
            format!(
                "Waiting for deployment {name:?} rollout to finish: {} of {} updated replicas are available...",
                s.available_replicas, s.updated_replicas
            )
        } else {
            outln!("deployment {name:?} successfully rolled out");
            return Ok(());
        };
        if line != last {
            outln!("{line}");
            last = line;
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            return Err(CtlError::Usage(format!("timed out waiting for deployment {name:?} to roll out")));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `flotctl set ...`.
pub async fn set(client: &Client, ns: &str, c: SetCommand) -> Result<(), CtlError> {
    let SetCommand::Image { name, images } = c;
    let name = deployment_name(&name)?;
    let mut wanted = Vec::new();
    for i in &images {
        let (container, image) = i
            .split_once('=')
            .filter(|(c, im)| !c.is_empty() && !im.is_empty())
            .ok_or_else(|| CtlError::Usage(format!("{i:?} is not CONTAINER=IMAGE")))?;
        wanted.push((container.to_string(), image.to_string()));
    }
    modify(client, ns, name, |d| {
        let spec = d
            .spec
            .get_or_insert_with(Default::default)
            .template
            .get_or_insert_with(Default::default)
            .spec
            .get_or_insert_with(Default::default);
        for (container, image) in &wanted {
            let mut found = false;
            for c in spec.containers.iter_mut().filter(|c| container == "*" || &c.name == container) {
                c.image = image.clone();
                found = true;
            }
            if !found {
                let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
                return Err(CtlError::Usage(format!(
                    "deployment {name} has no container {container:?} (it has: {})",
                    names.join(", ")
                )));
            }
        }
        Ok(())
    })
    .await?;
    outln!("deployment.apps/{name} image updated");
    Ok(())
}
