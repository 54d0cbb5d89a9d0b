//! Which blobs a target registry holds within one run, and which are being
//! uploaded right now (see [`BlobTracker`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::oci::Digest;
use crate::reference::Location;

/// What the copy engine knows, within one run, about which blobs each target
/// registry holds and which are being uploaded right now. It spares a HEAD
/// for blobs already seen in the same repository, turns uploads of a blob
/// that another repository of the same registry received into mounts, and
/// makes concurrent copies of one blob wait for the first instead of
/// uploading it twice. It lives for one run only: nothing stale survives.
#[derive(Default)]
pub struct BlobTracker {
    entries: Mutex<HashMap<(String, Digest), Entry>>,
}

enum Entry {
    Present(Location),
    InFlight(watch::Receiver<bool>),
}

/// Identifies a set of repositories that can share blobs by mounting.
fn registry_key(location: &Location) -> String {
    match location {
        Location::Registry { host, .. } => format!("registry:{host}"),
        Location::Layout { .. } => "layout".to_string(),
    }
}

pub(super) enum Claim {
    /// The target is known to hold it; nothing to do.
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
    key: (String, Digest),
    location: Location,
    done: Option<watch::Sender<bool>>,
    present: bool,
}

impl OwnerGuard {
    pub(super) fn succeed(mut self) {
        self.present = true;
    }
}

impl Drop for OwnerGuard {
    fn drop(&mut self) {
        let mut map = self.tracker.entries.lock().expect("tracker poisoned");
        if self.present {
            map.insert(self.key.clone(), Entry::Present(self.location.clone()));
        } else {
            map.remove(&self.key);
        }
        if let Some(tx) = self.done.take() {
            let _ = tx.send(true);
        }
    }
}

impl BlobTracker {
    /// Looks a blob up without waiting. A caller that gets `Busy` must not
    /// hold any [`OwnerGuard`] while it waits, or two copies sharing two
    /// blobs could wait for each other forever.
    pub(super) fn try_claim(self: &Arc<Self>, target: &Location, digest: &Digest) -> Claim {
        let mut map = self.entries.lock().expect("tracker poisoned");
        self.claim_locked(&mut map, target, digest)
    }

    /// Claims a blob for several targets at once, under one lock, so that a
    /// copy either owns the blob for every target that lacks it (and reads
    /// the source once for all of them) or for none.
    pub(super) fn try_claim_all(
        self: &Arc<Self>,
        targets: &[&Location],
        digest: &Digest,
    ) -> Vec<Claim> {
        let mut map = self.entries.lock().expect("tracker poisoned");
        targets
            .iter()
            .map(|t| self.claim_locked(&mut map, t, digest))
            .collect()
    }

    fn claim_locked(
        self: &Arc<Self>,
        map: &mut HashMap<(String, Digest), Entry>,
        target: &Location,
        digest: &Digest,
    ) -> Claim {
        let key = (registry_key(target), digest.clone());
        match map.get(&key) {
            Some(Entry::Present(loc)) if loc == target => Claim::Present,
            Some(Entry::InFlight(rx)) => Claim::Busy(rx.clone()),
            existing => {
                let from = match existing {
                    Some(Entry::Present(loc)) => Some(loc.clone()),
                    _ => None,
                };
                let (tx, rx) = watch::channel(false);
                map.insert(key.clone(), Entry::InFlight(rx));
                let guard = OwnerGuard {
                    tracker: self.clone(),
                    key,
                    location: target.clone(),
                    done: Some(tx),
                    present: false,
                };
                match from {
                    Some(from) => Claim::Elsewhere(from, guard),
                    None => Claim::Owner(guard),
                }
            }
        }
    }

    /// Like [`Self::try_claim`], but waits out other tasks' uploads.
    pub(super) async fn claim(self: &Arc<Self>, target: &Location, digest: &Digest) -> Claim {
        loop {
            match self.try_claim(target, digest) {
                Claim::Busy(mut rx) => {
                    let _ = rx.wait_for(|done| *done).await;
                }
                other => return other,
            }
        }
    }
}
