//! What retention is given about a target repository: the inventory's
//! reading of it (`engine::targets`) as planner input, and the state records
//! that reading found due. Plain data: retention reads nothing itself.

use super::plan::{RepoInput, Unix};
use crate::config::{OrderBy, Retention};
use crate::oci::Digest;
use crate::reference::Location;

/// One target repository a rule's retention covers.
#[derive(Clone, Debug)]
pub struct RepoJob {
    /// The target as configured (e.g. `host/mirror/*`).
    pub target: String,
    pub location: Location,
}

/// A state record the reading found due; written only by a real run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateUpdate {
    /// `digest` has had no tag since `since`.
    Untagged { digest: Digest, since: Unix },
    /// `digest` is tagged again, or gone: forget its untagged record.
    Forget { digest: Digest },
}

/// One target repository as read.
#[derive(Clone, Debug)]
pub struct RepoRead {
    pub job: RepoJob,
    pub input: RepoInput,
    pub updates: Vec<StateUpdate>,
    /// Why the repository could not be read completely (its listing is
    /// then incomplete), with the failure's class.
    pub unread: Option<crate::engine::Failure>,
}

/// Every target repository of a rule as read.
#[derive(Clone, Debug, Default)]
pub struct RuleRead {
    pub repos: Vec<RepoRead>,
    /// Repositories that could not be enumerated (a `/*` target's catalog).
    pub errors: Vec<crate::engine::RunError>,
}

/// Whether the policy needs image creation times.
pub(crate) fn needs_created(policy: &Retention) -> bool {
    match policy.order_by {
        OrderBy::Created => policy.keep_last.is_some() || policy.older_than.is_some(),
        OrderBy::Semver => policy.older_than.is_some(),
        OrderBy::FirstSeen => false,
    }
}
