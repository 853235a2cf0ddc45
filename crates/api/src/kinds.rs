//! The kinds of object the API serves, where each is stored, and what can be done to the
//! protobuf `Object` union without knowing its kind statically.

use flotilla_proto::api::{self as pb, object::Kind as O};

use crate::Error;

/// A kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Namespace (cluster-scoped).
    Namespace,
    /// Node (cluster-scoped).
    Node,
    /// Pod.
    Pod,
    /// ReplicaSet.
    ReplicaSet,
    /// Deployment.
    Deployment,
    /// Service.
    Service,
    /// Endpoints.
    Endpoints,
    /// Lease (coordination).
    Lease,
    /// Event.
    Event,
    /// DaemonSet.
    DaemonSet,
    /// Job.
    Job,
    /// Role (RBAC).
    Role,
    /// ClusterRole (RBAC, cluster-scoped).
    ClusterRole,
    /// RoleBinding (RBAC).
    RoleBinding,
    /// ClusterRoleBinding (RBAC, cluster-scoped).
    ClusterRoleBinding,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 15] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::ReplicaSet,
        Kind::Deployment,
        Kind::Service,
        Kind::Endpoints,
        Kind::Lease,
        Kind::Event,
        Kind::DaemonSet,
        Kind::Job,
        Kind::Role,
        Kind::ClusterRole,
        Kind::RoleBinding,
        Kind::ClusterRoleBinding,
    ];

    /// The name used in manifests and requests (`Pod`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Deployment => "Deployment",
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::Lease => "Lease",
            Kind::Event => "Event",
            Kind::DaemonSet => "DaemonSet",
            Kind::Job => "Job",
            Kind::Role => "Role",
            Kind::ClusterRole => "ClusterRole",
            Kind::RoleBinding => "RoleBinding",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }

    /// The plural, lower case, used in store keys and on the command line (`pods`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::ReplicaSet => "replicasets",
            Kind::Deployment => "deployments",
            Kind::Service => "services",
            Kind::Endpoints => "endpoints",
            Kind::Lease => "leases",
            Kind::Event => "events",
            Kind::DaemonSet => "daemonsets",
            Kind::Job => "jobs",
            Kind::Role => "roles",
            Kind::ClusterRole => "clusterroles",
            Kind::RoleBinding => "rolebindings",
            Kind::ClusterRoleBinding => "clusterrolebindings",
        }
    }

    /// The `apiVersion` a manifest of this kind carries (Kubernetes' group/version).
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::ReplicaSet | Kind::Deployment | Kind::DaemonSet => "apps/v1",
            Kind::Job => "batch/v1",
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding => {
                "rbac.authorization.k8s.io/v1"
            }
            _ => "v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node | Kind::ClusterRole | Kind::ClusterRoleBinding)
    }

    /// Whether the kind has a status (and so a status subresource).
    pub fn has_status(self) -> bool {
        !matches!(
            self,
            Kind::Endpoints
                | Kind::Lease
                | Kind::Event
                | Kind::Role
                | Kind::ClusterRole
                | Kind::RoleBinding
                | Kind::ClusterRoleBinding
        )
    }

    /// The kind named exactly `s` (`Pod`), as in requests and manifests.
    pub fn parse(s: &str) -> Result<Kind, Error> {
        Kind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            Error::BadRequest(format!("unknown kind {s:?}; known kinds: {}", known.join(", ")))
        })
    }

    /// The kind for a name as people type it: `Pod`, `pod`, `pods`, `po`, `deploy`, ...
    pub fn lookup(s: &str) -> Option<Kind> {
        let l = s.to_ascii_lowercase();
        let short = match l.as_str() {
            "ns" => Some(Kind::Namespace),
            "no" => Some(Kind::Node),
            "po" => Some(Kind::Pod),
            "rs" => Some(Kind::ReplicaSet),
            "deploy" => Some(Kind::Deployment),
            "svc" => Some(Kind::Service),
            "ep" => Some(Kind::Endpoints),
            "ev" => Some(Kind::Event),
            "ds" => Some(Kind::DaemonSet),
            _ => None,
        };
        short.or_else(|| {
            Kind::ALL.into_iter().find(|k| {
                let name = k.name().to_ascii_lowercase();
                l == name || l == k.plural() || l.strip_suffix('s') == Some(name.as_str())
            })
        })
    }

    /// The kind of an object.
    pub fn of(o: &O) -> Kind {
        match o {
            O::Namespace(_) => Kind::Namespace,
            O::Node(_) => Kind::Node,
            O::Pod(_) => Kind::Pod,
            O::ReplicaSet(_) => Kind::ReplicaSet,
            O::Deployment(_) => Kind::Deployment,
            O::Service(_) => Kind::Service,
            O::Endpoints(_) => Kind::Endpoints,
            O::Lease(_) => Kind::Lease,
            O::Event(_) => Kind::Event,
            O::DaemonSet(_) => Kind::DaemonSet,
            O::Job(_) => Kind::Job,
            O::Role(_) => Kind::Role,
            O::ClusterRole(_) => Kind::ClusterRole,
            O::RoleBinding(_) => Kind::RoleBinding,
            O::ClusterRoleBinding(_) => Kind::ClusterRoleBinding,
        }
    }

    /// Field paths a field selector may use for this kind.
    pub fn selectable_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Pod => &["metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"],
            Kind::Node => &["metadata.name", "spec.unschedulable"],
            Kind::Event => &["metadata.name", "metadata.namespace", "involvedObject.name", "involvedObject.kind"],
            _ if self.namespaced() => &["metadata.name", "metadata.namespace"],
            _ => &["metadata.name"],
        }
    }

    /// The namespace a request means: `default` when a namespaced kind's is left empty,
    /// as in Kubernetes.
    pub fn namespace_or_default(self, namespace: &str) -> &str {
        if self.namespaced() && namespace.is_empty() {
            "default"
        } else {
            namespace
        }
    }

    /// `namespace/name` or `name`, for messages.
    pub fn display_name(self, namespace: &str, name: &str) -> String {
        if self.namespaced() {
            format!("{namespace}/{name}")
        } else {
            name.to_string()
        }
    }
}

