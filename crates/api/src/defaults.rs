//! Defaults the server fills in, as Kubernetes does: restartPolicy Always, protocol TCP,
//! probe timings, replicas 1, rolling-update parameters, service type ClusterIP, ...
//! Applied on create and update, before validation.

use flotilla_proto::api::{self as pb, object::Kind as O};

fn set_if_empty(field: &mut String, v: &str) {
    if field.is_empty() {
        *field = v.to_string();
    }
}

fn probe(p: &mut pb::Probe) {
    if p.timeout_seconds == 0 {
        p.timeout_seconds = 1;
    }
    if p.period_seconds == 0 {
        p.period_seconds = 10;
    }
    if p.success_threshold == 0 {
        p.success_threshold = 1;
    }
    if p.failure_threshold == 0 {
        p.failure_threshold = 3;
    }
    if let Some(h) = &mut p.http_get {
        set_if_empty(&mut h.path, "/");
        set_if_empty(&mut h.scheme, "HTTP");
    }
}

/// The pull policy Kubernetes defaults to: Always for an image without a tag or tagged
/// `latest` (it may change under the same name), else IfNotPresent; a digest never
/// changes.
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    // The tag follows the last ':' after the last '/' (a registry's port comes before).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

/// Defaults of a pod spec (pods and templates).
pub fn pod_spec(s: &mut pb::PodSpec) {
    set_if_empty(&mut s.restart_policy, "Always");
    set_if_empty(&mut s.scheduler_name, "default-scheduler");
    if s.termination_grace_period_seconds.is_none() {
        s.termination_grace_period_seconds = Some(30);
    }
    for c in s.containers.iter_mut().chain(s.init_containers.iter_mut()) {
        let policy = image_pull_policy(&c.image);
        set_if_empty(&mut c.image_pull_policy, policy);
        for p in &mut c.ports {
            set_if_empty(&mut p.protocol, "TCP");
        }
        for p in [&mut c.liveness_probe, &mut c.readiness_probe, &mut c.startup_probe].into_iter().flatten() {
            probe(p);
        }
    }
    for t in &mut s.tolerations {
        set_if_empty(&mut t.operator, "Equal");
    }
}

fn template(t: &mut Option<pb::PodTemplateSpec>) {
    if let Some(spec) = t.as_mut().and_then(|t| t.spec.as_mut()) {
        pod_spec(spec);
    }
}

/// The label a Job's pods carry when the Job names no selector.
pub const JOB_NAME_LABEL: &str = "job-name";

