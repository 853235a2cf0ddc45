//! Authorization of the resource API (docs/rfcs/0002-security.md): who may do what.
//!
//! In order: a request without a user (a plaintext client port: nobody was asked) and
//! `system:masters` may do anything; a node (`system:node:<name>` in `system:nodes`) goes
//! through the node authorizer — it reads what a node needs and writes only its own Node,
//! its Leases, its pods' status, and Events; everyone else through RBAC over the stored
//! Roles, ClusterRoles and their bindings, kept in a cache fed by the store's watch.
//! The scheduler's and the controller manager's identities must also carry their fencing
//! token on every write but their own lock's (RFC 0001). A refusal names the user, the
//! verb and the resource.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::kinds::{self, Kind};
use flotilla_proto::api::{self as pb, object::Kind as O};
use flotilla_store::auth::{User, MASTERS};

use crate::error::ApiError;
use crate::keys;
use crate::registry::Registry;
use crate::storage::{Feed, Storage};

/// The group of nodes' certificates.
pub const NODES: &str = "system:nodes";
/// The prefix of a node's user name.
pub const NODE_PREFIX: &str = "system:node:";
/// The scheduler's user.
pub const SCHEDULER: &str = "system:flotilla-scheduler";
/// The controller manager's user.
pub const CONTROLLER_MANAGER: &str = "system:flotilla-controller-manager";

/// How the resource API decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everyone who got in may do anything.
    AlwaysAllow,
    /// The node authorizer, then RBAC (masters may do anything).
    Rbac,
}

/// What a request asks to do.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// get, list, watch, create, update, patch, delete.
    pub verb: &'static str,
    /// The kind.
    pub kind: Kind,
    /// A subresource: `status`, `binding`, `log` (empty: the object itself).
    pub sub: &'static str,
    /// The namespace (empty for cluster-scoped kinds and all-namespace lists).
    pub namespace: &'a str,
    /// The object's name (empty for list, watch and create without one).
    pub name: &'a str,
    /// The object written (create and update).
    pub object: Option<&'a O>,
    /// Whether the request carries a fencing token.
    pub fenced: bool,
}

impl<'a> Request<'a> {
    /// `pods` or `pods/status`, as RBAC rules name it.
    pub fn resource(&self) -> String {
        if self.sub.is_empty() {
            self.kind.plural().to_string()
        } else {
            format!("{}/{}", self.kind.plural(), self.sub)
        }
    }

    fn writes(&self) -> bool {
        !matches!(self.verb, "get" | "list" | "watch")
    }

    /// The object's name: the request's, or for a create the object's own.
    pub fn object_name(&self) -> &'a str {
        match (self.name, self.object) {
            ("", Some(o)) => kinds::meta(o).name.as_str(),
            (n, _) => n,
        }
    }
}

/// The stored RBAC objects by store key.
#[derive(Default)]
struct Cache {
    objects: HashMap<Kind, HashMap<String, O>>,
    loaded: usize,
}

/// Decides requests of the resource API.
pub struct Authorizer {
    mode: Mode,
    cache: Arc<std::sync::RwLock<Cache>>,
    loaded: tokio::sync::watch::Receiver<bool>,
    /// The default policy by store key: it holds where the store has no object of that
    /// name yet (a cluster's first seconds, before the defaults are written), so the
    /// components are not refused while their roles are on their way.
    defaults: HashMap<String, O>,
}

fn default_objects() -> HashMap<String, O> {
    default_policy()
        .into_iter()
        .map(|o| {
            let (kind, m) = (Kind::of(&o), kinds::meta(&o));
            (keys::key(kind, &m.namespace, &m.name), o)
        })
        .collect()
}

const RBAC_KINDS: [Kind; 4] = [Kind::Role, Kind::ClusterRole, Kind::RoleBinding, Kind::ClusterRoleBinding];

/// How long a request waits for RBAC's first load.
const LOAD_WAIT: Duration = Duration::from_secs(5);

