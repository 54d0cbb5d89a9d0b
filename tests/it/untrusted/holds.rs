//! Lines that already held when the hostile registry was first pointed at
//! regkeeper, kept as regression tests: lies about digests and sizes, an
//! oversized manifest, foreign-layer `urls`.

use std::time::Duration;

use super::common::*;
use super::extra::{OCI_MANIFEST, crafted_registry, manifest_with_sizes, run_against};

fn not_tagged(dst: &Registry) {
    let r = dst.get("/v2/mirror/app/tags/list").unwrap();
    assert_eq!(r.status, 404, "nothing tagged at the target: {}", r.text());
}

#[test]
fn a_blob_whose_bytes_lie_about_its_digest_is_never_committed() {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = b"the real layer".to_vec();
    let manifest = manifest_with_sizes(&config, &layer, &[layer.len() as u64]);
    let layer_digest = sha256_digest(&layer);
    // the layer's URL serves other bytes of the same length
    let lie = b"a forged layer".to_vec();
    assert_eq!(lie.len(), layer.len());
    let mut served = vec![(sha256_digest(&config), config.clone())];
    served.push((layer_digest.clone(), lie));
    let hostile = crafted_registry(manifest, served);
    let dst = Registry::start_plain();
    let reg = format!("[registries.\"{}\"]\nplain_http = true\n", dst.host());
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    for target in [
        format!("{}/mirror/app", dst.host()),
        format!("oci:{}", layout.display()),
    ] {
        let (m, _d) = run_against(&hostile, &reg, &target, &["sync"]);
        figures("digest lie", &m, hostile.records().len(), &target);
        assert_eq!(m.code, Some(1));
    }
    not_tagged(&dst);
    let head = dst
        .request(
            "HEAD",
            &format!("/v2/mirror/app/blobs/{layer_digest}"),
            &[],
            None,
        )
        .unwrap();
    assert_eq!(
        head.status, 404,
        "the forged layer was committed under the real digest"
    );
    let hex = layer_digest.trim_start_matches("sha256:");
    assert!(!layout.join("blobs/sha256").join(hex).exists());
    assert!(
        !layout.join("index.json").exists()
            || !std::fs::read_to_string(layout.join("index.json"))
                .unwrap()
                .contains("\"v1\"")
    );
}

#[test]
fn a_blob_longer_than_its_descriptor_is_cut_off_and_refused() {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = b"short layer".to_vec();
    let manifest = manifest_with_sizes(&config, &layer, &[layer.len() as u64]);
    let mut long = layer.clone();
    long.extend(std::iter::repeat_n(b'x', 8 * 1024 * 1024));
    let served = vec![
        (sha256_digest(&config), config.clone()),
        (sha256_digest(&layer), long),
    ];
    let hostile = crafted_registry(manifest, served);
    let dst = Registry::start_plain();
    let reg = format!("[registries.\"{}\"]\nplain_http = true\n", dst.host());
    let (m, _d) = run_against(
        &hostile,
        &reg,
        &format!("{}/mirror/app", dst.host()),
        &["sync"],
    );
    figures("size lie", &m, hostile.records().len(), "");
    assert_eq!(m.code, Some(1));
    not_tagged(&dst);
}

#[test]
fn a_manifest_over_4_mib_is_refused_without_holding_it() {
    // a well-formed manifest padded with an annotation to 64 MiB
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let pad = "p".repeat(64 * 1024 * 1024);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_digest(&config), "size": config.len()},
        "layers": [],
        "annotations": {"pad": pad},
    }))
    .unwrap();
    let hostile = crafted_registry(manifest, vec![(sha256_digest(&config), config)]);
    let dst = Registry::start_plain();
    let reg = format!("[registries.\"{}\"]\nplain_http = true\n", dst.host());
    let (m, _d) = run_against(
        &hostile,
        &reg,
        &format!("{}/mirror/app", dst.host()),
        &["sync"],
    );
    figures("64 MiB manifest", &m, hostile.records().len(), "");
    assert_eq!(m.code, Some(1));
    assert!(m.peak_rss_mib() < 60.0, "peak {:.1} MiB", m.peak_rss_mib());
    not_tagged(&dst);
}

#[test]
fn foreign_layer_urls_are_never_contacted() {
    let elsewhere = HostileRegistry::start(None, |_| Reply::Respond(Canned::new(200).body("x")));
    let config = br#"{"architecture":"amd64","os":"windows"}"#.to_vec();
    let foreign = b"a windows base layer".to_vec();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": sha256_digest(&foreign), "size": foreign.len(),
            "urls": [format!("{}/layer.tar.gz", elsewhere.url())],
        }],
    }))
    .unwrap();
    let hostile = crafted_registry(manifest, vec![(sha256_digest(&config), config)]);
    let dst = Registry::start_plain();
    let reg = format!("[registries.\"{}\"]\nplain_http = true\n", dst.host());
    let (m, _d) = run_against(
        &hostile,
        &reg,
        &format!("{}/mirror/app", dst.host()),
        &["sync"],
    );
    figures("foreign urls", &m, hostile.records().len(), "");
    assert!(!m.stderr.contains("panicked"));
    assert_eq!(
        elsewhere.records().len(),
        0,
        "a foreign layer's URL was contacted"
    );
    let _ = Duration::ZERO;
}
