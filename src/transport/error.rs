//! What can go wrong talking to a store, and whether trying again may help.
//!
//! The transient/permanent kind must survive every layer between the failure
//! and the one retry policy (`remote::retry`): a blob stream carries its
//! failure as an `io::Error` (the stream type both transports share), so
//! the kind travels inside it as a [`StreamFault`].

use std::path::PathBuf;

use super::class::{ErrorClass, Side};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{registry}: {method} {path} answered {status}: {message}")]
    Status {
        registry: String,
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{registry}: authentication failed for {scope}: {detail}")]
    Auth {
        registry: String,
        scope: String,
        detail: String,
    },
    /// No response: refused, reset, timed out, stalled past `read_timeout`.
    #[error("{registry}: {detail}")]
    Connect { registry: String, detail: String },
    /// No complete response in time: the head deadline, a read that timed
    /// out, a body slower than `min_rate`.
    #[error("{registry}: {detail}")]
    Timeout { registry: String, detail: String },
    /// The TLS handshake failed (certificate not trusted, not TLS): trying
    /// again gives the same answer.
    #[error("{registry}: {detail}")]
    Tls { registry: String, detail: String },
    #[error("{location}: {detail}")]
    Protocol { location: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A blob stream failed part-way (the source's body cut or stalled, a
    /// digest mismatch): `transient` says whether reading it again may help,
    /// `class` what kind of failure it was where it happened.
    #[error("{location}: {detail}")]
    Stream {
        location: String,
        detail: String,
        transient: bool,
        class: ErrorClass,
    },
    #[error("{location}: {what} failed verification: {detail}")]
    Integrity {
        location: String,
        what: String,
        detail: String,
    },
    #[error("{registry}: refusing {method} {path}: this run may not write (plan or dry run)")]
    ReadOnly {
        registry: String,
        method: String,
        path: String,
    },
    #[error("{location}: interrupted by shutdown: {detail}; the next run resumes it")]
    Interrupted { location: String, detail: String },
    #[error("{location}: {what} not found")]
    NotFound { location: String, what: String },
    /// The registry's rate-limit budget (RateLimit-Remaining, Retry-After)
    /// does not let this run finish; the next run continues.
    #[error("{registry}: rate-limit budget exhausted: {detail}; the next run continues")]
    Budget { registry: String, detail: String },
    /// A transient failure retried where it happened until its attempts
    /// were spent: permanent from here on, so no layer above tries again.
    #[error("{last}; gave up after {attempts} attempts (the next run tries again)")]
    GaveUp {
        attempts: usize,
        last: Box<TransportError>,
    },
}

impl TransportError {
    /// Whether trying again later in this run may succeed (reset, timeout,
    /// stall, 5xx, 408, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Status { status, .. } => matches!(*status, 408 | 429) || *status >= 500,
            TransportError::Connect { .. } | TransportError::Timeout { .. } => true,
            TransportError::Stream { transient, .. } => *transient,
            TransportError::Io { source, .. } => io_is_transient(source),
            _ => false,
        }
    }

    /// The same failure, for another consumer of one shared stream (the
    /// fan-out reports one source failure to every target), kind and
    /// class (as a source failure) kept.
    pub fn shared(&self, location: &str) -> TransportError {
        TransportError::Stream {
            location: location.to_string(),
            detail: self.to_string(),
            transient: self.is_transient(),
            class: self.class(Side::Source),
        }
    }
}

/// Why a blob stream failed, inside its `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct StreamFault {
    pub transient: bool,
    /// The read was retried as often as the budget allows and still failed
    /// (cut, stalled, too slow): the source could not be read, which is
    /// not the same as bytes that are wrong.
    pub gave_up: bool,
    pub detail: String,
}

/// An `io::Error` for a blob stream that remembers whether it is transient.
pub fn stream_fault(transient: bool, detail: impl Into<String>) -> std::io::Error {
    let kind = if transient {
        std::io::ErrorKind::ConnectionReset
    } else {
        std::io::ErrorKind::InvalidData
    };
    std::io::Error::new(
        kind,
        StreamFault {
            transient,
            gave_up: false,
            detail: detail.into(),
        },
    )
}

/// An `io::Error` for a blob stream the transport gave up reading after
/// its retries: not transient (no layer above tries again in this run), and
/// classed as an unreadable source, not as verification.
pub fn stream_gave_up(detail: impl Into<String>) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        StreamFault {
            transient: false,
            gave_up: true,
            detail: detail.into(),
        },
    )
}

/// The same fault again, for another reader of one stream (the copy feeds
/// one source read to several targets).
pub fn stream_fault_again(e: &std::io::Error) -> std::io::Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<StreamFault>()) {
        Some(f) if f.gave_up => stream_gave_up(f.detail.clone()),
        Some(f) => stream_fault(f.transient, f.detail.clone()),
        None => stream_fault(io_is_transient(e), e.to_string()),
    }
}

/// Whether a stream's `io::Error` is worth another attempt: a [`StreamFault`]
/// says so itself; otherwise the kinds a dropped connection produces.
pub fn io_is_transient(e: &std::io::Error) -> bool {
    if let Some(f) = e.get_ref().and_then(|i| i.downcast_ref::<StreamFault>()) {
        return f.transient;
    }
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_survive_wrapping() {
        let cut = stream_fault(true, "body cut after 10 bytes");
        assert!(io_is_transient(&cut));
        let e = TransportError::Io {
            path: "x".into(),
            source: cut,
        };
        assert!(e.is_transient());
        assert!(e.shared("src").is_transient());
        let spent = TransportError::GaveUp {
            attempts: 6,
            last: Box::new(TransportError::Connect {
                registry: "r".into(),
                detail: "reset".into(),
            }),
        };
        assert!(!spent.is_transient());
        assert!(!spent.shared("src").is_transient());
        assert!(spent.to_string().contains("gave up after 6 attempts"));
        let bad = stream_fault(false, "digest mismatch");
        assert!(!io_is_transient(&bad));
        assert!(!io_is_transient(&std::io::Error::other("disk full")));
        let e = TransportError::Status {
            registry: "r".into(),
            method: "GET".into(),
            path: "/".into(),
            status: 404,
            message: String::new(),
        };
        assert!(!e.shared("src").is_transient());
    }
}
