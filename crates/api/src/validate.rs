//! Validation at the boundary: every object is checked here before anything is written,
//! and the first violation is answered as `Invalid { field, reason }` with the field's
//! path in Kubernetes' JSON names (`spec.containers[0].resources.limits.cpu`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use flotilla_core::names;
use flotilla_core::quantity::Quantity;
use flotilla_proto::api::{self as pb, object::Kind as O};

use crate::kinds::{meta, Kind};
use crate::Error;

type R = Result<(), Error>;

fn at(field: impl Into<String>, r: Result<(), String>) -> R {
    r.map_err(|reason| Error::invalid(field, reason))
}

fn fail(field: impl Into<String>, reason: impl Into<String>) -> R {
    Err(Error::invalid(field, reason))
}

fn one_of(field: &str, v: &str, allowed: &[&str]) -> R {
    if allowed.contains(&v) {
        Ok(())
    } else {
        fail(field, format!("{v:?} is not one of {}", allowed.join(", ")))
    }
}

/// Most bytes of annotations on one object (as Kubernetes).
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

fn labels(field: &str, l: &BTreeMap<String, String>) -> R {
    for (k, v) in l {
        at(format!("{field}[{k}]"), names::label_key(k))?;
        at(format!("{field}[{k}]"), names::label_value(v))?;
    }
    Ok(())
}

fn metadata(kind: Kind, m: &pb::ObjectMeta) -> R {
    let name_rule = match kind {
        Kind::Namespace | Kind::Service => names::dns1123_label,
        Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding => names::path_segment,
        _ => names::dns1123_subdomain,
    };
    at("metadata.name", name_rule(&m.name))?;
    if kind.namespaced() {
        at("metadata.namespace", names::dns1123_label(&m.namespace))?;
    }
    labels("metadata.labels", &m.labels)?;
    let mut size = 0;
    for (k, v) in &m.annotations {
        at(format!("metadata.annotations[{k}]"), names::label_key(k))?;
        size += k.len() + v.len();
    }
    if size > MAX_ANNOTATION_BYTES {
        fail("metadata.annotations", format!("total size {size} bytes is more than {MAX_ANNOTATION_BYTES}"))?;
    }
    for (i, f) in m.finalizers.iter().enumerate() {
        at(format!("metadata.finalizers[{i}]"), names::label_key(f))?;
    }
    for (i, o) in m.owner_references.iter().enumerate() {
        let p = format!("metadata.ownerReferences[{i}]");
        for (f, v) in [("apiVersion", &o.api_version), ("kind", &o.kind), ("name", &o.name), ("uid", &o.uid)] {
            if v.is_empty() {
                fail(format!("{p}.{f}"), "is required")?;
            }
        }
    }
    if m.owner_references.iter().filter(|o| o.controller).count() > 1 {
        fail("metadata.ownerReferences", "only one reference may have controller=true")?;
    }
    Ok(())
}

fn quantities(field: &str, q: &BTreeMap<String, String>) -> Result<BTreeMap<String, Quantity>, Error> {
    let mut out = BTreeMap::new();
    for (name, v) in q {
        at(format!("{field}[{name}]"), names::label_key(name))?;
        let parsed = Quantity::parse(v).map_err(|e| Error::invalid(format!("{field}[{name}]"), e))?;
        if parsed.millis() < 0 {
            fail(format!("{field}[{name}]"), "must not be negative")?;
        }
        out.insert(name.clone(), parsed);
    }
    Ok(out)
}

fn probe(field: &str, p: &pb::Probe) -> R {
    let handlers = [p.exec.is_some(), p.tcp_socket.is_some(), p.http_get.is_some()].iter().filter(|b| **b).count();
    if handlers != 1 {
        fail(field, "must have exactly one of exec, tcpSocket, httpGet")?;
    }
    if let Some(e) = &p.exec {
        if e.command.is_empty() {
            fail(format!("{field}.exec.command"), "is required")?;
        }
    }
    if let Some(t) = &p.tcp_socket {
        at(format!("{field}.tcpSocket.port"), names::port(t.port))?;
    }
    if let Some(h) = &p.http_get {
        at(format!("{field}.httpGet.port"), names::port(h.port))?;
        if !h.scheme.is_empty() {
            one_of(&format!("{field}.httpGet.scheme"), &h.scheme, &["HTTP", "HTTPS"])?;
        }
    }
    for (f, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if v < 0 {
            fail(format!("{field}.{f}"), "must not be negative")?;
        }
    }
    Ok(())
}

