//! Recording Events about objects, with repeats aggregated: the same reason and message
//! about the same object again updates the first Event's `count` and `lastTimestamp`
//! instead of writing a new one (as client-go's event correlator does).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use flotilla_proto::api as pb;

use crate::client::Client;
use crate::error::ClientError;

/// Remembered (object uid, reason, message) combinations; past it, the memory starts over.
const REMEMBER: usize = 4096;

/// What makes Events repeats: (object uid, reason, message).
type Repeat = (String, String, String);
/// Where a repeat was recorded: (namespace, Event name, count so far).
type Recorded = (String, String, i32);

/// Records Events for one component (`source.component`).
pub struct EventRecorder {
    component: String,
    host: String,
    /// (uid, reason, message) → (namespace, event name, count).
    seen: Mutex<HashMap<Repeat, Recorded>>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl EventRecorder {
    /// A recorder for `component` running on `host`.
    pub fn new(component: &str, host: &str) -> EventRecorder {
        EventRecorder { component: component.into(), host: host.into(), seen: Mutex::new(HashMap::new()) }
    }

    /// Records an Event (`kind` Normal or Warning) about `about` through `client` (give a
    /// fenced client when the component is elected: its Events are then fenced too).
    pub async fn record(
        &self,
        client: &Client,
        about: pb::ObjectReference,
        kind: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), ClientError> {
        let ns = if about.namespace.is_empty() { "default".to_string() } else { about.namespace.clone() };
        let key = (about.uid.clone(), reason.to_string(), message.to_string());
        let repeat = self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        if let Some((ns, name, count)) = repeat {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": now()});
            match client.patch_object("Event", &ns, &name, &patch, false).await {
                Ok(_) => {
                    self.remember(key, (ns, name, count + 1));
                    return Ok(());
                }
                Err(e) if e.is_not_found() => {} // expired: write a new one
                Err(e) => return Err(e),
            }
        }
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("{}.{stamp:x}", about.name);
        let event = pb::Event {
            metadata: Some(pb::ObjectMeta { name: name.clone(), namespace: ns.clone(), ..Default::default() }),
            involved_object: Some(about),
            reason: reason.into(),
            message: message.into(),
            source: Some(pb::EventSource { component: self.component.clone(), host: self.host.clone() }),
            first_timestamp: now(),
            last_timestamp: now(),
            count: 1,
            r#type: kind.into(),
        };
        client.create(event).await?;
        self.remember(key, (ns, name, 1));
        Ok(())
    }

    fn remember(&self, key: Repeat, v: Recorded) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= REMEMBER && !seen.contains_key(&key) {
            seen.clear();
        }
        seen.insert(key, v);
    }
}

/// A reference to `pod` for an Event.
pub fn pod_ref(pod: &pb::Pod) -> pb::ObjectReference {
    let m = pod.metadata.clone().unwrap_or_default();
    pb::ObjectReference {
        kind: "Pod".into(),
        namespace: m.namespace,
        name: m.name,
        uid: m.uid,
        resource_version: m.resource_version,
        field_path: String::new(),
    }
}

/// A reference to any object for an Event.
pub fn object_ref<T: crate::Resource>(o: &T) -> pb::ObjectReference {
    let m = o.metadata().cloned().unwrap_or_default();
    pb::ObjectReference {
        kind: T::KIND.into(),
        namespace: m.namespace,
        name: m.name,
        uid: m.uid,
        resource_version: m.resource_version,
        field_path: String::new(),
    }
}
