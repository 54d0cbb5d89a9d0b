//! The inventory's reading of target repositories for retention, read-only:
//! each target repository of a rule read once, for copies and retention
//! alike (a rule run reads no target twice). Per repository: every tag and
//! its digest (HEAD when the manifest's facts are kept, else one GET), the
//! facts retention needs of each manifest (`facts.rs`), untagged manifests
//! the state remembers, nested indexes, referrers pushed by digest
//! (`referrers.rs`), and `created` times where the policy needs them. The
//! copy side of the inventory takes its target digests from this reading
//! when there is one. What the state should learn (a manifest that lost its
//! last tag, a stale record) is returned as data, for a real run to write.

mod error;
mod facts;
mod referrers;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use tracing::Instrument;

pub(crate) use error::ReadError;
use facts::FactReader;
pub(crate) use facts::{created_in, manifest_info};

use super::Engine;
use super::inventory::RuleInventory;
use super::report::{Failure, RunError};
use crate::config::{Retention, Rule};
use crate::oci::{Digest, is_index};
use crate::plan::referrer_subject;
use crate::reference::Location;
use crate::retention::{
    Listing, ManifestInfo, RepoInput, RepoJob, RepoRead, RetentionState, RuleRead, SeenTag,
    StateUpdate, Unix, needs_created,
};
use crate::transport::{ErrorClass, Side, Store};

/// Manifest and config reads in flight per repository.
const READS_IN_PARALLEL: usize = 8;
/// Target repositories without a source counterpart read at once.
const REPOS_IN_PARALLEL: usize = 4;

/// A target repository as retention's part of the inventory read it.
/// The error side says why it is incomplete, with the class of the failure.
pub(crate) type TargetReading = Result<(RepoInput, Vec<StateUpdate>), Failure>;

impl Engine {
    /// Reads one target repository whose tag list the inventory has
    /// (`None`: it does not exist). Never fails: a repository that cannot
    /// be read completely is an incomplete input (nothing deleted there).
    pub(super) async fn read_target(
        &self,
        store: &Store,
        tags: Option<Vec<String>>,
        policy: &Retention,
    ) -> TargetReading {
        let state = self.retention_state();
        read_repo(store, tags, policy, state.as_ref(), self.now())
            .await
            .map_err(|e| {
                tracing::warn!(repository = %store.location(), error = %e, class = e.class().as_str(),
                    "cannot read the repository completely; deleting nothing in it");
                Failure::new(e.class(), e)
            })
    }

    /// Every target repository of `rule` as retention plans it: those the
    /// inventory paired with a source (read there, once), then those of a
    /// `/*` target that have no counterpart among them (and every target of
    /// a rule without a source), read here. Source facts join in: the
    /// source's tags for `delete_removed_at_source`; a source that could not
    /// be read makes its targets' inputs incomplete (never "everything was
    /// removed at the source").
    pub(super) async fn retention_read(
        &self,
        rule: &Rule,
        policy: &Retention,
        inv: &RuleInventory,
    ) -> RuleRead {
        let mut read = RuleRead::default();
        let source_failed = inv
            .errors
            .first()
            .map(|e| Failure::new(e.class, "the source repositories could not be listed"));
        let mut paired = HashSet::new();
        for repo in &inv.repos {
            let source_tags: Result<Option<BTreeSet<String>>, Failure> = match &repo.source_tags {
                None => Err(Failure::new(
                    first_class(&repo.errors, |_| true),
                    format!("the source {} could not be read", repo.source.location()),
                )),
                Some(tags) if policy.delete_removed_at_source => {
                    Ok(Some(tags.iter().cloned().collect()))
                }
                Some(_) => Ok(None),
            };
            for t in &repo.targets {
                paired.insert(t.store.location().to_string());
                let job = RepoJob {
                    target: t.target.clone(),
                    location: t.store.location().clone(),
                };
                let reading = match (&t.reading, &source_tags, &source_failed) {
                    (_, _, Some(why)) | (_, Err(why), _) => Err(why.clone()),
                    (None, ..) => Err(Failure::new(ErrorClass::Other, "not read")),
                    (Some(r), Ok(tags), None) => r.clone().map(|(mut input, updates)| {
                        input.source_tags = tags.clone();
                        (input, updates)
                    }),
                };
                read.repos.push(repo_read(job, reading));
            }
            for (target, location) in &repo.failed_targets {
                paired.insert(location.to_string());
                let job = RepoJob {
                    target: target.clone(),
                    location: location.clone(),
                };
                let at = location.to_string();
                let class = first_class(&repo.errors, |e| e.target == at);
                let why = Failure::new(class, "the target's tag list could not be read");
                read.repos.push(repo_read(job, Err(why)));
            }
        }
        let jobs = self.unpaired_jobs(rule, &paired, &mut read.errors).await;
        let unpaired: Vec<RepoRead> = futures_util::stream::iter(jobs)
            .map(|job| {
                let span = tracing::info_span!("repo", repository = %job.location);
                let source_failed = source_failed.clone();
                async move {
                    let reading = match source_failed {
                        Some(why) => Err(why),
                        None => self.list_and_read(&job.location, policy).await,
                    };
                    repo_read(job, reading)
                }
                .instrument(span)
            })
            .buffer_unordered(REPOS_IN_PARALLEL)
            .collect()
            .await;
        read.repos.extend(unpaired);
        read.repos
            .sort_by(|a, b| a.input.repository.cmp(&b.input.repository));
        read
    }

