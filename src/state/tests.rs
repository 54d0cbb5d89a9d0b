use super::*;

fn open() -> (tempfile::TempDir, State) {
    let dir = tempfile::tempdir().unwrap();
    let st = State::open(&dir.path().join("nested/state")).unwrap();
    (dir, st)
}

#[test]
fn migrates_from_empty_and_reopens() {
    let (dir, st) = open();
    assert_eq!(st.schema_version().unwrap(), schema::VERSION);
    let id = st.run_started("r", 100).unwrap();
    drop(st);
    let st = State::open(&dir.path().join("nested/state")).unwrap();
    assert_eq!(st.schema_version().unwrap(), schema::VERSION);
    assert_eq!(st.last_run("r").unwrap().unwrap().id, id);
    let mode: String = st
        .with(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn refuses_a_newer_schema() {
    let (dir, st) = open();
    st.with(|c| c.pragma_update(None, "user_version", 99))
        .unwrap();
    drop(st);
    let err = State::open(&dir.path().join("nested/state")).unwrap_err();
    assert!(matches!(err, StateError::TooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("regkeeper.db"));
}

#[test]
fn not_a_database_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), vec![b'x'; 4096]).unwrap();
    let err = State::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains(DB_FILE), "{err}");
}

#[test]
fn runs_last_success_and_first_start() {
    let (_d, st) = open();
    let a = st.run_started("r", 100).unwrap();
    st.run_finished(
        a,
        &RunRecord {
            finished: Some(110),
            result: Some("success".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let b = st.run_started("r", 200).unwrap();
    st.run_finished(
        b,
        &RunRecord {
            finished: Some(210),
            result: Some("partial".into()),
            last_error: Some("boom".into()),
            error_class: Some("timeout".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(st.last_success("r").unwrap().unwrap().started, 100);
    assert_eq!(st.last_run("r").unwrap().unwrap().started, 200);
    assert_eq!(st.first_run_started("r").unwrap(), Some(100));
    assert_eq!(st.first_run_started("other").unwrap(), None);
    assert_eq!(
        st.last_run("r").unwrap().unwrap().last_error.as_deref(),
        Some("boom")
    );
    assert_eq!(
        st.last_run("r").unwrap().unwrap().error_class.as_deref(),
        Some("timeout")
    );
    assert_eq!(
        st.prune_runs(1000).unwrap(),
        0,
        "first, last and last success stay"
    );
}

#[test]
fn tag_state_tracks_differences() {
    let (_d, st) = open();
    let obs = |tag, src, tgt, v| TagObservation {
        tag,
        source_digest: src,
        target_digest: tgt,
        verified_now: v,
    };
    st.record_tags(
        "r",
        "h",
        "a",
        &[
            obs("v1", "d1", None, true),
            obs("v2", "d2", Some("d2"), true),
        ],
        None,
        10,
    )
    .unwrap();
    assert_eq!(st.tags_pending("r").unwrap(), 1);
    let m = st.tag_states("r", "h", "a").unwrap();
    assert_eq!(m["v1"].diff_first_seen, Some(10));
    assert_eq!(m["v1"].first_seen, None);
    assert_eq!(m["v2"].diff_first_seen, None);
    assert_eq!(m["v2"].first_seen, Some(10));
    // Still different later: the first sighting of the difference is kept.
    st.record_tags(
        "r",
        "h",
        "a",
        &[obs("v1", "d1", Some("d0"), true)],
        None,
        20,
    )
    .unwrap();
    assert_eq!(
        st.tag_states("r", "h", "a").unwrap()["v1"].diff_first_seen,
        Some(10)
    );
    // Copied: in step; first_seen starts; unverified observations keep `verified`.
    st.record_tags(
        "r",
        "h",
        "a",
        &[obs("v1", "d1", Some("d1"), true)],
        None,
        30,
    )
    .unwrap();
    st.record_tags(
        "r",
        "h",
        "a",
        &[obs("v1", "d1", Some("d1"), false)],
        None,
        40,
    )
    .unwrap();
    let v1 = &st.tag_states("r", "h", "a").unwrap()["v1"];
    assert_eq!(
        (v1.diff_first_seen, v1.first_seen, v1.verified),
        (None, Some(20), 30)
    );
    assert_eq!(st.tags_pending("r").unwrap(), 0);
    // A tag no longer selected is forgotten.
    st.record_tags("r", "h", "a", &[], Some(&["v1".to_string()]), 50)
        .unwrap();
    assert_eq!(st.tag_states("r", "h", "a").unwrap().len(), 1);
}

#[test]
fn uploads_checkpoint_roundtrip() {
    let (_d, st) = open();
    let mut cp = UploadCheckpoint {
        target: "h".into(),
        repo: "a".into(),
        digest: "sha256:x".into(),
        session_url: "http://h/v2/a/blobs/uploads/1?_state=s".into(),
        offset: 16,
        hash_state: Some(vec![1, 2, 3]),
        updated: 5,
    };
    st.save_upload(&cp).unwrap();
    cp.offset = 32;
    st.save_upload(&cp).unwrap();
    assert_eq!(st.upload("h", "a", "sha256:x").unwrap(), Some(cp.clone()));
    assert_eq!(st.uploads().unwrap().len(), 1);
    st.remove_upload("h", "a", "sha256:x").unwrap();
    assert_eq!(st.upload("h", "a", "sha256:x").unwrap(), None);
}

#[test]
fn deletion_journal_says_what_retention_deleted() {
    use crate::retention::RetentionState;
    let (_d, st) = open();
    let id = st
        .journal_deletion("r", "h", "h/a", "sha256:1", &["v1".into()], "keep_last", 7)
        .unwrap();
    let d = st.deletions("r", 10).unwrap();
    assert_eq!(
        (d[0].status.as_str(), d[0].tags.clone()),
        ("pending", vec!["v1".to_string()])
    );
    assert!(
        st.retained_away("r", "h/a").unwrap().is_empty(),
        "a pending deletion is not known to have happened"
    );
    st.journal_done(id, Ok(())).unwrap();
    assert_eq!(st.deletions("r", 10).unwrap()[0].status, "done");
    assert_eq!(
        st.retained_away("r", "h/a").unwrap(),
        [("v1".to_string(), "sha256:1".to_string())].into()
    );
    assert!(st.retained_away("other", "h/a").unwrap().is_empty());
}

#[test]
fn read_only_open_reads_and_refuses_writes() {
    let (dir, st) = open();
    st.run_started("r", 1).unwrap();
    assert!(
        State::open_read_only(&dir.path().join("none"))
            .unwrap()
            .is_none()
    );
    let ro = State::open_read_only(&dir.path().join("nested/state"))
        .unwrap()
        .expect("database exists");
    assert_eq!(ro.first_run_started("r").unwrap(), Some(1));
    assert!(
        ro.run_started("r", 2).is_err(),
        "a read-only state writes nothing"
    );
    assert_eq!(st.first_run_started("r").unwrap(), Some(1));
}

#[test]
fn retention_state_over_sqlite() {
    use crate::oci::Digest;
    use crate::retention::state::ReadOnly;
    use crate::retention::{JournalEntry, JournalStatus, RetentionState};
    use std::collections::BTreeMap;
    let (dir, st) = open();
    let d = |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
    let repo = "127.0.0.1:5000/app";
    let rs: &dyn RetentionState = &st;

    rs.record_tags(
        repo,
        &BTreeMap::from([("v1".into(), d('a')), ("v2".into(), d('b'))]),
        100,
    )
    .unwrap();
    // v1 stays, v2 moves (both keep their first_seen: it is per tag), v3 is new.
    rs.record_tags(
        repo,
        &BTreeMap::from([
            ("v1".into(), d('a')),
            ("v2".into(), d('c')),
            ("v3".into(), d('d')),
        ]),
        200,
    )
    .unwrap();
    let seen = rs.seen_tags(repo).unwrap();
    assert_eq!(seen["v1"].first_seen, 100);
    assert_eq!(
        (seen["v2"].digest.clone(), seen["v2"].first_seen),
        (d('c'), 100)
    );
    assert_eq!(seen["v3"].first_seen, 200);
    assert_eq!(seen.len(), 3);
    assert!(rs.seen_tags("other").unwrap().is_empty());

    rs.record_untagged(repo, &d('b'), 300).unwrap();
    rs.record_untagged(repo, &d('b'), 250).unwrap();
    rs.record_untagged(repo, &d('b'), 400).unwrap();
    assert_eq!(
        rs.untagged(repo).unwrap(),
        BTreeMap::from([(d('b'), 250)]),
        "the earliest wins"
    );
    rs.forget_untagged(repo, &d('b')).unwrap();
    assert!(rs.untagged(repo).unwrap().is_empty());

    let entry = JournalEntry {
        rule: "r".into(),
        target: "127.0.0.1:5000/*".into(),
        repository: repo.into(),
        digest: d('b'),
        tags: vec!["v2".into()],
        reason: "keep_last".into(),
        time: 500,
    };
    let id = rs.journal(&entry).unwrap();
    assert_eq!(
        rs.recent_deletions(5).unwrap()[0].status,
        JournalStatus::Pending
    );
    rs.journal_done(id, Err("503 from the registry")).unwrap();
    let rec = &rs.recent_deletions(5).unwrap()[0];
    assert_eq!(rec.entry, entry);
    assert_eq!(
        rec.status,
        JournalStatus::Failed {
            error: "503 from the registry".into()
        }
    );

    // Read-only: reads pass through, writes are dropped, no journal.
    let ro = ReadOnly(std::sync::Arc::new(st.clone()));
    ro.record_tags(repo, &BTreeMap::new(), 900).unwrap();
    assert_eq!(rs.seen_tags(repo).unwrap().len(), 3);
    assert!(ro.journal(&entry).is_err());
    drop(dir);
}

#[test]
fn touched_repositories_are_recorded_until_tagged() {
    let (_d, st) = open();
    let repos = vec![("reg:5000".to_string(), "m/a".to_string())];
    assert!(!st.touched("reg:5000", "m/a").unwrap());
    st.touch_repos(&repos, 100).unwrap();
    st.touch_repos(&repos, 200).unwrap(); // again: no conflict
    assert!(st.touched("reg:5000", "m/a").unwrap());
    assert!(!st.touched("reg:5000", "m/b").unwrap());
    st.untouch_repo("reg:5000", "m/a").unwrap();
    assert!(!st.touched("reg:5000", "m/a").unwrap());
}

#[test]
fn manifest_facts_are_kept_by_digest_completed_and_bounded() {
    use crate::retention::plan::Child;
    use crate::retention::state::ReadOnly;
    use crate::retention::{ManifestFacts, ManifestInfo, RetentionState};
    let (_d, st) = open();
    let d = |c: char| {
        crate::oci::Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    };
    let index = ManifestFacts {
        info: ManifestInfo {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            children: vec![Child {
                digest: d('b'),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            }],
            subject: Some(d('c')),
        },
        created: None,
    };
    let rs: &dyn RetentionState = &st;
    assert_eq!(rs.manifest_facts(&d('a')).unwrap(), None);

    // A dry run's state reads them but writes none.
    let ro = ReadOnly(std::sync::Arc::new(st.clone()));
    ro.record_manifest_facts(&d('a'), &index, 1_000).unwrap();
    assert_eq!(rs.manifest_facts(&d('a')).unwrap(), None);

    rs.record_manifest_facts(&d('a'), &index, 1_000).unwrap();
    assert_eq!(ro.manifest_facts(&d('a')).unwrap(), Some(index.clone()));
    // A `created` time read later completes the row; "none" is a fact too,
    // and a known time is never replaced.
    let dated = ManifestFacts {
        created: Some(Some(1_700_000_000)),
        ..index.clone()
    };
    rs.record_manifest_facts(&d('a'), &dated, 1_000).unwrap();
    assert_eq!(rs.manifest_facts(&d('a')).unwrap(), Some(dated.clone()));
    let undated = ManifestFacts {
        created: Some(None),
        ..index.clone()
    };
    rs.record_manifest_facts(&d('a'), &undated, 1_000).unwrap();
    assert_eq!(rs.manifest_facts(&d('a')).unwrap(), Some(dated.clone()));
    rs.record_manifest_facts(&d('e'), &undated, 1_000).unwrap();
    assert_eq!(rs.manifest_facts(&d('e')).unwrap(), Some(undated));

    // Facts used stay; facts no run used since `stale` go.
    let later = 1_000 + 40 * 86_400;
    rs.facts_used(&[d('a')], later, later - 30 * 86_400)
        .unwrap();
    assert_eq!(rs.manifest_facts(&d('a')).unwrap(), Some(dated));
    assert_eq!(rs.manifest_facts(&d('e')).unwrap(), None);
}
