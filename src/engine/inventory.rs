//! Stage 1, read-only: what the source and each target hold for a rule
//! (tag lists, digests, the root manifests a copy needs) and what the state
//! knows (target digests confirmed recently, what this rule's retention
//! deleted), read in as data. Nothing here writes anywhere, so `plan` and
//! `sync` run the same inventory.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use tracing::Instrument;

use super::budget::{ManifestBudget, RULE_MANIFEST_BUDGET};
use super::referrer_plan::{SourceReferrer, TargetReferrers};
use super::report::{Failure, RunError};
use super::resolve::{ResolveCtx, Resolved, resolve_source};
use super::targets::TargetReading;
use super::{Engine, Pass};
use crate::config::Rule;
use crate::filter::select_tags;
use crate::oci::{Digest, Platform, RawManifest};
use crate::plan::SourceTag;
use crate::reference::{InvalidName, Location, NameKind, RepoSpec, check_tag};
use crate::state::TagState;
use crate::transport::{ErrorClass, Side, Store};

/// Repositories of a `/*` rule inventoried at once.
const REPOS_IN_PARALLEL: usize = 16;
/// Tags of one repository resolved at once.
const TAGS_IN_PARALLEL: usize = 8;

/// What one rule's source and targets hold.
pub(crate) struct RuleInventory {
    pub repos: Vec<RepoInventory>,
    /// Failures that concern the whole rule (listing the repositories under a
    /// `/*` source): nothing of the rule may be deleted then.
    pub errors: Vec<RunError>,
    /// Names the source sent that the distribution grammar does not allow
    /// (repositories here, tags in each repository's own list): skipped.
    pub skipped: Vec<SkippedName>,
}

/// A name from the source that was skipped, never used in a URL or a path.
#[derive(Debug, Clone)]
pub(crate) struct SkippedName {
    /// Where it came from (the `/*` source, or the repository it was listed in).
    pub at: String,
    pub name: InvalidName,
}

impl std::fmt::Display for SkippedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.name)
    }
}

/// One source repository and its targets.
pub(crate) struct RepoInventory {
    pub source: Store,
    /// Every tag of the source; `None` when it could not be listed (it does
    /// not exist, or the request failed; `errors` says why).
    pub source_tags: Option<Vec<String>>,
    /// How many tags the filters selected.
    pub selected: usize,
    /// Targets whose tag list could not be read (their tags are pending).
    pub unreadable_targets: usize,
    /// The selected tags and their referrers, resolved (newest first, then
    /// referrers).
    pub tags: Vec<SourceTag>,
    /// Root manifests (after platform filtering) of tags that some target
    /// lacks or holds at another digest: what a copy starts from.
    pub manifests: HashMap<String, RawManifest>,
    /// Referrers found by subject (API or fallback index), and their
    /// manifests: what a referrer copy starts from.
    pub referrers: Vec<SourceReferrer>,
    pub referrer_manifests: HashMap<Digest, RawManifest>,
    /// With `[rule.verify]`: tags refused, with why (`engine/verify.rs`).
    pub refused: HashMap<String, (crate::verify::Refusal, String)>,
    /// With `[rule.verify]`: the `.sig` manifests read and verified, by
    /// tag; resolving those tags takes them instead of asking the source
    /// again (so the signature copied is the one verified).
    pub verified_sigs: HashMap<String, RawManifest>,
    /// With `[rule.verify]`: the referrers lists (API) and bundle referrer
    /// manifests verification read; discovery takes them (`referrers.rs`).
    pub verified_lists: HashMap<Digest, Vec<serde_json::Value>>,
    pub verified_manifests: HashMap<Digest, RawManifest>,
    /// With `[rule.verify]`: the signature payloads and bundle layers it
    /// read and checked (bounded, `copy/held.rs`); their copies send these
    /// bytes instead of reading the source again.
    pub verified_blobs: super::copy::HeldBlobs,
    /// An `oci:` source's untagged entry points (`entries.rs`).
    pub entries: Vec<super::entries::SourceEntry>,
    /// The rule's `foreign_layers`: copy non-distributable layers the source holds.
    pub foreign_layers: bool,
    /// Tags skipped for a reason that is no failure (another platform).
    pub warnings: Vec<String>,
    pub targets: Vec<TargetInventory>,
    /// Targets whose tag list could not be read: (as configured, where).
    pub failed_targets: Vec<(String, Location)>,
    /// Every tag this run considered (selected and referrers).
    pub considered: Vec<String>,
    pub errors: Vec<RunError>,
    /// Tags the source listed that are not valid tags (skipped).
    pub skipped: Vec<SkippedName>,
}