fn container(field: &str, c: &pb::Container) -> R {
    at(format!("{field}.name"), names::dns1123_label(&c.name))?;
    if c.image.trim().is_empty() {
        fail(format!("{field}.image"), "is required")?;
    }
    if c.image.chars().any(char::is_whitespace) {
        fail(format!("{field}.image"), format!("{:?} must not contain whitespace", c.image))?;
    }
    for (i, e) in c.env.iter().enumerate() {
        if e.name.is_empty() || e.name.contains('=') {
            fail(format!("{field}.env[{i}].name"), "must be non-empty and contain no '='")?;
        }
    }
    let mut port_names = BTreeSet::new();
    for (i, p) in c.ports.iter().enumerate() {
        let pf = format!("{field}.ports[{i}]");
        at(format!("{pf}.containerPort"), names::port(p.container_port))?;
        if p.host_port != 0 {
            at(format!("{pf}.hostPort"), names::port(p.host_port))?;
        }
        if !p.protocol.is_empty() {
            one_of(&format!("{pf}.protocol"), &p.protocol, &["TCP", "UDP"])?;
        }
        if !p.name.is_empty() {
            at(format!("{pf}.name"), names::dns1123_label(&p.name))?;
            if !port_names.insert(&p.name) {
                fail(format!("{pf}.name"), format!("{:?} is used by another port", p.name))?;
            }
        }
    }
    if let Some(r) = &c.resources {
        let req = quantities(&format!("{field}.resources.requests"), &r.requests)?;
        let lim = quantities(&format!("{field}.resources.limits"), &r.limits)?;
        for (name, q) in &req {
            if lim.get(name).is_some_and(|l| q > l) {
                fail(
                    format!("{field}.resources.requests[{name}]"),
                    format!("{} must be less than or equal to the limit {}", r.requests[name], r.limits[name]),
                )?;
            }
        }
    }
    if let Some(p) = &c.liveness_probe {
        probe(&format!("{field}.livenessProbe"), p)?;
    }
    if let Some(p) = &c.readiness_probe {
        probe(&format!("{field}.readinessProbe"), p)?;
    }
    if let Some(p) = &c.startup_probe {
        probe(&format!("{field}.startupProbe"), p)?;
    }
    if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
        if h.exec.as_ref().is_none_or(|e| e.command.is_empty()) {
            fail(format!("{field}.lifecycle.preStop.exec.command"), "is required")?;
        }
    }
    if !c.image_pull_policy.is_empty() {
        one_of(&format!("{field}.imagePullPolicy"), &c.image_pull_policy, &["Always", "IfNotPresent", "Never"])?;
    }
    let mut paths = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let mf = format!("{field}.volumeMounts[{i}]");
        if m.name.is_empty() {
            fail(format!("{mf}.name"), "is required")?;
        }
        if !m.mount_path.starts_with('/') {
            fail(format!("{mf}.mountPath"), format!("{:?} must be an absolute path", m.mount_path))?;
        }
        if m.mount_path.split('/').any(|p| p == "..") {
            fail(format!("{mf}.mountPath"), "must not contain '..'")?;
        }
        if !paths.insert(m.mount_path.trim_end_matches('/')) {
            fail(format!("{mf}.mountPath"), format!("{:?} is mounted twice", m.mount_path))?;
        }
        if m.sub_path.starts_with('/') || m.sub_path.split('/').any(|p| p == "..") {
            fail(format!("{mf}.subPath"), format!("{:?} must be a relative path without '..'", m.sub_path))?;
        }
    }
    if let Some(sc) = &c.security_context {
        security(&format!("{field}.securityContext"), sc.run_as_user, sc.run_as_group)?;
    }
    Ok(())
}

/// uid and gid of a security context.
fn security(field: &str, user: Option<i64>, group: Option<i64>) -> R {
    for (name, v) in [("runAsUser", user), ("runAsGroup", group)] {
        if v.is_some_and(|v| !(0..=i64::from(u32::MAX - 1)).contains(&v)) {
            fail(format!("{field}.{name}"), "must be between 0 and 4294967294")?;
        }
    }
    Ok(())
}

