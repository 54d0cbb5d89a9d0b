//! Retention (SPEC section 6): lifecycle policies on target repositories.
//!
//! - [`plan`]: the pure planner (what to delete, in which order, and why
//!   everything else stays).
//! - [`state`]: what retention needs to remember between runs (first-seen
//!   times, untagged-since times, the deletion journal), as a trait.
//! - [`read`]: reads a target repository into planner input (read-only).
//! - [`execute`]: sends the deletions (journaled first) and writes the state.

pub(crate) mod execute;
mod facts;
mod graph;
pub(crate) mod plan;
pub(crate) mod read;
mod reasons;
mod referrers;
pub(crate) mod state;

pub use execute::{DeletionStatus, Pruner, RetentionReport};
pub(crate) use read::{RepoJob, RepoRead, RuleRead, StateUpdate};
pub(crate) use state::{
    JournalEntry, JournalId, JournalRecord, ManifestFacts, SeenTag, StateError,
};
pub use state::{JournalStatus, RetentionState};

pub use plan::{KeepReason, Unix};
pub(crate) use plan::{Listing, ManifestInfo, RepoInput, RepoPlan, apply_cap, plan_retention};
