//! The client's one error type.

use tonic::{Code, Status};

/// What a call through the client can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error (not found, invalid, conflict, ...).
    #[error("{}", .0.message())]
    Api(Status),
    /// No master could be reached within the retry budget.
    #[error("no master reachable: {0}")]
    Unavailable(String),
    /// A write was sent but its outcome is unknown (the master failed before answering):
    /// it may or may not have been applied. Read the object back before writing again.
    #[error("the write may or may not have been applied (lost contact with the master: {0}); read the object back before retrying")]
    Indeterminate(String),
    /// A watch's resourceVersion was compacted away: list again (HTTP 410 in Kubernetes).
    #[error("{0}")]
    Expired(String),
    /// Bad client settings (an endpoint that is not a URL, ...).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The gRPC code of a server error.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Api(s) => Some(s.code()),
            ClientError::Expired(_) => Some(Code::OutOfRange),
            _ => None,
        }
    }

    /// Whether the server said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }

    /// Whether a write was refused because its fencing token is stale: the lock it names
    /// has another holder or term (the writer is no longer the elected one).
    pub fn is_fenced(&self) -> bool {
        matches!(self, ClientError::Api(s) if s.code() == Code::FailedPrecondition && s.message().starts_with("fenced: "))
    }

    /// Whether a compare-and-swap lost (the object changed since it was read).
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(Code::Aborted)
    }
}

/// Whether a failed call certainly never reached the server (the connection could not
/// be opened): even a write may then be sent to another master.
pub fn never_sent(s: &Status) -> bool {
    (s.code() == Code::Unavailable && flotilla_core::limits::is_connect_failure(s.message())) || tls_refused(s)
}

/// Whether the failure is a TLS error under the transport (in TLS 1.3 a server refuses a
/// client's certificate only after the client has finished its side of the handshake,
/// so the refusal arrives with the first request): the request was not taken.
pub(crate) fn tls_refused(s: &Status) -> bool {
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                return true;
            }
        }
        if e.is::<rustls::Error>() {
            return true;
        }
        src = e.source();
    }
    false
}

/// A status's message with the innermost cause of a transport failure appended (tonic
/// says only "transport error"; the cause says what went wrong, e.g. that the master
/// refused this client's certificate).
pub fn describe(s: &Status) -> String {
    let mut msg = s.message().to_string();
    let mut cause = None;
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        cause = Some(e.to_string());
        src = e.source();
    }
    if let Some(c) = cause.filter(|c| !msg.contains(c.as_str())) {
        msg = format!("{msg}: {c}");
    }
    msg
}

/// Whether a failure is about reaching the master (try another) rather than an answer.
pub fn is_transport(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        Code::Unknown => s.message().contains("transport") || s.message().contains("connection"),
        _ => false,
    }
}