/// The pod's volumes, and that every mount names one of them.
fn volumes(field: &str, s: &pb::PodSpec) -> R {
    let mut names = BTreeSet::new();
    for (i, v) in s.volumes.iter().enumerate() {
        let vf = format!("{field}.volumes[{i}]");
        at(format!("{vf}.name"), names::dns1123_label(&v.name))?;
        if !names.insert(v.name.as_str()) {
            fail(format!("{vf}.name"), format!("{:?} is used by another volume", v.name))?;
        }
        match (&v.empty_dir, &v.host_path) {
            (Some(e), None) => {
                if !e.medium.is_empty() {
                    one_of(&format!("{vf}.emptyDir.medium"), &e.medium, &["Memory"])?;
                }
                if !e.size_limit.is_empty() {
                    let q = Quantity::parse(&e.size_limit)
                        .map_err(|err| Error::invalid(format!("{vf}.emptyDir.sizeLimit"), err.to_string()))?;
                    if q.millis() <= 0 {
                        fail(format!("{vf}.emptyDir.sizeLimit"), "must be positive")?;
                    }
                }
            }
            (None, Some(h)) => {
                if !h.path.starts_with('/') || h.path.split('/').any(|p| p == "..") {
                    fail(format!("{vf}.hostPath.path"), format!("{:?} must be an absolute path without '..'", h.path))?;
                }
                if !h.r#type.is_empty() {
                    one_of(
                        &format!("{vf}.hostPath.type"),
                        &h.r#type,
                        &["DirectoryOrCreate", "Directory", "FileOrCreate", "File"],
                    )?;
                }
            }
            (None, None) => fail(vf, "one source is required (emptyDir or hostPath)")?,
            (Some(_), Some(_)) => fail(vf, "only one source may be given (emptyDir or hostPath)")?,
        }
    }
    for (kind, list) in [("containers", &s.containers), ("initContainers", &s.init_containers)] {
        for (i, c) in list.iter().enumerate() {
            for (j, m) in c.volume_mounts.iter().enumerate() {
                if !names.contains(m.name.as_str()) {
                    fail(
                        format!("{field}.{kind}[{i}].volumeMounts[{j}].name"),
                        format!("{:?} is not a volume of the pod", m.name),
                    )?;
                }
            }
        }
    }
    if let Some(sc) = &s.security_context {
        security(&format!("{field}.securityContext"), sc.run_as_user, sc.run_as_group)?;
    }
    Ok(())
}

/// One term of a node selector (`p` is its path).
fn node_selector_term(p: &str, term: &pb::NodeSelectorTerm) -> R {
    for (e, req) in term.match_expressions.iter().enumerate() {
        let p = format!("{p}.matchExpressions[{e}]");
        at(format!("{p}.key"), names::label_key(&req.key))?;
        one_of(&format!("{p}.operator"), &req.operator, &["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"])?;
        match req.operator.as_str() {
            "In" | "NotIn" if req.values.is_empty() => fail(format!("{p}.values"), "required for In and NotIn")?,
            "Exists" | "DoesNotExist" if !req.values.is_empty() => {
                fail(format!("{p}.values"), "must be empty for Exists and DoesNotExist")?
            }
            "Gt" | "Lt" if req.values.len() != 1 || req.values[0].parse::<i64>().is_err() => {
                fail(format!("{p}.values"), "Gt and Lt take exactly one integer")?
            }
            _ => {}
        }
    }
    Ok(())
}

