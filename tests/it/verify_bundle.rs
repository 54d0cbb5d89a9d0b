//! `[rule.verify]` with signatures found as OCI 1.1 referrers (sigstore
//! bundles, as cosign v3 attaches them) on ferro-oci-server, a registry with
//! the referrers API, as source and target: an image signed only by a
//! bundle arrives with its bundle referrer (read back through the target's
//! referrers API); a bundle for another digest, or by another key, and no
//! signature at all are refused with their reasons, and nothing of those
//! images is written. Keyless bundles (a test CA and log key standing in for
//! Fulcio and Rekor): only the one by the configured identity, under the
//! trusted CA, with a log entry about its own signature, arrives.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::cosign::{Fulcio, Leaf, Logged, NOON_2024, SIGSTORE_BUNDLE, Signer};
use crate::support::ferro::{
    Ferro, entry_digests, manifest_bytes, push_image, push_referrer, referrers,
};
use crate::sync::regkeeper;

fn refusals(doc: &Value) -> BTreeMap<String, String> {
    (doc["rules"].as_array().unwrap().iter())
        .flat_map(|r| r["refused"].as_array().cloned().unwrap_or_default())
        .map(|x| {
            let s = |k: &str| x[k].as_str().unwrap().to_string();
            (s("tag"), s("reason"))
        })
        .collect()
}

