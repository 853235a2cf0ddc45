//! Output of `flotctl get`: aligned tables in kubectl's columns (with AGE), or YAML, JSON
//! or names.

use std::time::{Duration, SystemTime};

use flotilla_api::kinds::{meta, Kind};
use flotilla_proto::api::{self as pb, object::Kind as O};

/// kubectl's short age: `45s`, `3m20s`, `12m`, `5h4m`, `3d`.
pub fn age(created: &str, now: SystemTime) -> String {
    let Ok(t) = humantime::parse_rfc3339(created) else { return "<unknown>".into() };
    age_of(now.duration_since(t).unwrap_or(Duration::ZERO))
}

/// A duration the way [`age`] shows it.
pub fn age_of(d: Duration) -> String {
    let d = d.as_secs();
    let (m, h, days) = (d / 60, d / 3600, d / 86400);
    match d {
        _ if d < 120 => format!("{d}s"),
        _ if m < 10 && !d.is_multiple_of(60) => format!("{m}m{}s", d % 60),
        _ if h < 1 => format!("{m}m"),
        _ if h < 8 && !m.is_multiple_of(60) => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if days < 8 && !h.is_multiple_of(24) => format!("{days}d{}h", h % 24),
        _ if days < 730 => format!("{days}d"),
        _ => format!("{}y", days / 365),
    }
}

/// Column headers for a kind.
pub fn headers(kind: Kind, wide: bool) -> Vec<&'static str> {
    let mut h = match kind {
        Kind::Namespace => vec!["NAME", "STATUS", "AGE"],
        Kind::Node => vec!["NAME", "STATUS", "AGE"],
        Kind::Pod => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        Kind::ReplicaSet => vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        Kind::Deployment => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        Kind::Service => vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        Kind::Endpoints => vec!["NAME", "ENDPOINTS", "AGE"],
        Kind::Lease => vec!["NAME", "HOLDER", "AGE"],
        Kind::Event => vec!["NAME", "TYPE", "REASON", "OBJECT", "MESSAGE", "AGE"],
        Kind::DaemonSet => vec!["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        Kind::Job => vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        Kind::Role | Kind::ClusterRole => vec!["NAME", "RULES", "AGE"],
        Kind::RoleBinding | Kind::ClusterRoleBinding => vec!["NAME", "ROLE", "SUBJECTS", "AGE"],
    };
    if wide {
        match kind {
            Kind::Pod => h.extend(["IP", "NODE"]),
            Kind::Node => h.extend(["INTERNAL-IP", "POD-CIDR", "TAINTS"]),
            Kind::Deployment | Kind::ReplicaSet | Kind::DaemonSet | Kind::Job => h.extend(["SELECTOR"]),
            Kind::Service => h.extend(["SELECTOR"]),
            _ => {}
        }
    }
    h
}

