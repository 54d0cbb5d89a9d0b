//! Which repositories of each target registry hold which blobs, as far as
//! this process has seen, and which blobs are being put into a registry
//! right now (see [`BlobTracker`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use crate::oci::Digest;
use crate::reference::Location;

/// What the copy engine knows about which blobs each target registry holds
/// and which it is receiving right now. One per engine: every rule, prefix
/// and repository that runs in this process shares it, so a blob one rule
/// copied is mounted by the next instead of read from the source again, and
/// two copies that need one blob at once read it once.
///
/// Knowledge is a hint with two strengths (see [`Claim`]):
/// - learned since the asking run started: trusted as it is (no HEAD), as a
///   tracker living for one run would;
/// - learned earlier: only a mount source (the registry's 201 proves it) or,
///   in the asking repository itself, a reason to HEAD first. A mount that
///   fails forgets its source, so a wiped repository is copied again at
///   once and never trusted again on old knowledge.
#[derive(Default)]
pub struct BlobTracker {
    entries: Mutex<HashMap<Key, Entry>>,
}

/// (registry, digest): the scope in which a blob can be mounted.
type Key = (String, Digest);

#[derive(Default)]
struct Entry {
    /// Repositories of the registry known to hold the blob, and when that
    /// was last learned. A list, not a map: most blobs live in one or a few
    /// repositories, and a one-element list costs a quarter of a map's
    /// smallest table (a 10,000-image mirror holds tens of thousands).
    held: Vec<(Location, Instant)>,
    /// Set while one task gets the blob into some repository of the
    /// registry: skip, mount and upload are exclusive per blob and registry.
    busy: Option<watch::Receiver<bool>>,
}

impl Entry {
    fn forget(&mut self, location: &Location) {
        self.held.retain(|(l, _)| l != location);
    }
}

/// Identifies a set of repositories that can share blobs by mounting.
fn registry_key(location: &Location) -> String {
    match location {
        Location::Registry { host, .. } => format!("registry:{host}"),
        Location::Layout { .. } => "layout".to_string(),
    }
}

fn freshest_other(entry: &Entry, target: &Location) -> Option<Location> {
    entry
        .held
        .iter()
        .filter(|(loc, _)| loc != target)
        .max_by_key(|(_, learned)| *learned)
        .map(|(loc, _)| loc.clone())
}

pub(super) enum Claim {
    /// The target is known (since the asking run started) to hold it.
    Present,
    /// Another task is getting it into this registry right now.
    Busy(watch::Receiver<bool>),
    /// Another repository of the target's registry holds it: try a mount.
    /// The guard makes the mount exclusive: distribution rewrites a blob's
    /// link on every mount, and a manifest PUT that reads the link while a
    /// second mount of the same blob rewrites it fails (MANIFEST_BLOB_UNKNOWN).
    Elsewhere(Location, OwnerGuard),
    /// This caller must check and, if needed, upload; it reports the outcome.
    Owner(OwnerGuard),
}

/// Held by the one task responsible for getting a blob into a target; on drop
/// it records the outcome and wakes waiters.
pub struct OwnerGuard {
    tracker: Arc<BlobTracker>,
    key: Key,
    location: Location,
    done: Option<watch::Sender<bool>>,
    present: bool,
    /// The tracker knew the blob in this very repository (from before the
    /// asking run): a HEAD there is not needless, even in a repository
    /// that did not exist at the inventory (a concurrent run may be
    /// putting it there).
    pub(super) known_here: bool,
}

impl OwnerGuard {
    pub(super) fn succeed(mut self) {
        self.present = true;
    }

    /// The freshest other repository of the registry known to hold the
    /// blob: where to mount it from once a HEAD said it is not here.
    pub(super) fn mount_source(&self) -> Option<Location> {
        let map = self.tracker.lock();
        freshest_other(map.get(&self.key)?, &self.location)
    }

    /// A mount from `from` failed: the registry no longer holds the blob
    /// there (or will not share it), so it is no mount source any more.
    pub(super) fn mount_failed(&self, from: &Location) {
        let mut map = self.tracker.lock();
        if let Some(entry) = map.get_mut(&self.key) {
            entry.forget(from);
        }
    }
}

