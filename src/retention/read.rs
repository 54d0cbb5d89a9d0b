//! Retention's inventory, read-only: each target repository of a rule read
//! into planner input (tags, manifests, times, the state's first-seen and
//! untagged-since records). What the state should learn from the reading
//! (a manifest that lost its last tag, a record that is stale) is returned
//! as data, for the executor of a real run to write.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures_util::{StreamExt, TryStreamExt};
use tracing::Instrument;

use super::execute::{Pruner, RetentionError};
use super::facts::FactReader;
use super::plan::{Child, Listing, ManifestInfo, RepoInput, Unix};
use super::state::SeenTag;
use crate::config::{OrderBy, Retention, Rule};
use crate::oci::{Digest, Manifest, RawManifest, Verified, is_index};
use crate::plan::referrer_subject;
use crate::reference::{Location, RepoSpec};
use crate::transport::Store;

/// Manifest and config reads in flight per repository.
const READS_IN_PARALLEL: usize = 8;
/// Target repositories read at once.
const REPOS_IN_PARALLEL: usize = 4;
/// Image configs larger than this are not read for their `created` time.
const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// One target repository to prune.
#[derive(Clone, Debug)]
pub struct RepoJob {
    /// The target as configured (e.g. `host/mirror/*`).
    pub target: String,
    pub location: Location,
    /// Its source counterpart (rules with a source).
    pub source: Option<Location>,
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
}

/// Every target repository of a rule as read.
#[derive(Clone, Debug, Default)]
pub struct RuleRead {
    pub repos: Vec<RepoRead>,
    /// Repositories that could not be enumerated (a `/*` target's catalog).
    pub errors: Vec<String>,
}

