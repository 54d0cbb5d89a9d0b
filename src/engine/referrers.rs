//! Stage 1 for referrers (read-only): the referrers of the images a rule
//! selects, found at the source through the OCI referrers API, or where the
//! source has none, its `sha256-<hex>` fallback index; recursively (a
//! signature of an SBOM), each digest once, so a cycle ends. Then what each
//! target lists for those subjects (its API, or its fallback index), so the
//! pure plan can tell what is missing.

use std::collections::{HashMap, HashSet};

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{StreamExt, TryStreamExt};
use serde_json::Value;

use super::Engine;
use super::inventory::RepoInventory;
use super::referrer_plan::{SourceReferrer, TargetReferrers, fallback_tag};
use super::report::{Failure, RunError};
use crate::oci::{Digest, Manifest, RawManifest};
use crate::transport::remote::referrers::MAX_REFERRERS;
use crate::transport::{ErrorClass, Side, Store, TransportError};

/// Referrers of referrers followed this deep at most (a guard besides the
/// visited set: content addressing makes real cycles impossible, a
/// registry's answers need not be honest).
const MAX_DEPTH: u32 = 8;
/// Subjects asked at once.
const SUBJECTS_IN_PARALLEL: usize = 8;
/// Referrer manifests of one subject fetched at once.
const FETCHES_IN_PARALLEL: usize = 4;
/// Most bytes of referrer manifests one repository's discovery holds (they
/// are kept until they are copied): far above real signatures and SBOM
/// manifests (a few KiB each); a source that lists more is refused.
const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

/// One subject's referrers at the source, with their manifests.
type Found = Vec<(Value, RawManifest)>;

impl Engine {
    /// Fills in `repo.referrers` (and their manifests) and each target's
    /// [`TargetReferrers`]. A failure is an error of the repository; a
    /// target that could not be read gets no referrer writes this run.
    /// `types`: the artifact types looked for (empty: all).
    pub(super) async fn inventory_referrers(&self, types: &[String], repo: &mut RepoInventory) {
        let roots = subjects(repo);
        let source_tags: HashSet<&String> =
            repo.source_tags.iter().flatten().collect::<HashSet<_>>();
        let ctx = Discover {
            source: &repo.source,
            by_subject: tokio::sync::OnceCell::new(),
            source_tags: &source_tags,
            types,
            held: AtomicUsize::new(0),
            known_lists: &repo.verified_lists,
            known_manifests: &repo.verified_manifests,
        };
        let (found, manifests, errors) = ctx.walk(roots).await;
        repo.errors.extend(errors);
        if found.is_empty() {
            repo.referrers = found;
            return;
        }
        let wanted: Vec<Digest> = {
            let mut seen = HashSet::new();
            found
                .iter()
                .filter(|r| seen.insert(r.subject.clone()))
                .map(|r| r.subject.clone())
                .collect()
        };
        let reads = futures_util::future::join_all(
            repo.targets
                .iter()
                .map(|t| target_referrers(&t.store, &t.listed, &wanted)),
        )
        .await;
        for (t, read) in repo.targets.iter_mut().zip(reads) {
            t.referrers = read.unwrap_or_else(|e| {
                repo.errors
                    .push(RunError::new(t.store.location(), "reading referrers", e));
                TargetReferrers {
                    unreadable: true,
                    ..Default::default()
                }
            });
        }
        tracing::info!(referrers = found.len(), "referrers found at the source");
        repo.referrers = found;
        repo.referrer_manifests = manifests;
    }
}

/// The subjects whose referrers are looked for, each with the selected
/// image it belongs to: every selected tag's digest and the children of the
/// indexes at hand (those being copied).
fn subjects(repo: &RepoInventory) -> Vec<(Digest, Digest)> {
    // A `[rule.verify]` refused image gets nothing copied, so none of its
    // referrers is read (a hostile list of thousands costs nothing).
    let refused = |tag: &String| repo.refused.contains_key(tag);
    let mut out: Vec<(Digest, Digest)> = (repo.tags.iter())
        .filter(|t| !refused(&t.tag))
        .map(|t| (t.digest.clone(), t.digest.clone()))
        .chain(
            repo.entries
                .iter()
                .filter(|e| e.refused.is_none())
                .map(|e| {
                    let d = &e.manifest.digest;
                    (d.clone(), d.clone())
                }),
        )
        .collect();
    for (_, raw) in repo.manifests.iter().filter(|(tag, _)| !refused(tag)) {
        if let Ok((_, Manifest::Index { manifests, .. })) =
            Manifest::parse(&raw.media_type, &raw.bytes)
        {
            out.extend(
                manifests
                    .into_iter()
                    .map(|d| (d.digest, raw.digest.clone())),
            );
        }
    }
    let mut seen = HashSet::new();
    out.retain(|(d, _)| seen.insert(d.clone()));
    out
}

