//! `[rule.verify]` against a hostile source: everything a registry says while
//! regkeeper looks for signatures (the `.sig` manifest, referrers lists and
//! their pagination, bundle referrer manifests, bundle blobs) is a stranger's
//! input. A hostile registry (`support::hostile`) in front of
//! ferro-oci-server (which has the referrers API) lies, loops or stalls; the
//! recorded requests show what regkeeper was led to read, `sync --json`
//! what it made of it, and the target (read with raw HTTP) that nothing of
//! an image that was not verified arrived.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::cosign::{SIGSTORE_BUNDLE, SIMPLE_SIGNING, Signer};
use crate::support::ferro::{
    EMPTY, Ferro, OCI_INDEX, OCI_MANIFEST, Pushed, manifest_bytes, push_blob, push_image,
    push_referrer,
};
use crate::support::hostile::{Canned, HostileRegistry, Reply, Seen};
use crate::support::measure::run_measured;
use crate::support::{regkeeper_bin, sha256_digest};

/// A source (ferro) behind a hostile registry, a target, and the keys.
struct Setup {
    src: Ferro,
    dst: Ferro,
    ours: Signer,
    theirs: Signer,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            src: Ferro::start(),
            dst: Ferro::start(),
            ours: Signer::new(),
            theirs: Signer::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn image(&self, tag: &str) -> Pushed {
        push_image(&self.src.url(), "app", tag, &format!("seed-{tag}"))
    }

    /// The name signatures give the image.
    fn name(&self) -> String {
        format!("{}/app", self.src.host())
    }

    /// A valid sigstore bundle by `signer` for `subject`, attached as its
    /// referrer at the source: the referrer and its bundle blob's digest.
    fn bundle(&self, signer: &Signer, subject: &Pushed) -> (Pushed, String, Vec<u8>) {
        let bytes = signer.dsse_bundle(&Signer::statement(&subject.digest, &self.name()));
        let (r, _) = push_referrer(&self.src.url(), "app", subject, SIGSTORE_BUNDLE, &bytes);
        (r, sha256_digest(&bytes), bytes)
    }

    /// Runs `sync --json` from the hostile registry (with `extra` lines in
    /// its section) to the target, measured; the exit code and the document.
    fn sync(&self, hostile: &HostileRegistry, extra: &str) -> (Option<i32>, Value) {
        let key = self.dir.path().join("cosign.pub");
        std::fs::write(&key, self.ours.public_pem()).unwrap();
        let config = format!(
            "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{}{}\
             [[rule]]\nname = \"app\"\nsource = \"{}/app\"\ntargets = [\"{}/mirror\"]\n\
             tags.exclude = ['^sha256-']\n[rule.verify]\nsigstore_keys = [{:?}]\n",
            self.dir.path().join("state").display().to_string(),
            hostile.registry_toml(extra),
            self.dst.regkeeper_registry_toml(),
            hostile.host(),
            self.dst.host(),
            key.display().to_string(),
        );
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(regkeeper_bin());
        cmd.args(["sync", "--json", "-c"]).arg(&path);
        cmd.env("REGKEEPER_LOG", "info");
        let m = run_measured(&mut cmd, Duration::from_secs(300));
        eprintln!(
            "sync -> {:?} in {:?}, peak RSS {:.1} MiB\n{}\n{}",
            m.code,
            m.wall,
            m.peak_rss_mib(),
            m.stdout,
            m.stderr
        );
        assert!(m.code.is_some(), "sync was killed at its deadline");
        assert!(
            m.peak_rss_mib() < 400.0,
            "peak RSS {:.1} MiB",
            m.peak_rss_mib()
        );
        let doc = serde_json::from_str(&m.stdout).unwrap_or_else(|e| panic!("JSON: {e}"));
        (m.code, doc)
    }

    /// Nothing of `image` at the target: no tag, no manifest, no blob.
    fn nothing_of(&self, tag: &str, image: &Pushed) {
        let target = self.dst.url();
        assert_eq!(manifest_bytes(&target, "mirror", tag), None, "{tag}");
        assert_eq!(manifest_bytes(&target, "mirror", &image.digest), None);
        let m: Value = serde_json::from_slice(&image.bytes).unwrap();
        let layer = m["layers"][0]["digest"].as_str().unwrap();
        let r = crate::support::ferro::get(&target, &format!("/v2/mirror/blobs/{layer}")).unwrap();
        assert_ne!(r.status, 200, "a blob of {tag} reached the target");
    }
}

