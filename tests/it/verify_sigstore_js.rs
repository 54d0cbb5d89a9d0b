//! `[rule.verify] keyless` against bundles made by a real sigstore signer:
//! sigstore-js (`@sigstore/sign`) signs cosign's image statement through
//! in-process stand-ins for Fulcio, Rekor and a timestamp authority
//! (`@sigstore/mock`), writes the bundle and the matching trusted_root.json,
//! and `@sigstore/verify` accepts the bundle before the test uses it
//! (tests/it/support/sigstore_js/sign.mjs). The bundle is attached as an
//! OCI 1.1 referrer on ferro-oci-server; `regkeeper sync` mirrors to a
//! second ferro, read back by raw HTTP (in the dsse case the referrer is
//! written by sigstore-js's registry client, `@sigstore/oci`). Also: sigstore-js's verifier
//! accepts the key-based bundles of our own helper (`support::cosign`) and
//! rejects a tampered one.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use crate::support::cosign::{SIGSTORE_BUNDLE, Signer};
use crate::support::ferro::{
    Ferro, Pushed, entry_digests, manifest_bytes, push_image, push_referrer, referrers,
};
use crate::sync::regkeeper;

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const SAN: &str = "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main";
const IDENTITY: &str = "^https://github.com/org/repo/";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/sigstore_js")
}

/// Runs `node SCRIPT args` in the fixtures directory; panics with node's
/// output unless it exits 0 (`expect_ok`) or unless it fails (otherwise).
fn node(script: &str, args: &[&str], expect_ok: bool) -> String {
    let dir = scripts();
    assert!(
        dir.join("node_modules/@sigstore/sign").is_dir(),
        "sigstore-js is not installed: run scripts/test.sh or `npm ci` in {}",
        dir.display()
    );
    let out = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("run node (scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.success(),
        expect_ok,
        "node {script} {args:?}:\n{text}"
    );
    text
}

/// What sigstore-js signed: the bundle's bytes and the trusted root's path.
struct Signed {
    bundle: Vec<u8>,
    root: PathBuf,
}

/// Signs `digest` (named `name`) keyless as `san`, with `opts` for the
/// witnesses (`--tlog dsse|intoto|none`, `--tsa`).
fn sign(out: &Path, digest: &str, name: &str, san: &str, opts: &[&str]) -> Signed {
    let dir = out.to_str().unwrap();
    let mut args = vec![dir, digest, name, "--identity", san, "--issuer", ISSUER];
    args.extend_from_slice(opts);
    node("sign.mjs", &args, true);
    Signed {
        bundle: std::fs::read(out.join("bundle.json")).expect("bundle.json"),
        root: out.join("trusted_root.json"),
    }
}

/// One image `app:v1` at a source ferro with a sigstore-js bundle attached
/// as a referrer, mirrored by `regkeeper sync --json` under keyless
/// verification to `mirror` at a second ferro.
struct Case {
    dst: Ferro,
    image: Pushed,
    referrer: Pushed,
    bundle: Vec<u8>,
    exit: Option<i32>,
    doc: Value,
}

/// `statement_digest`: the digest the signed statement names (`None`: the
/// image's own). `attach_with_sigstore_oci`: the referrer is written by
/// sigstore-js's registry client (attach.mjs) instead of our raw HTTP.
fn run(
    opts: &[&str],
    san: &str,
    statement_digest: Option<&str>,
    attach_with_sigstore_oci: bool,
) -> Case {
    run_tampered(
        opts,
        san,
        statement_digest,
        attach_with_sigstore_oci,
        |_| (),
    )
}