/// A pod spec (also inside templates; `field` is its path).
pub fn pod_spec(field: &str, s: &pb::PodSpec) -> R {
    if s.containers.is_empty() {
        fail(format!("{field}.containers"), "at least one container is required")?;
    }
    let mut seen = BTreeSet::new();
    for (i, c) in s.containers.iter().enumerate() {
        container(&format!("{field}.containers[{i}]"), c)?;
        if !seen.insert(&c.name) {
            fail(format!("{field}.containers[{i}].name"), format!("{:?} is used by another container", c.name))?;
        }
    }
    for (i, c) in s.init_containers.iter().enumerate() {
        let f = format!("{field}.initContainers[{i}]");
        container(&f, c)?;
        if !seen.insert(&c.name) {
            fail(format!("{f}.name"), format!("{:?} is used by another container", c.name))?;
        }
        for (name, p) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if p.is_some() {
                fail(format!("{f}.{name}"), "init containers may not have probes (they run to completion)")?;
            }
        }
        if c.lifecycle.is_some() {
            fail(format!("{f}.lifecycle"), "init containers may not have lifecycle hooks")?;
        }
    }
    volumes(field, s)?;
    if !s.restart_policy.is_empty() {
        one_of(&format!("{field}.restartPolicy"), &s.restart_policy, &["Always", "OnFailure", "Never"])?;
    }
    if !s.node_name.is_empty() {
        at(format!("{field}.nodeName"), names::dns1123_subdomain(&s.node_name))?;
    }
    labels(&format!("{field}.nodeSelector"), &s.node_selector)?;
    let node_affinity = s.affinity.as_ref().and_then(|a| a.node_affinity.as_ref());
    if let Some(sel) = node_affinity.and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref()) {
        let base = format!("{field}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution");
        if sel.node_selector_terms.is_empty() {
            fail(format!("{base}.nodeSelectorTerms"), "at least one term is required")?;
        }
        for (t, term) in sel.node_selector_terms.iter().enumerate() {
            node_selector_term(&format!("{base}.nodeSelectorTerms[{t}]"), term)?;
        }
    }
    for (i, pref) in
        node_affinity.iter().flat_map(|n| &n.preferred_during_scheduling_ignored_during_execution).enumerate()
    {
        let p = format!("{field}.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
        if !(1..=100).contains(&pref.weight) {
            fail(format!("{p}.weight"), "must be between 1 and 100")?;
        }
        match &pref.preference {
            Some(term) => node_selector_term(&format!("{p}.preference"), term)?,
            None => fail(format!("{p}.preference"), "is required")?,
        }
    }
    for (i, t) in s.tolerations.iter().enumerate() {
        let p = format!("{field}.tolerations[{i}]");
        if !t.key.is_empty() {
            at(format!("{p}.key"), names::label_key(&t.key))?;
        }
        if !t.operator.is_empty() {
            one_of(&format!("{p}.operator"), &t.operator, &["Equal", "Exists"])?;
        }
        if t.operator == "Exists" && !t.value.is_empty() {
            fail(format!("{p}.value"), "must be empty when operator is Exists")?;
        }
        if t.key.is_empty() && t.operator != "Exists" {
            fail(format!("{p}.operator"), "must be Exists when key is empty")?;
        }
        if !t.effect.is_empty() {
            one_of(&format!("{p}.effect"), &t.effect, &["NoSchedule", "PreferNoSchedule", "NoExecute"])?;
        }
    }
    if s.termination_grace_period_seconds.is_some_and(|g| g < 0) {
        fail(format!("{field}.terminationGracePeriodSeconds"), "must not be negative")?;
    }
    Ok(())
}

fn label_selector(field: &str, s: &Option<pb::LabelSelector>) -> Result<flotilla_core::selector::LabelSelector, Error> {
    let s = s.as_ref().ok_or_else(|| Error::invalid(field, "is required"))?;
    let sel = crate::select::from_proto(s).map_err(|e| Error::invalid(field, e))?;
    if sel.is_empty() {
        fail(field, "must not be empty (it would select every pod)")?;
    }
    Ok(sel)
}

fn template(field: &str, selector: &flotilla_core::selector::LabelSelector, t: &Option<pb::PodTemplateSpec>) -> R {
    template_with(field, selector, t, &["Always"])
}

/// A pod template whose labels match `selector` and whose restartPolicy is one of
/// `policies`.
fn template_with(
    field: &str,
    selector: &flotilla_core::selector::LabelSelector,
    t: &Option<pb::PodTemplateSpec>,
    policies: &[&str],
) -> R {
    let t = t.as_ref().ok_or_else(|| Error::invalid(field, "is required"))?;
    let tl = t.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default();
    labels(&format!("{field}.metadata.labels"), &tl)?;
    if !selector.matches(&tl) {
        fail(format!("{field}.metadata.labels"), "do not match the selector")?;
    }
    let spec = t.spec.as_ref().ok_or_else(|| Error::invalid(format!("{field}.spec"), "is required"))?;
    pod_spec(&format!("{field}.spec"), spec)?;
    if !spec.restart_policy.is_empty() && !policies.contains(&spec.restart_policy.as_str()) {
        fail(
            format!("{field}.spec.restartPolicy"),
            format!("must be {} for pods of this kind", policies.join(" or ")),
        )?;
    }
    Ok(())
}

/// An absolute number or a percentage (`1`, `25%`).
fn int_or_percent(field: &str, v: &str) -> Result<(), Error> {
    let n = v.strip_suffix('%').unwrap_or(v);
    match n.parse::<u32>() {
        Ok(p) if !v.ends_with('%') || p <= 100 => Ok(()),
        _ => fail(field, format!("{v:?} must be a non-negative integer or a percentage (\"25%\")")),
    }
}

