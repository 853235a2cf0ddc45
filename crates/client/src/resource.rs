//! Typed access to the `Object` union: each kind's message implements [`Resource`].

use flotilla_proto::api::{self as pb, object::Kind as O};

/// An object kind of the API.
pub trait Resource: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// The kind's name in requests (`Pod`).
    const KIND: &'static str;
    /// Whether objects live in a namespace.
    const NAMESPACED: bool;
    /// The object's metadata.
    fn metadata(&self) -> Option<&pb::ObjectMeta>;
    /// Wraps into the union.
    fn into_object(self) -> O;
    /// Unwraps from the union (None if another kind).
    fn from_object(o: O) -> Option<Self>;

    /// Name.
    fn name(&self) -> &str {
        self.metadata().map_or("", |m| m.name.as_str())
    }
    /// Namespace.
    fn namespace(&self) -> &str {
        self.metadata().map_or("", |m| m.namespace.as_str())
    }
    /// resourceVersion.
    fn resource_version(&self) -> &str {
        self.metadata().map_or("", |m| m.resource_version.as_str())
    }
}

macro_rules! resource {
    ($t:ident, $namespaced:expr) => {
        impl Resource for pb::$t {
            const KIND: &'static str = stringify!($t);
            const NAMESPACED: bool = $namespaced;
            fn metadata(&self) -> Option<&pb::ObjectMeta> {
                self.metadata.as_ref()
            }
            fn into_object(self) -> O {
                O::$t(self)
            }
            fn from_object(o: O) -> Option<Self> {
                match o {
                    O::$t(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}

resource!(Namespace, false);
resource!(Node, false);
resource!(Pod, true);
resource!(ReplicaSet, true);
resource!(Deployment, true);
resource!(Service, true);
resource!(Endpoints, true);
resource!(Lease, true);
resource!(Event, true);
resource!(DaemonSet, true);
resource!(Job, true);