/// What discovery at the source needs.
struct Discover<'a> {
    source: &'a Store,
    /// An `oci:` source's referrers by subject, read once per walk.
    by_subject: tokio::sync::OnceCell<HashMap<Digest, Vec<Value>>>,
    /// The source's tags: a fallback index is asked only where it is listed.
    source_tags: &'a HashSet<&'a String>,
    /// `referrers_artifact_types` (empty: all).
    types: &'a [String],
    /// Bytes of referrer manifests fetched so far (bounded by
    /// [`MAX_HELD_BYTES`]).
    held: AtomicUsize,
    /// What `[rule.verify]` read already (`verify.rs`): referrers lists from
    /// the API by subject, and manifests by digest; not asked again.
    known_lists: &'a HashMap<Digest, Vec<Value>>,
    known_manifests: &'a HashMap<Digest, RawManifest>,
}

impl Discover<'_> {
    /// Breadth first from `roots`: each level's referrers become the next
    /// level's subjects; a digest seen before is not followed again.
    async fn walk(
        &self,
        roots: Vec<(Digest, Digest)>,
    ) -> (
        Vec<SourceReferrer>,
        HashMap<Digest, RawManifest>,
        Vec<RunError>,
    ) {
        let mut visited: HashSet<Digest> = roots.iter().map(|(d, _)| d.clone()).collect();
        let mut found = Vec::new();
        let mut manifests = HashMap::new();
        let mut errors = Vec::new();
        let mut frontier = roots;
        let mut depth = 1;
        while !frontier.is_empty() && depth <= MAX_DEPTH {
            let results = futures_util::stream::iter(frontier)
                .map(|(s, root)| async move {
                    let r = self.referrers_of(&s).await;
                    (s, root, r)
                })
                .buffer_unordered(SUBJECTS_IN_PARALLEL)
                .collect::<Vec<_>>()
                .await;
            let mut next = Vec::new();
            for (subject, root, result) in results {
                let list = match result {
                    Ok(l) => l,
                    Err(e) => {
                        let what = format!("reading the referrers of {subject}");
                        errors.push(RunError::new(self.source.location(), &what, e));
                        continue;
                    }
                };
                for (entry, raw) in list {
                    if !visited.insert(raw.digest.clone()) {
                        continue; // seen: a cycle or a shared referrer
                    }
                    next.push((raw.digest.clone(), root.clone()));
                    found.push(SourceReferrer {
                        subject: subject.clone(),
                        digest: raw.digest.clone(),
                        root: root.clone(),
                        depth,
                        entry,
                    });
                    manifests.insert(raw.digest.clone(), raw);
                }
            }
            next.sort();
            frontier = next;
            depth += 1;
        }
        // Stable order: by depth, subject, digest.
        found.sort_by(|a, b| {
            (a.depth, &a.subject, &a.digest).cmp(&(b.depth, &b.subject, &b.digest))
        });
        (found, manifests, errors)
    }

    /// `subject`'s referrers of the wanted types, with their manifests.
    async fn referrers_of(&self, subject: &Digest) -> Result<Found, Failure> {
        let known = (self.known_lists.get(subject))
            .map(|l| l.iter().filter(|e| self.wanted(e)).cloned().collect());
        let asked = match known {
            Some(list) => Some(list),
            None => self.ask_api(subject).await?,
        };
        let entries = match asked {
            Some(list) => list,
            None => {
                let mut list = self.read_fallback(subject).await?;
                list.extend(self.listed_by_subject(subject).await?);
                let mut seen = HashSet::new();
                list.retain(|e| seen.insert(e.get("digest").cloned()));
                list
            }
        };
        futures_util::stream::iter(entries)
            .map(|entry| self.fetch(entry))
            .buffered(FETCHES_IN_PARALLEL)
            .try_collect()
            .await
    }

    /// One listed referrer's manifest, counted against [`MAX_HELD_BYTES`].
    async fn fetch(&self, entry: Value) -> Result<(Value, RawManifest), Failure> {
        let d = entry_digest(&entry)?;
        let known = self.known_manifests.get(&d).cloned().map(Some);
        let read = match known {
            Some(raw) => Ok(raw),
            None => self.source.get_manifest(d.as_str()).await,
        };
        let raw = match read {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                let why = format!("referrer {d} is listed but absent");
                return Err(Failure::new(ErrorClass::NotFound, why));
            }
            Err(e) => {
                let class = e.class(Side::Source);
                return Err(Failure::new(class, format!("referrer {d}: {e}")));
            }
        };
        let held = self.held.fetch_add(raw.bytes.len(), Ordering::Relaxed) + raw.bytes.len();
        if held > MAX_HELD_BYTES {
            return Err(invalid(format!(
                "the referrers' manifests add up to more than {} MiB; refused as a hostile \
                 or broken source",
                MAX_HELD_BYTES >> 20
            )));
        }
        Ok((entry, raw))
    }

    /// Through the referrers API, one request (and its pages) per wanted
    /// type; `None` when the source has no API.
    async fn ask_api(&self, subject: &Digest) -> Result<Option<Vec<Value>>, Failure> {
        if self.types.is_empty() {
            return self
                .source
                .referrers(subject, None)
                .await
                .map_err(source_failure);
        }
        let mut all = Vec::new();
        for t in self.types {
            match self.source.referrers(subject, Some(t)).await {
                Ok(Some(list)) => all.extend(list),
                Ok(None) => return Ok(None),
                Err(e) => return Err(source_failure(e)),
            }
        }
        Ok(Some(all))
    }

    /// The referrers an `oci:` source lists in `index.json` by their
    /// `subject` (the way oras, notation and regclient store them), of the
    /// wanted types; none for a registry.
    async fn listed_by_subject(&self, subject: &Digest) -> Result<Vec<Value>, Failure> {
        let by_subject = self
            .by_subject
            .get_or_try_init(|| async {
                self.source
                    .referrers_by_subject()
                    .await
                    .map_err(source_failure)
            })
            .await?;
        let list = by_subject
            .get(subject)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok(list.iter().filter(|e| self.wanted(e)).cloned().collect())
    }

    fn wanted(&self, e: &Value) -> bool {
        self.types.is_empty()
            || e.get("artifactType")
                .and_then(Value::as_str)
                .is_some_and(|t| self.types.iter().any(|w| w == t))
    }

    /// The entries of the source's `sha256-<hex>` index, of the wanted types.
    async fn read_fallback(&self, subject: &Digest) -> Result<Vec<Value>, Failure> {
        let tag = fallback_tag(subject);
        if !self.source_tags.contains(&tag) {
            return Ok(Vec::new());
        }
        let Some(raw) = self
            .source
            .get_manifest(&tag)
            .await
            .map_err(source_failure)?
        else {
            return Ok(Vec::new());
        };
        let entries = index_entries(&raw)?;
        Ok(entries.into_iter().filter(|e| self.wanted(e)).collect())
    }
}

