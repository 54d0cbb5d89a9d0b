//! Memory follows our caps, not what the source sends, and pagination ends:
//! an oversized tag-list page, endless or looping pagination and an HTML
//! answer fail the repository with an error that says why (and delete
//! nothing, though the rule's retention deletes what the source no longer
//! lists); an index of many large children is refused in bounded memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::common::*;
use crate::support::corpus::{MT_INDEX, MT_MANIFEST};

const TAGS: &str = "/v2/app/tags/list";

/// The scene with `app:v1` already mirrored to `mirror/app` (a sync through
/// the hostile registry passing everything on), by a rule whose retention
/// deletes what the source no longer lists: an unreadable list that looked
/// like a list would delete `v1`.
fn mirrored(src_extra: &str) -> (Scene, PathBuf) {
    let scene = Scene::new(|_| Reply::Forward);
    let rule = format!(
        "{}[rule.retention]\nmatch = ['.*']\ndelete_removed_at_source = true\n",
        scene.rule("app", &format!("{}/mirror/app", scene.dst.host()))
    );
    let config = scene.config(src_extra, &rule);
    let m = scene.run(&config, &["sync"], Duration::from_secs(60));
    assert_eq!(m.code, Some(0), "the first, honest sync");
    assert_eq!(scene.dst.list_tags("mirror/app"), vec!["v1".to_string()]);
    scene.hostile.clear_records();
    (scene, config)
}

fn assert_nothing_deleted(scene: &Scene) {
    assert_eq!(
        scene.dst.list_tags("mirror/app"),
        vec!["v1".to_string()],
        "the target lost or gained tags"
    );
    assert_eq!(scene.dst.digest_of("mirror/app", "v1"), scene.image.digest);
    scene.assert_victim_untouched();
}

/// Whether the run's report or log says `text`.
fn said(m: &Measured, text: &str) -> bool {
    m.stdout.contains(text) || m.stderr.contains(text)
}

fn tag_requests(scene: &Scene) -> usize {
    scene.hostile.count(|s| s.path() == TAGS)
}

