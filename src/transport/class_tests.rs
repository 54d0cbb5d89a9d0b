use super::*;
use crate::transport::{stream_fault, stream_fault_again, stream_gave_up};

fn status(code: u16) -> TransportError {
    TransportError::Status {
        registry: "r".into(),
        method: "GET".into(),
        path: "/v2/a/tags/list".into(),
        status: code,
        message: String::new(),
    }
}

fn both(e: &TransportError) -> (ErrorClass, ErrorClass) {
    (e.class(Side::Source), e.class(Side::Target))
}

#[test]
fn status_codes_have_their_class_on_either_side() {
    use ErrorClass::*;
    for (code, class) in [
        (401, Authentication),
        (403, Authentication),
        (404, NotFound),
        (408, Timeout),
        (429, RateLimited),
    ] {
        assert_eq!(both(&status(code)), (class, class), "{code}");
    }
    for code in [400, 405, 413, 500, 502, 503] {
        assert_eq!(
            both(&status(code)),
            (SourceUnreadable, TargetRefused),
            "{code}"
        );
    }
}

#[test]
fn every_variant_has_a_class() {
    use ErrorClass::*;
    let s = String::new;
    let cases: Vec<(TransportError, (ErrorClass, ErrorClass))> = vec![
        (
            TransportError::Auth {
                registry: s(),
                scope: s(),
                detail: s(),
            },
            (Authentication, Authentication),
        ),
        (
            TransportError::Connect {
                registry: s(),
                detail: s(),
            },
            (SourceUnreadable, TargetRefused),
        ),
        (
            TransportError::Timeout {
                registry: s(),
                detail: s(),
            },
            (Timeout, Timeout),
        ),
        (
            TransportError::Tls {
                registry: s(),
                detail: s(),
            },
            (SourceUnreadable, TargetRefused),
        ),
        (
            TransportError::Protocol {
                location: s(),
                detail: s(),
            },
            (InvalidInput, InvalidInput),
        ),
        (
            TransportError::Io {
                path: "x".into(),
                source: std::io::Error::other("disk full"),
            },
            (SourceUnreadable, TargetRefused),
        ),
        (
            TransportError::Io {
                path: "x".into(),
                source: stream_fault(false, "digest mismatch"),
            },
            (Verification, Verification),
        ),
        (
            TransportError::Io {
                path: "x".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "digest mismatch"),
            },
            (Verification, Verification),
        ),
        (
            TransportError::Io {
                path: "x".into(),
                source: stream_gave_up("stalled; gave up after 6 attempts"),
            },
            (SourceUnreadable, SourceUnreadable),
        ),
        (
            TransportError::Io {
                path: "x".into(),
                source: stream_fault_again(&stream_gave_up("stalled")),
            },
            (SourceUnreadable, SourceUnreadable),
        ),
        (
            TransportError::Io {
                path: "x".into(),
                source: stream_fault_again(&std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "digest mismatch",
                )),
            },
            (Verification, Verification),
        ),
        (
            TransportError::Io {
                path: "x".into(),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            },
            (Timeout, Timeout),
        ),
        (
            TransportError::Integrity {
                location: s(),
                what: s(),
                detail: s(),
            },
            (Verification, Verification),
        ),
        (
            TransportError::ReadOnly {
                registry: s(),
                method: s(),
                path: s(),
            },
            (Other, Other),
        ),
        (
            TransportError::Interrupted {
                location: s(),
                detail: s(),
            },
            (Interrupted, Interrupted),
        ),
        (
            TransportError::NotFound {
                location: s(),
                what: s(),
            },
            (NotFound, NotFound),
        ),
        (
            TransportError::Budget {
                registry: s(),
                detail: s(),
            },
            (RateLimited, RateLimited),
        ),
        (
            TransportError::GaveUp {
                attempts: 6,
                last: Box::new(status(503)),
            },
            (SourceUnreadable, TargetRefused),
        ),
        (
            TransportError::GaveUp {
                attempts: 6,
                last: Box::new(status(429)),
            },
            (RateLimited, RateLimited),
        ),
    ];
    for (e, want) in cases {
        assert_eq!(both(&e), want, "{e:?}");
    }
}

#[test]
fn a_shared_source_failure_keeps_its_source_class_at_every_target() {
    let e = status(503).shared("src");
    assert_eq!(
        both(&e),
        (ErrorClass::SourceUnreadable, ErrorClass::SourceUnreadable)
    );
    let e = status(404).shared("src");
    assert_eq!(e.class(Side::Target), ErrorClass::NotFound);
    assert!(!e.is_transient());
}

#[test]
fn names_are_the_documented_ones() {
    let names: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "source_unreadable",
            "authentication",
            "rate_limited",
            "not_found",
            "verification",
            "target_refused",
            "timeout",
            "invalid_input",
            "interrupted",
            "other"
        ]
    );
    for c in ErrorClass::ALL {
        assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
    }
}