/// Runs `$body` with `$x` bound to the inner message of the object union `$o`, whatever
/// its kind.
#[macro_export]
macro_rules! with_inner {
    ($o:expr, |$x:ident| $body:expr) => {{
        use flotilla_proto::api::object::Kind as __O;
        match $o {
            __O::Namespace($x) => $body,
            __O::Node($x) => $body,
            __O::Pod($x) => $body,
            __O::ReplicaSet($x) => $body,
            __O::Deployment($x) => $body,
            __O::Service($x) => $body,
            __O::Endpoints($x) => $body,
            __O::Lease($x) => $body,
            __O::Event($x) => $body,
            __O::DaemonSet($x) => $body,
            __O::Job($x) => $body,
            __O::Role($x) => $body,
            __O::ClusterRole($x) => $body,
            __O::RoleBinding($x) => $body,
            __O::ClusterRoleBinding($x) => $body,
        }
    }};
}

/// The object's metadata (empty if absent).
pub fn meta(o: &O) -> &pb::ObjectMeta {
    static EMPTY: std::sync::OnceLock<pb::ObjectMeta> = std::sync::OnceLock::new();
    with_inner!(o, |x| x.metadata.as_ref()).unwrap_or_else(|| EMPTY.get_or_init(pb::ObjectMeta::default))
}

/// The object's metadata, created if absent.
pub fn meta_mut(o: &mut O) -> &mut pb::ObjectMeta {
    with_inner!(o, |x| x.metadata.get_or_insert_with(Default::default))
}

/// The protobuf encoding of the inner message (what is stored).
pub fn encode(o: &O) -> Vec<u8> {
    use prost::Message;
    with_inner!(o, |x| x.encode_to_vec())
}

/// Decodes a stored object of `kind`.
pub fn decode(kind: Kind, bytes: &[u8]) -> Result<O, Error> {
    use prost::Message;
    let bad = |e: prost::DecodeError| Error::Internal(format!("stored {} does not decode: {e}", kind.name()));
    Ok(match kind {
        Kind::Namespace => O::Namespace(pb::Namespace::decode(bytes).map_err(bad)?),
        Kind::Node => O::Node(pb::Node::decode(bytes).map_err(bad)?),
        Kind::Pod => O::Pod(pb::Pod::decode(bytes).map_err(bad)?),
        Kind::ReplicaSet => O::ReplicaSet(pb::ReplicaSet::decode(bytes).map_err(bad)?),
        Kind::Deployment => O::Deployment(pb::Deployment::decode(bytes).map_err(bad)?),
        Kind::Service => O::Service(pb::Service::decode(bytes).map_err(bad)?),
        Kind::Endpoints => O::Endpoints(pb::Endpoints::decode(bytes).map_err(bad)?),
        Kind::Lease => O::Lease(pb::Lease::decode(bytes).map_err(bad)?),
        Kind::Event => O::Event(pb::Event::decode(bytes).map_err(bad)?),
        Kind::DaemonSet => O::DaemonSet(pb::DaemonSet::decode(bytes).map_err(bad)?),
        Kind::Job => O::Job(pb::Job::decode(bytes).map_err(bad)?),
        Kind::Role => O::Role(pb::Role::decode(bytes).map_err(bad)?),
        Kind::ClusterRole => O::ClusterRole(pb::ClusterRole::decode(bytes).map_err(bad)?),
        Kind::RoleBinding => O::RoleBinding(pb::RoleBinding::decode(bytes).map_err(bad)?),
        Kind::ClusterRoleBinding => O::ClusterRoleBinding(pb::ClusterRoleBinding::decode(bytes).map_err(bad)?),
    })
}

