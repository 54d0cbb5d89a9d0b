use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BlobTracker, Claim};
use crate::oci::Digest;
use crate::reference::Location;

fn repo(host: &str, repo: &str) -> Location {
    Location::Registry {
        host: host.into(),
        repo: repo.into(),
    }
}

fn digest(seed: &str) -> Digest {
    Digest::of(seed.as_bytes())
}

/// Puts `d` into `at` as a finished upload would.
fn learn(t: &Arc<BlobTracker>, at: &Location, d: &Digest) {
    match t.try_claim(at, d, Instant::now()) {
        Claim::Owner(g) | Claim::Elsewhere(_, g) => g.succeed(),
        _ => panic!("expected to own {d} at {at}"),
    }
}

#[test]
fn a_blob_learned_this_run_is_present_and_elsewhere_a_mount_source() {
    let t = Arc::new(BlobTracker::default());
    let since = Instant::now();
    let (a, b) = (repo("r", "a"), repo("r", "b"));
    let d = digest("x");
    learn(&t, &a, &d);
    assert!(matches!(t.try_claim(&a, &d, since), Claim::Present));
    match t.try_claim(&b, &d, since) {
        Claim::Elsewhere(from, _g) => assert_eq!(from, a),
        _ => panic!("expected a mount from a"),
    }
    // Another registry knows nothing of it.
    assert!(matches!(
        t.try_claim(&repo("other", "a"), &d, since),
        Claim::Owner(_)
    ));
}

#[test]
fn knowledge_older_than_the_run_is_checked_not_trusted() {
    let t = Arc::new(BlobTracker::default());
    let (a, b) = (repo("r", "a"), repo("r", "b"));
    let d = digest("x");
    learn(&t, &a, &d);
    std::thread::sleep(Duration::from_millis(2));
    let later_run = Instant::now();
    // In its own repository: a HEAD first (Owner), never a blind skip; the
    // HEAD found it (learned again, now trusted for this run).
    match t.try_claim(&a, &d, later_run) {
        Claim::Owner(g) => g.succeed(),
        _ => panic!("expected a HEAD"),
    }
    assert!(matches!(t.try_claim(&a, &d, later_run), Claim::Present));
    // Elsewhere it is still a mount source: the registry's answer decides.
    assert!(matches!(
        t.try_claim(&b, &d, later_run),
        Claim::Elsewhere(..)
    ));
}

#[test]
fn one_task_at_a_time_per_blob_and_registry() {
    let t = Arc::new(BlobTracker::default());
    let since = Instant::now();
    let (a, b) = (repo("r", "a"), repo("r", "b"));
    let d = digest("x");
    let first = t.try_claim(&a, &d, since);
    assert!(matches!(first, Claim::Owner(_)));
    assert!(matches!(t.try_claim(&b, &d, since), Claim::Busy(_)));
    drop(first); // failed: nothing learned, the next may try
    assert!(matches!(t.try_claim(&b, &d, since), Claim::Owner(_)));
}

#[test]
fn a_failed_mount_forgets_its_source() {
    let t = Arc::new(BlobTracker::default());
    let since = Instant::now();
    let (a, b) = (repo("r", "a"), repo("r", "b"));
    let d = digest("x");
    learn(&t, &a, &d);
    match t.try_claim(&b, &d, since) {
        Claim::Elsewhere(from, g) => {
            g.mount_failed(&from);
            drop(g); // and the upload failed too
        }
        _ => panic!("expected a mount"),
    }
    assert_eq!(t.known(), 0, "a wiped source is not offered again");
    assert!(matches!(t.try_claim(&b, &d, since), Claim::Owner(_)));
}

#[test]
fn forgetting_old_knowledge_bounds_memory() {
    let t = Arc::new(BlobTracker::default());
    learn(&t, &repo("r", "a"), &digest("x"));
    learn(&t, &repo("r", "b"), &digest("x"));
    assert_eq!(t.known(), 2);
    t.forget_before(Instant::now() + Duration::from_secs(1));
    assert_eq!(t.known(), 0);
}

#[test]
fn an_owner_knows_whether_the_blob_was_seen_here_and_where_else() {
    let t = Arc::new(BlobTracker::default());
    let (a, b) = (repo("r", "a"), repo("r", "b"));
    let d = digest("x");
    learn(&t, &a, &d);
    learn(&t, &b, &d);
    std::thread::sleep(Duration::from_millis(2));
    match t.try_claim(&a, &d, Instant::now()) {
        Claim::Owner(g) => {
            assert!(g.known_here, "a HEAD is due even in a fresh repository");
            assert_eq!(g.mount_source(), Some(b), "where to mount from if gone");
        }
        _ => panic!("expected a HEAD first"),
    }
    match t.try_claim(&repo("r", "c"), &digest("y"), Instant::now()) {
        Claim::Owner(g) => assert!(!g.known_here && g.mount_source().is_none()),
        _ => panic!("unknown blob: owner"),
    }
}
