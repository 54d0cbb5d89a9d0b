//! What `sync`, `plan` and `prune` print: one JSON document (`--json`), the
//! same shape for all three (deletions laid out one way), in a stable order
//! (rules, then targets, then tags, sorted), with totals for `sync`; and
//! its text form with sizes, ages and counts in words.

use serde::Serialize;

use regkeeper::engine::{ImageReport, RuleReport};
use regkeeper::retention::{DeletionStatus, KeepReason, RetentionReport};

use regkeeper::human::count;

/// Bytes in human units (`12.1 MiB`).
pub(crate) fn human(bytes: u64) -> String {
    regkeeper::human::size(bytes)
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Copy {
    target: String,
    tag: String,
    digest: String,
    /// `create` or `update`.
    action: &'static str,
    /// What would be (plan) or was (sync) transferred; a sync that streamed
    /// the image to several targets at once does not split it per target.
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blobs: Option<u64>,
    source: String,
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Deletion {
    target: String,
    digest: String,
    tags: Vec<String>,
    reason: String,
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Kept {
    target: String,
    tag: String,
    reason: String,
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Error {
    target: String,
    what: String,
    /// What kind of failure (`authentication`, `not_found`...).
    class: &'static str,
    error: String,
}

/// An image `[rule.verify]` refused: not copied, and why.
#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Refused {
    target: String,
    tag: String,
    digest: String,
    /// unsigned, bad_signature, wrong_key, digest_mismatch, identity_mismatch
    reason: &'static str,
    detail: String,
    source: String,
}

#[derive(Serialize)]
struct Rule {
    rule: String,
    result: &'static str,
    copies: Vec<Copy>,
    deletions: Vec<Deletion>,
    kept: Vec<Kept>,
    errors: Vec<Error>,
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    refused: Vec<Refused>,
    /// Names from the source that were skipped as invalid (each also a warning).
    #[serde(skip_serializing_if = "is_zero")]
    names_skipped: usize,
    /// With `--shard`, for a `/*` rule: the source repositories this shard owns.
    #[serde(skip_serializing_if = "Option::is_none")]
    shard_repositories: Option<Vec<String>>,
}

#[derive(Serialize)]
pub(crate) struct Document {
    dry_run: bool,
    /// With `--shard`: which shard this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) shard: Option<regkeeper::shard::Shard>,
    rules: Vec<Rule>,
    /// `sync`: what the whole command did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) totals: Option<Totals>,
}

/// A `sync`'s totals over every rule.
#[derive(Serialize, Default, Debug, PartialEq)]
pub(crate) struct Totals {
    /// Wall-clock seconds of the whole command (rules run at once).
    seconds: f64,
    /// Bytes written to targets.
    bytes: u64,
    blobs_copied: u64,
    blobs_mounted: u64,
    /// Blobs a target already held.
    blobs_present: u64,
    tags_copied: usize,
    tags_in_sync: usize,
    /// Tag copies that failed.
    failed: usize,
    /// Every failure, once each (what the rules' `errors` list).
    errors: usize,
    /// Rules whose result is not `success`.
    rules_not_successful: usize,
}

/// The totals of a `sync` that took `wall`.
pub(crate) fn totals(reports: &[RuleReport], wall: std::time::Duration) -> Totals {
    let mut t = Totals {
        seconds: (wall.as_secs_f64() * 1000.0).round() / 1000.0,
        ..Totals::default()
    };
    for r in reports {
        t.bytes += r.totals.bytes_written;
        t.blobs_copied += r.totals.blobs_copied;
        t.blobs_mounted += r.totals.blobs_mounted;
        t.blobs_present += r.totals.blobs_skipped;
        t.tags_copied += r.tags_copied;
        t.tags_in_sync += r.tags_in_sync;
        t.failed += r.tags_failed;
        t.errors += r.failures().len();
        t.rules_not_successful += usize::from(r.result != regkeeper::engine::RunResult::Success);
    }
    t
}

pub(crate) fn document(dry_run: bool, reports: &[RuleReport]) -> Document {
    let mut rules: Vec<Rule> = reports.iter().map(rule).collect();
    rules.sort_by(|a, b| a.rule.cmp(&b.rule));
    Document {
        dry_run,
        shard: None,
        rules,
        totals: None,
    }
}

fn rule(r: &RuleReport) -> Rule {
    let mut copies: Vec<Copy> = r.images.iter().filter_map(|i| copy(r.dry_run, i)).collect();
    let mut errors: Vec<Error> = r
        .failures()
        .into_iter()
        .map(|e| Error {
            target: e.target,
            what: e.what,
            class: e.class.as_str(),
            error: e.error,
        })
        .collect();
    let (mut deletions, mut kept) = (Vec::new(), Vec::new());
    if let Some(ret) = &r.retention {
        retention(ret, &mut deletions, &mut kept);
    }
    let mut refused: Vec<Refused> = r
        .refusals()
        .map(|(i, reason, detail)| Refused {
            target: i.target.clone(),
            tag: i.tag.clone(),
            digest: i.digest.to_string(),
            reason: reason.as_str(),
            detail: detail.to_string(),
            source: i.source.clone(),
        })
        .collect();
    refused.sort();
    copies.sort();
    deletions.sort();
    kept.sort();
    errors.sort();
    Rule {
        rule: r.rule.clone(),
        result: r.result.as_str(),
        copies,
        deletions,
        kept,
        errors,
        warnings: r.warnings.clone(),
        refused,
        names_skipped: r.names_skipped,
        shard_repositories: r.shard_repositories.clone(),
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A copy that was made (sync) or would be (plan).
fn copy(dry_run: bool, i: &ImageReport) -> Option<Copy> {
    let action = match &i.action {
        regkeeper::plan::TargetAction::Create => "create",
        regkeeper::plan::TargetAction::Update { .. } => "update",
        _ => return None,
    };
    if !dry_run && i.error.is_some() {
        return None;
    }
    Some(Copy {
        target: i.target.clone(),
        tag: i.tag.clone(),
        digest: i.digest.to_string(),
        action,
        bytes: i.cost.map(|c| c.bytes_to_copy),
        blobs: i.cost.map(|c| c.blobs_to_copy),
        source: i.source.clone(),
    })
}

/// Deletions done (sync) or that will be sent (plan: not refused), and
/// kept tags with why (failures and refusals are in `RuleReport::failures`).
fn retention(ret: &RetentionReport, deletions: &mut Vec<Deletion>, kept: &mut Vec<Kept>) {
    for repo in &ret.repositories {
        for d in &repo.deletions {
            let counts = match d.status {
                DeletionStatus::Deleted => true,
                DeletionStatus::Planned => ret.dry_run && repo.refused.is_none(),
                _ => false,
            };
            if counts {
                deletions.push(Deletion {
                    target: repo.repository.clone(),
                    digest: d.deletion.digest.to_string(),
                    tags: d.deletion.tags.clone(),
                    reason: d.reason_text.clone(),
                });
            }
        }
        for k in &repo.kept {
            if let Some(tag) = &k.tag {
                kept.push(Kept {
                    target: repo.repository.clone(),
                    tag: tag.clone(),
                    reason: k.reason.to_string(),
                });
            }
        }
    }
}

/// The text form of a plan, in the document's order.
pub(crate) fn print_plan(doc: &Document) {
    for r in &doc.rules {
        println!("rule {}: {}", r.rule, r.result);
        if let Some(repos) = &r.shard_repositories {
            println!(
                "  this shard's repositories ({}): {}",
                repos.len(),
                repos.join(", ")
            );
        }
        for w in &r.warnings {
            println!("  WARNING {w}");
        }
        let mut bytes = 0;
        for c in &r.copies {
            let cost = match (c.bytes, c.blobs) {
                (Some(b), Some(n)) => {
                    bytes = b.saturating_add(bytes);
                    format!(" ({}, {} to copy)", count(n, "blob", "blobs"), human(b))
                }
                _ => String::new(),
            };
            println!(
                "  {} {}:{} -> {} {}{cost}",
                c.action,
                c.source,
                c.tag,
                c.target,
                short(&c.digest)
            );
        }
        for x in &r.refused {
            println!(
                "  refuse {}:{} -> {} {}: {}: {}",
                x.source,
                x.tag,
                x.target,
                short(&x.digest),
                x.reason,
                x.detail
            );
        }
        for d in &r.deletions {
            println!(
                "  delete {} {} [{}]: {}",
                d.target,
                short(&d.digest),
                d.tags.join(", "),
                d.reason
            );
        }
        for e in &r.errors {
            println!(
                "  ERROR [{}] {}: {}: {}",
                e.class, e.target, e.what, e.error
            );
        }
        println!(
            "  {} to copy ({}), {} to delete",
            r.copies.len(),
            human(bytes),
            r.deletions.len()
        );
    }
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// Retention in text: each deletion with its reason, each kept tag with why.
pub(crate) fn print_retention(rule: &str, r: &RetentionReport) {
    println!(
        "rule {rule}: retention{}",
        if r.dry_run { " (dry run)" } else { "" }
    );
    for repo in &r.repositories {
        println!("  {}:", repo.repository);
        for d in &repo.deletions {
            let tags = if d.deletion.tags.is_empty() {
                "untagged".to_string()
            } else {
                d.deletion.tags.join(", ")
            };
            let status = match &d.status {
                DeletionStatus::Planned => "would delete".to_string(),
                DeletionStatus::Deleted => "deleted".to_string(),
                DeletionStatus::Failed { error, class } => {
                    format!("FAILED to delete [{}] ({error})", class.as_str())
                }
                DeletionStatus::Skipped => "not deleted (an earlier deletion failed)".to_string(),
            };
            println!(
                "    {status} {} [{tags}]: {}",
                d.deletion.digest, d.reason_text
            );
        }
        let mut unmatched = 0;
        for k in &repo.kept {
            if k.reason == KeepReason::NotMatched {
                unmatched += 1;
                continue;
            }
            match &k.tag {
                Some(t) => println!("    keep {t} ({}): {}", k.digest.short(), k.reason),
                None => println!("    keep untagged {}: {}", k.digest, k.reason),
            }
        }
        if unmatched > 0 {
            println!(
                "    keep {} not matched by retention.match",
                count(unmatched as u64, "tag", "tags")
            );
        }
        if let Some(why) = &repo.refused {
            println!("    REFUSED: {why}");
        }
    }
    for e in &r.errors {
        println!("  ERROR [{}] {e}", e.class);
    }
    println!(
        "  {} deleted, {} planned, {} failed{}",
        r.deleted,
        r.planned,
        r.failed,
        if r.refused {
            ", refused (see above)"
        } else {
            ""
        }
    );
}

/// One line per rule after a sync, then its failures.
pub(crate) fn print_sync_summary(r: &RuleReport) {
    println!(
        "rule {}: {} in {:.1}s: {}, {} copied, {} in sync, {} failed{}; {} copied, {} mounted, {} present, {} pushed, {}",
        r.rule,
        r.result.as_str(),
        r.duration_seconds,
        count(r.repositories as u64, "repository", "repositories"),
        count(r.tags_copied as u64, "tag", "tags"),
        r.tags_in_sync,
        r.tags_failed,
        if r.tags_kept_immutable > 0 {
            format!(", {} kept (immutable)", r.tags_kept_immutable)
        } else {
            String::new()
        },
        count(r.totals.blobs_copied, "blob", "blobs"),
        r.totals.blobs_mounted,
        r.totals.blobs_skipped,
        count(r.totals.manifests_pushed, "manifest", "manifests"),
        human(r.totals.bytes_written),
    );
    for w in &r.warnings {
        println!("  WARNING {w}");
    }
    for (image, reason, detail) in r.refusals() {
        println!(
            "  REFUSED [{reason}] {}:{} -> {}: {detail}",
            image.source, image.tag, image.target
        );
    }
    for image in r.images.iter() {
        if let Some(e) = &image.error {
            println!(
                "  FAILED [{}] {}:{} -> {}: {e}",
                e.class, image.source, image.tag, image.target
            );
        }
    }
    for e in &r.errors {
        println!("  FAILED [{}] {e}", e.class);
    }
}