    /// A repository the inventory did not pair: its tag list, then the rest.
    async fn list_and_read(&self, location: &Location, policy: &Retention) -> TargetReading {
        let store = self
            .transports
            .open(location)
            .map_err(|e| Failure::transport(&e, Side::Target))?;
        let tags = store.tag_listing().await.map_err(|e| {
            tracing::warn!(repository = %location, error = %e, "cannot list the repository's tags; deleting nothing in it");
            Failure::transport(&e, Side::Target)
        })?;
        self.read_target(&store, tags, policy).await
    }

    /// The target repositories of a rule the inventory did not pair: every
    /// target of a rule without a source, and what a `/*` target's catalog
    /// lists beyond the pairs (this shard's share; names the grammar
    /// refuses are never read or pruned).
    async fn unpaired_jobs(
        &self,
        rule: &Rule,
        paired: &HashSet<String>,
        errors: &mut Vec<RunError>,
    ) -> Vec<RepoJob> {
        let mut jobs = Vec::new();
        for target in &rule.targets {
            if !target.wildcard {
                if self.shard.owns_rule(&rule.name)
                    && !paired.contains(&target.location.to_string())
                {
                    jobs.push(RepoJob {
                        target: target.to_string(),
                        location: target.location.clone(),
                    });
                }
                continue;
            }
            let rels = match self.transports.list_repositories(&target.location).await {
                Ok(rels) => rels,
                Err(e) => {
                    let f = Failure::transport(&e, Side::Target);
                    errors.push(RunError::new(target, "listing repositories", f));
                    continue;
                }
            };
            for rel in rels {
                if !self.shard.owns_repository(&rule.name, &rel) {
                    continue;
                }
                let location = match target.location.join(&rel) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(target = %target, name = %e.shown(), "retention skips: {e}");
                        continue;
                    }
                };
                if !paired.contains(&location.to_string()) {
                    jobs.push(RepoJob {
                        target: target.to_string(),
                        location,
                    });
                }
            }
        }
        jobs
    }

    /// The run's retention state: the database in a real run; read-only
    /// (writes dropped) in an estimate, or nothing at all.
    pub(super) fn retention_state(&self) -> Arc<dyn RetentionState> {
        use crate::retention::{NoState, ReadOnly};
        match (&self.state, self.mode) {
            (Some(s), super::Mode::Apply) => Arc::new(s.clone()),
            (Some(s), super::Mode::Estimate) => Arc::new(ReadOnly(Arc::new(s.clone()))),
            (None, _) => Arc::new(ReadOnly(Arc::new(NoState))),
        }
    }
}

/// The class of the first of `errors` that `pick` takes (`other` if none).
fn first_class(errors: &[RunError], pick: impl Fn(&RunError) -> bool) -> ErrorClass {
    errors
        .iter()
        .find(|e| pick(e))
        .map_or(ErrorClass::Other, |e| e.class)
}

fn repo_read(job: RepoJob, reading: TargetReading) -> RepoRead {
    let name = job.location.to_string();
    match reading {
        Ok((input, updates)) => RepoRead {
            job,
            input,
            updates,
            unread: None,
        },
        Err(why) => RepoRead {
            job,
            input: RepoInput::incomplete(name, why.message.clone()),
            updates: Vec::new(),
            unread: Some(why),
        },
    }
}

/// Everything the planner needs about one repository. Any read failure
/// is an error: the caller then deletes nothing there.
async fn read_repo(
    store: &Store,
    tags: Option<Vec<String>>,
    policy: &Retention,
    state: &dyn RetentionState,
    now: Unix,
) -> Result<(RepoInput, Vec<StateUpdate>), ReadError> {
    let repo_key = store.location().to_string();
    let facts = FactReader::new(store, state, needs_created(policy));
    let seen = state.seen_tags(&repo_key)?;
    let (tags, mut manifests) = read_tags(&facts, tags.unwrap_or_default(), &seen).await?;
    let (untagged_since, updates) =
        read_untagged(&facts, state, &repo_key, &seen, &tags, &mut manifests, now).await?;
    read_nested(&facts, &mut manifests).await?;
    referrers::read_api_referrers(store, &facts, &mut manifests).await?;
    let created = if needs_created(policy) {
        read_created(&facts, policy, &tags).await?
    } else {
        HashMap::new()
    };
    facts.finish();
    let first_seen = seen.into_iter().map(|(t, s)| (t, s.first_seen)).collect();
    let input = RepoInput {
        repository: repo_key,
        listing: Listing::Complete(tags),
        manifests,
        created,
        first_seen,
        untagged_since,
        source_tags: None,
    };
    Ok((input, updates))
}

