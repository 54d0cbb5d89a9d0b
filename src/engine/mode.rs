//! How a command treats the world, chosen once: `Apply` (`sync`, `prune`,
//! `copy`, the daemon) or `Estimate` (`plan`, `prune --dry-run`). The
//! command builds its transports and opens its state from the mode, and the
//! engine takes the same mode: its copy executor and retention executor
//! follow from it, so nothing else has to agree. And what part of a rule's
//! plan a pass carries out (`Pass`): every pass makes the same plan.

/// Whether a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copies, deletions, state records and checkpoints.
    Apply,
    /// Reads only: transports that refuse every write before it is sent, a
    /// state opened read-only (its journal and first-seen times read as
    /// data), copies estimated with HEADs, deletions reported.
    Estimate,
}

impl Mode {
    /// Whether the transports of this mode refuse writes.
    pub fn read_only(self) -> bool {
        self == Mode::Estimate
    }
}

/// What a pass carries out of the rule's one plan. The plan is always the
/// whole rule's (for the repositories the pass covers): what the rule's
/// retention would delete is never copied, whichever pass runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Copies and deletions: a scheduled run, the trigger, `sync`, `plan`.
    Whole,
    /// The plan's copies, no deletion: an event's push pass.
    NoDeletions,
    /// The plan's deletions, no copy (`prune`): the source's tags are read
    /// (`delete_removed_at_source`, and an unreadable source deletes
    /// nothing), but not resolved.
    NoCopies,
}

impl Pass {
    pub(crate) fn copies(self) -> bool {
        self != Pass::NoCopies
    }
    pub(crate) fn deletes(self) -> bool {
        self != Pass::NoDeletions
    }
}
