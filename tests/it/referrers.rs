//! OCI 1.1 referrers, both ways (SPEC section 4 step 4): referrers pushed by
//! digest with a `subject` (notation, `oras attach`, cosign in OCI 1.1 mode)
//! and the `sha256-<hex>` fallback index, between a registry with the
//! referrers API (ferro-oci-server) and one without (distribution 2.8).
//! Every check reads the target's own API, tags or fallback index.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::support::ferro::*;
use crate::support::*;
use crate::sync::{regkeeper, stdout};

const SPDX: &str = "application/spdx+json";
const SIG: &str = "application/vnd.cncf.notary.signature";

/// An image with an SBOM and a signature, and a signature of the SBOM.
struct Signed {
    image: Pushed,
    sbom: Pushed,
    sig: Pushed,
    sbom_sig: Pushed,
}

fn seed_api(base: &str, repo: &str) -> Signed {
    let image = push_image(base, repo, "v1", "signed");
    let (sbom, resp) = push_referrer(base, repo, &image, SPDX, br#"{"spdxVersion":"SPDX-2.3"}"#);
    assert!(
        resp.header("oci-subject").is_some(),
        "ferro indexes the subject"
    );
    let (sig, _) = push_referrer(base, repo, &image, SIG, b"signature of the image");
    let (sbom_sig, _) = push_referrer(base, repo, &sbom, SIG, b"signature of the SBOM");
    Signed {
        image,
        sbom,
        sig,
        sbom_sig,
    }
}

fn config(dir: &Path, hosts: &str, source: &str, target: &str, extra: &str) -> String {
    format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{hosts}\n[[rule]]\nname = \"r\"\nsource = \"{source}\"\ntargets = [\"{target}\"]\ntags.include = ['^v1$']\n{extra}\n",
        dir.join("state").display().to_string()
    )
}

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("JSON ({e}): {}", stdout(o)))
}

/// (target, tag, digest) of every copy a `plan --json` / `sync --json` lists.
fn copies(doc: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in doc["rules"].as_array().unwrap() {
        for c in rule["copies"].as_array().unwrap() {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            out.insert((s("target"), s("tag"), s("digest")));
        }
    }
    out
}

fn run_ok(dir: &Path, cfg: &str, args: &[&str]) -> Value {
    let o = regkeeper(dir, cfg, args);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stdout(&o));
    json(&o)
}

fn digests(list: &[&Pushed]) -> BTreeSet<String> {
    list.iter().map(|p| p.digest.clone()).collect()
}

#[test]
fn api_to_api_pushes_referrers_by_digest_recursively_and_a_rerun_writes_nothing() {
    let src = Ferro::start();
    let dst = Ferro::start();
    // A recorder in front of the target: ferro logs no requests itself.
    let proxy = HttpFaultProxy::start(&dst.url());
    let s = seed_api(&src.url(), "app");
    let dir = tempfile::tempdir().unwrap();
    let hosts = src.regkeeper_registry_toml() + &proxy.registry_toml("");
    let cfg = config(
        dir.path(),
        &hosts,
        &format!("{}/app", src.host()),
        &format!("{}/mirror", proxy.host()),
        "",
    );

    // plan lists the referrer copies, and sends no write.
    let plan = run_ok(dir.path(), &cfg, &["plan", "--json"]);
    assert!(
        proxy
            .records()
            .iter()
            .all(|r| r.method == "GET" || r.method == "HEAD"),
        "plan sends no write: {:?}",
        proxy.records()
    );
    let planned = copies(&plan);
    let planned_digests: BTreeSet<String> = planned.iter().map(|c| c.2.clone()).collect();
    assert_eq!(
        planned_digests,
        digests(&[&s.image, &s.sbom, &s.sig, &s.sbom_sig]),
        "{planned:?}"
    );
    let sync = run_ok(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(copies(&sync), planned, "plan == sync");

    // The target's own API lists both referrers, and the SBOM's signature.
    let base = dst.url();
    let listed = referrers(&base, "mirror", &s.image.digest);
    assert_eq!(entry_digests(&listed), digests(&[&s.sbom, &s.sig]));
    let types: BTreeSet<&str> = listed
        .iter()
        .filter_map(|e| e["artifactType"].as_str())
        .collect();
    assert_eq!(types, BTreeSet::from([SPDX, SIG]));
    let listed = referrers(&base, "mirror", &s.sbom.digest);
    assert_eq!(entry_digests(&listed), digests(&[&s.sbom_sig]));
    // Byte for byte.
    for p in [&s.image, &s.sbom, &s.sig, &s.sbom_sig] {
        assert_eq!(
            manifest_bytes(&base, "mirror", &p.digest).as_deref(),
            Some(&p.bytes[..]),
            "{}",
            p.digest
        );
    }
    // No fallback tag at a target with the API.
    let tags = get(&base, "/v2/mirror/tags/list").unwrap().text();
    assert!(!tags.contains("sha256-"), "{tags}");

    // A re-run writes nothing and plans nothing.
    proxy.clear_records();
    let again = run_ok(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(copies(&again), BTreeSet::new());
    let writes: Vec<_> = proxy
        .records()
        .into_iter()
        .filter(|r| r.method != "GET" && r.method != "HEAD")
        .collect();
    assert!(writes.is_empty(), "re-run wrote: {writes:?}");
}
