//! Authentication on the client port (docs/rfcs/0002-security.md), in front of both APIs:
//! who is asking, from the TLS client certificate (CN = user, O = groups), else a bearer
//! token from the static token file, else — only when anonymous requests are enabled —
//! `system:anonymous`. A master (`system:masters`) may act as another user with the
//! `impersonate-user` (and `impersonate-group`) headers, as Kubernetes' impersonation.
//! The etcd API is for `system:masters` only (its Status call, which clients use as a
//! health check, excepted). Everyone who gets through carries a [`User`] in the request's
//! extensions, for the apiserver's authorization; every refusal and every etcd-API write
//! is written to the audit log.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderMap;
use tonic::Status;

use crate::audit::{AuditLog, Entry};
use crate::error::StoreError;

/// The group whose members may do anything (cluster admins, masters).
pub const MASTERS: &str = "system:masters";
/// The group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The user of an anonymous request (when enabled).
pub const ANONYMOUS: &str = "system:anonymous";
/// The group of anonymous requests.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name (a certificate's CN, a token's user).
    pub name: String,
    /// Its groups (`system:authenticated` included).
    pub groups: Vec<String>,
    /// The master that acts as this user, when impersonated.
    pub impersonated_by: Option<String>,
}

impl User {
    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// A user named `name` in `groups` (and, unless anonymous, `system:authenticated`).
    pub fn new(name: String, mut groups: Vec<String>) -> User {
        if name != ANONYMOUS && !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        User { name, groups, impersonated_by: None }
    }
}

/// How the client port authenticates.
pub struct AuthConfig {
    /// Bearer tokens and their users (the static token file).
    pub tokens: HashMap<String, User>,
    /// Whether requests with neither a certificate nor a token go through as
    /// `system:anonymous`.
    pub anonymous: bool,
    /// Where refusals and writes are recorded.
    pub audit: Option<Arc<AuditLog>>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &self.tokens.len())
            .field("anonymous", &self.anonymous)
            .field("audit", &self.audit.is_some())
            .finish()
    }
}

/// Reads a static token file: one `token,user,uid,"group1,group2"` per line (Kubernetes'
/// format; the groups column may be left out, `#` starts a comment line). A malformed
/// line, an empty token or user, or a token given twice is refused naming its line.
pub fn load_tokens(path: &Path) -> Result<HashMap<String, User>, StoreError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StoreError::InvalidArgument(format!("cannot read token file {}: {e}", path.display())))?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad =
            |why: &str| StoreError::InvalidArgument(format!("token file {} line {}: {why}", path.display(), n + 1));
        let mut cols = line.splitn(4, ',');
        let token = cols.next().unwrap_or_default().trim();
        let user = cols.next().map(str::trim).ok_or_else(|| bad("expected token,user,uid[,\"groups\"]"))?;
        let _uid = cols.next().map(str::trim).ok_or_else(|| bad("expected token,user,uid[,\"groups\"]"))?;
        let groups = cols.next().unwrap_or_default().trim();
        let groups = groups.strip_prefix('"').and_then(|g| g.strip_suffix('"')).unwrap_or(groups);
        if token.is_empty() || user.is_empty() {
            return Err(bad("the token and the user must not be empty"));
        }
        let groups: Vec<String> =
            groups.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect();
        if out.insert(token.to_string(), User::new(user.to_string(), groups)).is_some() {
            return Err(bad("this token is given twice"));
        }
    }
    Ok(out)
}

/// Calls on the etcd API any authenticated user may make: the health check of clients.
const ETCD_OPEN: [&str; 1] = ["/etcdserverpb.Maintenance/Status"];

/// Calls on the etcd API that change something (audited).
fn etcd_write(path: &str) -> bool {
    const WRITES: [&str; 11] = [
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.KV/DeleteRange",
        "/etcdserverpb.KV/Txn",
        "/etcdserverpb.KV/Compact",
        "/etcdserverpb.Lease/LeaseGrant",
        "/etcdserverpb.Lease/LeaseRevoke",
        "/etcdserverpb.Cluster/MemberAdd",
        "/etcdserverpb.Cluster/MemberRemove",
        "/etcdserverpb.Cluster/MemberUpdate",
        "/etcdserverpb.Cluster/MemberPromote",
        "/etcdserverpb.Maintenance/MoveLeader",
    ];
    WRITES.contains(&path)
}