/// Manifests known to have no tag (state), plus those whose tag moved away
/// since the last run; and what the state should learn.
async fn read_untagged(
    facts: &FactReader<'_>,
    state: &dyn RetentionState,
    repo_key: &str,
    seen: &BTreeMap<String, SeenTag>,
    tags: &BTreeMap<String, Digest>,
    manifests: &mut HashMap<Digest, ManifestInfo>,
    now: Unix,
) -> Result<(HashMap<Digest, Unix>, Vec<StateUpdate>), ReadError> {
    let mut updates = Vec::new();
    let tagged: HashSet<&Digest> = tags.values().collect();
    let mut untagged = state.untagged(repo_key)?;
    for old in seen.values() {
        if !tagged.contains(&old.digest) && !untagged.contains_key(&old.digest) {
            tracing::debug!(digest = %old.digest, "lost its last tag");
            updates.push(StateUpdate::Untagged {
                digest: old.digest.clone(),
                since: now,
            });
            untagged.insert(old.digest.clone(), now);
        }
    }
    let mut since = HashMap::new();
    for (digest, at) in untagged {
        if tagged.contains(&digest) {
            updates.push(StateUpdate::Forget { digest });
            continue;
        }
        match facts.info_if_present(&digest).await? {
            Some(info) => {
                manifests.insert(digest.clone(), info);
                since.insert(digest, at);
            }
            // Gone (deleted elsewhere, or garbage collected).
            None => updates.push(StateUpdate::Forget { digest }),
        }
    }
    Ok((since, updates))
}

/// Every listed tag, its digest and its manifest's facts: one HEAD when the
/// digest the tag had at the last run (`seen`) is unchanged and its facts
/// are kept, else one GET.
async fn read_tags(
    facts: &FactReader<'_>,
    tag_list: Vec<String>,
    seen: &BTreeMap<String, SeenTag>,
) -> Result<(BTreeMap<String, Digest>, HashMap<Digest, ManifestInfo>), ReadError> {
    let fetched: Vec<(String, Digest, ManifestInfo)> = futures_util::stream::iter(tag_list)
        .map(|tag| async move {
            let vanished = || {
                ReadError::Inconsistent(format!(
                    "tag {tag:?} vanished while the repository was read"
                ))
            };
            let last = seen.get(&tag).map(|s| &s.digest);
            let (digest, info) = facts.info_of_tag(&tag, last).await?.ok_or_else(vanished)?;
            Ok::<_, ReadError>((tag, digest, info))
        })
        .buffer_unordered(READS_IN_PARALLEL)
        .try_collect()
        .await?;
    let mut tags = BTreeMap::new();
    let mut manifests = HashMap::new();
    for (tag, digest, info) in fetched {
        manifests.insert(digest.clone(), info);
        tags.insert(tag, digest);
    }
    Ok((tags, manifests))
}

/// Nested indexes: their children decide what stays.
async fn read_nested(
    facts: &FactReader<'_>,
    manifests: &mut HashMap<Digest, ManifestInfo>,
) -> Result<(), ReadError> {
    loop {
        let missing: BTreeSet<Digest> = manifests
            .values()
            .flat_map(|m| m.children.iter())
            .filter(|c| is_index(&c.media_type) && !manifests.contains_key(&c.digest))
            .map(|c| c.digest.clone())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for d in missing {
            let info = facts.info_if_present(&d).await?.ok_or_else(|| {
                ReadError::Inconsistent(format!("index {d} is referenced but missing"))
            })?;
            manifests.insert(d, info);
        }
    }
}

/// Image creation times of the candidates (matched, not protected).
async fn read_created(
    facts: &FactReader<'_>,
    policy: &Retention,
    tags: &BTreeMap<String, Digest>,
) -> Result<HashMap<String, Unix>, ReadError> {
    let candidates: Vec<(String, Digest)> = tags
        .iter()
        .filter(|(t, _)| {
            referrer_subject(t).is_none()
                && policy.match_tags.iter().any(|r| r.is_match(t))
                && !policy.protect.iter().any(|r| r.is_match(t))
        })
        .map(|(t, d)| (t.clone(), d.clone()))
        .collect();
    let times: Vec<(String, Option<Unix>)> = futures_util::stream::iter(candidates)
        .map(
            |(tag, digest)| async move { Ok::<_, ReadError>((tag, facts.created(&digest).await?)) },
        )
        .buffer_unordered(READS_IN_PARALLEL)
        .try_collect()
        .await?;
    Ok(times
        .into_iter()
        .filter_map(|(t, c)| c.map(|c| (t, c)))
        .collect())
}