fn service(s: &pb::Service) -> R {
    let spec = s.spec.as_ref().ok_or_else(|| Error::invalid("spec", "is required"))?;
    if !spec.r#type.is_empty() {
        one_of("spec.type", &spec.r#type, &["ClusterIP", "NodePort", "LoadBalancer"])?;
    }
    let headless = spec.cluster_ip == "None";
    if !headless && !spec.cluster_ip.is_empty() && spec.cluster_ip.parse::<Ipv4Addr>().is_err() {
        fail("spec.clusterIP", format!("{:?} is not an IPv4 address or \"None\"", spec.cluster_ip))?;
    }
    if headless && !spec.r#type.is_empty() && spec.r#type != "ClusterIP" {
        fail("spec.clusterIP", "\"None\" (headless) is only for type ClusterIP")?;
    }
    if spec.ports.is_empty() && !headless {
        fail("spec.ports", "at least one port is required")?;
    }
    let (mut seen, mut names_seen) = (BTreeSet::new(), BTreeSet::new());
    for (i, p) in spec.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        at(format!("{f}.port"), names::port(p.port))?;
        if !p.target_port_name.is_empty() {
            // A container port name (IANA service name: at most 15 characters, a letter).
            let n = &p.target_port_name;
            at(format!("{f}.targetPort"), names::dns1123_label(n))?;
            if n.len() > 15 || !n.chars().any(|c| c.is_ascii_lowercase()) {
                fail(
                    format!("{f}.targetPort"),
                    format!("{n:?} must be a port number or a port name of at most 15 characters with a letter"),
                )?;
            }
            if p.target_port != 0 {
                fail(format!("{f}.targetPort"), "is either a number or a name, not both")?;
            }
        } else if p.target_port != 0 {
            at(format!("{f}.targetPort"), names::port(p.target_port))?;
        }
        if p.node_port != 0 && !(30000..=32767).contains(&p.node_port) {
            fail(format!("{f}.nodePort"), format!("{} is outside the node port range 30000-32767", p.node_port))?;
        }
        if !p.protocol.is_empty() {
            one_of(&format!("{f}.protocol"), &p.protocol, &["TCP", "UDP"])?;
        }
        if spec.ports.len() > 1 && p.name.is_empty() {
            fail(format!("{f}.name"), "is required when there is more than one port")?;
        }
        if !p.name.is_empty() {
            at(format!("{f}.name"), names::dns1123_label(&p.name))?;
        }
        if !seen.insert((&p.name, p.port, &p.protocol)) {
            fail(f.clone(), "duplicates another port")?;
        }
        if !p.name.is_empty() && !names_seen.insert(&p.name) {
            fail(format!("{f}.name"), format!("{:?} names another port too", p.name))?;
        }
    }
    labels("spec.selector", &spec.selector)?;
    if !spec.session_affinity.is_empty() {
        one_of("spec.sessionAffinity", &spec.session_affinity, &["None", "ClientIP"])?;
    }
    Ok(())
}

fn ip(field: &str, v: &str) -> R {
    v.parse::<std::net::IpAddr>().map(|_| ()).map_err(|_| Error::invalid(field, format!("{v:?} is not an IP address")))
}

/// The verbs an RBAC rule may name.
pub const VERBS: [&str; 10] =
    ["get", "list", "watch", "create", "update", "patch", "delete", "bind", "impersonate", "*"];

fn rules(rules: &[pb::PolicyRule]) -> R {
    for (i, r) in rules.iter().enumerate() {
        let f = |x: &str| format!("rules[{i}].{x}");
        if r.verbs.is_empty() {
            fail(f("verbs"), "must name at least one verb (or \"*\")")?;
        }
        for (j, v) in r.verbs.iter().enumerate() {
            one_of(&format!("rules[{i}].verbs[{j}]"), v, &VERBS)?;
        }
        if r.resources.is_empty() {
            fail(f("resources"), "must name at least one resource (or \"*\")")?;
        }
        for (j, res) in r.resources.iter().enumerate() {
            if res.is_empty() || res.contains(char::is_whitespace) {
                fail(format!("rules[{i}].resources[{j}]"), "must be a resource like pods or pods/status (or \"*\")")?;
            }
        }
        if r.resource_names.iter().any(String::is_empty) {
            fail(f("resourceNames"), "must not hold an empty name")?;
        }
    }
    Ok(())
}