/// `run`, with the signed bundle changed by `tamper` before it is attached.
fn run_tampered(
    opts: &[&str],
    san: &str,
    statement_digest: Option<&str>,
    attach_with_sigstore_oci: bool,
    tamper: impl Fn(&mut Value),
) -> Case {
    let (src, dst) = (Ferro::start(), Ferro::start());
    let base = src.url();
    let image = push_image(&base, "app", "v1", "sigstore-js");
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}/app", src.host());
    let digest = statement_digest.unwrap_or(&image.digest);
    let mut signed = sign(&dir.path().join("signed"), digest, &name, san, opts);
    let mut doc: Value = serde_json::from_slice(&signed.bundle).unwrap();
    tamper(&mut doc);
    signed.bundle = serde_json::to_vec(&doc).unwrap();
    std::fs::write(dir.path().join("signed/bundle.json"), &signed.bundle).unwrap();
    let referrer = if attach_with_sigstore_oci {
        let path = dir.path().join("signed/bundle.json");
        let args = [name.as_str(), image.digest.as_str(), path.to_str().unwrap()];
        let out = node("attach.mjs", &args, true);
        let d: Value = serde_json::from_str(out.trim()).expect("attach.mjs prints a descriptor");
        let digest = d["digest"].as_str().expect("descriptor digest").to_string();
        Pushed {
            bytes: manifest_bytes(&base, "app", &digest).expect("the attached referrer"),
            digest,
            artifact_type: Some(SIGSTORE_BUNDLE.into()),
        }
    } else {
        let (r, resp) = push_referrer(&base, "app", &image, SIGSTORE_BUNDLE, &signed.bundle);
        assert_eq!(resp.status, 201, "ferro takes the bundle referrer");
        r
    };
    let config = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{}{}\
         [[rule]]\nname = \"app\"\nsource = \"{}/app\"\ntargets = [\"{}/mirror\"]\n\
         [rule.verify]\nkeyless = {{ trusted_root = {:?}, issuer = \"{ISSUER}\", identity = '{IDENTITY}' }}\n",
        dir.path().join("state").display().to_string(),
        src.regkeeper_registry_toml(),
        dst.regkeeper_registry_toml(),
        src.host(),
        dst.host(),
        signed.root.display().to_string(),
    );
    let check = regkeeper(dir.path(), &config, &["check"]);
    assert!(
        check.status.success(),
        "check accepts sigstore-js's trusted root"
    );
    let out = regkeeper(dir.path(), &config, &["sync", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sync JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    Case {
        dst,
        image,
        referrer,
        bundle: signed.bundle,
        exit: out.status.code(),
        doc,
    }
}

/// (tag, reason, detail) of every refusal.
fn refusals(doc: &Value) -> Vec<(String, String, String)> {
    (doc["rules"].as_array().into_iter().flatten())
        .flat_map(|r| r["refused"].as_array().cloned().unwrap_or_default())
        .map(|x| {
            let s = |k: &str| x[k].as_str().unwrap_or_default().to_string();
            (s("tag"), s("reason"), s("detail"))
        })
        .collect()
}

/// The image arrived byte for byte with its bundle referrer, listed by the
/// target's referrers API.
fn assert_arrived(c: &Case) {
    assert_eq!(c.exit, Some(0), "a verified image syncs cleanly: {}", c.doc);
    assert_eq!(refusals(&c.doc), vec![], "{}", c.doc);
    let target = c.dst.url();
    assert_eq!(
        manifest_bytes(&target, "mirror", "v1"),
        Some(c.image.bytes.clone())
    );
    let listed = referrers(&target, "mirror", &c.image.digest);
    assert_eq!(
        entry_digests(&listed),
        [c.referrer.digest.clone()].into(),
        "{listed:?}"
    );
    assert_eq!(
        manifest_bytes(&target, "mirror", &c.referrer.digest),
        Some(c.referrer.bytes.clone())
    );
}

/// Refused for `reason`, and nothing of the image reached the target.
fn assert_refused(c: &Case, reason: &str) {
    assert_eq!(c.exit, Some(1), "a refusal makes sync exit 1: {}", c.doc);
    let got = refusals(&c.doc);
    assert_eq!(got.len(), 1, "{}", c.doc);
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str()),
        ("v1", reason),
        "{got:?}"
    );
    let target = c.dst.url();
    for r in ["v1", &c.image.digest, &c.referrer.digest] {
        assert_eq!(manifest_bytes(&target, "mirror", r), None, "{r}");
    }
    assert_eq!(
        referrers(&target, "mirror", &c.image.digest),
        Vec::<Value>::new()
    );
}

/// The referrer here is written by sigstore-js's `@sigstore/oci`.
#[test]
fn a_bundle_logged_as_a_dsse_entry_arrives_with_its_referrer() {
    let c = run(&["--tlog", "dsse"], SAN, None, true);
    let b: Value = serde_json::from_slice(&c.bundle).unwrap();
    let kind = &b["verificationMaterial"]["tlogEntries"][0]["kindVersion"];
    assert_eq!(kind["kind"], "dsse", "sigstore-js logged a dsse entry: {b}");
    assert_arrived(&c);
}

