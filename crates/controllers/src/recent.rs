//! Read your own writes: the objects a controller wrote that its informer cache may not
//! show yet.
//!
//! A controller that decides from a cache can act twice on one fact when the cache lags
//! behind its own last write (a Deployment controller that scaled a ReplicaSet down, and
//! on its next reconcile still sees the old count, would scale it down again). Each write's
//! answer is kept here; reading through [`Recent::fresher`] gives whichever of the cached
//! and the written object has the newer resourceVersion (store revisions, so comparable),
//! and drops the written one once the cache has caught up.

use std::collections::HashMap;
use std::sync::Mutex;

use flotilla_client::Resource;

fn version<T: Resource>(o: &T) -> u64 {
    o.metadata().and_then(|m| m.resource_version.parse().ok()).unwrap_or(0)
}

fn uid<T: Resource>(o: &T) -> &str {
    o.metadata().map_or("", |m| m.uid.as_str())
}

/// Objects written by this controller, by `namespace/name`.
pub struct Recent<T: Resource> {
    written: Mutex<HashMap<String, T>>,
}

impl<T: Resource> Default for Recent<T> {
    fn default() -> Recent<T> {
        Recent { written: Mutex::default() }
    }
}

impl<T: Resource> Recent<T> {
    /// Remembers an object as the server answered a write of it.
    pub fn wrote(&self, o: &T) {
        let key = format!("{}/{}", o.namespace(), o.name());
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if w.get(&key).is_none_or(|old| version(old) < version(o)) {
            w.insert(key, o.clone());
        }
    }

    /// `cached`, or this controller's later write of the same object.
    pub fn fresher(&self, cached: T) -> T {
        let key = format!("{}/{}", cached.namespace(), cached.name());
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match w.get(&key) {
            Some(mine) if uid(mine) == uid(&cached) && version(mine) > version(&cached) => mine.clone(),
            Some(_) => {
                // The cache caught up (or it is another object of that name now).
                w.remove(&key);
                cached
            }
            None => cached,
        }
    }

    /// Forgets the object `namespace/name` (it was deleted).
    pub fn forget(&self, key: &str) {
        self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::api as pb;

    fn rs(uid: &str, rv: u64, replicas: i32) -> pb::ReplicaSet {
        pb::ReplicaSet {
            metadata: Some(pb::ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                uid: uid.into(),
                resource_version: rv.to_string(),
                ..Default::default()
            }),
            spec: Some(pb::ReplicaSetSpec { replicas: Some(replicas), ..Default::default() }),
            status: None,
        }
    }

    fn replicas(r: &pb::ReplicaSet) -> Option<i32> {
        r.spec.as_ref().and_then(|s| s.replicas)
    }

    #[test]
    fn a_cache_behind_the_write_reads_the_write_until_it_catches_up() {
        let recent = Recent::default();
        recent.wrote(&rs("u1", 10, 2));
        assert_eq!(replicas(&recent.fresher(rs("u1", 7, 3))), Some(2), "the cache is behind: the write wins");
        assert_eq!(replicas(&recent.fresher(rs("u1", 12, 5))), Some(5), "the cache is ahead: it wins");
        assert_eq!(replicas(&recent.fresher(rs("u1", 7, 3))), Some(3), "forgotten once caught up");
    }

    #[test]
    fn a_namesake_with_another_uid_is_not_overlaid() {
        let recent = Recent::default();
        recent.wrote(&rs("u1", 10, 2));
        assert_eq!(replicas(&recent.fresher(rs("u2", 3, 4))), Some(4));
    }
}