fn binding(cluster: bool, subjects: &[pb::Subject], role_ref: &Option<pb::RoleRef>) -> R {
    let Some(r) = role_ref else { return fail("roleRef", "is required") };
    if cluster {
        one_of("roleRef.kind", &r.kind, &["ClusterRole"])?;
    } else {
        one_of("roleRef.kind", &r.kind, &["Role", "ClusterRole"])?;
    }
    if r.name.is_empty() {
        fail("roleRef.name", "is required")?;
    }
    for (i, s) in subjects.iter().enumerate() {
        one_of(&format!("subjects[{i}].kind"), &s.kind, &["User", "Group"])?;
        if s.name.is_empty() {
            fail(format!("subjects[{i}].name"), "is required")?;
        }
    }
    Ok(())
}

/// Checks a whole object (after defaults were applied).
pub fn object(o: &O) -> R {
    let kind = Kind::of(o);
    metadata(kind, meta(o))?;
    match o {
        O::Namespace(_) => {}
        O::Role(r) => rules(&r.rules)?,
        O::ClusterRole(r) => rules(&r.rules)?,
        O::RoleBinding(b) => binding(false, &b.subjects, &b.role_ref)?,
        O::ClusterRoleBinding(b) => binding(true, &b.subjects, &b.role_ref)?,
        O::Lease(l) => {
            if let Some(spec) = &l.spec {
                if spec.lease_transitions < 0 {
                    fail("spec.leaseTransitions", "must not be negative")?;
                }
                if spec.lease_duration_seconds.is_some_and(|d| d <= 0) {
                    fail("spec.leaseDurationSeconds", "must be positive")?;
                }
                if spec.lease_duration_millis.is_some_and(|d| d <= 0) {
                    fail("spec.leaseDurationMillis", "must be positive")?;
                }
                if spec.holder_identity.len() > 253 || spec.holder_identity.contains('\0') {
                    fail("spec.holderIdentity", "must be at most 253 bytes, without NUL")?;
                }
            }
        }
        O::Node(n) => {
            if let Some(spec) = &n.spec {
                for (i, t) in spec.taints.iter().enumerate() {
                    at(format!("spec.taints[{i}].key"), names::label_key(&t.key))?;
                    at(format!("spec.taints[{i}].value"), names::label_value(&t.value))?;
                    one_of(
                        &format!("spec.taints[{i}].effect"),
                        &t.effect,
                        &["NoSchedule", "PreferNoSchedule", "NoExecute"],
                    )?;
                }
                if !spec.pod_cidr.is_empty() {
                    let ok = spec.pod_cidr.split_once('/').is_some_and(|(a, b)| {
                        a.parse::<std::net::IpAddr>().is_ok() && b.parse::<u8>().is_ok_and(|p| p <= 128)
                    });
                    if !ok {
                        fail("spec.podCIDR", format!("{:?} is not a CIDR (10.244.1.0/24)", spec.pod_cidr))?;
                    }
                }
            }
            if let Some(st) = &n.status {
                quantities("status.capacity", &st.capacity)?;
                quantities("status.allocatable", &st.allocatable)?;
            }
        }
        O::Pod(p) => {
            let spec = p.spec.as_ref().ok_or_else(|| Error::invalid("spec", "is required"))?;
            pod_spec("spec", spec)?;
            if let Some(st) = &p.status {
                if !st.phase.is_empty() {
                    one_of("status.phase", &st.phase, &["Pending", "Running", "Succeeded", "Failed", "Unknown"])?;
                }
                for (f, v) in [("status.podIP", &st.pod_ip), ("status.hostIP", &st.host_ip)] {
                    if !v.is_empty() {
                        ip(f, v)?;
                    }
                }
            }
        }
        O::ReplicaSet(r) => {
            let spec = r.spec.as_ref().ok_or_else(|| Error::invalid("spec", "is required"))?;
            if spec.replicas.is_some_and(|n| n < 0) {
                fail("spec.replicas", "must not be negative")?;
            }
            let sel = label_selector("spec.selector", &spec.selector)?;
            template("spec.template", &sel, &spec.template)?;
        }
        O::Deployment(d) => {
            let spec = d.spec.as_ref().ok_or_else(|| Error::invalid("spec", "is required"))?;
            if spec.replicas.is_some_and(|n| n < 0) {
                fail("spec.replicas", "must not be negative")?;
            }
            let sel = label_selector("spec.selector", &spec.selector)?;
            template("spec.template", &sel, &spec.template)?;
            if let Some(st) = &spec.strategy {
                if !st.r#type.is_empty() {
                    one_of("spec.strategy.type", &st.r#type, &["RollingUpdate", "Recreate"])?;
                }
                if let Some(ru) = &st.rolling_update {
                    if st.r#type == "Recreate" {
                        fail("spec.strategy.rollingUpdate", "must be empty for the Recreate strategy")?;
                    }
                    int_or_percent("spec.strategy.rollingUpdate.maxSurge", &ru.max_surge)?;
                    int_or_percent("spec.strategy.rollingUpdate.maxUnavailable", &ru.max_unavailable)?;
                    let zero = |v: &str| v.trim_end_matches('%') == "0";
                    if zero(&ru.max_surge) && zero(&ru.max_unavailable) {
                        fail("spec.strategy.rollingUpdate", "maxSurge and maxUnavailable may not both be 0")?;
                    }
                }
            }
        }
        O::DaemonSet(d) => {
            let spec = d.spec.as_ref().ok_or_else(|| Error::invalid("spec", "is required"))?;
            let sel = label_selector("spec.selector", &spec.selector)?;
            template("spec.template", &sel, &spec.template)?;
            if spec.min_ready_seconds < 0 {
                fail("spec.minReadySeconds", "must not be negative")?;
            }
            if let Some(st) = &spec.update_strategy {
                if !st.r#type.is_empty() {
                    one_of("spec.updateStrategy.type", &st.r#type, &["RollingUpdate", "OnDelete"])?;
                }
                if let Some(ru) = &st.rolling_update {
                    if st.r#type == "OnDelete" {
                        fail("spec.updateStrategy.rollingUpdate", "must be empty for the OnDelete strategy")?;
                    }
                    int_or_percent("spec.updateStrategy.rollingUpdate.maxUnavailable", &ru.max_unavailable)?;
                    if ru.max_unavailable.trim_end_matches('%') == "0" {
                        fail("spec.updateStrategy.rollingUpdate.maxUnavailable", "must not be 0")?;
                    }
                }
            }
        }
        O::Job(j) => {
            let spec = j.spec.as_ref().ok_or_else(|| Error::invalid("spec", "is required"))?;
            for (f, v) in [
                ("spec.parallelism", spec.parallelism),
                ("spec.completions", spec.completions),
                ("spec.backoffLimit", spec.backoff_limit),
                ("spec.ttlSecondsAfterFinished", spec.ttl_seconds_after_finished),
            ] {
                if v.is_some_and(|n| n < 0) {
                    fail(f, "must not be negative")?;
                }
            }
            if spec.active_deadline_seconds.is_some_and(|n| n <= 0) {
                fail("spec.activeDeadlineSeconds", "must be positive")?;
            }
            let sel = label_selector("spec.selector", &spec.selector)?;
            template_with("spec.template", &sel, &spec.template, &["Never", "OnFailure"])?;
        }
        O::Service(s) => service(s)?,
        O::Endpoints(e) => {
            for (i, s) in e.subsets.iter().enumerate() {
                for (j, a) in s.addresses.iter().chain(&s.not_ready_addresses).enumerate() {
                    ip(&format!("subsets[{i}].addresses[{j}].ip"), &a.ip)?;
                }
                for (j, p) in s.ports.iter().enumerate() {
                    at(format!("subsets[{i}].ports[{j}].port"), names::port(p.port))?;
                }
            }
        }
        O::Event(e) => {
            let io = e.involved_object.as_ref().ok_or_else(|| Error::invalid("involvedObject", "is required"))?;
            if io.kind.is_empty() || io.name.is_empty() {
                fail("involvedObject", "kind and name are required")?;
            }
            if !e.r#type.is_empty() {
                one_of("type", &e.r#type, &["Normal", "Warning"])?;
            }
        }
    }
    Ok(())
}