/// Applies the defaults of `o`'s kind.
pub fn object(o: &mut O) {
    match o {
        O::Namespace(n) => {
            set_if_empty(&mut n.status.get_or_insert_with(Default::default).phase, "Active");
        }
        O::Pod(p) => {
            if let Some(s) = &mut p.spec {
                pod_spec(s);
            }
        }
        O::ReplicaSet(r) => {
            if let Some(s) = &mut r.spec {
                s.replicas.get_or_insert(1);
                template(&mut s.template);
            }
        }
        O::Deployment(d) => {
            if let Some(s) = &mut d.spec {
                s.replicas.get_or_insert(1);
                s.revision_history_limit.get_or_insert(10);
                s.progress_deadline_seconds.get_or_insert(600);
                let st = s.strategy.get_or_insert_with(Default::default);
                set_if_empty(&mut st.r#type, "RollingUpdate");
                if st.r#type == "RollingUpdate" {
                    let ru = st.rolling_update.get_or_insert_with(Default::default);
                    set_if_empty(&mut ru.max_surge, "25%");
                    set_if_empty(&mut ru.max_unavailable, "25%");
                }
                template(&mut s.template);
            }
        }
        O::DaemonSet(d) => {
            if let Some(s) = &mut d.spec {
                let st = s.update_strategy.get_or_insert_with(Default::default);
                set_if_empty(&mut st.r#type, "RollingUpdate");
                if st.r#type == "RollingUpdate" {
                    set_if_empty(&mut st.rolling_update.get_or_insert_with(Default::default).max_unavailable, "1");
                }
                template(&mut s.template);
            }
        }
        O::Job(j) => {
            let name = j.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            if let Some(s) = &mut j.spec {
                s.parallelism.get_or_insert(1);
                s.completions.get_or_insert(1);
                s.backoff_limit.get_or_insert(6);
                // As Kubernetes does: without a selector, the pods are told apart by a
                // `job-name` label the template gets.
                if s.selector.is_none() && !name.is_empty() {
                    let t = s.template.get_or_insert_with(Default::default);
                    t.metadata.get_or_insert_with(Default::default).labels.insert(JOB_NAME_LABEL.into(), name.clone());
                    s.selector = Some(pb::LabelSelector {
                        match_labels: [(JOB_NAME_LABEL.to_string(), name)].into(),
                        ..Default::default()
                    });
                }
                if let Some(spec) = s.template.as_mut().and_then(|t| t.spec.as_mut()) {
                    set_if_empty(&mut spec.restart_policy, "Never");
                }
                template(&mut s.template);
            }
        }
        O::Service(s) => {
            if let Some(spec) = &mut s.spec {
                set_if_empty(&mut spec.r#type, "ClusterIP");
                set_if_empty(&mut spec.session_affinity, "None");
                for p in &mut spec.ports {
                    set_if_empty(&mut p.protocol, "TCP");
                    if p.target_port == 0 && p.target_port_name.is_empty() {
                        p.target_port = p.port;
                    }
                }
            }
        }
        O::Endpoints(e) => {
            for p in e.subsets.iter_mut().flat_map(|s| s.ports.iter_mut()) {
                set_if_empty(&mut p.protocol, "TCP");
            }
        }
        O::Event(e) => {
            set_if_empty(&mut e.r#type, "Normal");
            if e.count == 0 {
                e.count = 1;
            }
        }
        O::RoleBinding(pb::RoleBinding { subjects, role_ref, .. })
        | O::ClusterRoleBinding(pb::ClusterRoleBinding { subjects, role_ref, .. }) => {
            const RBAC: &str = "rbac.authorization.k8s.io";
            if let Some(r) = role_ref {
                set_if_empty(&mut r.api_group, RBAC);
            }
            for s in subjects {
                set_if_empty(&mut s.api_group, RBAC);
            }
        }
        O::Node(_) | O::Lease(_) | O::Role(_) | O::ClusterRole(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults_table() {
        let mut o = O::Pod(pb::Pod {
            spec: Some(pb::PodSpec {
                containers: vec![pb::Container {
                    name: "c".into(),
                    image: "busybox:1.36".into(),
                    ports: vec![pb::ContainerPort { container_port: 80, ..Default::default() }],
                    readiness_probe: Some(pb::Probe {
                        http_get: Some(pb::HttpGetAction { port: 80, ..Default::default() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        object(&mut o);
        let O::Pod(p) = o else { unreachable!() };
        let s = p.spec.expect("spec");
        assert_eq!(s.restart_policy, "Always");
        assert_eq!(s.termination_grace_period_seconds, Some(30));
        assert_eq!(s.containers[0].ports[0].protocol, "TCP");
        assert_eq!(s.containers[0].image_pull_policy, "IfNotPresent");
        assert_eq!(image_pull_policy("busybox"), "Always");
        assert_eq!(image_pull_policy("127.0.0.1:5000/busybox"), "Always", "a port is not a tag");
        assert_eq!(image_pull_policy("127.0.0.1:5000/busybox:latest"), "Always");
        assert_eq!(image_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(image_pull_policy("busybox@sha256:abc"), "IfNotPresent");
        let probe = s.containers[0].readiness_probe.as_ref().expect("probe");
        assert_eq!((probe.period_seconds, probe.timeout_seconds, probe.failure_threshold), (10, 1, 3));
        assert_eq!(probe.http_get.as_ref().map(|h| h.path.as_str()), Some("/"));
    }

    #[test]
    fn explicit_values_are_kept() {
        let mut o = O::Deployment(pb::Deployment {
            spec: Some(pb::DeploymentSpec {
                replicas: Some(0),
                strategy: Some(pb::DeploymentStrategy { r#type: "Recreate".into(), rolling_update: None }),
                ..Default::default()
            }),
            ..Default::default()
        });
        object(&mut o);
        let O::Deployment(d) = o else { unreachable!() };
        let s = d.spec.expect("spec");
        assert_eq!(s.replicas, Some(0), "an explicit 0 is not replaced by the default 1");
        assert!(s.strategy.expect("strategy").rolling_update.is_none());
    }

    #[test]
    fn service_target_port_defaults_to_port() {
        let mut o = O::Service(pb::Service {
            spec: Some(pb::ServiceSpec {
                ports: vec![pb::ServicePort { port: 80, ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        });
        object(&mut o);
        let O::Service(s) = o else { unreachable!() };
        let spec = s.spec.expect("spec");
        assert_eq!(
            (spec.r#type.as_str(), spec.ports[0].target_port, spec.ports[0].protocol.as_str()),
            ("ClusterIP", 80, "TCP")
        );
    }
}
