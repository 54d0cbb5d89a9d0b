//! Why a target repository could not be read for retention. Any of these
//! leaves that repository's reading incomplete: nothing is deleted there.

use crate::retention::StateError;
use crate::transport::{ErrorClass, Side, TransportError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    State(#[from] StateError),
    /// The repository changed while it was read, or said something that does
    /// not add up (a listed referrer that is absent, a missing child index).
    #[error("{0}")]
    Inconsistent(String),
    /// A manifest that does not parse.
    #[error("manifest {digest}: {detail}")]
    Manifest { digest: String, detail: String },
}

impl ReadError {
    /// The class a report shows for it.
    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            ReadError::Transport(e) => e.class(Side::Target),
            ReadError::State(_) => ErrorClass::Other,
            ReadError::Inconsistent(_) => ErrorClass::Other,
            ReadError::Manifest { .. } => ErrorClass::InvalidInput,
        }
    }
}