/// A hostile registry in front of `src` answering the GETs of `canned`
/// (path -> reply) itself, forwarding everything else.
fn hostile(src: &Ferro, canned: HashMap<String, Reply>) -> HostileRegistry {
    let canned = Arc::new(canned);
    HostileRegistry::start(Some(&src.url()), move |s: &Seen| {
        let ours = s.method == "GET" || s.method == "HEAD";
        match canned.get(s.path()) {
            Some(r) if ours => r.clone(),
            _ => Reply::Forward,
        }
    })
}

fn manifest_reply(media_type: &str, bytes: Vec<u8>) -> Reply {
    Reply::Respond(
        Canned::new(200)
            .header("Content-Type", media_type)
            .header("Docker-Content-Digest", &sha256_digest(&bytes))
            .body(bytes),
    )
}

fn blob_reply(bytes: Vec<u8>) -> Reply {
    Reply::Respond(
        Canned::new(200)
            .header("Content-Type", "application/octet-stream")
            .body(bytes),
    )
}

fn sig_path(digest: &str) -> String {
    format!("/v2/app/manifests/sha256-{}.sig", &digest[7..])
}

fn rules(doc: &Value) -> impl Iterator<Item = &Value> {
    doc["rules"].as_array().unwrap().iter()
}

/// tag -> reason of the refusals.
fn refused(doc: &Value) -> HashMap<String, String> {
    rules(doc)
        .flat_map(|r| r["refused"].as_array().cloned().unwrap_or_default())
        .map(|x| {
            (
                x["tag"].as_str().unwrap().into(),
                x["reason"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// The failure of verifying `tag` (class, message), if any.
fn failure(doc: &Value, tag: &str) -> Option<(String, String)> {
    let what = format!("verifying the signatures of tag {tag}");
    rules(doc)
        .flat_map(|r| r["errors"].as_array().cloned().unwrap_or_default())
        .find(|e| e["what"] == what.as_str())
        .map(|e| {
            (
                e["class"].as_str().unwrap().into(),
                e["error"].as_str().unwrap().into(),
            )
        })
}

/// A `.sig` layer over a payload blob.
fn sig_layer(digest: &str, size: u64, signature: &str) -> Value {
    json!({"mediaType": SIMPLE_SIGNING, "digest": digest, "size": size,
        "annotations": {"dev.cosignproject.cosign/signature": signature}})
}

fn sig_manifest(layers: Vec<Value>) -> Vec<u8> {
    let config = sha256_digest(b"{}");
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY, "digest": config, "size": 2}, "layers": layers}))
    .unwrap()
}

#[test]
fn a_sig_manifest_of_10000_layers_or_a_1gib_layer_reads_at_most_32_small_payloads() {
    let s = Setup::new();
    let (many, huge) = (s.image("many"), s.image("huge"));
    let base = s.src.url();
    // Real `.sig` tags, so the tag list has them; the hostile registry then
    // serves other manifests under them.
    s.theirs.push(&base, "app", &many.digest, &s.name(), false);
    s.theirs.push(&base, "app", &huge.digest, &s.name(), false);
    let mut canned = HashMap::new();
    let mut layers = Vec::new();
    let mut payloads = Vec::new();
    for i in 0..10_000 {
        if i < 40 || i == 9_999 {
            let signer = if i == 9_999 { &s.ours } else { &s.theirs };
            let p = Signer::payload(&many.digest, &format!("{}-{i}", s.name()));
            let d = sha256_digest(&p);
            layers.push(sig_layer(&d, p.len() as u64, &signer.sign(&p)));
            canned.insert(format!("/v2/app/blobs/{d}"), blob_reply(p));
            payloads.push(d);
        } else {
            let d = sha256_digest(format!("not there {i}").as_bytes());
            layers.push(sig_layer(&d, 300, "bm90IGEgc2lnbmF0dXJl"));
        }
    }
    let big = sig_manifest(layers);
    canned.insert(sig_path(&many.digest), manifest_reply(OCI_MANIFEST, big));
    let gib = sha256_digest(b"a gibibyte, they say");
    let p = Signer::payload(&huge.digest, &s.name());
    let one = sig_manifest(vec![sig_layer(&gib, 1 << 30, &s.ours.sign(&p))]);
    canned.insert(sig_path(&huge.digest), manifest_reply(OCI_MANIFEST, one));
    canned.insert(format!("/v2/app/blobs/{gib}"), blob_reply(p));
    let h = hostile(&s.src, canned);

    let (code, doc) = s.sync(&h, "");
    assert_eq!(code, Some(1), "{doc}");
    let got = refused(&doc);
    // Only the first 32 signature layers count: the valid one at 10,000 is
    // never read; a payload declared over 256 KiB is never fetched.
    assert_eq!(
        got.get("many").map(String::as_str),
        Some("bad_signature"),
        "{doc}"
    );
    assert!(got.contains_key("huge"), "{doc}");
    let fetched = |d: &str| h.count(|r| r.path() == format!("/v2/app/blobs/{d}"));
    let read: usize = payloads.iter().map(|d| fetched(d)).sum();
    assert!((1..=32).contains(&read), "{read} payloads read");
    assert_eq!(fetched(payloads.last().unwrap()), 0);
    assert_eq!(fetched(&gib), 0, "the 1 GiB payload was asked for");
    s.nothing_of("many", &many);
    s.nothing_of("huge", &huge);
}

#[test]
fn a_referrers_list_of_5000_bundles_or_a_self_link_is_read_bounded() {
    let s = Setup::new();
    let (crowd, looped) = (s.image("crowd"), s.image("loop"));
    let base = s.src.url();
    s.ours.push(&base, "app", &looped.digest, &s.name(), false);
    // 5,000 bundle referrers of `crowd` (all by another key), each served.
    let bundle = s
        .theirs
        .dsse_bundle(&Signer::statement(&crowd.digest, &s.name()));
    let (blob, size) = push_blob(&base, "app", &bundle);
    let (empty, _) = push_blob(&base, "app", b"{}");
    let mut canned = HashMap::new();
    let mut entries = Vec::new();
    for i in 0..5_000 {
        let m = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": SIGSTORE_BUNDLE,
            "config": {"mediaType": EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": SIGSTORE_BUNDLE, "digest": blob, "size": size}],
            "subject": crowd.descriptor(), "annotations": {"n": i.to_string()}}))
        .unwrap();
        let d = sha256_digest(&m);
        entries.push(
            json!({"mediaType": OCI_MANIFEST, "digest": d, "size": m.len(),
            "artifactType": SIGSTORE_BUNDLE}),
        );
        canned.insert(
            format!("/v2/app/manifests/{d}"),
            manifest_reply(OCI_MANIFEST, m),
        );
    }
    let list = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let crowd_path = format!("/v2/app/referrers/{}", crowd.digest);
    canned.insert(crowd_path.clone(), Reply::Respond(Canned::json(200, &list)));
    // `loop`'s list links to itself as its next page.
    let loop_path = format!("/v2/app/referrers/{}", looped.digest);
    let page = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
    let link = format!("<{loop_path}>; rel=\"next\"");
    let reply = Reply::Respond(Canned::json(200, &page).header("Link", &link));
    canned.insert(loop_path.clone(), reply);
    let h = hostile(&s.src, canned);

    let (code, doc) = s.sync(&h, "");
    assert_eq!(code, Some(1), "{doc}");
    let manifests = h.count(|r| r.path().starts_with("/v2/app/manifests/sha256:"));
    let blobs = h.count(|r| r.path() == format!("/v2/app/blobs/{blob}"));
    assert!(manifests <= 32, "{manifests} referrer manifests read");
    assert!((1..=32).contains(&blobs), "{blobs} bundle blobs read");
    assert_eq!(h.count(|r| r.path() == crowd_path), 1);
    assert_eq!(
        refused(&doc).get("crowd").map(String::as_str),
        Some("bad_signature")
    );
    // The loop is a failure of the listing (not a refusal, not a hang),
    // though `loop` has a valid `.sig`: nothing of it is copied.
    assert!(
        h.count(|r| r.path() == loop_path) <= 2,
        "the loop was followed"
    );
    let (class, error) = failure(&doc, "loop").unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(class, "invalid_input", "{error}");
    assert!(error.contains("does not advance"), "{error}");
    assert!(!refused(&doc).contains_key("loop"));
    s.nothing_of("crowd", &crowd);
    s.nothing_of("loop", &looped);
}

