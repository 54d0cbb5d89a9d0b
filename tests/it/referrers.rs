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
    proxy.clear_records();
    let sync = run_ok(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(copies(&sync), planned, "plan == sync");
    eprintln!(
        "target requests of the first sync: {}",
        by_method(&proxy.records())
    );

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
    eprintln!(
        "target requests of the re-run: {}",
        by_method(&proxy.records())
    );
}

/// `GET 5, PUT 4`: what a proxy saw, by method.
fn by_method(records: &[Record]) -> String {
    let mut n = std::collections::BTreeMap::<&str, usize>::new();
    for r in records {
        *n.entry(r.method.as_str()).or_default() += 1;
    }
    n.iter()
        .map(|(m, c)| format!("{m} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn api_to_distribution_merges_the_fallback_index_keeping_foreign_entries() {
    let src = Ferro::start();
    let dst = Registry::start_plain();
    let s = seed_api(&src.url(), "app");
    // Another tool's referrer, already listed in the target's fallback index.
    let (foreign, _) = push_referrer(&dst.url(), "mirror", &s.image, SIG, b"someone else's");
    push_fallback_index(&dst.url(), "mirror", &s.image.digest, &[&foreign]);
    let dir = tempfile::tempdir().unwrap();
    let hosts = src.regkeeper_registry_toml() + &dst.regkeeper_registry_toml();
    let cfg = config(
        dir.path(),
        &hosts,
        &format!("{}/app", src.host()),
        &format!("{}/mirror", dst.host()),
        "",
    );
    run_ok(dir.path(), &cfg, &["sync", "--json"]);

    let fallback = |subject: &Pushed| -> Vec<Value> {
        let tag = format!("sha256-{}", subject.digest.trim_start_matches("sha256:"));
        let bytes = manifest_bytes(&dst.url(), "mirror", &tag).expect("fallback index");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["mediaType"], OCI_INDEX);
        v["manifests"].as_array().cloned().unwrap()
    };
    let listed = fallback(&s.image);
    assert_eq!(
        entry_digests(&listed),
        digests(&[&foreign, &s.sbom, &s.sig]),
        "the foreign entry is kept, both referrers are added"
    );
    assert_eq!(
        listed[0]["digest"],
        foreign.digest.as_str(),
        "foreign entry first, as it was"
    );
    assert!(
        listed.iter().any(|e| e["artifactType"] == SPDX),
        "entries keep their artifactType: {listed:?}"
    );
    assert_eq!(entry_digests(&fallback(&s.sbom)), digests(&[&s.sbom_sig]));
    for p in [&s.image, &s.sbom, &s.sig, &s.sbom_sig] {
        assert_eq!(
            manifest_bytes(&dst.url(), "mirror", &p.digest).as_deref(),
            Some(&p.bytes[..])
        );
    }

    // Nothing changed: the re-run sends no write (the registry's access log).
    let mark = dst.mark();
    let again = run_ok(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(copies(&again), BTreeSet::new());
    assert_eq!(dst.writes_since(mark), vec![], "re-run is a no-op");
}

#[test]
fn distribution_fallback_index_and_cosign_tag_reach_an_api_target() {
    let src = Registry::start_plain();
    let dst = Ferro::start();
    let base = src.url();
    let image = push_image(&base, "app", "v1", "tagged");
    let (sbom, _) = push_referrer(&base, "app", &image, SPDX, br#"{"spdxVersion":"SPDX-2.3"}"#);
    push_fallback_index(&base, "app", &image.digest, &[&sbom]);
    // A cosign signature in its tag schema (no subject).
    let sig_tag = format!("sha256-{}.sig", image.digest.trim_start_matches("sha256:"));
    let cosign = push_image(&base, "app", &sig_tag, "cosign-sig");
    let dir = tempfile::tempdir().unwrap();
    let hosts = src.regkeeper_registry_toml() + &dst.regkeeper_registry_toml();
    let cfg = config(
        dir.path(),
        &hosts,
        &format!("{}/app", src.host()),
        &format!("{}/mirror", dst.host()),
        "",
    );
    run_ok(dir.path(), &cfg, &["sync", "--json"]);

    let listed = referrers(&dst.url(), "mirror", &image.digest);
    assert_eq!(entry_digests(&listed), digests(&[&sbom]), "{listed:?}");
    assert_eq!(
        manifest_bytes(&dst.url(), "mirror", &sbom.digest).as_deref(),
        Some(&sbom.bytes[..])
    );
    let tags: Value =
        serde_json::from_slice(&get(&dst.url(), "/v2/mirror/tags/list").unwrap().body).unwrap();
    let tags: BTreeSet<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        tags,
        BTreeSet::from(["v1", sig_tag.as_str()]),
        "the cosign tag comes along; no fallback index at an API target"
    );
    assert_eq!(
        manifest_bytes(&dst.url(), "mirror", &sig_tag).as_deref(),
        Some(&cosign.bytes[..])
    );
    let again = run_ok(dir.path(), &cfg, &["plan", "--json"]);
    assert_eq!(copies(&again), BTreeSet::new(), "nothing left to do");
}

#[test]
fn referrers_artifact_types_limits_what_is_copied() {
    let src = Ferro::start();
    let dst = Ferro::start();
    let s = seed_api(&src.url(), "app");
    let dir = tempfile::tempdir().unwrap();
    let hosts = src.regkeeper_registry_toml() + &dst.regkeeper_registry_toml();
    let cfg = config(
        dir.path(),
        &hosts,
        &format!("{}/app", src.host()),
        &format!("{}/mirror", dst.host()),
        &format!("referrers_artifact_types = [\"{SPDX}\"]"),
    );
    run_ok(dir.path(), &cfg, &["sync", "--json"]);
    let listed = referrers(&dst.url(), "mirror", &s.image.digest);
    assert_eq!(entry_digests(&listed), digests(&[&s.sbom]), "only the SBOM");
    assert!(referrers(&dst.url(), "mirror", &s.sbom.digest).is_empty());
    assert!(manifest_bytes(&dst.url(), "mirror", &s.sig.digest).is_none());
}

#[test]
fn a_platform_filter_keeps_buildx_attestations_of_kept_platforms() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let base = src.url();
    let amd = push_image(&base, "app", "amd", "amd64");
    let arm = push_image(&base, "app", "arm", "arm64");
    let att_amd = push_image(&base, "app", "att-amd", "attestation of amd64");
    let att_arm = push_image(&base, "app", "att-arm", "attestation of arm64");
    let entry = |p: &Pushed, arch: &str| {
        let mut e = p.descriptor();
        e["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        e
    };
    let att = |p: &Pushed, of: &Pushed| {
        let mut e = p.descriptor();
        e["platform"] = serde_json::json!({"os": "unknown", "architecture": "unknown"});
        e["annotations"] = serde_json::json!({
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": of.digest,
        });
        e
    };
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        entry(&amd, "amd64"), entry(&arm, "arm64"), att(&att_amd, &amd), att(&att_arm, &arm)]});
    put_manifest(
        &base,
        "app",
        "v1",
        OCI_INDEX,
        &serde_json::to_vec(&index).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let hosts = src.regkeeper_registry_toml() + &dst.regkeeper_registry_toml();
    let cfg = config(
        dir.path(),
        &hosts,
        &format!("{}/app", src.host()),
        &format!("{}/mirror", dst.host()),
        "platforms = [\"linux/amd64\"]",
    );
    run_ok(dir.path(), &cfg, &["sync", "--json"]);
    let bytes = manifest_bytes(&dst.url(), "mirror", "v1").expect("filtered index");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let listed = entry_digests(v["manifests"].as_array().unwrap());
    assert_eq!(listed, digests(&[&amd, &att_amd]), "{v}");
    assert_eq!(
        manifest_bytes(&dst.url(), "mirror", &att_amd.digest).as_deref(),
        Some(&att_amd.bytes[..]),
        "the kept platform's attestation is copied"
    );
    assert!(manifest_bytes(&dst.url(), "mirror", &att_arm.digest).is_none());
    assert!(manifest_bytes(&dst.url(), "mirror", &arm.digest).is_none());
}

