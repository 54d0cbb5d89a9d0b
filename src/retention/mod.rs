//! Retention: lifecycle policies on target repositories.
//!
//! - [`plan`]: the pure planner (what to delete, in which order, and why
//!   everything else stays).
//! - [`state`]: what retention needs to remember between runs (first-seen
//!   times, untagged-since times, the deletion journal, manifest facts), as
//!   a trait.
//! - [`reading`]: what retention is given of a target repository (the
//!   engine's inventory reads it; retention reads nothing itself).
//! - [`execute`]: sends the deletions of a plan (journaled first) and
//!   writes the state.

pub(crate) mod execute;
mod graph;
pub(crate) mod plan;
pub(crate) mod reading;
mod reasons;
pub(crate) mod state;

pub use execute::{DeletionStatus, Pruner, RetentionReport};
pub(crate) use reading::{RepoJob, RepoRead, RuleRead, StateUpdate, needs_created};
pub(crate) use state::{
    JournalEntry, JournalId, JournalRecord, ManifestFacts, NoState, ReadOnly, SeenTag, StateError,
};
pub use state::{JournalStatus, RetentionState};

pub(crate) use plan::{
    Child, Listing, ManifestInfo, RepoInput, RepoPlan, apply_cap, plan_retention,
};
pub use plan::{KeepReason, Unix};
