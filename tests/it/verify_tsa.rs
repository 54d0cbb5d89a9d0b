//! `[rule.verify] keyless` with an RFC 3161 timestamp as the only signing
//! time (no Rekor bundle), against a real docker-registry: the timestamp
//! comes from `openssl ts` (a real TSA, `support::tsa`), its authority is in
//! the trusted root's `timestampAuthorities`. A timestamp over the
//! signature's bytes lets the image through with its `.sig`; one over other
//! bytes, or from a TSA the root does not list, is refused.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::support::Registry;
use crate::support::cosign::{Fulcio, push_signature};
use crate::support::ferro::{get, manifest_bytes, push_image};
use crate::support::tsa::Tsa;
use crate::sync::{header, regkeeper};

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const SAN: &str = "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main";

fn tags(base: &str, repo: &str) -> BTreeSet<String> {
    let r = get(base, &format!("/v2/{repo}/tags/list")).expect("tags");
    let v: Value = serde_json::from_slice(&r.body).expect("tags JSON");
    (v["tags"].as_array().into_iter().flatten())
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_timestamp_over_the_signature_is_a_signing_time() {
    let (src, dst) = (Registry::start_plain(), Registry::start_plain());
    let dir = tempfile::tempdir().unwrap();
    let (fulcio, tsa, rogue_tsa) = (Fulcio::new(), Tsa::new(), Tsa::new());
    let (base, reference) = (src.url(), format!("{}/app", src.host()));
    let cases = ["good", "other-bytes", "rogue-tsa", "no-time"];
    let d: BTreeMap<&str, String> = (cases.iter())
        .map(|t| (*t, push_image(&base, "app", t, &format!("seed-{t}")).digest))
        .collect();
    for case in cases {
        let s = fulcio.sign_now(&d[case], &reference, ISSUER, SAN);
        let mut annotations = s.annotations;
        let stamp = match case {
            "good" => Some(tsa.annotation(&s.signature)),
            "other-bytes" => Some(tsa.annotation(b"not this signature")),
            "rogue-tsa" => Some(rogue_tsa.annotation(&s.signature)),
            _ => None,
        };
        if let Some(stamp) = stamp {
            annotations["dev.sigstore.cosign/rfc3161timestamp"] = Value::String(stamp);
        }
        push_signature(&base, "app", &d[case], &s.payload, annotations);
    }
    let mut root: Value = serde_json::from_str(&fulcio.trusted_root()).unwrap();
    root["timestampAuthorities"] = serde_json::json!([tsa.authority()]);
    let root_path = dir.path().join("sigstore-root.json");
    std::fs::write(&root_path, root.to_string()).unwrap();
    let mut text = header(dir.path(), &[&src, &dst]);
    text += &format!(
        "[[rule]]\nname = \"tsa\"\nsource = \"{}/app\"\ntargets = [\"{}/app\"]\n\
         [rule.verify]\nkeyless = {{ trusted_root = \"{}\", issuer = \"{ISSUER}\", identity = '^https://github.com/org/repo/' }}\n",
        src.host(),
        dst.host(),
        root_path.display()
    );
    assert!(regkeeper(dir.path(), &text, &["check"]).status.success());

    let out = regkeeper(dir.path(), &text, &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(1), "refusals make sync exit 1");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("sync JSON");
    let refused: BTreeMap<String, (String, String)> =
        (doc["rules"][0]["refused"].as_array().into_iter().flatten())
            .map(|x| {
                let s = |k: &str| x[k].as_str().unwrap_or_default().to_string();
                (s("tag"), (s("reason"), s("detail")))
            })
            .collect();
    let reasons: BTreeMap<&str, &str> = (refused.iter())
        .map(|(t, (r, _))| (t.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("no-time", "bad_signature"),
            ("other-bytes", "bad_signature"),
            ("rogue-tsa", "bad_signature"),
        ]),
        "{refused:?}"
    );
    assert!(
        refused["other-bytes"].1.contains("for other bytes"),
        "{refused:?}"
    );
    let sig = format!("sha256-{}.sig", d["good"].trim_start_matches("sha256:"));
    assert_eq!(
        tags(&dst.url(), "app"),
        BTreeSet::from(["good".to_string(), sig.clone()])
    );
    assert_eq!(
        manifest_bytes(&dst.url(), "app", &sig),
        manifest_bytes(&base, "app", &sig),
        "the signature arrives byte for byte, its timestamp with it"
    );
}