#[test]
fn retention_deletes_api_referrers_before_their_subject_and_keeps_those_of_kept_images() {
    let src = Ferro::start();
    let dst = Ferro::start();
    let base = src.url();
    let old = push_image(&base, "app", "1.0.0", "old");
    let (old_sbom, _) = push_referrer(&base, "app", &old, SPDX, b"sbom of the old one");
    let new = push_image(&base, "app", "2.0.0", "new");
    let (new_sbom, _) = push_referrer(&base, "app", &new, SPDX, b"sbom of the new one");
    let dir = tempfile::tempdir().unwrap();
    let hosts = src.regkeeper_registry_toml() + &dst.regkeeper_registry_toml();
    let rule = format!(
        "[[rule]]\nname = \"r\"\nsource = \"{}/app\"\ntargets = [\"{}/mirror\"]\n",
        src.host(),
        dst.host()
    );
    let head = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{hosts}\n",
        dir.path().join("state").display().to_string()
    );
    run_ok(dir.path(), &format!("{head}{rule}"), &["sync", "--json"]);
    let at = |d: &Pushed| manifest_bytes(&dst.url(), "mirror", &d.digest).is_some();
    assert!(at(&old) && at(&old_sbom) && at(&new) && at(&new_sbom));

    let retention = "[rule.retention]\nmatch = ['^\\d+\\.\\d+\\.\\d+$']\nkeep_last = 1\n";
    let doc = run_ok(
        dir.path(),
        &format!("{head}{rule}{retention}"),
        &["sync", "--json"],
    );
    let deleted: BTreeSet<String> = doc["rules"][0]["deletions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deleted, digests(&[&old, &old_sbom]), "{doc}");
    assert!(
        !at(&old) && !at(&old_sbom),
        "the old image and its SBOM are gone"
    );
    assert!(at(&new) && at(&new_sbom), "the kept image keeps its SBOM");
    assert_eq!(
        entry_digests(&referrers(&dst.url(), "mirror", &new.digest)),
        digests(&[&new_sbom])
    );
    // And the dropped image's SBOM is not copied back.
    let again = run_ok(
        dir.path(),
        &format!("{head}{rule}{retention}"),
        &["sync", "--json"],
    );
    assert_eq!(copies(&again), BTreeSet::new(), "{again}");
    assert!(!at(&old_sbom));
}