pub(crate) struct TargetInventory {
    /// The target as configured (e.g. `host/mirror/*`).
    pub target: String,
    pub store: Store,
    /// Every tag the target lists (none: empty or absent).
    pub listed: HashSet<String>,
    /// Digest per tag of interest; a tag missing here is absent.
    pub digests: HashMap<String, Digest>,
    /// Tags whose digest came from the state, not from a request.
    pub hinted: HashSet<String>,
    /// (tag, digest) pairs this rule's retention deleted here (journal).
    pub retained_away: HashSet<(String, Digest)>,
    /// The tag list answered 404 and no interrupted run touched the
    /// repository (state): it holds no blobs, so no blob HEADs there.
    pub absent: bool,
    /// What the target lists of the source's referrers' subjects.
    pub referrers: TargetReferrers,
    /// Retention's reading of the whole repository (rules with a
    /// retention): every tag's digest, so the copies need no HEAD of their own.
    pub reading: Option<TargetReading>,
}

impl TargetInventory {
    /// The digest of `tag` by a complete reading of this run, if there is one
    /// (`Some(None)`: read, and the tag is absent).
    pub(super) fn read_digest(&self, tag: &str) -> Option<Option<Digest>> {
        match &self.reading {
            Some(Ok((input, _))) => match &input.listing {
                crate::retention::Listing::Complete(tags) => Some(tags.get(tag).cloned()),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Engine {
    /// The repository pairs of a rule (one, or every repository under a `/*`
    /// source) and what each holds.
    pub(crate) async fn inventory(&self, rule: &Rule, pass: Pass) -> RuleInventory {
        let mut inv = RuleInventory {
            repos: Vec::new(),
            errors: Vec::new(),
            skipped: Vec::new(),
        };
        let Some(source) = &rule.source else {
            return inv; // cleanup-only rule
        };
        let pairs: Vec<(Location, Vec<Location>)> = if source.wildcard {
            match self.transports.list_repositories(&source.location).await {
                Ok(repos) => repos
                    .into_iter()
                    .filter(|rel| self.shard.owns_repository(&rule.name, rel))
                    .filter_map(|rel| match self.pair_under(rule, source, &rel) {
                        Ok(pair) => Some(pair),
                        Err(name) => {
                            skip(&mut inv.skipped, source.to_string(), name);
                            None
                        }
                    })
                    .collect(),
                Err(e) => {
                    let f = Failure::transport(&e, Side::Source);
                    inv.errors
                        .push(RunError::new(source, "listing repositories", f));
                    Vec::new()
                }
            }
        } else {
            let targets = rule.targets.iter().map(|t| t.location.clone()).collect();
            vec![(source.location.clone(), targets)]
        };
        tracing::info!(repositories = pairs.len(), "inventory");
        let budget = ManifestBudget::new(RULE_MANIFEST_BUDGET);
        let budget = &budget;
        let repos = futures_util::stream::iter(pairs)
            .map(|(src, targets)| {
                let span = tracing::info_span!("repo", source = %src);
                self.inventory_repo(rule, pass, src, targets, budget)
                    .instrument(span)
            })
            .buffer_unordered(REPOS_IN_PARALLEL)
            .collect::<Vec<_>>()
            .await;
        for repo in repos {
            match repo {
                Ok(r) => inv.repos.push(r),
                Err(e) => inv.errors.push(e),
            }
        }
        inv.repos.sort_by_key(|r| r.source.location().to_string());
        inv
    }

    /// One repository pair; an error only when the source cannot be opened.
    async fn inventory_repo(
        &self,
        rule: &Rule,
        pass: Pass,
        src: Location,
        target_locs: Vec<Location>,
        budget: &ManifestBudget,
    ) -> Result<RepoInventory, RunError> {
        let source = self.transports.open(&src).map_err(|e| {
            RunError::new(
                &src,
                "opening the source",
                Failure::transport(&e, Side::Source),
            )
        })?;
        let mut repo = RepoInventory {
            source,
            source_tags: None,
            selected: 0,
            unreadable_targets: 0,
            tags: Vec::new(),
            manifests: HashMap::new(),
            referrers: Vec::new(),
            referrer_manifests: HashMap::new(),
            refused: HashMap::new(),
            verified_sigs: HashMap::new(),
            verified_lists: HashMap::new(),
            verified_manifests: HashMap::new(),
            verified_blobs: Default::default(),
            entries: Vec::new(),
            foreign_layers: rule.foreign_layers,
            warnings: Vec::new(),
            targets: Vec::new(),
            failed_targets: Vec::new(),
            considered: Vec::new(),
            errors: Vec::new(),
            skipped: Vec::new(),
        };
        let (listing, targets) = tokio::join!(
            repo.source.tag_listing(),
            self.list_targets(rule, &target_locs)
        );
        let all_tags = match listing {
            Ok(Some(tags)) => valid_tags(&src, tags, &mut repo.skipped),
            Ok(None) => {
                let f = Failure::new(
                    ErrorClass::NotFound,
                    "the source repository does not exist (404 / NAME_UNKNOWN, or no oci: layout there); nothing is copied or deleted for it",
                );
                repo.errors.push(RunError::new(&src, "listing tags", f));
                return Ok(repo);
            }
            Err(e) => {
                let f = Failure::transport(&e, Side::Source);
                repo.errors.push(RunError::new(&src, "listing tags", f));
                return Ok(repo);
            }
        };
        let (targets, failed) = targets;
        repo.unreadable_targets = failed.len();
        for (target, loc, e) in failed {
            repo.errors.push(e);
            repo.failed_targets.push((target, loc));
        }
        repo.targets = targets;
        let selected = select_tags(&rule.tags, &all_tags);
        repo.selected = selected.len();
        repo.source_tags = Some(all_tags.clone());
        if repo.targets.is_empty() || !pass.copies() {
            return Ok(repo);
        }
        self.resolve_tags(rule, &mut repo, &selected, false, budget)
            .await;
        repo.considered = selected.clone();
        self.inventory_companions(rule, &mut repo, &all_tags, &selected, budget)
            .await;
        Ok(repo)
    }

    /// The source and target locations of `rel`, a repository the catalog of a
    /// `/*` source listed: a valid repository path whose every location stays
    /// under its prefix (an `oci:` target's resolved path inside its directory).
    fn pair_under(
        &self,
        rule: &Rule,
        source: &RepoSpec,
        rel: &str,
    ) -> Result<(Location, Vec<Location>), InvalidName> {
        let src = source.location.join(rel)?;
        let targets = rule
            .targets
            .iter()
            .map(|t| {
                let loc = t.location.join(rel)?;
                if let Err(why) = crate::transport::confined(&t.location, &loc) {
                    tracing::warn!(repository = rel, target = %t, why, "outside the target");
                    return Err(InvalidName::new(NameKind::Escapes, rel));
                }
                Ok(loc)
            })
            .collect::<Result<_, InvalidName>>()?;
        Ok((src, targets))
    }

    /// Tag lists of every target at once, with the state's beliefs about
    /// each, and (rules with a retention) each target repository read
    /// whole, once. A target that does not exist lists no tags. `locs` are
    /// in the order of `rule.targets`.
    async fn list_targets(
        &self,
        rule: &Rule,
        locs: &[Location],
    ) -> (Vec<TargetInventory>, Vec<(String, Location, RunError)>) {
        let listings = futures_util::future::join_all(locs.iter().map(|loc| async move {
            let store = self.transports.open(loc)?;
            let tags = store.tag_listing().await?;
            let reading = match &rule.retention {
                Some(policy) => Some(self.read_target(&store, tags.clone(), policy).await),
                None => None,
            };
            Ok::<_, crate::transport::TransportError>((store, tags, reading))
        }))
        .await;
        let mut targets = Vec::new();
        let mut failed = Vec::new();
        for (k, (loc, listing)) in locs.iter().zip(listings).enumerate() {
            let target = rule
                .targets
                .get(k)
                .map_or(loc.to_string(), |t| t.to_string());
            match listing {
                Ok((store, tags, reading)) => targets.push(TargetInventory {
                    target,
                    retained_away: self.retained_away(rule, loc),
                    absent: tags.is_none() && !self.touched(loc),
                    listed: tags.into_iter().flatten().collect(),
                    digests: HashMap::new(),
                    hinted: HashSet::new(),
                    referrers: TargetReferrers::default(),
                    reading,
                    store,
                }),
                Err(e) => {
                    let f = Failure::transport(&e, Side::Target);
                    failed.push((target, loc.clone(), RunError::new(loc, "listing tags", f)));
                }
            }
        }
        (targets, failed)
    }

    /// Resolves `tags` at the source and at each target. A tag a target lacks
    /// (by its tag list) is certainly copied, so its source manifest is
    /// fetched right away (one GET instead of HEAD then GET); a tag a target
    /// holds at another digest gets its manifest fetched afterwards.
    pub(super) async fn resolve_tags(
        &self,
        rule: &Rule,
        repo: &mut RepoInventory,
        tags: &[String],
        referrer: bool,
        budget: &ManifestBudget,
    ) {
        let platforms: &[Platform] = if referrer { &[] } else { &rule.platforms };
        let hints: Vec<HashMap<String, TagState>> = repo
            .targets
            .iter()
            .map(|t| self.load_hints(rule, t.store.location()))
            .collect();
        let ctx = ResolveCtx {
            source: &repo.source,
            targets: &repo.targets,
            hints: &hints,
            platforms,
            now: self.now(),
            budget,
            known: &repo.verified_sigs,
        };
        let results = futures_util::stream::iter(tags.iter().cloned())
            .map(|tag| ctx.resolve(tag))
            .buffer_unordered(TAGS_IN_PARALLEL)
            .collect::<Vec<_>>()
            .await;
        let mut resolved = Vec::new();
        for r in results {
            match r {
                Ok(Some(r)) => resolved.push(r),
                Ok(None) => {}
                Err((tag, e)) if super::platforms::is_skip(&e) => {
                    super::platforms::skip(repo, &tag, &e)
                }
                Err((tag, e)) => repo.errors.push(RunError::new(
                    repo.source.location(),
                    &format!("resolving tag {tag}"),
                    e,
                )),
            }
        }
        // Keep the selection order (newest first).
        let order: HashMap<&String, usize> = tags.iter().enumerate().map(|(i, t)| (t, i)).collect();
        resolved.sort_by_key(|r| order.get(&r.tag).copied().unwrap_or(usize::MAX));
        for r in resolved {
            self.fold_resolved(repo, r, referrer, platforms, budget)
                .await;
        }
    }

    async fn fold_resolved(
        &self,
        repo: &mut RepoInventory,
        r: Resolved,
        referrer: bool,
        platforms: &[Platform],
        budget: &ManifestBudget,
    ) {
        let differs = r.at_targets.iter().any(|d| d.as_ref() != Some(&r.digest));
        let mut manifest = r.manifest;
        if differs && manifest.is_none() {
            match resolve_source(&repo.source, &r.tag, true, platforms).await {
                Ok(Some((d, Some(m)))) if d == r.digest => match budget.take(m.bytes.len()) {
                    Ok(()) => manifest = Some(m),
                    Err(e) => repo.errors.push(RunError::new(
                        repo.source.location(),
                        &format!("reading tag {}", r.tag),
                        Failure::new(ErrorClass::InvalidInput, e),
                    )),
                },
                Ok(_) => repo.errors.push(RunError::new(
                    repo.source.location(),
                    &format!("reading tag {}", r.tag),
                    Failure::new(
                        ErrorClass::Other,
                        "the source tag moved or vanished during the inventory; the next run copies it",
                    ),
                )),
                Err((_, e)) if super::platforms::is_skip(&e) => {
                    super::platforms::skip(repo, &r.tag, &e)
                },
                Err((_, e)) => repo.errors.push(RunError::new(
                    repo.source.location(),
                    &format!("reading tag {}", r.tag),
                    e,
                )),
            }
            if manifest.is_none() {
                return;
            }
        }
        for (i, (t, d)) in repo.targets.iter_mut().zip(r.at_targets).enumerate() {
            if let Some(d) = d {
                t.digests.insert(r.tag.clone(), d);
            }
            if r.hinted.contains(&i) {
                t.hinted.insert(r.tag.clone());
            }
        }
        if let Some(m) = manifest {
            repo.manifests.insert(r.tag.clone(), m);
        }
        repo.tags.push(SourceTag {
            tag: r.tag,
            digest: r.digest,
            referrer,
        });
    }

    /// What the state believes about one target repository (empty without
    /// a state, or when it cannot be read: then every tag is asked).
    fn load_hints(&self, rule: &Rule, target: &Location) -> HashMap<String, TagState> {
        let Some(state) = &self.state else {
            return HashMap::new();
        };
        let (t, repo) = super::copy::state_key(target);
        state.tag_states(&rule.name, &t, &repo).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read tag hints; asking the target");
            HashMap::new()
        })
    }

    /// What this rule's retention deleted at `target` (journal, DELETE done).
    fn retained_away(&self, rule: &Rule, target: &Location) -> HashSet<(String, Digest)> {
        let (Some(state), Some(_)) = (&self.state, &rule.retention) else {
            return HashSet::new();
        };
        match state.retained_away(&rule.name, &target.to_string()) {
            Ok(pairs) => pairs
                .into_iter()
                .filter_map(|(t, d)| Some((t, Digest::parse(&d).ok()?)))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the retention journal");
                HashSet::new()
            }
        }
    }
}

/// Records a skipped name and says so in the log.
fn skip(skipped: &mut Vec<SkippedName>, at: String, name: InvalidName) {
    let s = SkippedName { at, name };
    tracing::warn!(at = %s.at, kind = s.name.kind_word(), name = %s.name.shown(), "skipping an invalid name the source sent");
    skipped.push(s);
}

/// The tags of a source listing that are valid tags; the others are skipped
/// (with a warning each), so they never reach a URL, a file or a target.
pub(crate) fn valid_tags(
    src: &Location,
    tags: Vec<String>,
    skipped: &mut Vec<SkippedName>,
) -> Vec<String> {
    tags.into_iter()
        .filter(|t| match check_tag(t) {
            Ok(()) => true,
            Err(name) => {
                skip(skipped, src.to_string(), name);
                false
            }
        })
        .collect()
}

/// The referrer artifact types a rule copies (empty: all), `None` for
/// none: with `referrers`, its `referrers_artifact_types`; with
/// `[rule.verify]`, also the sigstore bundles (signatures go with what
/// verified; the plan sends a referrer only where its image arrives).
pub(super) fn referrer_types(rule: &Rule) -> Option<Vec<String>> {
    let bundles = crate::verify::BUNDLE_TYPES.map(str::to_string);
    match (rule.referrers, rule.verify.is_some()) {
        (true, _) if rule.referrers_artifact_types.is_empty() => Some(Vec::new()),
        (true, false) => Some(rule.referrers_artifact_types.clone()),
        (true, true) => {
            let mut t = rule.referrers_artifact_types.clone();
            t.extend(
                bundles
                    .into_iter()
                    .filter(|b| !t.contains(b))
                    .collect::<Vec<_>>(),
            );
            Some(t)
        }
        (false, true) => Some(bundles.to_vec()),
        (false, false) => None,
    }
}
