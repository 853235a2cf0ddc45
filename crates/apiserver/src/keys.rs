//! Where the apiserver stores each object: `/registry/<plural>/<namespace>/<name>` (as
//! Kubernetes lays out etcd). Only the apiserver knows this layout; clients never see it.

use flotilla_api::Kind;

/// Store key prefix of every object of `kind` (`/registry/pods/`).
pub fn prefix(kind: Kind) -> String {
    format!("/registry/{}/", kind.plural())
}

/// Store key prefix of `kind` in `namespace` (all namespaces when empty).
pub fn prefix_in(kind: Kind, namespace: &str) -> String {
    if kind.namespaced() && !namespace.is_empty() {
        format!("/registry/{}/{namespace}/", kind.plural())
    } else {
        prefix(kind)
    }
}

/// Store key of one object.
pub fn key(kind: Kind, namespace: &str, name: &str) -> String {
    if kind.namespaced() {
        format!("/registry/{}/{namespace}/{name}", kind.plural())
    } else {
        format!("/registry/{}/{name}", kind.plural())
    }
}

/// Store key of a lock's fence: the holder and term fencing tokens are compared with
/// (docs/rfcs/0001-fenced-leadership.md). Written with its Lease, in the same transaction.
pub fn fence_key(namespace: &str, name: &str) -> String {
    format!("/registry/fences/{namespace}/{name}")
}

/// Store key prefix of the fences in `namespace`.
pub fn fences_in(namespace: &str) -> String {
    format!("/registry/fences/{namespace}/")
}

/// The value of a fence key: `<term>/<holder>` (an empty holder: released).
pub fn fence_value(term: i32, holder: &str) -> Vec<u8> {
    format!("{term}/{holder}").into_bytes()
}

/// A fence key's value in words, for error messages.
pub fn describe_fence_value(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    match s.split_once('/') {
        Some((term, "")) => format!("released (term {term})"),
        Some((term, holder)) => format!("held by {holder:?} in term {term}"),
        None => format!("in an unknown state ({s:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_put_namespaced_objects_under_their_namespace() {
        assert_eq!(key(Kind::Pod, "default", "web"), "/registry/pods/default/web");
        assert_eq!(key(Kind::Node, "", "n1"), "/registry/nodes/n1");
        assert_eq!(prefix_in(Kind::Pod, ""), "/registry/pods/");
        assert_eq!(prefix_in(Kind::Pod, "kube"), "/registry/pods/kube/");
        assert_eq!(fence_key("kube-system", "s"), "/registry/fences/kube-system/s");
        assert!(fence_key("kube-system", "s").starts_with(&fences_in("kube-system")));
    }

    #[test]
    fn fence_values_name_the_holder_and_term() {
        assert_eq!(fence_value(3, "m1"), b"3/m1");
        assert_eq!(describe_fence_value(&fence_value(3, "m1")), "held by \"m1\" in term 3");
        assert_eq!(describe_fence_value(&fence_value(4, "")), "released (term 4)");
    }
}