#[test]
fn images_signed_by_bundle_referrers_arrive_with_them() {
    let (src, dst) = (Ferro::start(), Ferro::start());
    let (ours, theirs) = (Signer::new(), Signer::new());
    let base = src.url();
    let image = |tag: &str| push_image(&base, "app", tag, &format!("seed-{tag}"));
    let (signed, elsewhere, foreign, _unsigned) = (
        image("signed"),
        image("elsewhere"),
        image("foreign"),
        image("unsigned"),
    );
    let name = format!("{}/app", src.host());
    let bundle = |s: &Signer, digest: &str| s.dsse_bundle(&Signer::statement(digest, &name));
    let push =
        |subject, bytes: Vec<u8>| push_referrer(&base, "app", subject, SIGSTORE_BUNDLE, &bytes).0;
    let good = push(&signed, bundle(&ours, &signed.digest));
    push(&elsewhere, bundle(&ours, &signed.digest));
    push(&foreign, bundle(&theirs, &foreign.digest));

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, ours.public_pem()).unwrap();
    let config = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{}{}\
         [[rule]]\nname = \"app\"\nsource = \"{}/app\"\ntargets = [\"{}/mirror\"]\n\
         [rule.verify]\nsigstore_keys = [{:?}]\n",
        dir.path().join("state").display().to_string(),
        src.regkeeper_registry_toml(),
        dst.regkeeper_registry_toml(),
        src.host(),
        dst.host(),
        key.display().to_string(),
    );
    let out = regkeeper(dir.path(), &config, &["sync", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sync JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "refusals make sync exit 1");
    let want: BTreeMap<String, String> = [
        ("elsewhere", "digest_mismatch"),
        ("foreign", "bad_signature"),
        ("unsigned", "unsigned"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(refusals(&doc), want, "{doc}");

    let target = dst.url();
    // The signed image arrived, byte for byte, with its bundle referrer.
    assert_eq!(
        manifest_bytes(&target, "mirror", "signed"),
        Some(signed.bytes.clone())
    );
    let listed = referrers(&target, "mirror", &signed.digest);
    assert_eq!(
        entry_digests(&listed),
        [good.digest.clone()].into(),
        "{listed:?}"
    );
    assert_eq!(listed[0]["artifactType"], SIGSTORE_BUNDLE);
    assert_eq!(
        manifest_bytes(&target, "mirror", &good.digest),
        Some(good.bytes.clone())
    );
    // Nothing of the refused images was written.
    for refused in [&elsewhere, &foreign] {
        assert_eq!(manifest_bytes(&target, "mirror", &refused.digest), None);
    }
    for tag in ["elsewhere", "foreign", "unsigned"] {
        assert_eq!(manifest_bytes(&target, "mirror", tag), None, "{tag}");
    }
}

#[test]
fn keyless_bundles_arrive_only_with_every_check() {
    let (src, dst) = (Ferro::start(), Ferro::start());
    let (fulcio, rogue) = (Fulcio::new(), Fulcio::new());
    let base = src.url();
    let tags = ["good", "identity", "other_entry", "unlogged", "untrusted"];
    let images: BTreeMap<&str, _> = (tags.iter())
        .map(|t| (*t, push_image(&base, "app", t, &format!("seed-{t}"))))
        .collect();
    let name = format!("{}/app", src.host());
    let issuer = "https://token.actions.githubusercontent.com";
    let good = Leaf {
        issuer,
        san: "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main",
        logged_at: NOON_2024,
    };
    let fork = Leaf {
        san: "https://github.com/fork/repo/.github/workflows/release.yml@refs/heads/main",
        ..good
    };
    let cases = [
        ("good", &fulcio, &good, Logged::This),
        ("identity", &fulcio, &fork, Logged::This),
        ("other_entry", &fulcio, &good, Logged::AnotherSignature),
        ("unlogged", &fulcio, &good, Logged::Nothing),
        ("untrusted", &rogue, &good, Logged::This),
    ];
    let mut bundles = BTreeMap::new();
    for (tag, ca, leaf, logged) in cases {
        let digest = &images[tag].digest;
        let bytes = ca.keyless_bundle(&Signer::statement(digest, &name), leaf, logged);
        let pushed = push_referrer(&base, "app", &images[tag], SIGSTORE_BUNDLE, &bytes).0;
        bundles.insert(tag, pushed);
    }

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sigstore-root.json");
    std::fs::write(&root, fulcio.trusted_root()).unwrap();
    let config = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{}{}\
         [[rule]]\nname = \"app\"\nsource = \"{}/app\"\ntargets = [\"{}/mirror\"]\n\
         [rule.verify]\nkeyless = {{ trusted_root = {:?}, issuer = \"{issuer}\", identity = '^https://github.com/org/repo/' }}\n",
        dir.path().join("state").display().to_string(),
        src.regkeeper_registry_toml(),
        dst.regkeeper_registry_toml(),
        src.host(),
        dst.host(),
        root.display().to_string(),
    );
    let out = regkeeper(dir.path(), &config, &["sync", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sync JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "refusals make sync exit 1");
    let want: BTreeMap<String, String> = [
        ("identity", "identity_mismatch"),
        ("other_entry", "bad_signature"),
        ("unlogged", "bad_signature"),
        ("untrusted", "wrong_key"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(refusals(&doc), want, "{doc}");
    let details = doc.to_string();
    assert!(details.contains("no verifiable signing time"), "{doc}");

    let target = dst.url();
    let signed = &images["good"];
    assert_eq!(
        manifest_bytes(&target, "mirror", "good"),
        Some(signed.bytes.clone())
    );
    let listed = referrers(&target, "mirror", &signed.digest);
    let bundle = &bundles["good"];
    assert_eq!(
        entry_digests(&listed),
        [bundle.digest.clone()].into(),
        "{listed:?}"
    );
    assert_eq!(
        manifest_bytes(&target, "mirror", &bundle.digest),
        Some(bundle.bytes.clone())
    );
    for tag in ["identity", "other_entry", "unlogged", "untrusted"] {
        assert_eq!(manifest_bytes(&target, "mirror", tag), None, "{tag}");
        let d = &images[tag].digest;
        assert_eq!(manifest_bytes(&target, "mirror", d), None, "{tag}");
        let b = &bundles[tag].digest;
        assert_eq!(manifest_bytes(&target, "mirror", b), None, "{tag}");
    }
}