/// What `target` lists for each of `subjects`: through its referrers API
/// when it has one, else its fallback indexes (asked only when its tag
/// list has them).
async fn target_referrers(
    target: &Store,
    tags: &HashSet<String>,
    subjects: &[Digest],
) -> Result<TargetReferrers, Failure> {
    let target_failure = |e: TransportError| Failure::transport(&e, Side::Target);
    let mut out = TargetReferrers::default();
    for subject in subjects {
        if let Some(list) = target
            .referrers(subject, None)
            .await
            .map_err(target_failure)?
        {
            out.api = true;
            let digests = list.iter().filter_map(|e| entry_digest(e).ok()).collect();
            out.listed.insert(subject.clone(), digests);
            continue;
        }
        let tag = fallback_tag(subject);
        if !tags.contains(&tag) {
            continue;
        }
        if let Some(raw) = target.get_manifest(&tag).await.map_err(target_failure)? {
            let digests = index_entries(&raw)?
                .iter()
                .filter_map(|e| entry_digest(e).ok())
                .collect();
            out.listed.insert(subject.clone(), digests);
            out.fallback.insert(subject.clone(), raw);
        }
    }
    Ok(out)
}

fn entry_digest(entry: &Value) -> Result<Digest, Failure> {
    let d = entry.get("digest").and_then(Value::as_str).unwrap_or("");
    Digest::parse(d).map_err(invalid)
}

/// A failure reading the source.
fn source_failure(e: TransportError) -> Failure {
    Failure::transport(&e, Side::Source)
}

/// What a registry sent that cannot be used.
fn invalid(why: impl ToString) -> Failure {
    Failure::new(ErrorClass::InvalidInput, why)
}

/// The `manifests` of a fallback index.
pub(super) fn index_entries(raw: &RawManifest) -> Result<Vec<Value>, Failure> {
    let v: Value = serde_json::from_slice(&raw.bytes)
        .map_err(|e| invalid(format!("fallback index {}: {e}", raw.digest)))?;
    match v.get("manifests") {
        Some(Value::Array(a)) if a.len() > MAX_REFERRERS => Err(invalid(format!(
            "fallback index {} lists more than {MAX_REFERRERS} referrers",
            raw.digest
        ))),
        Some(Value::Array(a)) => Ok(a.clone()),
        // What is left once every referrer was deleted: no referrers.
        None | Some(Value::Null) => Ok(Vec::new()),
        _ => Err(invalid(format!(
            "fallback index {}: `manifests` is not a list",
            raw.digest
        ))),
    }
}