/// Checks what an update may not change, given the stored object `old`.
pub fn update(old: &O, new: &O) -> R {
    match (old, new) {
        (O::Pod(a), O::Pod(b)) => {
            // Only container images may change, and tolerations may be added.
            let (Some(sa), Some(sb)) = (&a.spec, &b.spec) else { return Ok(()) };
            if sa.node_name != sb.node_name {
                fail("spec.nodeName", "may not be changed by an update (use the pods/binding call)")?;
            }
            if sa.containers.len() != sb.containers.len() {
                fail("spec.containers", "containers may not be added or removed after creation")?;
            }
            let mut normalized = sb.clone();
            for (c, old_c) in normalized.containers.iter_mut().zip(&sa.containers) {
                c.image = old_c.image.clone();
            }
            if !sa.tolerations.iter().all(|t| sb.tolerations.contains(t)) {
                fail("spec.tolerations", "existing tolerations may not be removed or changed")?;
            }
            normalized.tolerations = sa.tolerations.clone();
            if &normalized != sa {
                fail(
                    "spec",
                    "pod updates may not change fields other than containers[*].image and tolerations (additions)",
                )?;
            }
        }
        (O::ReplicaSet(a), O::ReplicaSet(b))
            if a.spec.as_ref().map(|s| &s.selector) != b.spec.as_ref().map(|s| &s.selector) =>
        {
            fail("spec.selector", "is immutable")?;
        }
        (O::Deployment(a), O::Deployment(b))
            if a.spec.as_ref().map(|s| &s.selector) != b.spec.as_ref().map(|s| &s.selector) =>
        {
            fail("spec.selector", "is immutable")?;
        }
        (O::Service(a), O::Service(b)) => {
            let ip = |s: &pb::Service| s.spec.as_ref().map(|x| x.cluster_ip.clone()).unwrap_or_default();
            if ip(a) != ip(b) {
                fail("spec.clusterIP", "is immutable")?;
            }
        }
        (O::DaemonSet(a), O::DaemonSet(b))
            if a.spec.as_ref().map(|s| &s.selector) != b.spec.as_ref().map(|s| &s.selector) =>
        {
            fail("spec.selector", "is immutable")?;
        }
        (O::Job(a), O::Job(b)) => {
            let (sa, sb) = (a.spec.clone().unwrap_or_default(), b.spec.clone().unwrap_or_default());
            if sa.selector != sb.selector {
                fail("spec.selector", "is immutable")?;
            }
            if sa.template != sb.template {
                fail("spec.template", "is immutable (a Job's pods all run one template)")?;
            }
            if sa.completions != sb.completions {
                fail("spec.completions", "is immutable")?;
            }
        }
        (O::Node(a), O::Node(b)) => {
            // A podCIDR is given once (by Node IPAM or the kubelet) and then kept.
            let cidr = |n: &pb::Node| n.spec.as_ref().map(|s| s.pod_cidr.clone()).unwrap_or_default();
            if !cidr(a).is_empty() && cidr(a) != cidr(b) {
                fail("spec.podCIDR", format!("may not be changed once set (it is {})", cidr(a)))?;
            }
        }
        (O::Namespace(a), O::Namespace(b)) if !a.metadata.as_ref().is_none_or(|m| m.deletion_timestamp.is_empty()) => {
            // Finalizers of a namespace being deleted may only be removed.
            let fin = |n: &pb::Namespace| n.spec.as_ref().map(|s| s.finalizers.clone()).unwrap_or_default();
            if let Some(f) = fin(b).iter().find(|f| !fin(a).contains(f)) {
                fail("spec.finalizers", format!("{f:?} may not be added to a namespace being deleted"))?;
            }
        }
        (O::RoleBinding(a), O::RoleBinding(b)) if a.role_ref != b.role_ref => {
            fail("roleRef", "is immutable (delete the binding and make another)")?;
        }
        (O::ClusterRoleBinding(a), O::ClusterRoleBinding(b)) if a.role_ref != b.role_ref => {
            fail("roleRef", "is immutable (delete the binding and make another)")?;
        }
        (O::Lease(a), O::Lease(b)) => {
            // The term (leaseTransitions) of a lock grows at every change of holder and
            // never goes back: fencing tokens name it (docs/rfcs/0001-fenced-leadership.md).
            let (sa, sb) = (a.spec.clone().unwrap_or_default(), b.spec.clone().unwrap_or_default());
            if sb.lease_transitions < sa.lease_transitions {
                fail("spec.leaseTransitions", format!("may not go back (from {})", sa.lease_transitions))?;
            }
            if !sb.holder_identity.is_empty()
                && sb.holder_identity != sa.holder_identity
                && sb.lease_transitions <= sa.lease_transitions
            {
                fail(
                    "spec.leaseTransitions",
                    format!("must grow when the holder changes (it is {})", sa.lease_transitions),
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}