#[test]
fn bundle_blobs_longer_or_other_than_their_descriptor_are_never_accepted() {
    let s = Setup::new();
    let (long, other, good) = (s.image("long"), s.image("other"), s.image("good"));
    let (_, long_blob, long_bytes) = s.bundle(&s.ours, &long);
    let (_, other_blob, other_bytes) = s.bundle(&s.ours, &other);
    s.bundle(&s.ours, &good);
    let mut canned = HashMap::new();
    let mut longer = long_bytes.clone();
    longer.extend_from_slice(b"  and some more bytes");
    canned.insert(format!("/v2/app/blobs/{long_blob}"), blob_reply(longer));
    // Same size, other bytes: a signature still valid for another image
    // would do; any bytes but the digest's must be rejected.
    let mut changed = other_bytes.clone();
    let at = changed.len() / 2;
    changed[at] ^= 0x20;
    canned.insert(format!("/v2/app/blobs/{other_blob}"), blob_reply(changed));
    let h = hostile(&s.src, canned);

    let (code, doc) = s.sync(&h, "");
    assert_eq!(code, Some(1), "{doc}");
    for tag in ["long", "other"] {
        let (class, error) = failure(&doc, tag).unwrap_or_else(|| panic!("{tag}: {doc}"));
        assert_eq!(class, "verification", "{tag}: {error}");
        assert!(!refused(&doc).contains_key(tag), "{doc}");
    }
    s.nothing_of("long", &long);
    s.nothing_of("other", &other);
    assert_eq!(
        manifest_bytes(&s.dst.url(), "mirror", "good"),
        Some(good.bytes.clone())
    );
}

