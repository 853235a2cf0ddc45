//! Property tests: every kind survives protobuf and JSON round trips; and a table of
//! invalid objects each names its field.

use std::collections::BTreeMap;

use flotilla_proto::api::{self as pb, object::Kind as O};
use proptest::prelude::*;
use serde_json::Value;

use crate::kinds::{self, Kind};

fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,8}[a-z0-9]"
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[ -~]{0,12}", "\\PC{0,6}"]
}

fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(word(), text(), 0..3)
}

fn meta() -> impl Strategy<Value = Option<pb::ObjectMeta>> {
    (
        word(),
        word(),
        map(),
        map(),
        any::<i64>(),
        proptest::option::of(any::<i64>()),
        proptest::collection::vec(word(), 0..2),
    )
        .prop_map(|(name, namespace, labels, annotations, generation, grace, finalizers)| {
            Some(pb::ObjectMeta {
                name,
                namespace,
                labels,
                annotations,
                generation,
                deletion_grace_period_seconds: grace,
                finalizers,
                uid: "0b7c9a5e-3f3e-4c4e-9d43-0a0b7f0e7c11".into(),
                ..Default::default()
            })
        })
}

fn container() -> impl Strategy<Value = pb::Container> {
    (word(), text(), proptest::collection::vec(text(), 0..3), any::<i32>(), map(), any::<bool>()).prop_map(
        |(name, image, args, port, limits, probe)| pb::Container {
            name,
            image,
            args,
            ports: vec![pb::ContainerPort { container_port: port, ..Default::default() }],
            resources: Some(pb::ResourceRequirements { limits, ..Default::default() }),
            liveness_probe: probe.then(|| pb::Probe {
                exec: Some(pb::ExecAction { command: vec!["true".into()] }),
                period_seconds: port,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

fn pod_spec() -> impl Strategy<Value = Option<pb::PodSpec>> {
    (proptest::collection::vec(container(), 0..3), text(), map(), proptest::option::of(any::<i64>()), any::<bool>())
        .prop_map(|(containers, node_name, node_selector, grace, tol)| {
            Some(pb::PodSpec {
                containers,
                node_name,
                node_selector,
                termination_grace_period_seconds: grace,
                tolerations: if tol {
                    vec![pb::Toleration { operator: "Exists".into(), ..Default::default() }]
                } else {
                    vec![]
                },
                ..Default::default()
            })
        })
}

fn object() -> impl Strategy<Value = O> {
    prop_oneof![
        (meta(), text()).prop_map(|(metadata, phase)| O::Namespace(pb::Namespace {
            metadata,
            spec: None,
            status: Some(pb::NamespaceStatus { phase, ..Default::default() })
        })),
        (meta(), any::<bool>(), map()).prop_map(|(metadata, unschedulable, capacity)| O::Node(pb::Node {
            metadata,
            spec: Some(pb::NodeSpec { unschedulable, ..Default::default() }),
            status: Some(pb::NodeStatus { capacity, ..Default::default() }),
        })),
        (meta(), pod_spec(), text(), any::<i32>()).prop_map(|(metadata, spec, phase, restarts)| O::Pod(pb::Pod {
            metadata,
            spec,
            status: Some(pb::PodStatus {
                phase,
                container_statuses: vec![pb::ContainerStatus { restart_count: restarts, ..Default::default() }],
                ..Default::default()
            }),
        })),
        (meta(), proptest::option::of(any::<i32>()), map(), pod_spec()).prop_map(
            |(metadata, replicas, labels, spec)| {
                O::ReplicaSet(pb::ReplicaSet {
                    metadata,
                    spec: Some(pb::ReplicaSetSpec {
                        replicas,
                        selector: Some(pb::LabelSelector { match_labels: labels, ..Default::default() }),
                        template: Some(pb::PodTemplateSpec { metadata: None, spec }),
                        ..Default::default()
                    }),
                    status: None,
                })
            }
        ),
        (meta(), proptest::option::of(any::<i32>()), text()).prop_map(|(metadata, replicas, surge)| {
            O::Deployment(pb::Deployment {
                metadata,
                spec: Some(pb::DeploymentSpec {
                    replicas,
                    strategy: Some(pb::DeploymentStrategy {
                        r#type: "RollingUpdate".into(),
                        rolling_update: Some(pb::RollingUpdateDeployment { max_surge: surge, ..Default::default() }),
                    }),
                    ..Default::default()
                }),
                status: None,
            })
        }),
        (meta(), map(), any::<i32>(), text()).prop_map(|(metadata, selector, port, ip)| O::Service(pb::Service {
            metadata,
            spec: Some(pb::ServiceSpec {
                selector,
                ports: vec![pb::ServicePort { port, ..Default::default() }],
                cluster_ip: ip,
                ..Default::default()
            }),
            status: None,
        })),
        (meta(), text()).prop_map(|(metadata, ip)| O::Endpoints(pb::Endpoints {
            metadata,
            subsets: vec![pb::EndpointSubset {
                addresses: vec![pb::EndpointAddress { ip, ..Default::default() }],
                ..Default::default()
            }],
        })),
        (meta(), text(), proptest::option::of(any::<i32>())).prop_map(|(metadata, holder, d)| O::Lease(pb::Lease {
            metadata,
            spec: Some(pb::LeaseSpec { holder_identity: holder, lease_duration_seconds: d, ..Default::default() }),
        })),
        (meta(), text(), any::<i32>()).prop_map(|(metadata, reason, count)| O::Event(pb::Event {
            metadata,
            reason,
            count,
            ..Default::default()
        })),
        (meta(), text(), text()).prop_map(|(metadata, verb, resource)| O::ClusterRole(pb::ClusterRole {
            metadata,
            rules: vec![pb::PolicyRule {
                verbs: vec![verb],
                resources: vec![resource.clone()],
                resource_names: vec![resource],
                ..Default::default()
            }],
        })),
        (meta(), text(), text()).prop_map(|(metadata, user, role)| O::RoleBinding(pb::RoleBinding {
            metadata,
            subjects: vec![pb::Subject { kind: "User".into(), name: user, ..Default::default() }],
            role_ref: Some(pb::RoleRef {
                kind: "Role".into(),
                name: role,
                api_group: "rbac.authorization.k8s.io".into()
            }),
        })),
    ]
}

proptest! {
    /// Every object decodes from its protobuf encoding to itself (what the store holds).
    #[test]
    fn every_kind_survives_protobuf_round_trip(o in object()) {
        let back = kinds::decode(Kind::of(&o), &kinds::encode(&o)).expect("decode");
        prop_assert_eq!(back, o);
    }

    /// Every object decodes from its JSON form to itself (manifests, patches, -o json).
    #[test]
    fn every_kind_survives_json_round_trip(o in object()) {
        let v = kinds::to_json(&o);
        let back = kinds::from_json(Kind::of(&o), v.clone()).map_err(|e| TestCaseError::fail(format!("{e}: {v}")))?;
        prop_assert_eq!(back, o);
    }
}

fn valid_pod() -> O {
    O::Pod(pb::Pod {
        metadata: Some(pb::ObjectMeta { name: "web".into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::PodSpec {
            containers: vec![pb::Container { name: "c".into(), image: "nginx".into(), ..Default::default() }],
            ..Default::default()
        }),
        status: None,
    })
}

fn pod_with(f: impl FnOnce(&mut pb::Pod)) -> O {
    let mut o = valid_pod();
    if let O::Pod(p) = &mut o {
        f(p);
    }
    o
}

fn spec(p: &mut pb::Pod) -> &mut pb::PodSpec {
    p.spec.get_or_insert_with(Default::default)
}

#[test]
fn validation_table_names_each_field() {
    assert!(crate::validate::object(&valid_pod()).is_ok());
    let cases: Vec<(O, &str)> = vec![
        (pod_with(|p| p.metadata.as_mut().expect("m").name = "-web".into()), "metadata.name"),
        (pod_with(|p| p.metadata.as_mut().expect("m").namespace = "Prod".into()), "metadata.namespace"),
        (pod_with(|p| spec(p).containers.clear()), "spec.containers"),
        (pod_with(|p| spec(p).containers[0].name = "C".into()), "spec.containers[0].name"),
        (
            pod_with(|p| {
                let c = spec(p).containers[0].clone();
                spec(p).containers.push(c);
            }),
            "spec.containers[1].name",
        ),
        (
            pod_with(|p| spec(p).containers[0].ports.push(pb::ContainerPort { container_port: 70000, ..Default::default() })),
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            pod_with(|p| {
                spec(p).containers[0].ports.push(pb::ContainerPort {
                    container_port: 80,
                    protocol: "SCTP".into(),
                    ..Default::default()
                })
            }),
            "spec.containers[0].ports[0].protocol",
        ),
        (pod_with(|p| spec(p).restart_policy = "Sometimes".into()), "spec.restartPolicy"),
        (
            pod_with(|p| spec(p).tolerations.push(pb::Toleration { operator: "Exists".into(), value: "x".into(), ..Default::default() })),
            "spec.tolerations[0].value",
        ),
        (
            pod_with(|p| spec(p).containers[0].liveness_probe = Some(pb::Probe::default())),
            "spec.containers[0].livenessProbe",
        ),
        (pod_with(|p| spec(p).termination_grace_period_seconds = Some(-1)), "spec.terminationGracePeriodSeconds"),
        (
            pod_with(|p| {
                spec(p).affinity = Some(pb::Affinity {
                    node_affinity: Some(pb::NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(pb::NodeSelector {
                            node_selector_terms: vec![pb::NodeSelectorTerm {
                                match_expressions: vec![pb::NodeSelectorRequirement {
                                    key: "zone".into(),
                                    operator: "Near".into(),
                                    values: vec![],
                                }],
                            }],
                        }),
                        ..Default::default()
                    }),
                })
            }),
            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator",
        ),
        (pod_with(|p| p.status = Some(pb::PodStatus { pod_ip: "10.0.0.300".into(), ..Default::default() })), "status.podIP"),
        (pod_with(|p| spec(p).volumes.push(pb::Volume { name: "v".into(), ..Default::default() })), "spec.volumes[0]"),
        (
            pod_with(|p| {
                spec(p).volumes.push(pb::Volume {
                    name: "v".into(),
                    host_path: Some(pb::HostPathVolumeSource { path: "relative".into(), ..Default::default() }),
                    ..Default::default()
                })
            }),
            "spec.volumes[0].hostPath.path",
        ),
        (
            pod_with(|p| {
                spec(p).volumes.push(pb::Volume {
                    name: "v".into(),
                    empty_dir: Some(pb::EmptyDirVolumeSource { medium: "Disk".into(), ..Default::default() }),
                    ..Default::default()
                })
            }),
            "spec.volumes[0].emptyDir.medium",
        ),
        (
            pod_with(|p| {
                spec(p).containers[0].volume_mounts.push(pb::VolumeMount {
                    name: "nope".into(),
                    mount_path: "/data".into(),
                    ..Default::default()
                })
            }),
            "spec.containers[0].volumeMounts[0].name",
        ),
        (
            pod_with(|p| {
                spec(p).containers[0].volume_mounts.push(pb::VolumeMount {
                    name: "v".into(),
                    mount_path: "data".into(),
                    ..Default::default()
                })
            }),
            "spec.containers[0].volumeMounts[0].mountPath",
        ),
        (
            pod_with(|p| {
                spec(p).containers[0].security_context =
                    Some(pb::SecurityContext { run_as_user: Some(-1), ..Default::default() })
            }),
            "spec.containers[0].securityContext.runAsUser",
        ),
    ];
    for (o, field) in cases {
        match crate::validate::object(&o) {
            Err(crate::Error::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    }
}

#[test]
fn deployment_template_must_match_its_selector() {
    let d = O::Deployment(pb::Deployment {
        metadata: Some(pb::ObjectMeta { name: "d".into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::DeploymentSpec {
            selector: Some(pb::LabelSelector {
                match_labels: [("app".to_string(), "a".to_string())].into(),
                ..Default::default()
            }),
            template: Some(pb::PodTemplateSpec {
                metadata: Some(pb::ObjectMeta {
                    labels: [("app".to_string(), "b".to_string())].into(),
                    ..Default::default()
                }),
                spec: valid_pod_spec(),
            }),
            ..Default::default()
        }),
        status: None,
    });
    match crate::validate::object(&d) {
        Err(crate::Error::Invalid { field, .. }) => assert_eq!(field, "spec.template.metadata.labels"),
        other => panic!("{other:?}"),
    }
}

fn valid_pod_spec() -> Option<pb::PodSpec> {
    match valid_pod() {
        O::Pod(p) => p.spec,
        _ => None,
    }
}

#[test]
fn pod_update_may_change_only_images_and_add_tolerations() {
    let old = valid_pod();
    let image = pod_with(|p| spec(p).containers[0].image = "nginx:2".into());
    assert!(crate::validate::update(&old, &image).is_ok());
    let tol =
        pod_with(|p| spec(p).tolerations.push(pb::Toleration { operator: "Exists".into(), ..Default::default() }));
    assert!(crate::validate::update(&old, &tol).is_ok());
    let node = pod_with(|p| spec(p).node_name = "n1".into());
    assert!(
        matches!(crate::validate::update(&old, &node), Err(crate::Error::Invalid { field, .. }) if field == "spec.nodeName")
    );
    let args = pod_with(|p| spec(p).containers[0].args = vec!["x".into()]);
    assert!(
        matches!(crate::validate::update(&old, &args), Err(crate::Error::Invalid { field, .. }) if field == "spec")
    );
}

#[test]
fn a_nodes_pod_cidr_is_set_once_and_a_terminating_namespace_only_loses_finalizers() {
    let node = |cidr: &str| {
        O::Node(pb::Node {
            metadata: Some(pb::ObjectMeta { name: "n1".into(), ..Default::default() }),
            spec: Some(pb::NodeSpec { pod_cidr: cidr.into(), ..Default::default() }),
            status: None,
        })
    };
    assert!(crate::validate::update(&node(""), &node("10.244.1.0/24")).is_ok(), "given once");
    assert!(matches!(crate::validate::update(&node("10.244.1.0/24"), &node("10.244.2.0/24")),
            Err(crate::Error::Invalid { field, .. }) if field == "spec.podCIDR"));
    let ns = |deleting: bool, finalizers: &[&str]| {
        O::Namespace(pb::Namespace {
            metadata: Some(pb::ObjectMeta {
                name: "team".into(),
                deletion_timestamp: if deleting { "2026-01-01T00:00:00Z".into() } else { String::new() },
                ..Default::default()
            }),
            spec: Some(pb::NamespaceSpec { finalizers: finalizers.iter().map(|f| f.to_string()).collect() }),
            status: None,
        })
    };
    assert!(crate::validate::update(&ns(true, &["kubernetes"]), &ns(true, &[])).is_ok());
    assert!(matches!(crate::validate::update(&ns(true, &["kubernetes"]), &ns(true, &["kubernetes", "x.io/y"])),
            Err(crate::Error::Invalid { field, .. }) if field == "spec.finalizers"));
    assert!(crate::validate::update(&ns(false, &[]), &ns(false, &["x.io/y"])).is_ok(), "while active");
}

#[test]
fn unknown_json_field_and_wrong_type_are_named_by_path() {
    let v: Value =
        serde_json::json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "imagee": "x"}]}});
    match kinds::from_json(Kind::Pod, v) {
        Err(crate::Error::Invalid { field, reason }) => {
            assert_eq!(field, "spec.containers[0].imagee");
            assert!(reason.contains("unknown field"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let v: Value = serde_json::json!({"spec": {"replicas": "three"}});
    match kinds::from_json(Kind::Deployment, v) {
        Err(crate::Error::Invalid { field, .. }) => assert_eq!(field, "spec.replicas"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_service_target_port_is_a_number_or_a_name_in_json() {
    let v: Value = serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "web-http"},
            {"name": "alt", "port": 81, "targetPort": "8081"},
            {"name": "raw", "port": 82, "targetPort": 8082}
        ]}
    });
    let o = kinds::from_json(Kind::Service, v).expect("decodes");
    let O::Service(s) = &o else { unreachable!() };
    let ports = &s.spec.as_ref().expect("spec").ports;
    assert_eq!((ports[0].target_port, ports[0].target_port_name.as_str()), (0, "web-http"));
    assert_eq!((ports[1].target_port, ports[1].target_port_name.as_str()), (8081, ""));
    assert_eq!(ports[2].target_port, 8082);
    crate::validate::object(&o).expect("valid");
    let back = kinds::to_json(&o);
    assert_eq!(back["spec"]["ports"][0]["targetPort"], Value::from("web-http"));
    assert_eq!(back["spec"]["ports"][1]["targetPort"], Value::from(8081));
    assert!(back["spec"]["ports"][0].get("targetPortName").is_none());

    let bad = |name: &str| {
        let mut o = o.clone();
        let O::Service(s) = &mut o else { unreachable!() };
        s.spec.as_mut().expect("spec").ports[0].target_port_name = name.into();
        crate::validate::object(&o).expect_err("refused").to_string()
    };
    assert!(bad("a-name-longer-than-15").contains("spec.ports[0].targetPort"));
    assert!(bad("Web_Http").contains("spec.ports[0].targetPort"));
    // Two ports of one name would share the proxy's chains: refused, as Kubernetes does.
    let mut twice = o.clone();
    let O::Service(s) = &mut twice else { unreachable!() };
    s.spec.as_mut().expect("spec").ports[1].name = "http".into();
    let e = crate::validate::object(&twice).expect_err("refused").to_string();
    assert!(e.contains("spec.ports[1].name") && e.contains("names another port"), "{e}");
}

/// maxSurge and maxUnavailable may be written as numbers, as Kubernetes' IntOrString.
#[test]
fn rolling_update_limits_are_numbers_or_percentages_in_json() {
    let v: Value = serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}}}
    });
    let O::Deployment(d) = kinds::from_json(Kind::Deployment, v).expect("decodes") else { unreachable!() };
    let r = d.spec.and_then(|s| s.strategy).and_then(|s| s.rolling_update).expect("rollingUpdate");
    assert_eq!((r.max_surge.as_str(), r.max_unavailable.as_str()), ("1", "25%"));
}