impl AuthConfig {
    fn authenticate(&self, headers: &HeaderMap, ext: &http::Extensions) -> Result<User, Status> {
        if let Some(id) = ext.get::<flotilla_tls::PeerInfo>().and_then(|i| i.identity.as_ref()) {
            let id = id.as_ref().as_ref().map_err(|e| Status::unauthenticated(e.clone()))?;
            return Ok(User::new(id.user.clone(), id.groups.clone()));
        }
        if let Some(v) = headers.get(http::header::AUTHORIZATION) {
            let token = v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
            return match token.and_then(|t| self.tokens.get(t)) {
                Some(u) => Ok(u.clone()),
                None => Err(Status::unauthenticated("the bearer token is not valid")),
            };
        }
        if self.anonymous {
            return Ok(User::new(ANONYMOUS.into(), vec![UNAUTHENTICATED.into()]));
        }
        Err(Status::unauthenticated("no client certificate and no bearer token: anonymous requests are not allowed"))
    }

    fn impersonate(&self, user: User, headers: &HeaderMap) -> Result<User, Status> {
        let Some(as_user) = headers.get("impersonate-user") else { return Ok(user) };
        if !user.in_group(MASTERS) {
            return Err(Status::permission_denied(format!(
                "user {:?} may not impersonate (only {MASTERS} may)",
                user.name
            )));
        }
        let name = as_user.to_str().map_err(|_| Status::invalid_argument("impersonate-user is not text"))?;
        let groups = headers
            .get_all("impersonate-group")
            .iter()
            .map(|g| {
                g.to_str().map(String::from).map_err(|_| Status::invalid_argument("impersonate-group is not text"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut u = User::new(name.to_string(), groups);
        u.impersonated_by = Some(user.name);
        Ok(u)
    }

    /// Authenticates a request on `path`, refusing (and auditing) what may not pass;
    /// returns the user the request acts as.
    pub fn check(&self, path: &str, headers: &HeaderMap, ext: &http::Extensions) -> Result<User, Status> {
        let audit = |user: Option<&User>, result: &str, reason: &str| {
            if let Some(a) = &self.audit {
                a.record(&Entry::call(user, path, result, reason, ext.get::<flotilla_tls::PeerInfo>()));
            }
        };
        let user = match self.authenticate(headers, ext).and_then(|u| self.impersonate(u, headers)) {
            Ok(u) => u,
            Err(s) => {
                audit(None, "denied", s.message());
                return Err(s);
            }
        };
        if path.starts_with("/etcdserverpb.") {
            if !user.in_group(MASTERS) && !ETCD_OPEN.contains(&path) {
                let s = Status::permission_denied(format!(
                    "user {:?} may not use the etcd API ({path}): it is for {MASTERS} only",
                    user.name
                ));
                audit(Some(&user), "denied", s.message());
                return Err(s);
            }
            if etcd_write(path) {
                audit(Some(&user), "allowed", "");
            }
        }
        Ok(user)
    }
}

/// What a listener lets through.
#[derive(Debug)]
pub enum Gate {
    /// Everyone (a plaintext client port: the insecure mode, asked for by giving no
    /// certificates).
    Open,
    /// The client port with authentication.
    Client(AuthConfig),
    /// The peer port: over TLS only masters' certificates (CN `system:master:<name>` in
    /// `system:masters`) — a worker's certificate from the same CA does not make a peer.
    Peers,
}

/// The prefix of a master certificate's user.
pub const MASTER_USER_PREFIX: &str = "system:master:";

impl Gate {
    /// Checks a request on `path`; the user it acts as (None where nobody is asked).
    pub fn check(&self, path: &str, headers: &HeaderMap, ext: &http::Extensions) -> Result<Option<User>, Status> {
        match self {
            Gate::Open => Ok(None),
            Gate::Client(cfg) => cfg.check(path, headers, ext).map(Some),
            Gate::Peers => {
                let Some(id) = ext.get::<flotilla_tls::PeerInfo>().and_then(|i| i.identity.clone()) else {
                    return Ok(None);
                };
                let id = id.as_ref().as_ref().map_err(|e| Status::unauthenticated(e.clone()))?;
                if id.user.starts_with(MASTER_USER_PREFIX) && id.groups.iter().any(|g| g == MASTERS) {
                    Ok(None)
                } else {
                    tracing::warn!(user = %id.user, "a non-master certificate was refused on the peer port");
                    Err(Status::permission_denied(format!(
                        "user {:?} may not speak the peer protocol: only masters' certificates may",
                        id.user
                    )))
                }
            }
        }
    }
}

/// A tower layer putting a [`Gate`] in front of every request of a listener's gRPC
/// services.
#[derive(Clone)]
pub struct AuthLayer {
    gate: Arc<Gate>,
}

impl AuthLayer {
    /// The layer for `gate`.
    pub fn new(gate: Arc<Gate>) -> AuthLayer {
        AuthLayer { gate }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { gate: self.gate.clone(), inner }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    gate: Arc<Gate>,
    inner: S,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.gate.check(req.uri().path(), req.headers(), req.extensions()) {
            Ok(user) => {
                if let Some(user) = user {
                    req.extensions_mut().insert(user);
                }
                // The service polled ready is the one called; a fresh clone takes its place.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(anonymous: bool) -> AuthConfig {
        let mut tokens = HashMap::new();
        tokens.insert("s3cret".to_string(), User::new("bob".into(), vec!["dev".into()]));
        tokens.insert("root".to_string(), User::new("root".into(), vec![MASTERS.into()]));
        AuthConfig { tokens, anonymous, audit: None }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn tokens_authenticate_and_a_wrong_or_missing_one_is_refused_unless_anonymous_is_on() {
        let ext = http::Extensions::new();
        let c = cfg(false);
        let u =
            c.check("/flotilla.api.v1.Api/Get", &headers(&[("authorization", "Bearer s3cret")]), &ext).expect("bob");
        assert_eq!(u.name, "bob");
        assert!(u.in_group("dev") && u.in_group(AUTHENTICATED));
        let e =
            c.check("/flotilla.api.v1.Api/Get", &headers(&[("authorization", "Bearer nope")]), &ext).expect_err("bad");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = c.check("/flotilla.api.v1.Api/Get", &HeaderMap::new(), &ext).expect_err("anonymous");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("anonymous requests are not allowed"), "{e:?}");
        let u = cfg(true).check("/flotilla.api.v1.Api/Get", &HeaderMap::new(), &ext).expect("anonymous on");
        assert_eq!((u.name.as_str(), u.groups.as_slice()), (ANONYMOUS, &[UNAUTHENTICATED.to_string()][..]));
    }

    #[test]
    fn the_etcd_api_is_for_masters_and_only_masters_impersonate() {
        let ext = http::Extensions::new();
        let c = cfg(false);
        let bob = headers(&[("authorization", "Bearer s3cret")]);
        let e = c.check("/etcdserverpb.KV/Range", &bob, &ext).expect_err("bob on etcd");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("\"bob\"") && e.message().contains(MASTERS), "{e:?}");
        c.check("/etcdserverpb.Maintenance/Status", &bob, &ext).expect("health checks are open");
        let root = headers(&[("authorization", "Bearer root")]);
        c.check("/etcdserverpb.KV/Put", &root, &ext).expect("masters use etcd");

        let as_sched = headers(&[
            ("authorization", "Bearer root"),
            ("impersonate-user", "system:flotilla-scheduler"),
            ("impersonate-group", "g1"),
        ]);
        let u = c.check("/flotilla.api.v1.Api/Create", &as_sched, &ext).expect("a master impersonates");
        assert_eq!(u.name, "system:flotilla-scheduler");
        assert_eq!(u.impersonated_by.as_deref(), Some("root"));
        assert!(u.in_group("g1") && !u.in_group(MASTERS));
        let e = c
            .check(
                "/flotilla.api.v1.Api/Create",
                &headers(&[("authorization", "Bearer s3cret"), ("impersonate-user", "root")]),
                &ext,
            )
            .expect_err("bob impersonates");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_token_file_is_read_and_bad_lines_are_refused_naming_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("tokens.csv");
        std::fs::write(&p, "# comment\nabc,alice,1,\"dev,ops\"\ndef,carol,2\n").expect("write");
        let t = load_tokens(&p).expect("loads");
        assert_eq!(t["abc"].groups, vec!["dev", "ops", AUTHENTICATED]);
        assert_eq!(t["def"].name, "carol");
        for (text, want) in [
            ("abc,alice\n", "line 1: expected"),
            (",alice,1\n", "must not be empty"),
            ("a,b,1\na,c,2\n", "line 2: this token is given twice"),
        ] {
            std::fs::write(&p, text).expect("write");
            let e = load_tokens(&p).expect_err("refused").to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