impl Pruner {
    /// Reads every target repository of `rule`. With `read_sources`, each
    /// repository's source tag list too (for `delete_removed_at_source`); a
    /// source that does not exist makes that repository's input incomplete.
    pub async fn read_rule(&self, rule: &Rule, policy: &Retention, read_sources: bool) -> RuleRead {
        let mut read = RuleRead::default();
        let jobs = self.jobs(rule, &mut read.errors).await;
        let want_source = read_sources && policy.delete_removed_at_source && rule.source.is_some();
        read.repos = futures_util::stream::iter(jobs)
            .map(|job| {
                let span = tracing::info_span!("repo", repository = %job.location);
                async move {
                    let (input, updates) = self
                        .read_repo(&job, policy, want_source)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot read the repository completely; deleting nothing in it");
                            (RepoInput::incomplete(job.location.to_string(), e.to_string()), Vec::new())
                        });
                    RepoRead { job, input, updates }
                }
                .instrument(span)
            })
            .buffer_unordered(REPOS_IN_PARALLEL)
            .collect()
            .await;
        read.repos
            .sort_by(|a, b| a.input.repository.cmp(&b.input.repository));
        read
    }

    /// The target repositories of a rule (a `/*` target: every repository
    /// under it, from the catalog) and their source counterparts.
    async fn jobs(&self, rule: &Rule, errors: &mut Vec<String>) -> Vec<RepoJob> {
        let mut jobs = Vec::new();
        for target in &rule.targets {
            if !target.wildcard {
                if !self.shard.owns_rule(&rule.name) {
                    continue;
                }
                jobs.push(RepoJob {
                    target: target.to_string(),
                    location: target.location.clone(),
                    source: rule.source.as_ref().map(|s| s.location.clone()),
                });
                continue;
            }
            let rels = match self.transports.list_repositories(&target.location).await {
                Ok(rels) => rels,
                Err(e) => {
                    errors.push(format!("listing repositories under {target}: {e}"));
                    continue;
                }
            };
            let sources: Option<HashSet<String>> = match &rule.source {
                Some(RepoSpec {
                    location,
                    wildcard: true,
                }) => self
                    .transports
                    .list_repositories(location)
                    .await
                    .ok()
                    .map(|v| v.into_iter().collect()),
                _ => None,
            };
            for rel in rels {
                if !self.shard.owns_repository(&rule.name, &rel) {
                    continue;
                }
                // A name the grammar refuses is never read or pruned.
                let location = match target.location.join(&rel) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(target = %target, name = %e.shown(), "retention skips: {e}");
                        continue;
                    }
                };
                // A target repository without a source counterpart has no
                // source listing: nothing is deleted as removed.
                let source = match (&rule.source, &sources) {
                    (Some(s), Some(known)) if known.contains(&rel) => s.location.join(&rel).ok(),
                    _ => None,
                };
                jobs.push(RepoJob {
                    target: target.to_string(),
                    location,
                    source,
                });
            }
        }
        jobs
    }

    /// Everything the planner needs about one repository. Any read failure
    /// is an error: the caller then deletes nothing there.
    async fn read_repo(
        &self,
        job: &RepoJob,
        policy: &Retention,
        want_source: bool,
    ) -> Result<(RepoInput, Vec<StateUpdate>), RetentionError> {
        let repo_key = job.location.to_string();
        let store = self.transports.open(&job.location)?;
        let source_tags = match (&job.source, want_source) {
            (Some(loc), true) => Some(self.source_tags(loc).await?),
            _ => None,
        };
        let facts = FactReader::new(&store, self.state.as_ref(), needs_created(policy));
        let seen = self.state.seen_tags(&repo_key)?;
        let (tags, mut manifests) = read_tags(&store, &facts, &seen).await?;
        let (untagged_since, updates) = self
            .read_untagged(&facts, &repo_key, &tags, &mut manifests)
            .await?;
        read_nested(&facts, &mut manifests).await?;
        super::referrers::read_api_referrers(&store, &facts, &mut manifests).await?;
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
            source_tags,
        };
        Ok((input, updates))
    }

    /// The source's tags; a source that does not exist is an error, never
    /// "every tag was removed".
    async fn source_tags(&self, loc: &Location) -> Result<BTreeSet<String>, RetentionError> {
        let src = self.transports.open(loc)?;
        match src.tag_listing().await? {
            Some(tags) => Ok(tags.into_iter().collect()),
            None => Err(RetentionError::Inventory(format!(
                "the source {loc} does not exist; nothing is deleted as removed at the source"
            ))),
        }
    }

    /// Manifests known to have no tag (state), plus those whose tag moved
    /// away since the last run; and what the state should learn.
    async fn read_untagged(
        &self,
        facts: &FactReader<'_>,
        repo_key: &str,
        tags: &BTreeMap<String, Digest>,
        manifests: &mut HashMap<Digest, ManifestInfo>,
    ) -> Result<(HashMap<Digest, Unix>, Vec<StateUpdate>), RetentionError> {
        let mut updates = Vec::new();
        let seen = self.state.seen_tags(repo_key)?;
        let tagged: HashSet<&Digest> = tags.values().collect();
        let mut untagged = self.state.untagged(repo_key)?;
        for old in seen.values() {
            if !tagged.contains(&old.digest) && !untagged.contains_key(&old.digest) {
                tracing::debug!(digest = %old.digest, "lost its last tag");
                updates.push(StateUpdate::Untagged {
                    digest: old.digest.clone(),
                    since: self.now,
                });
                untagged.insert(old.digest.clone(), self.now);
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
}

/// Every tag, its digest and its manifest's facts: one HEAD when the
/// digest the tag had at the last run (`seen`) is unchanged and its facts
/// are kept, else one GET. A repository that does not exist has no tags.
async fn read_tags(
    store: &Store,
    facts: &FactReader<'_>,
    seen: &BTreeMap<String, SeenTag>,
) -> Result<(BTreeMap<String, Digest>, HashMap<Digest, ManifestInfo>), RetentionError> {
    let tag_list = store.list_tags().await?;
    let fetched: Vec<(String, Digest, ManifestInfo)> = futures_util::stream::iter(tag_list)
        .map(|tag| async move {
            let vanished = || {
                RetentionError::Inventory(format!(
                    "tag {tag:?} vanished while the repository was read"
                ))
            };
            let last = seen.get(&tag).map(|s| &s.digest);
            let (digest, info) = facts.info_of_tag(&tag, last).await?.ok_or_else(vanished)?;
            Ok::<_, RetentionError>((tag, digest, info))
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
) -> Result<(), RetentionError> {
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
                RetentionError::Inventory(format!("index {d} is referenced but missing"))
            })?;
            manifests.insert(d, info);
        }
    }
}

/// Whether the policy needs image creation times.
pub(crate) fn needs_created(policy: &Retention) -> bool {
    match policy.order_by {
        OrderBy::Created => policy.keep_last.is_some() || policy.older_than.is_some(),
        OrderBy::Semver => policy.older_than.is_some(),
        OrderBy::FirstSeen => false,
    }
}