#[test]
fn api_to_layout_writes_a_fallback_index_and_a_rerun_leaves_it_alone() {
    let src = Ferro::start();
    let s = seed_api(&src.url(), "app");
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let cfg = config(
        dir.path(),
        &src.regkeeper_registry_toml(),
        &format!("{}/app", src.host()),
        &format!("oci:{}", layout.display()),
        "",
    );
    run_ok(dir.path(), &cfg, &["sync", "--json"]);
    // skopeo reads the layout's fallback index by its tag.
    let tag = format!("sha256-{}", s.image.digest.trim_start_matches("sha256:"));
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = out.stdout;
    let v: Value = serde_json::from_slice(&raw).expect("fallback index");
    assert_eq!(
        entry_digests(v["manifests"].as_array().unwrap()),
        digests(&[&s.sbom, &s.sig])
    );
    for p in [&s.image, &s.sbom, &s.sig, &s.sbom_sig] {
        let blob = layout
            .join("blobs/sha256")
            .join(p.digest.trim_start_matches("sha256:"));
        assert_eq!(std::fs::read(&blob).ok().as_deref(), Some(&p.bytes[..]));
    }
    let index = std::fs::read(layout.join("index.json")).unwrap();
    let again = run_ok(dir.path(), &cfg, &["sync", "--json"]);
    assert_eq!(copies(&again), BTreeSet::new());
    assert_eq!(std::fs::read(layout.join("index.json")).unwrap(), index);
}

/// Whether a registry has the referrers API is asked once per registry, not
/// once per repository: repositories inventoried at once wait for the first
/// answer (distribution's 404) instead of each sending the probe.
#[test]
fn a_registry_without_the_api_is_probed_once_per_run() {
    let src = Registry::start_plain();
    let dst = Registry::start_plain();
    let mut corpus = Corpus::new();
    let img = corpus.image("one", &ImageSpec::new(&[layer("probe", 3000)]));
    for i in 0..8 {
        corpus.push(&src, "one", &format!("pr/app{i}"), "v1");
    }
    let dir = tempfile::tempdir().unwrap();
    let hosts = src.regkeeper_registry_toml() + &dst.regkeeper_registry_toml();
    let cfg = config(
        dir.path(),
        &hosts,
        &format!("{}/pr/*", src.host()),
        &format!("{}/m/*", dst.host()),
        "",
    );
    let mark = src.mark();
    run_ok(dir.path(), &cfg, &["sync", "--json"]);
    let probes = src.count_since(mark, |r| r.path.contains("/referrers/"));
    assert_eq!(probes, 1, "{:#?}", src.requests_since(mark));
    for i in 0..8 {
        assert_eq!(dst.digest_of(&format!("m/app{i}"), "v1"), img.digest);
    }
}
