//! Retention (SPEC section 6): lifecycle policies on target repositories.
//!
//! - [`plan`]: the pure planner (what to delete, in which order, and why
//!   everything else stays).
//! - [`state`]: what retention needs to remember between runs (first-seen
//!   times, untagged-since times, the deletion journal), as a trait.
//! - [`read`]: reads a target repository into planner input (read-only).
//! - [`execute`]: sends the deletions (journaled first) and writes the state.

pub mod execute;
mod graph;
pub mod plan;
pub mod read;
mod reasons;
pub mod state;

pub use execute::{
    DeletionReport, DeletionStatus, Pruner, RepoReport, RetentionError, RetentionReport,
};
pub use read::{RepoJob, RepoRead, RuleRead, StateUpdate};
pub use state::{
    JournalEntry, JournalId, JournalRecord, JournalStatus, NoState, ReadOnly, RetentionState,
    SeenTag, StateError,
};

pub use plan::{
    Child, DeleteReason, Deletion, KeepReason, Kept, Listing, ManifestInfo, RepoInput, RepoPlan,
    Unix, apply_cap, plan_retention,
};
