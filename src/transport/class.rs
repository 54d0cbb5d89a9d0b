//! What kind of failure a [`TransportError`] is, for the operator: the
//! class every failure carries to the report, `--json`, the logs and
//! `regkeeper_rule_errors_total{class}`. Derived from the error's variant
//! and status code, never from its message.

use serde::Serialize;

use super::TransportError;

/// The kind of a failure, as reports and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The source could not be read (no connection, TLS, 5xx, I/O).
    SourceUnreadable,
    /// Credentials missing or refused (401, 403).
    Authentication,
    /// 429, or the registry's rate-limit budget is spent.
    RateLimited,
    /// A repository, tag, manifest or blob that is not there (404).
    NotFound,
    /// Bytes that do not match their digest or size.
    Verification,
    /// A target that could not be written or read (no connection, 405,
    /// 5xx, another 4xx, I/O).
    TargetRefused,
    /// No response in time (head deadline, read timeout, 408).
    Timeout,
    /// What a registry sent is not acceptable: oversized or malformed
    /// responses, endless pagination, manifests that do not parse.
    InvalidInput,
    /// The run was stopped (shutdown); the next run continues.
    Interrupted,
    /// Anything else.
    Other,
}

impl ErrorClass {
    /// Every class, for series that exist from start-up.
    pub const ALL: [ErrorClass; 10] = [
        ErrorClass::SourceUnreadable,
        ErrorClass::Authentication,
        ErrorClass::RateLimited,
        ErrorClass::NotFound,
        ErrorClass::Verification,
        ErrorClass::TargetRefused,
        ErrorClass::Timeout,
        ErrorClass::InvalidInput,
        ErrorClass::Interrupted,
        ErrorClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::SourceUnreadable => "source_unreadable",
            ErrorClass::Authentication => "authentication",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Verification => "verification",
            ErrorClass::TargetRefused => "target_refused",
            ErrorClass::Timeout => "timeout",
            ErrorClass::InvalidInput => "invalid_input",
            ErrorClass::Interrupted => "interrupted",
            ErrorClass::Other => "other",
        }
    }

    /// The class of a failure that has no kind of its own, by where it
    /// happened.
    fn unreadable(side: Side) -> ErrorClass {
        match side {
            Side::Source => ErrorClass::SourceUnreadable,
            Side::Target => ErrorClass::TargetRefused,
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which end of a rule a request went to: decides the class of failures
/// that have no kind of their own (a refused connection, a 5xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl TransportError {
    /// The class of this failure at `side`.
    pub fn class(&self, side: Side) -> ErrorClass {
        match self {
            TransportError::Status { status, .. } => match *status {
                401 | 403 => ErrorClass::Authentication,
                404 => ErrorClass::NotFound,
                408 => ErrorClass::Timeout,
                429 => ErrorClass::RateLimited,
                _ => ErrorClass::unreadable(side),
            },
            TransportError::Auth { .. } => ErrorClass::Authentication,
            TransportError::Timeout { .. } => ErrorClass::Timeout,
            TransportError::Connect { .. } | TransportError::Tls { .. } => {
                ErrorClass::unreadable(side)
            }
            TransportError::Protocol { .. } => ErrorClass::InvalidInput,
            TransportError::Io { source, .. } => io_class(source, side),
            TransportError::Stream { class, .. } => *class,
            TransportError::Integrity { .. } => ErrorClass::Verification,
            TransportError::ReadOnly { .. } => ErrorClass::Other,
            TransportError::Interrupted { .. } => ErrorClass::Interrupted,
            TransportError::NotFound { .. } => ErrorClass::NotFound,
            TransportError::Budget { .. } => ErrorClass::RateLimited,
            TransportError::GaveUp { last, .. } => last.class(side),
        }
    }
}

/// A stream's `io::Error`: a read the transport gave up on is an unreadable
/// source; a digest or size mismatch (a permanent [`super::StreamFault`], or
/// `Verified`'s own `InvalidData`) is verification; a timed-out read a
/// timeout.
fn io_class(e: &std::io::Error, side: Side) -> ErrorClass {
    if let Some(f) = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<super::StreamFault>())
    {
        if f.gave_up {
            return ErrorClass::SourceUnreadable;
        }
        if !f.transient {
            return ErrorClass::Verification;
        }
    }
    match e.kind() {
        // `Verified`'s own verdict: the bytes are not the digest's or size's.
        std::io::ErrorKind::InvalidData => ErrorClass::Verification,
        std::io::ErrorKind::TimedOut => ErrorClass::Timeout,
        _ => ErrorClass::unreadable(side),
    }
}

#[cfg(test)]
#[path = "class_tests.rs"]
mod tests;