#[test]
fn a_bundle_logged_as_an_intoto_entry_arrives_with_its_referrer() {
    let c = run(&["--tlog", "intoto"], SAN, None, false);
    let b: Value = serde_json::from_slice(&c.bundle).unwrap();
    let kind = &b["verificationMaterial"]["tlogEntries"][0]["kindVersion"];
    assert_eq!(
        kind["kind"], "intoto",
        "sigstore-js logged an intoto entry: {b}"
    );
    assert_arrived(&c);
}

#[test]
fn a_bundle_timestamped_by_a_tsa_without_a_log_entry_arrives() {
    let c = run(&["--tlog", "none", "--tsa"], SAN, None, false);
    let b: Value = serde_json::from_slice(&c.bundle).unwrap();
    let m = &b["verificationMaterial"];
    assert!(m["tlogEntries"].as_array().is_none_or(Vec::is_empty), "{m}");
    let ts = &m["timestampVerificationData"]["rfc3161Timestamps"];
    assert_eq!(ts.as_array().map(Vec::len), Some(1), "{m}");
    assert_arrived(&c);
}

/// A genuine timestamp of the same TSA, but over another signature's
/// bytes, dates nothing: refused, nothing written.
#[test]
fn a_bundle_with_a_timestamp_of_other_bytes_is_refused() {
    let other = tempfile::tempdir().unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let opts = ["--tlog", "none", "--tsa"];
    let foreign = sign(other.path(), &digest, "127.0.0.1:1/other", SAN, &opts);
    let foreign: Value = serde_json::from_slice(&foreign.bundle).unwrap();
    let path = "/verificationMaterial/timestampVerificationData/rfc3161Timestamps/0";
    let stamp = foreign.pointer(path).expect("a timestamp").clone();
    let c = run_tampered(&opts, SAN, None, false, |b| {
        *b.pointer_mut(path).expect("a timestamp") = stamp.clone();
    });
    assert_refused(&c, "bad_signature");
    let detail = &refusals(&c.doc)[0].2;
    assert!(detail.contains("rfc3161Timestamps[0]"), "{detail}");
    assert!(detail.contains("for other bytes"), "{detail}");
}

#[test]
fn a_bundle_by_another_identity_is_refused_and_nothing_is_written() {
    let fork = "https://github.com/fork/repo/.github/workflows/release.yml@refs/heads/main";
    let c = run(&["--tlog", "dsse"], fork, None, false);
    assert_refused(&c, "identity_mismatch");
}

#[test]
fn a_bundle_for_another_digest_is_refused_and_nothing_is_written() {
    let other = format!("sha256:{}", "ab".repeat(32));
    let c = run(&["--tlog", "dsse"], SAN, Some(&other), false);
    assert_refused(&c, "digest_mismatch");
}

/// Our own test helper's key-based DSSE bundles (`Signer::dsse_bundle`,
/// used by tests/it/verify_bundle.rs) are what sigstore's verifier accepts;
/// a statement swapped under the same signature is rejected.
#[test]
fn sigstore_js_accepts_our_helpers_key_bundles_and_rejects_a_tampered_one() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let digest = format!("sha256:{}", "cd".repeat(32));
    let bundle = signer.dsse_bundle(&Signer::statement(&digest, "127.0.0.1:5000/app"));
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, &bundle).unwrap();
    let k = key.to_str().unwrap();
    let ok = node("verify.mjs", &[good.to_str().unwrap(), k], true);
    assert!(ok.contains("verified"), "{ok}");

    let mut b: Value = serde_json::from_slice(&bundle).unwrap();
    let other = Signer::statement(&format!("sha256:{}", "ef".repeat(32)), "127.0.0.1:5000/app");
    b["dsseEnvelope"]["payload"] = Value::String(B64.encode(other));
    let bad = dir.path().join("tampered.json");
    std::fs::write(&bad, serde_json::to_vec(&b).unwrap()).unwrap();
    let err = node("verify.mjs", &[bad.to_str().unwrap(), k], false);
    assert!(err.contains("rejected"), "{err}");

    let stranger = dir.path().join("stranger.pub");
    std::fs::write(&stranger, Signer::new().public_pem()).unwrap();
    let s = stranger.to_str().unwrap();
    let err = node("verify.mjs", &[good.to_str().unwrap(), s], false);
    assert!(err.contains("rejected"), "another key: {err}");
}