/// The bad workload objects issue 12 names, each refused naming its field: negative
/// replicas, maxSurge and maxUnavailable both 0, a DaemonSet maxUnavailable of 0, a Job
/// whose pods would restart forever, and a negative Job count.
#[test]
fn bad_workloads_are_refused_naming_the_field() {
    let selector = || {
        Some(pb::LabelSelector { match_labels: [("app".to_string(), "a".to_string())].into(), ..Default::default() })
    };
    let template = |policy: &str| {
        let mut spec = valid_pod_spec();
        if let Some(s) = spec.as_mut() {
            s.restart_policy = policy.into();
        }
        Some(pb::PodTemplateSpec {
            metadata: Some(pb::ObjectMeta {
                labels: [("app".to_string(), "a".to_string())].into(),
                ..Default::default()
            }),
            spec,
        })
    };
    let meta = || Some(pb::ObjectMeta { name: "w".into(), namespace: "default".into(), ..Default::default() });
    let deployment = |replicas: i32, surge: &str, unavailable: &str| {
        O::Deployment(pb::Deployment {
            metadata: meta(),
            spec: Some(pb::DeploymentSpec {
                replicas: Some(replicas),
                selector: selector(),
                template: template(""),
                strategy: Some(pb::DeploymentStrategy {
                    r#type: "RollingUpdate".into(),
                    rolling_update: Some(pb::RollingUpdateDeployment {
                        max_surge: surge.into(),
                        max_unavailable: unavailable.into(),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        })
    };
    let daemonset = |unavailable: &str| {
        O::DaemonSet(pb::DaemonSet {
            metadata: meta(),
            spec: Some(pb::DaemonSetSpec {
                selector: selector(),
                template: template(""),
                update_strategy: Some(pb::DaemonSetUpdateStrategy {
                    r#type: "RollingUpdate".into(),
                    rolling_update: Some(pb::RollingUpdateDaemonSet { max_unavailable: unavailable.into() }),
                }),
                min_ready_seconds: 0,
            }),
            status: None,
        })
    };
    let job = |policy: &str, completions: i32| {
        O::Job(pb::Job {
            metadata: meta(),
            spec: Some(pb::JobSpec {
                completions: Some(completions),
                selector: selector(),
                template: template(policy),
                ..Default::default()
            }),
            status: None,
        })
    };
    assert!(crate::validate::object(&deployment(3, "1", "1")).is_ok());
    assert!(crate::validate::object(&daemonset("1")).is_ok());
    assert!(crate::validate::object(&job("Never", 1)).is_ok());
    for (o, field) in [
        (deployment(-1, "1", "1"), "spec.replicas"),
        (deployment(3, "0", "0%"), "spec.strategy.rollingUpdate"),
        (daemonset("0"), "spec.updateStrategy.rollingUpdate.maxUnavailable"),
        (job("Always", 1), "spec.template.spec.restartPolicy"),
        (job("Never", -1), "spec.completions"),
    ] {
        match crate::validate::object(&o) {
            Err(crate::Error::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    }
}