impl Drop for OwnerGuard {
    fn drop(&mut self) {
        let mut map = self.tracker.lock();
        let entry = map.entry(self.key.clone()).or_default();
        if self.present {
            entry.forget(&self.location);
            entry.held.push((self.location.clone(), Instant::now()));
        } else {
            // Not known to be there (an upload failed, a HEAD said no).
            entry.forget(&self.location);
        }
        entry.busy = None;
        if entry.held.is_empty() {
            map.remove(&self.key);
        }
        if let Some(tx) = self.done.take() {
            let _ = tx.send(true);
        }
    }
}

impl BlobTracker {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // A panicked holder leaves plain data behind; the worst it can hold
        // is a hint that a mount or HEAD corrects.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks a blob up without waiting; `since` is when the asking run
    /// started. A caller that gets `Busy` must not hold any [`OwnerGuard`]
    /// while it waits, or two copies sharing two blobs could wait for each
    /// other forever.
    pub(super) fn try_claim(
        self: &Arc<Self>,
        target: &Location,
        digest: &Digest,
        since: Instant,
    ) -> Claim {
        let mut map = self.lock();
        self.claim_locked(&mut map, target, digest, since)
    }

    /// Claims a blob for several targets at once, under one lock, so that a
    /// copy either owns the blob for every target that lacks it (and reads
    /// the source once for all of them) or for none.
    pub(super) fn try_claim_all(
        self: &Arc<Self>,
        targets: &[&Location],
        digest: &Digest,
        since: Instant,
    ) -> Vec<Claim> {
        let mut map = self.lock();
        targets
            .iter()
            .map(|t| self.claim_locked(&mut map, t, digest, since))
            .collect()
    }

    fn claim_locked(
        self: &Arc<Self>,
        map: &mut HashMap<Key, Entry>,
        target: &Location,
        digest: &Digest,
        since: Instant,
    ) -> Claim {
        let key = (registry_key(target), digest.clone());
        let entry = map.entry(key.clone()).or_default();
        let here = entry
            .held
            .iter()
            .find(|(l, _)| l == target)
            .map(|(_, t)| *t);
        if here.is_some_and(|learned| learned >= since) {
            return Claim::Present;
        }
        if let Some(rx) = &entry.busy {
            return Claim::Busy(rx.clone());
        }
        // Known here from before this run: a HEAD is cheaper than a mount
        // (no write, no link rewritten). Otherwise the freshest source.
        let from = match here {
            Some(_) => None,
            None => freshest_other(entry, target),
        };
        let (tx, rx) = watch::channel(false);
        entry.busy = Some(rx);
        let guard = OwnerGuard {
            tracker: self.clone(),
            key,
            location: target.clone(),
            done: Some(tx),
            present: false,
            known_here: here.is_some(),
        };
        match from {
            Some(from) => Claim::Elsewhere(from, guard),
            None => Claim::Owner(guard),
        }
    }

    /// Like [`Self::try_claim`], but waits out other tasks' uploads.
    pub(super) async fn claim(
        self: &Arc<Self>,
        target: &Location,
        digest: &Digest,
        since: Instant,
    ) -> Claim {
        loop {
            match self.try_claim(target, digest, since) {
                Claim::Busy(mut rx) => {
                    let _ = rx.wait_for(|done| *done).await;
                }
                other => return other,
            }
        }
    }

    /// Forgets what was last learned before `cutoff`, so a long-running
    /// daemon holds knowledge of recent copies only (bounded memory).
    pub(super) fn forget_before(&self, cutoff: Instant) {
        let mut map = self.lock();
        map.retain(|_, entry| {
            entry.held.retain(|(_, learned)| *learned >= cutoff);
            entry.busy.is_some() || !entry.held.is_empty()
        });
    }

    /// How many (repository, blob) pairs are known, for tests and logs.
    pub(super) fn known(&self) -> usize {
        self.lock().values().map(|e| e.held.len()).sum()
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