/// `{"name":"app","tags":["t0000000",...]}` of at least `bytes` bytes.
fn huge_tag_page(bytes: usize) -> Vec<u8> {
    let mut out = String::with_capacity(bytes + 64);
    out.push_str(r#"{"name":"app","tags":["t0000000""#);
    let mut i = 1;
    while out.len() < bytes {
        out.push_str(&format!(r#","t{i:07}""#));
        i += 1;
    }
    out.push_str("]}");
    out.into_bytes()
}

#[test]
fn a_62_mib_tag_list_page_fails_in_bounded_memory_and_deletes_nothing() {
    let (scene, config) = mirrored("");
    let page = Arc::new(
        Canned::new(200)
            .header("Content-Type", "application/json")
            .body(huge_tag_page(62 << 20)),
    );
    scene.hostile.set_handler(move |s| match s.path() {
        TAGS => Reply::Respond((*page).clone()),
        _ => Reply::Forward,
    });
    let m = scene.run(&config, &["sync"], Duration::from_secs(60));
    figures("62 MiB tag page", &m, tag_requests(&scene), "");
    assert_nothing_deleted(&scene);
    assert_eq!(m.code, Some(1), "the repository fails");
    assert!(said(&m, "larger than"), "the error says why");
    assert!(
        m.peak_rss_mib() < 100.0,
        "peak {:.1} MiB for a 62 MiB page",
        m.peak_rss_mib()
    );
}

/// A tag page naming `tags`, linking to the page after `last`.
fn linked_page(tags: &[String], last: &str) -> Reply {
    let Reply::Respond(c) = tag_page("app", &tags.iter().map(String::as_str).collect::<Vec<_>>())
    else {
        unreachable!()
    };
    Reply::Respond(c.header(
        "Link",
        &format!(r#"<{TAGS}?last={last}&n=1000>; rel="next""#),
    ))
}

fn query_last(s: &Seen) -> Option<String> {
    s.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("last="))
        .map(str::to_string)
}

#[test]
fn pagination_that_never_ends_stops_at_max_pages_with_an_error() {
    let (scene, config) = mirrored("max_pages = 40");
    // every page names one new tag and links to the page after it
    scene.hostile.set_handler(|s| {
        if s.path() != TAGS {
            return Reply::Forward;
        }
        let k: u64 = query_last(s)
            .and_then(|l| l.strip_prefix('p')?.parse().ok())
            .map_or(0, |k: u64| k + 1);
        let tag = format!("p{k:07}");
        linked_page(std::slice::from_ref(&tag), &tag)
    });
    let m = scene.run(&config, &["sync"], Duration::from_secs(60));
    let pages = tag_requests(&scene);
    figures("endless pagination", &m, pages, &format!("{pages} pages"));
    assert_nothing_deleted(&scene);
    assert_eq!(
        m.code,
        Some(1),
        "the listing fails (not killed, not partial)"
    );
    assert!(said(&m, "max_pages"), "the error names max_pages");
    assert!(pages <= 41, "{pages} pages read with max_pages = 40");
}

#[test]
fn pagination_that_repeats_its_last_page_is_an_error_not_a_short_list() {
    let (scene, config) = mirrored("");
    // page 1 names v1 and links to "after v1"; that page links to itself
    scene
        .hostile
        .set_handler(|s| match (s.path(), query_last(s)) {
            (TAGS, None) => linked_page(&["v1".to_string()], "v1"),
            (TAGS, Some(_)) => linked_page(&[], "v1"),
            _ => Reply::Forward,
        });
    let m = scene.run(&config, &["sync"], Duration::from_secs(60));
    let pages = tag_requests(&scene);
    figures("repeated last", &m, pages, &format!("{pages} pages"));
    assert_nothing_deleted(&scene);
    assert_eq!(m.code, Some(1), "a looping listing is not a list");
    assert!(said(&m, "does not advance"), "the error says why");
    assert!(pages <= 3, "{pages} pages");
}

#[test]
fn an_html_captive_portal_is_named_as_such_and_deletes_nothing() {
    let (scene, config) = mirrored("");
    scene.hostile.set_handler(|s| match s.path() {
        TAGS => Reply::Respond(
            Canned::new(200)
                .header("Content-Type", "text/html; charset=utf-8")
                .body("<!DOCTYPE html>\n<html><head><title>Sign in to Wi-Fi</title></head></html>"),
        ),
        _ => Reply::Forward,
    });
    let m = scene.run(&config, &["sync"], Duration::from_secs(60));
    figures("HTML tag list", &m, tag_requests(&scene), "");
    assert_nothing_deleted(&scene);
    assert_eq!(m.code, Some(1));
    assert!(
        said(&m, "answered HTML") && said(&m, TAGS),
        "the error says HTML, and where"
    );
}

/// Child `i` of the big index: `app:v1`'s manifest padded with an
/// annotation to `pad` bytes (built again on each request, so the test does
/// not hold them all either).
fn big_child(base: &serde_json::Value, i: usize, pad: usize) -> Vec<u8> {
    let mut v = base.clone();
    v["annotations"] = serde_json::json!({ "n": i.to_string(), "pad": "x".repeat(pad) });
    serde_json::to_vec(&v).unwrap()
}

fn manifest_reply(media_type: &str, bytes: Vec<u8>) -> Reply {
    Reply::Respond(
        Canned::new(200)
            .header("Content-Type", media_type)
            .header("Docker-Content-Digest", &sha256_digest(&bytes))
            .body(bytes),
    )
}

#[test]
fn an_index_of_100_children_of_3_5_mib_is_refused_in_bounded_memory() {
    const CHILDREN: usize = 100;
    const PAD: usize = 3_500_000;
    let scene = Scene::new(|_| Reply::Forward);
    let base: serde_json::Value = serde_json::from_slice(&scene.image.manifest).unwrap();
    let (digests, sizes): (Vec<String>, Vec<usize>) = (0..CHILDREN)
        .map(|i| {
            let b = big_child(&base, i, PAD);
            (sha256_digest(&b), b.len())
        })
        .unzip();
    let entries: Vec<serde_json::Value> = (0..CHILDREN)
        .map(|i| {
            serde_json::json!({"mediaType": MT_MANIFEST, "digest": digests[i], "size": sizes[i],
                "platform": {"os": "linux", "architecture": format!("arch{i}")}})
        })
        .collect();
    let index = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries}),
    )
    .unwrap();
    scene.hostile.set_handler(move |s| {
        let p = s.path();
        if p == TAGS {
            return tag_page("app", &["big"]);
        }
        if p == "/v2/app/manifests/big" {
            return manifest_reply(MT_INDEX, index.clone());
        }
        if let Some(i) = p
            .strip_prefix("/v2/app/manifests/")
            .and_then(|d| digests.iter().position(|x| x == d))
        {
            return manifest_reply(MT_MANIFEST, big_child(&base, i, PAD));
        }
        Reply::Forward
    });
    let config = scene.config(
        "",
        &scene.rule("app", &format!("{}/mirror/app", scene.dst.host())),
    );
    let m = scene.run(&config, &["sync"], Duration::from_secs(120));
    let children = scene
        .hostile
        .count(|s| s.path().contains("/manifests/sha256:"));
    figures(
        "100 x 3.5 MiB index",
        &m,
        scene.hostile.records().len(),
        &format!("{children} child GETs"),
    );
    scene.assert_victim_untouched();
    assert!(
        m.peak_rss_mib() < 120.0,
        "peak {:.1} MiB for an index of {CHILDREN} x 3.5 MiB",
        m.peak_rss_mib()
    );
    assert_eq!(m.code, Some(1), "the image is refused");
    assert!(said(&m, "add up to more than"), "the error says why");
    assert!(
        !scene
            .target_repositories()
            .contains(&"mirror/app".to_string()),
        "nothing written for the refused image"
    );
}
