//! Cluster identity: member URLs, `--initial-cluster`, and the stable member and cluster
//! IDs derived from them.
//!
//! IDs are 64-bit, as etcd's are, and derived deterministically (FNV-1a) from the cluster
//! token and peer URLs, so every member computes the same IDs from the same flags.

use crate::CoreError;

/// A validated `http://host:port` or `https://host:port` URL (no path, query or trailing
/// slash).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Url {
    host: String,
    port: u16,
    tls: bool,
}

impl Url {
    /// Parses `http://host:port` or `https://host:port`.
    pub fn parse(s: &str) -> Result<Url, CoreError> {
        let bad = |reason: &str| CoreError::InvalidUrl { url: s.to_string(), reason: reason.into() };
        let (rest, tls) = match (s.strip_prefix("https://"), s.strip_prefix("http://")) {
            (Some(rest), _) => (rest, true),
            (None, Some(rest)) => (rest, false),
            (None, None) => return Err(bad("must start with http:// or https://")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') {
            return Err(bad("must not have a path or query"));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("must name a port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("must name a host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("port must be a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port must be a number from 1 to 65535"));
        }
        Ok(Url { host: host.to_string(), port, tls })
    }

    /// Whether the URL is `https`: its listener or connection uses TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host part (without brackets for IPv6).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, bracketing IPv6 hosts: suitable for binding or dialling.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", if self.tls { "https" } else { "http" }, self.authority())
    }
}

/// One member named in `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    /// The member's name (`--name`).
    pub name: String,
    /// Its peer URL.
    pub peer_url: Url,
}

/// Parses `n1=http://a:2380,n2=http://b:2380,...`. Names must be unique and non-empty, as
/// must peer URLs.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, CoreError> {
    let mut out: Vec<InitialMember> = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |reason: String| CoreError::InvalidInitialCluster { entry: entry.to_string(), reason };
        let (name, url) = entry.split_once('=').ok_or_else(|| bad("expected name=http://host:port".into()))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("member name is empty".into()));
        }
        let peer_url = Url::parse(url.trim()).map_err(|e| bad(e.to_string()))?;
        if out.iter().any(|m| m.name == name) {
            return Err(bad(format!("member name {name:?} appears twice")));
        }
        if out.iter().any(|m| m.peer_url == peer_url) {
            return Err(bad(format!("peer URL {peer_url} appears twice")));
        }
        out.push(InitialMember { name: name.to_string(), peer_url });
    }
    if out.is_empty() {
        return Err(CoreError::InvalidInitialCluster { entry: s.to_string(), reason: "no members given".into() });
    }
    Ok(out)
}

/// FNV-1a, 64 bit: small, stable across platforms and releases.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The member ID of the member with this peer URL in the cluster named by `token`.
/// Never 0 (0 means "none" in the etcd API).
pub fn member_id(token: &str, peer_url: &Url) -> u64 {
    fnv1a(&[b"member", token.as_bytes(), peer_url.to_string().as_bytes()]).max(1)
}

/// The cluster ID of a cluster bootstrapped with these initial members. Never 0.
pub fn cluster_id(token: &str, members: &[InitialMember]) -> u64 {
    let mut ids: Vec<u64> = members.iter().map(|m| member_id(token, &m.peer_url)).collect();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
    fnv1a(&[b"cluster", token.as_bytes(), &bytes]).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_accepts_http_and_https_host_port_and_refuses_paths() {
        let u = Url::parse("http://127.0.0.1:2380").expect("valid");
        assert_eq!(u.authority(), "127.0.0.1:2380");
        assert_eq!(u.to_string(), "http://127.0.0.1:2380");
        assert!(!u.is_tls());
        let s = Url::parse("https://[::1]:2379/").expect("valid");
        assert!(s.is_tls());
        assert_eq!(s.to_string(), "https://[::1]:2379");
        assert!(Url::parse("ftp://a:1").is_err());
        assert!(Url::parse("a:1").is_err());
        assert!(Url::parse("http://a:1/x").is_err());
        assert!(Url::parse("http://a").is_err());
        assert!(Url::parse("http://a:0").is_err());
        assert!(Url::parse("http://a:99999").is_err());
    }

    #[test]
    fn initial_cluster_parses_and_rejects_duplicates() {
        let m = parse_initial_cluster("n1=http://a:1,n2=http://b:2").expect("valid");
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].name, "n2");
        let err = parse_initial_cluster("n1=http://a:1,n1=http://b:2").expect_err("dup name");
        assert!(err.to_string().contains("appears twice"), "{err}");
        assert!(parse_initial_cluster("n1=http://a:1,n2=http://a:1").is_err());
        assert!(parse_initial_cluster("n1").is_err());
        assert!(parse_initial_cluster("").is_err());
    }

    #[test]
    fn ids_are_stable_and_depend_on_token() {
        let m = parse_initial_cluster("n1=http://a:1,n2=http://b:2").expect("valid");
        let a = cluster_id("t", &m);
        let mut rev = m.clone();
        rev.reverse();
        assert_eq!(a, cluster_id("t", &rev), "order of members does not matter");
        assert_ne!(a, cluster_id("u", &m));
        assert_ne!(member_id("t", &m[0].peer_url), member_id("t", &m[1].peer_url));
    }
}