#[test]
fn a_bundle_listed_under_another_image_does_not_sign_it() {
    let s = Setup::new();
    let (victim, honest) = (s.image("victim"), s.image("honest"));
    let (bundle, _, _) = s.bundle(&s.ours, &honest);
    // The registry lists `honest`'s bundle as a referrer of `victim` too.
    let mut canned = HashMap::new();
    let to = format!("/v2/app/referrers/{}", honest.digest);
    canned.insert(
        format!("/v2/app/referrers/{}", victim.digest),
        Reply::ForwardTo(to),
    );
    let h = hostile(&s.src, canned);

    let (code, doc) = s.sync(&h, "");
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(
        refused(&doc).get("victim").map(String::as_str),
        Some("unsigned"),
        "{doc}"
    );
    s.nothing_of("victim", &victim);
    let target = s.dst.url();
    assert_eq!(
        manifest_bytes(&target, "mirror", "honest"),
        Some(honest.bytes.clone())
    );
    assert_eq!(
        manifest_bytes(&target, "mirror", &bundle.digest),
        Some(bundle.bytes.clone())
    );
}

#[test]
fn a_stalled_signature_read_fails_the_image_and_is_not_unsigned() {
    let s = Setup::new();
    let (stuck, slow, fine) = (s.image("stuck"), s.image("slow"), s.image("fine"));
    let base = s.src.url();
    for i in [&stuck, &slow, &fine] {
        s.ours.push(&base, "app", &i.digest, &s.name(), false);
    }
    let mut canned = HashMap::new();
    canned.insert(sig_path(&stuck.digest), Reply::Stall);
    // `slow`'s payload: the head and 10 bytes, then nothing.
    let sig = manifest_bytes(&base, "app", &sig_path(&slow.digest)[18..]).unwrap();
    let sig: Value = serde_json::from_slice(&sig).unwrap();
    let payload = sig["layers"][0]["digest"].as_str().unwrap().to_string();
    let p = Signer::payload(&slow.digest, &s.name());
    let head = Canned::new(200).header("Content-Type", "application/octet-stream");
    canned.insert(
        format!("/v2/app/blobs/{payload}"),
        Reply::StallBody(head.body(p), 10),
    );
    let h = hostile(&s.src, canned);

    let (code, doc) = s.sync(&h, "read_timeout = \"1s\"\n");
    assert_eq!(code, Some(1), "{doc}");
    assert!(
        refused(&doc).is_empty(),
        "an unreadable signature is no refusal: {doc}"
    );
    for (tag, image) in [("stuck", &stuck), ("slow", &slow)] {
        let (class, error) = failure(&doc, tag).unwrap_or_else(|| panic!("{tag}: {doc}"));
        // transient either way: a timeout, or a body the transport gave up on
        assert!(
            ["timeout", "source_unreadable"].contains(&class.as_str()),
            "{tag}: {error}"
        );
        s.nothing_of(tag, image);
    }
    assert_eq!(
        manifest_bytes(&s.dst.url(), "mirror", "fine"),
        Some(fine.bytes.clone())
    );
}