/// The JSON form of the inner message (Kubernetes field names, empty fields left out).
pub fn to_json(o: &O) -> serde_json::Value {
    let mut v = with_inner!(o, |x| serde_json::to_value(x)).unwrap_or(serde_json::Value::Null);
    if matches!(o, O::Service(_)) {
        service_ports_to_json(&mut v);
    }
    v
}

/// A Service's ports in JSON: `targetPort` is a number or a name (Kubernetes'
/// IntOrString); in protobuf the name is the separate `target_port_name`.
fn service_ports_to_json(v: &mut serde_json::Value) {
    let Some(ports) = v.pointer_mut("/spec/ports").and_then(|p| p.as_array_mut()) else { return };
    for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
        if let Some(name) = p.remove("targetPortName") {
            p.insert("targetPort".into(), name);
        }
    }
}

fn service_ports_from_json(v: &mut serde_json::Value) {
    let Some(ports) = v.pointer_mut("/spec/ports").and_then(|p| p.as_array_mut()) else { return };
    for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
        if p.get("targetPort").is_some_and(|t| t.is_string()) {
            if let Some(name) = p.remove("targetPort") {
                // "8080" is a number written as a string; anything else a name.
                match name.as_str().and_then(|s| s.parse::<i32>().ok()) {
                    Some(n) => p.insert("targetPort".into(), n.into()),
                    None => p.insert("targetPortName".into(), name),
                };
            }
        }
    }
}

/// maxSurge and maxUnavailable are Kubernetes IntOrStrings (`1` or `"25%"`); in
/// protobuf they are strings, so a number is taken as its decimal string.
fn int_or_string_from_json(v: &mut serde_json::Value, paths: &[&str]) {
    for path in paths {
        if let Some(x) = v.pointer_mut(path).filter(|x| x.is_number()) {
            *x = serde_json::Value::String(x.to_string());
        }
    }
}

const ROLLING: [&str; 4] = [
    "/spec/strategy/rollingUpdate/maxSurge",
    "/spec/strategy/rollingUpdate/maxUnavailable",
    "/spec/updateStrategy/rollingUpdate/maxSurge",
    "/spec/updateStrategy/rollingUpdate/maxUnavailable",
];

/// Decodes the JSON form of an object of `kind`; an unknown field or a wrong type is an
/// `Invalid` error naming its path.
pub fn from_json(kind: Kind, v: serde_json::Value) -> Result<O, Error> {
    fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Error> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "object".to_string() } else { path };
            Error::invalid(field, e.into_inner().to_string())
        })
    }
    Ok(match kind {
        Kind::Namespace => O::Namespace(de(v)?),
        Kind::Node => O::Node(de(v)?),
        Kind::Pod => O::Pod(de(v)?),
        Kind::ReplicaSet => O::ReplicaSet(de(v)?),
        Kind::Deployment => O::Deployment(de({
            let mut v = v;
            int_or_string_from_json(&mut v, &ROLLING);
            v
        })?),
        Kind::Service => O::Service(de({
            let mut v = v;
            service_ports_from_json(&mut v);
            v
        })?),
        Kind::Endpoints => O::Endpoints(de(v)?),
        Kind::Lease => O::Lease(de(v)?),
        Kind::Event => O::Event(de(v)?),
        Kind::DaemonSet => O::DaemonSet(de({
            let mut v = v;
            int_or_string_from_json(&mut v, &ROLLING);
            v
        })?),
        Kind::Job => O::Job(de(v)?),
        Kind::Role => O::Role(de(v)?),
        Kind::ClusterRole => O::ClusterRole(de(v)?),
        Kind::RoleBinding => O::RoleBinding(de(v)?),
        Kind::ClusterRoleBinding => O::ClusterRoleBinding(de(v)?),
    })
}

