//! What controllers read off pods: owner, phase, readiness, availability.

use std::time::{Duration, SystemTime};

use flotilla_proto::api as pb;

/// The pod's metadata (empty if it has none).
pub fn meta(p: &pb::Pod) -> &pb::ObjectMeta {
    static EMPTY: std::sync::OnceLock<pb::ObjectMeta> = std::sync::OnceLock::new();
    p.metadata.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

/// The uid of the object's controller, if it has one.
pub fn controller_uid(m: &pb::ObjectMeta) -> Option<&str> {
    m.owner_references.iter().find(|r| r.controller).map(|r| r.uid.as_str())
}

/// The pod's phase ("" before anyone set one).
pub fn phase(p: &pb::Pod) -> &str {
    p.status.as_ref().map_or("", |s| s.phase.as_str())
}

/// When the pod became Ready, if it is (None inside: the time does not parse).
pub fn ready_since(p: &pb::Pod) -> Option<Option<SystemTime>> {
    let c = p.status.as_ref()?.conditions.iter().find(|c| c.r#type == "Ready" && c.status == "True")?;
    Some(humantime::parse_rfc3339_weak(&c.last_transition_time).ok())
}

/// Whether the pod has been Ready for at least `min_ready` at `now`.
pub fn available(p: &pb::Pod, min_ready: Duration, now: SystemTime) -> bool {
    match ready_since(p) {
        None => false,
        Some(_) if min_ready.is_zero() => true,
        Some(None) => false,
        Some(Some(t)) => now.duration_since(t).is_ok_and(|d| d >= min_ready),
    }
}

/// Whether the pod counts for its owner: neither finished nor being deleted.
pub fn active(p: &pb::Pod) -> bool {
    meta(p).deletion_timestamp.is_empty() && !matches!(phase(p), "Succeeded" | "Failed")
}