/// Image creation times of the candidates (matched, not protected).
async fn read_created(
    facts: &FactReader<'_>,
    policy: &Retention,
    tags: &BTreeMap<String, Digest>,
) -> Result<HashMap<String, Unix>, RetentionError> {
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
        .map(|(tag, digest)| async move {
            Ok::<_, RetentionError>((tag, facts.created(&digest).await?))
        })
        .buffer_unordered(READS_IN_PARALLEL)
        .try_collect()
        .await?;
    Ok(times
        .into_iter()
        .filter_map(|(t, c)| c.map(|c| (t, c)))
        .collect())
}

/// What the planner needs of a manifest: media type, children, subject.
pub(crate) fn manifest_info(raw: &RawManifest) -> Result<ManifestInfo, RetentionError> {
    let (media_type, manifest) = Manifest::parse(&raw.media_type, &raw.bytes)
        .map_err(|e| RetentionError::Inventory(format!("manifest {}: {e}", raw.digest)))?;
    let children = match &manifest {
        Manifest::Index { manifests, .. } => manifests
            .iter()
            .map(|c| Child {
                digest: c.digest.clone(),
                media_type: c.media_type.clone(),
            })
            .collect(),
        Manifest::Image { .. } => Vec::new(),
    };
    Ok(ManifestInfo {
        media_type,
        children,
        subject: manifest.subject().map(|s| s.digest.clone()),
    })
}

/// The `created` time of an image (for an index: its newest child). `None`
/// when the config has no readable time.
async fn created_of(store: &Store, digest: &Digest) -> Result<Option<Unix>, RetentionError> {
    let Some(raw) = store.get_manifest(digest.as_str()).await? else {
        return Err(RetentionError::Inventory(format!(
            "manifest {digest} vanished while the repository was read"
        )));
    };
    created_in(store, &raw).await
}

/// The `created` time of the image `raw` describes, its blobs and children
/// read from `store` (also for a platform-filtered index, which the store
/// does not hold itself).
pub(crate) async fn created_in(
    store: &Store,
    raw: &RawManifest,
) -> Result<Option<Unix>, RetentionError> {
    let (_, manifest) = Manifest::parse(&raw.media_type, &raw.bytes)
        .map_err(|e| RetentionError::Inventory(format!("manifest {}: {e}", raw.digest)))?;
    match manifest {
        Manifest::Image { config, .. } => {
            if config.size as usize > MAX_CONFIG_BYTES {
                return Ok(None);
            }
            let stream = store.get_blob(&config.digest, config.size).await?;
            let mut verified = Verified::new(stream, config.digest.clone(), Some(config.size));
            let mut bytes = Vec::with_capacity(config.size as usize);
            while let Some(chunk) = verified.next().await {
                let chunk = chunk.map_err(|e| {
                    RetentionError::Inventory(format!("config {}: {e}", config.digest))
                })?;
                bytes.extend_from_slice(&chunk);
            }
            #[derive(serde::Deserialize)]
            struct Config {
                created: Option<String>,
            }
            Ok(serde_json::from_slice::<Config>(&bytes)
                .ok()
                .and_then(|c| c.created)
                .and_then(|c| parse_rfc3339(&c)))
        }
        Manifest::Index { manifests, .. } => {
            let mut newest: Option<Unix> = None;
            for child in manifests {
                if is_index(&child.media_type) {
                    continue;
                }
                if let Some(t) = Box::pin(created_of(store, &child.digest)).await? {
                    newest = Some(newest.map_or(t, |n| n.max(t)));
                }
            }
            Ok(newest)
        }
    }
}

/// Parses an RFC 3339 timestamp (`2024-01-31T12:00:00.5Z`, `...+02:00`) to
/// Unix seconds (chrono's parser: offsets, fractions and date validity).
pub fn parse_rfc3339(s: &str) -> Option<Unix> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00Z"), Some(1_704_067_200));
        assert_eq!(
            parse_rfc3339("2024-01-01T02:00:00.123456789+02:00"),
            Some(1_704_067_200)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:30:15-01:00"),
            Some(1_709_213_415)
        );
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), Some(-62_135_596_800));
        assert_eq!(parse_rfc3339("2024-01-01"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00"), None);
    }
}