/// The encoded spec (what bumps `generation` when it changes): the spec for kinds that
/// have one, everything but metadata otherwise.
pub fn spec_bytes(o: &O) -> Vec<u8> {
    use prost::Message;
    match o {
        O::Namespace(x) => x.spec.as_ref().map(|v| v.encode_to_vec()).unwrap_or_default(),
        O::Node(x) => x.spec.as_ref().map(|v| v.encode_to_vec()).unwrap_or_default(),
        O::Pod(x) => x.spec.as_ref().map(|v| v.encode_to_vec()).unwrap_or_default(),
        O::ReplicaSet(x) => x.spec.as_ref().map(|v| v.encode_to_vec()).unwrap_or_default(),
        O::Deployment(x) => x.spec.as_ref().map(|v| v.encode_to_vec()).unwrap_or_default(),
        O::Service(x) => x.spec.as_ref().map(|v| v.encode_to_vec()).unwrap_or_default(),
        O::Endpoints(x) => pb::Endpoints { metadata: None, ..x.clone() }.encode_to_vec(),
        O::Lease(x) => x.spec.as_ref().map(|v| v.encode_to_vec()).unwrap_or_default(),
        O::Event(x) => pb::Event { metadata: None, ..x.clone() }.encode_to_vec(),
        O::DaemonSet(x) => x.spec.as_ref().map(|v| v.encode_to_vec()).unwrap_or_default(),
        O::Job(x) => x.spec.as_ref().map(|v| v.encode_to_vec()).unwrap_or_default(),
        O::Role(x) => pb::Role { metadata: None, ..x.clone() }.encode_to_vec(),
        O::ClusterRole(x) => pb::ClusterRole { metadata: None, ..x.clone() }.encode_to_vec(),
        O::RoleBinding(x) => pb::RoleBinding { metadata: None, ..x.clone() }.encode_to_vec(),
        O::ClusterRoleBinding(x) => pb::ClusterRoleBinding { metadata: None, ..x.clone() }.encode_to_vec(),
    }
}

/// Copies the status of `from` into `to` (same kind; kinds without status: nothing).
pub fn copy_status(from: &O, to: &mut O) {
    match (from, to) {
        (O::Namespace(a), O::Namespace(b)) => b.status = a.status.clone(),
        (O::Node(a), O::Node(b)) => b.status = a.status.clone(),
        (O::Pod(a), O::Pod(b)) => b.status = a.status.clone(),
        (O::ReplicaSet(a), O::ReplicaSet(b)) => b.status = a.status.clone(),
        (O::Deployment(a), O::Deployment(b)) => b.status = a.status.clone(),
        (O::Service(a), O::Service(b)) => b.status = a.status.clone(),
        (O::DaemonSet(a), O::DaemonSet(b)) => b.status = a.status,
        (O::Job(a), O::Job(b)) => b.status = a.status.clone(),
        _ => {}
    }
}

/// Wraps the union in the request message.
pub fn wrap(o: O) -> pb::Object {
    pb::Object { kind: Some(o) }
}

/// Unwraps a request's object, refusing an empty one.
pub fn unwrap(o: Option<pb::Object>) -> Result<O, Error> {
    o.and_then(|o| o.kind).ok_or_else(|| Error::invalid("object", "is required (one of the kinds)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_lookup_accepts_names_plurals_and_short_names() {
        for (s, k) in [
            ("Pod", Kind::Pod),
            ("pods", Kind::Pod),
            ("po", Kind::Pod),
            ("deploy", Kind::Deployment),
            ("deployments", Kind::Deployment),
            ("svc", Kind::Service),
            ("endpoints", Kind::Endpoints),
            ("ReplicaSet", Kind::ReplicaSet),
            ("rs", Kind::ReplicaSet),
            ("namespace", Kind::Namespace),
            ("leases", Kind::Lease),
            ("clusterrolebindings", Kind::ClusterRoleBinding),
            ("role", Kind::Role),
        ] {
            assert_eq!(Kind::lookup(s), Some(k), "{s}");
        }
        assert_eq!(Kind::lookup("gadgets"), None);
        assert!(Kind::parse("pod").is_err(), "requests name the kind exactly");
    }
}