impl Authorizer {
    /// An authorizer in `mode`; with RBAC, it starts following the store's RBAC objects.
    pub fn new(mode: Mode, store: Arc<dyn Storage>) -> Authorizer {
        let cache = Arc::new(std::sync::RwLock::new(Cache::default()));
        let (tx, loaded) = tokio::sync::watch::channel(mode == Mode::AlwaysAllow);
        if mode == Mode::Rbac {
            let tx = Arc::new(tx);
            for kind in RBAC_KINDS {
                tokio::spawn(follow(store.clone(), kind, cache.clone(), tx.clone()));
            }
        }
        Authorizer { mode, cache, loaded, defaults: default_objects() }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Allows `req` by `user` (None: nobody was asked — a plaintext port), or says why not.
    pub async fn authorize(&self, reg: &Registry, user: Option<&User>, req: &Request<'_>) -> Result<(), ApiError> {
        let Some(user) = user else { return Ok(()) };
        if self.mode == Mode::AlwaysAllow || user.in_group(MASTERS) {
            return Ok(());
        }
        let name = req.object_name();
        let deny = |why: &str| {
            let on = if name.is_empty() { String::new() } else { format!(" {name:?}") };
            let ns =
                if req.namespace.is_empty() { String::new() } else { format!(" in namespace {:?}", req.namespace) };
            Err(ApiError::Forbidden(format!(
                "user {:?} may not {} {}{on}{ns}: {why}",
                user.name,
                req.verb,
                req.resource()
            )))
        };
        if (user.name == SCHEDULER || user.name == CONTROLLER_MANAGER)
            && req.writes()
            && !req.fenced
            && !own_lock(user, req)
        {
            return deny("its writes must carry its fencing token (docs/rfcs/0001-fenced-leadership.md)");
        }
        if let Some(node) = user.name.strip_prefix(NODE_PREFIX).filter(|_| user.in_group(NODES)) {
            return match node_allows(reg, node, req).await? {
                Ok(()) => Ok(()),
                Err(why) => deny(&why),
            };
        }
        if !*self.loaded.borrow() {
            let mut rx = self.loaded.clone();
            if tokio::time::timeout(LOAD_WAIT, rx.wait_for(|l| *l)).await.is_err() {
                return Err(ApiError::NotReady("the authorizer has not loaded RBAC yet; try again".into()));
            }
        }
        if self.rbac_allows(user, req) {
            Ok(())
        } else {
            deny("no Role or ClusterRole bound to it allows that")
        }
    }

    fn rbac_allows(&self, user: &User, req: &Request<'_>) -> bool {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let resource = req.resource();
        // The rules a binding's roleRef names (none when the role does not exist).
        let rules_of = |kind: &str, name: &str, ns: &str| -> &[pb::PolicyRule] {
            let (k, key) = match kind {
                "ClusterRole" => (Kind::ClusterRole, keys::key(Kind::ClusterRole, "", name)),
                _ => (Kind::Role, keys::key(Kind::Role, ns, name)),
            };
            let stored = cache.objects.get(&k).and_then(|m| m.get(&key));
            match stored.or_else(|| self.defaults.get(&key)) {
                Some(O::ClusterRole(r)) => &r.rules,
                Some(O::Role(r)) => &r.rules,
                _ => &[],
            }
        };
        let applies = |subjects: &[pb::Subject]| {
            subjects.iter().any(|s| match s.kind.as_str() {
                "User" => s.name == user.name,
                "Group" => user.in_group(&s.name),
                _ => false,
            })
        };
        let matches = |rules: &[pb::PolicyRule]| rules.iter().any(|r| rule_matches(r, req.verb, &resource, req.name));
        let stored = cache.objects.get(&Kind::ClusterRoleBinding);
        let defaults = self
            .defaults
            .iter()
            .filter(|(k, o)| matches!(o, O::ClusterRoleBinding(_)) && !stored.is_some_and(|m| m.contains_key(*k)))
            .map(|(_, o)| o);
        for b in stored.into_iter().flat_map(|m| m.values()).chain(defaults) {
            if let O::ClusterRoleBinding(b) = b {
                let Some(r) = &b.role_ref else { continue };
                if applies(&b.subjects) && matches(rules_of(&r.kind, &r.name, "")) {
                    return true;
                }
            }
        }
        // A RoleBinding grants within its namespace only.
        if !req.kind.namespaced() || req.namespace.is_empty() {
            return false;
        }
        let prefix = keys::prefix_in(Kind::RoleBinding, req.namespace);
        let local = cache.objects.get(&Kind::RoleBinding).into_iter().flat_map(|m| m.iter());
        for (_, b) in local.filter(|(k, _)| k.starts_with(&prefix)) {
            let O::RoleBinding(b) = b else { continue };
            let Some(r) = &b.role_ref else { continue };
            if applies(&b.subjects) && matches(rules_of(&r.kind, &r.name, req.namespace)) {
                return true;
            }
        }
        false
    }
}

/// Whether a rule allows `verb` on `resource` (named `name`).
pub fn rule_matches(r: &pb::PolicyRule, verb: &str, resource: &str, name: &str) -> bool {
    let verb_ok = r.verbs.iter().any(|v| v == "*" || v == verb);
    let res_ok = r
        .resources
        .iter()
        .any(|x| x == "*" || x == resource || (x.ends_with("/*") && resource.split('/').next() == x.split('/').next()));
    let name_ok = r.resource_names.is_empty() || (!name.is_empty() && r.resource_names.iter().any(|n| n == name));
    verb_ok && res_ok && name_ok
}

/// The scheduler's and controller manager's writes of their own lock (the election)
/// carry no fence: the fence is what the lock makes.
fn own_lock(user: &User, req: &Request<'_>) -> bool {
    let lock = if user.name == SCHEDULER { "flotilla-scheduler" } else { "flotilla-controller-manager" };
    req.kind == Kind::Lease && req.namespace == "kube-system" && req.object_name() == lock
}

/// The node authorizer: what node `node` may do. Outer error: the check itself failed.
async fn node_allows(reg: &Registry, node: &str, req: &Request<'_>) -> Result<Result<(), String>, ApiError> {
    let name = req.object_name();
    let refuse = |why: String| Ok(Err(why));
    match (req.verb, req.kind, req.sub) {
        // What it runs and routes: pods, nodes, services, endpoints, namespaces, leases.
        (
            "get" | "list" | "watch",
            Kind::Pod | Kind::Node | Kind::Service | Kind::Endpoints | Kind::Namespace | Kind::Lease,
            "",
        ) => Ok(Ok(())),
        ("create" | "update" | "patch", Kind::Event, "") => Ok(Ok(())),
        // Its Node: registered by itself; then its status; its spec (podCIDR, taints)
        // stays the controllers' and the admins'.
        ("create", Kind::Node, "") if name == node => Ok(Ok(())),
        ("update", Kind::Node, "status") if name == node => Ok(Ok(())),
        ("update", Kind::Node, "") if name == node => {
            let old = reg.get(Kind::Node, "", node).await?;
            let spec = |o: &O| match o {
                O::Node(n) => n.spec.clone(),
                _ => None,
            };
            match req.object {
                Some(new) if spec(new) == spec(&old) => Ok(Ok(())),
                _ => refuse("a node may change its Node's labels, not its spec (podCIDR, taints)".into()),
            }
        }
        (_, Kind::Node, _) => {
            refuse(format!("a node may write only its own Node ({node}), and only its status and labels"))
        }
        // Its leases: the node's heartbeat and its proxy's announcer lock.
        ("create" | "update", Kind::Lease, "")
            if (req.namespace == "kube-node-lease" && name == node)
                || (req.namespace == "kube-system" && name == format!("flotilla-proxy-{node}")) =>
        {
            Ok(Ok(()))
        }
        // Its pods: their status, and their removal once they have stopped.
        ("update", Kind::Pod, "status") | ("delete", Kind::Pod, "") => {
            let O::Pod(p) = reg.get(Kind::Pod, req.namespace, name).await? else {
                return refuse("not a pod".into());
            };
            let on = p.spec.map(|s| s.node_name).unwrap_or_default();
            if on == node {
                Ok(Ok(()))
            } else {
                refuse(format!("the pod is bound to {:?}, not to this node ({node})", on))
            }
        }
        _ => refuse(format!("nodes may not (the node authorizer allows node {node} only what a node needs)")),
    }
}

/// Follows the stored objects of one RBAC kind into the cache: lists, then watches from
/// there; lists again when the watch falls behind compaction or fails.
async fn follow(
    store: Arc<dyn Storage>,
    kind: Kind,
    cache: Arc<std::sync::RwLock<Cache>>,
    loaded: Arc<tokio::sync::watch::Sender<bool>>,
) {
    let prefix = keys::prefix(kind);
    let mut first = true;
    loop {
        let range = flotilla_proto::etcdserverpb::RangeRequest {
            key: prefix.clone().into_bytes(),
            range_end: flotilla_core::keys::prefix_end(prefix.as_bytes()),
            ..Default::default()
        };
        let resp = match store.range(range).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(kind = kind.name(), error = %e, "cannot list RBAC objects yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        let mut objects = HashMap::new();
        for kv in resp.kvs {
            if let Ok(o) = kinds::decode(kind, &kv.value) {
                objects.insert(String::from_utf8_lossy(&kv.key).into_owned(), o);
            }
        }
        {
            let mut c = cache.write().unwrap_or_else(|p| p.into_inner());
            c.objects.insert(kind, objects);
            if first {
                c.loaded += 1;
                if c.loaded == RBAC_KINDS.len() {
                    let _ = loaded.send(true);
                }
                first = false;
            }
        }
        let mut feed = store.watch(prefix.as_bytes(), rev + 1);
        // A compaction past the watch, or a failed one: list again.
        while let Ok(Feed::Events(events, _)) = feed.next().await {
            let mut c = cache.write().unwrap_or_else(|p| p.into_inner());
            let m = c.objects.entry(kind).or_default();
            for e in events {
                let Some(kv) = e.kv else { continue };
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                if e.r#type == flotilla_proto::mvccpb::event::EventType::Delete as i32 {
                    m.remove(&key);
                } else if let Ok(o) = kinds::decode(kind, &kv.value) {
                    m.insert(key, o);
                }
            }
        }
    }
}

/// The roles and bindings every cluster starts with (written at first start, like the
/// built-in namespaces; an admin may change them): `cluster-admin` for
/// `system:masters`, and the scheduler's and the controller manager's roles bound to
/// their users. Nodes need none: the node authorizer decides for them.
pub fn default_policy() -> Vec<O> {
    let meta = |name: &str| Some(pb::ObjectMeta { name: name.into(), ..Default::default() });
    let rule = |verbs: &[&str], resources: &[&str]| pb::PolicyRule {
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let read = ["get", "list", "watch"];
    let bind = |name: &str, user_kind: &str, user: &str| {
        O::ClusterRoleBinding(pb::ClusterRoleBinding {
            metadata: meta(name),
            subjects: vec![pb::Subject {
                kind: user_kind.into(),
                name: user.into(),
                api_group: "rbac.authorization.k8s.io".into(),
                ..Default::default()
            }],
            role_ref: Some(pb::RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: name.into(),
            }),
        })
    };
    let workloads = [
        "pods",
        "pods/status",
        "replicasets",
        "replicasets/status",
        "deployments",
        "deployments/status",
        "daemonsets",
        "daemonsets/status",
        "jobs",
        "jobs/status",
        "services",
        "services/status",
        "endpoints",
        "nodes",
        "nodes/status",
        "namespaces",
        "namespaces/status",
        "events",
        "leases",
    ];
    vec![
        O::ClusterRole(pb::ClusterRole { metadata: meta("cluster-admin"), rules: vec![rule(&["*"], &["*"])] }),
        bind("cluster-admin", "Group", MASTERS),
        O::ClusterRole(pb::ClusterRole {
            metadata: meta(SCHEDULER),
            rules: vec![
                rule(
                    &read,
                    &[
                        "pods",
                        "nodes",
                        "services",
                        "replicasets",
                        "deployments",
                        "daemonsets",
                        "jobs",
                        "namespaces",
                        "endpoints",
                        "leases",
                        "events",
                    ],
                ),
                rule(&["create"], &["pods/binding"]),
                rule(&["update", "patch"], &["pods/status"]),
                rule(&["create", "update", "patch"], &["events", "leases"]),
            ],
        }),
        bind(SCHEDULER, "User", SCHEDULER),
        O::ClusterRole(pb::ClusterRole {
            metadata: meta(CONTROLLER_MANAGER),
            // The namespace controller empties a namespace being deleted of every kind,
            // RBAC's too; it may not make or change roles (no escalation).
            rules: vec![
                rule(&["*"], &workloads),
                rule(&["get", "list", "watch", "delete"], &["roles", "rolebindings"]),
            ],
        }),
        bind(CONTROLLER_MANAGER, "User", CONTROLLER_MANAGER),
        O::ClusterRole(pb::ClusterRole {
            metadata: meta("view"),
            rules: vec![rule(
                &read,
                &[
                    "pods",
                    "pods/log",
                    "replicasets",
                    "deployments",
                    "daemonsets",
                    "jobs",
                    "services",
                    "endpoints",
                    "events",
                    "namespaces",
                    "nodes",
                    "leases",
                ],
            )],
        }),
        O::ClusterRole(pb::ClusterRole {
            metadata: meta("edit"),
            rules: vec![
                rule(
                    &["*"],
                    &["pods", "replicasets", "deployments", "daemonsets", "jobs", "services", "endpoints", "events"],
                ),
                rule(&read, &["pods/log", "namespaces", "nodes", "leases"]),
            ],
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_verbs_resources_subresources_and_names() {
        let r = |verbs: &[&str], res: &[&str], names: &[&str]| pb::PolicyRule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resources: res.iter().map(|s| s.to_string()).collect(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(rule_matches(&r(&["get"], &["pods"], &[]), "get", "pods", "web"));
        assert!(!rule_matches(&r(&["get"], &["pods"], &[]), "delete", "pods", "web"));
        assert!(!rule_matches(&r(&["get"], &["pods"], &[]), "get", "pods/status", "web"), "a subresource is its own");
        assert!(rule_matches(&r(&["update"], &["pods/*"], &[]), "update", "pods/status", "web"));
        assert!(rule_matches(&r(&["*"], &["*"], &[]), "delete", "nodes", "n1"));
        assert!(rule_matches(&r(&["get"], &["pods"], &["web"]), "get", "pods", "web"));
        assert!(!rule_matches(&r(&["get"], &["pods"], &["web"]), "get", "pods", "db"));
        assert!(!rule_matches(&r(&["list"], &["pods"], &["web"]), "list", "pods", ""), "names do not grant lists");
    }

    fn authorizer_with(objects: Vec<O>) -> Authorizer {
        let mut cache = Cache::default();
        for o in objects {
            let kind = Kind::of(&o);
            let m = kinds::meta(&o);
            cache.objects.entry(kind).or_default().insert(keys::key(kind, &m.namespace, &m.name), o);
        }
        let (_tx, loaded) = tokio::sync::watch::channel(true);
        Authorizer {
            mode: Mode::Rbac,
            cache: Arc::new(std::sync::RwLock::new(cache)),
            loaded,
            defaults: default_objects(),
        }
    }

    #[test]
    fn the_default_policy_lets_each_component_do_its_work_and_no_more() {
        let a = authorizer_with(default_policy());
        let user = |name: &str| User { name: name.into(), groups: vec![], impersonated_by: None };
        let req = |verb: &'static str, kind: Kind, sub: &'static str, ns: &'static str| Request {
            verb,
            kind,
            sub,
            namespace: ns,
            name: "",
            object: None,
            fenced: true,
        };
        let (cm, sched) = (user(CONTROLLER_MANAGER), user(SCHEDULER));
        assert!(a.rbac_allows(&cm, &req("list", Kind::Role, "", "team")), "the namespace controller lists roles");
        assert!(a.rbac_allows(&cm, &req("delete", Kind::RoleBinding, "", "team")));
        assert!(!a.rbac_allows(&cm, &req("create", Kind::RoleBinding, "", "team")), "no escalation");
        assert!(a.rbac_allows(&cm, &req("update", Kind::Deployment, "status", "default")));
        assert!(a.rbac_allows(&sched, &req("create", Kind::Pod, "binding", "default")));
        assert!(a.rbac_allows(&sched, &req("watch", Kind::Node, "", "")));
        assert!(!a.rbac_allows(&sched, &req("delete", Kind::Pod, "", "default")));
        assert!(!a.rbac_allows(&user("bob"), &req("get", Kind::Pod, "", "default")));
    }

    #[test]
    fn the_default_policy_holds_before_it_is_written_and_a_stored_change_wins() {
        let user = User { name: SCHEDULER.into(), groups: vec![], impersonated_by: None };
        let bind = Request {
            verb: "create",
            kind: Kind::Pod,
            sub: "binding",
            namespace: "default",
            name: "web",
            object: None,
            fenced: true,
        };
        assert!(authorizer_with(vec![]).rbac_allows(&user, &bind), "nothing stored yet: the defaults hold");
        let emptied = O::ClusterRole(pb::ClusterRole {
            metadata: Some(pb::ObjectMeta { name: SCHEDULER.into(), ..Default::default() }),
            rules: vec![],
        });
        assert!(!authorizer_with(vec![emptied]).rbac_allows(&user, &bind), "an admin's change to the role holds");
    }

    #[test]
    fn the_default_policy_is_valid() {
        for o in default_policy() {
            let mut o = o;
            flotilla_api::defaults::object(&mut o);
            flotilla_api::validate::object(&o).unwrap_or_else(|e| panic!("{}: {e}", kinds::meta(&o).name));
        }
    }
}
