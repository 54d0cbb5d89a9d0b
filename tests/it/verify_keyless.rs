//! `[rule.verify] keyless`: against a real docker-registry, only the image
//! whose keyless signature chains to the trusted root's CA, names the
//! configured issuer and identity, was made while its certificate was valid
//! (per a Rekor SignedEntryTimestamp of the root's log key) and covers this
//! payload arrives, with its `.sig`; each other case is refused with its
//! reason. The CA, log and signatures are the test's (`support::cosign::Fulcio`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::support::Registry;
use crate::support::cosign::{Fulcio, Leaf, NOON_2024, Signer};
use crate::support::ferro::{get, manifest_bytes, push_image};
use crate::sync::{header, regkeeper};

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const SAN: &str = "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main";

fn tags(base: &str, repo: &str) -> BTreeSet<String> {
    let r = get(base, &format!("/v2/{repo}/tags/list")).expect("tags");
    if r.status == 404 {
        return BTreeSet::new();
    }
    let v: Value = serde_json::from_slice(&r.body).expect("tags JSON");
    (v["tags"].as_array().into_iter().flatten())
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn refused(doc: &Value) -> BTreeMap<String, String> {
    (doc["rules"][0]["refused"].as_array().into_iter().flatten())
        .map(|x| {
            let s = |k: &str| x[k].as_str().unwrap().to_string();
            (s("tag"), s("reason"))
        })
        .collect()
}

#[test]
fn only_the_good_keyless_signature_arrives() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let dir = tempfile::tempdir().unwrap();
    let (fulcio, rogue) = (Fulcio::new(), Fulcio::new());
    let base = src.url();
    let reference = format!("{}/app", src.host());
    let tags_ = [
        "good",
        "issuer",
        "identity",
        "untrusted",
        "expired",
        "tampered",
    ];
    let d: BTreeMap<&str, String> = (tags_.iter())
        .map(|t| (*t, push_image(&base, "app", t, &format!("seed-{t}")).digest))
        .collect();
    let good = Leaf {
        issuer: ISSUER,
        san: SAN,
        logged_at: NOON_2024,
    };
    let sign = |f: &Fulcio, tag: &str, leaf: &Leaf, tampered: Option<&[u8]>| {
        f.push(&base, "app", &d[tag], &reference, leaf, tampered)
    };
    sign(&fulcio, "good", &good, None);
    sign(
        &fulcio,
        "issuer",
        &Leaf {
            issuer: "https://accounts.example",
            ..good
        },
        None,
    );
    let fork = "https://github.com/fork/repo/.github/workflows/release.yml@refs/heads/main";
    sign(&fulcio, "identity", &Leaf { san: fork, ..good }, None);
    sign(&rogue, "untrusted", &good, None);
    sign(
        &fulcio,
        "expired",
        &Leaf {
            logged_at: NOON_2024 + 3 * 86_400,
            ..good
        },
        None,
    );
    let other = Signer::payload(&d["tampered"], "evil.example/app");
    sign(&fulcio, "tampered", &good, Some(&other));

    let root = dir.path().join("sigstore-root.json");
    std::fs::write(&root, fulcio.trusted_root()).unwrap();
    let mut text = header(dir.path(), &[&src, &dst]);
    text += &format!(
        "[[rule]]\nname = \"keyless\"\nsource = \"{}/app\"\ntargets = [\"{}/app\"]\n\
         [rule.verify]\nkeyless = {{ trusted_root = \"{}\", issuer = \"{ISSUER}\", identity = '^https://github.com/org/repo/' }}\n",
        src.host(),
        dst.host(),
        root.display()
    );
    let check = regkeeper(dir.path(), &text, &["check"]);
    assert!(check.status.success(), "check accepts the keyless config");

    let out = regkeeper(dir.path(), &text, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(1), "refusals make sync exit 1");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("sync JSON");
    let want: BTreeMap<String, String> = [
        ("issuer", "identity_mismatch"),
        ("identity", "identity_mismatch"),
        ("untrusted", "wrong_key"),
        ("expired", "bad_signature"),
        ("tampered", "bad_signature"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(refused(&doc), want);

    let sig = format!("sha256-{}.sig", d["good"].trim_start_matches("sha256:"));
    let dbase = dst.url();
    assert_eq!(
        tags(&dbase, "app"),
        BTreeSet::from(["good".to_string(), sig.clone()])
    );
    assert_eq!(
        manifest_bytes(&dbase, "app", &sig),
        manifest_bytes(&base, "app", &sig),
        "the signature arrives byte for byte"
    );
}

#[test]
fn a_trusted_root_without_a_ca_is_a_config_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.json");
    std::fs::write(&root, r#"{"certificateAuthorities": [], "tlogs": []}"#).unwrap();
    let text = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\n[[rule]]\nname = \"k\"\nsource = \"127.0.0.1:1/a\"\ntargets = [\"127.0.0.1:2/a\"]\n\
         [rule.verify]\nkeyless = {{ trusted_root = \"{}\", issuer = \"{ISSUER}\", identity = '^x' }}\n",
        dir.path().join("state").display().to_string(),
        root.display()
    );
    let out = regkeeper(dir.path(), &text, &["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":9:") && err.contains("no certificate authority"),
        "{err}"
    );
}