fn selector_text(s: &Option<flotilla_proto::api::LabelSelector>) -> String {
    let s = match s {
        Some(s) => s,
        None => return "<none>".into(),
    };
    let mut parts: Vec<String> = s.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for e in &s.match_expressions {
        parts.push(format!("{} {} ({})", e.key, e.operator.to_lowercase(), e.values.join(",")));
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// One table row for an object.
pub fn row(o: &O, wide: bool, now: SystemTime) -> Vec<String> {
    let m = meta(o);
    let age = age(&m.creation_timestamp, now);
    let name = m.name.clone();
    let mut r = match o {
        O::Namespace(n) => vec![name, n.status.as_ref().map_or("Active".into(), |s| s.phase.clone()), age],
        O::Node(n) => {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
                .map_or("Unknown", |c| if c.status == "True" { "Ready" } else { "NotReady" });
            let mut status = ready.to_string();
            if n.spec.as_ref().is_some_and(|s| s.unschedulable) {
                status.push_str(",SchedulingDisabled");
            }
            let mut r = vec![name, status, age];
            if wide {
                let ip = n
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.iter().find(|a| a.r#type == "InternalIP"))
                    .map_or("<none>".into(), |a| a.address.clone());
                let spec = n.spec.clone().unwrap_or_default();
                let taints: Vec<String> =
                    spec.taints.iter().map(|t| format!("{}={}:{}", t.key, t.value, t.effect)).collect();
                r.extend([ip, or_none(&spec.pod_cidr), or_none(&taints.join(","))]);
            }
            r
        }
        O::Pod(p) => {
            let spec = p.spec.clone().unwrap_or_default();
            let st = p.status.clone().unwrap_or_default();
            let ready = st.container_statuses.iter().filter(|c| c.ready).count();
            let restarts: i32 = st.container_statuses.iter().map(|c| c.restart_count).sum();
            let mut status = if m.deletion_timestamp.is_empty() { or_none(&st.phase) } else { "Terminating".into() };
            if let Some(w) = st.container_statuses.iter().find_map(|c| c.state.as_ref()?.waiting.as_ref()) {
                if !w.reason.is_empty() {
                    status = w.reason.clone();
                }
            }
            let mut r = vec![name, format!("{ready}/{}", spec.containers.len()), status, restarts.to_string(), age];
            if wide {
                r.extend([or_none(&st.pod_ip), or_none(&spec.node_name)]);
            }
            r
        }
        O::ReplicaSet(rs) => {
            let spec = rs.spec.clone().unwrap_or_default();
            let st = rs.status.clone().unwrap_or_default();
            let mut r = vec![
                name,
                spec.replicas.unwrap_or(1).to_string(),
                st.replicas.to_string(),
                st.ready_replicas.to_string(),
                age,
            ];
            if wide {
                r.push(selector_text(&spec.selector));
            }
            r
        }
        O::Deployment(d) => {
            let spec = d.spec.clone().unwrap_or_default();
            let st = d.status.clone().unwrap_or_default();
            let mut r = vec![
                name,
                format!("{}/{}", st.ready_replicas, spec.replicas.unwrap_or(1)),
                st.updated_replicas.to_string(),
                st.available_replicas.to_string(),
                age,
            ];
            if wide {
                r.push(selector_text(&spec.selector));
            }
            r
        }
        O::DaemonSet(d) => {
            let spec = d.spec.clone().unwrap_or_default();
            let st = d.status.unwrap_or_default();
            let mut r = vec![name];
            r.extend(
                [
                    st.desired_number_scheduled,
                    st.current_number_scheduled,
                    st.number_ready,
                    st.updated_number_scheduled,
                    st.number_available,
                ]
                .map(|n| n.to_string()),
            );
            r.push(age);
            if wide {
                r.push(selector_text(&spec.selector));
            }
            r
        }
        O::Job(j) => {
            let spec = j.spec.clone().unwrap_or_default();
            let st = j.status.clone().unwrap_or_default();
            let finished =
                st.conditions.iter().find(|c| c.status == "True" && matches!(c.r#type.as_str(), "Complete" | "Failed"));
            let status = match finished {
                Some(c) => c.r#type.clone(),
                None if st.active > 0 => "Running".into(),
                None => "Pending".into(),
            };
            let start = humantime::parse_rfc3339(&st.start_time).ok();
            let end = humantime::parse_rfc3339(&st.completion_time).ok().or_else(|| finished.map(|_| now));
            let duration = match start {
                Some(s) => age_of(end.unwrap_or(now).duration_since(s).unwrap_or_default()),
                None => "<none>".into(),
            };
            let mut r =
                vec![name, status, format!("{}/{}", st.succeeded, spec.completions.unwrap_or(1)), duration, age];
            if wide {
                r.push(selector_text(&spec.selector));
            }
            r
        }
        O::Service(s) => {
            let spec = s.spec.clone().unwrap_or_default();
            let ports: Vec<String> = spec
                .ports
                .iter()
                .map(|p| {
                    if p.node_port != 0 {
                        format!("{}:{}/{}", p.port, p.node_port, p.protocol)
                    } else {
                        format!("{}/{}", p.port, p.protocol)
                    }
                })
                .collect();
            let external: Vec<String> = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .map(|lb| lb.ingress.iter().map(|i| i.ip.clone()).collect())
                .unwrap_or_default();
            let mut r = vec![
                name,
                spec.r#type.clone(),
                or_none(&spec.cluster_ip),
                or_none(&external.join(",")),
                or_none(&ports.join(",")),
                age,
            ];
            if wide {
                let sel: Vec<String> = spec.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                r.push(or_none(&sel.join(",")));
            }
            r
        }
        O::Endpoints(e) => {
            let eps: Vec<String> = e
                .subsets
                .iter()
                .flat_map(|s| {
                    s.addresses.iter().flat_map(move |a| s.ports.iter().map(move |p| format!("{}:{}", a.ip, p.port)))
                })
                .collect();
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name, or_none(&shown), age]
        }
        O::Lease(l) => {
            vec![name, or_none(&l.spec.as_ref().map(|s| s.holder_identity.clone()).unwrap_or_default()), age]
        }
        O::Role(pb::Role { rules, .. }) | O::ClusterRole(pb::ClusterRole { rules, .. }) => {
            vec![name, rules.len().to_string(), age]
        }
        O::RoleBinding(pb::RoleBinding { subjects, role_ref, .. })
        | O::ClusterRoleBinding(pb::ClusterRoleBinding { subjects, role_ref, .. }) => {
            let role = role_ref.as_ref().map(|r| format!("{}/{}", r.kind, r.name)).unwrap_or_default();
            let who: Vec<String> = subjects.iter().map(|s| format!("{}:{}", s.kind, s.name)).collect();
            vec![name, role, or_none(&who.join(",")), age]
        }
        O::Event(e) => {
            let io = e.involved_object.clone().unwrap_or_default();
            vec![
                name,
                e.r#type.clone(),
                e.reason.clone(),
                format!("{}/{}", io.kind.to_lowercase(), io.name),
                e.message.clone(),
                age,
            ]
        }
    };
    if r.is_empty() {
        r.push(String::new());
    }
    r
}

/// Aligns rows under headers with three spaces between columns, like kubectl.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now = humantime::parse_rfc3339("2026-01-10T12:00:00Z").expect("t");
        for (created, want) in [
            ("2026-01-10T11:59:15Z", "45s"),
            ("2026-01-10T11:56:40Z", "3m20s"),
            ("2026-01-10T11:48:00Z", "12m"),
            ("2026-01-10T06:56:00Z", "5h4m"),
            ("2026-01-09T00:00:00Z", "36h"),
            ("2026-01-07T00:00:00Z", "3d12h"),
            ("2025-11-01T12:00:00Z", "70d"),
            ("garbage", "<unknown>"),
        ] {
            assert_eq!(age(created, now), want, "{created}");
        }
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["NAME", "AGE"], &[vec!["a".into(), "1s".into()], vec!["longer-name".into(), "2m".into()]]);
        assert_eq!(t, "NAME          AGE\na             1s\nlonger-name   2m\n");
    }
}
