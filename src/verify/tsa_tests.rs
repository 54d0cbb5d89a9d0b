//! Tokens from a real, independent TSA: `openssl ts -reply` (certificates
//! and keys from `openssl req` / `x509`), checked by `verified_time`; each
//! check refuses on its own.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::verified_time;
use crate::verify::TrustedRoot;

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A directory of openssl-made CAs and TSA certificates.
struct Pki {
    dir: tempfile::TempDir,
}

fn keyopts(kind: &str) -> Vec<&'static str> {
    match kind {
        "p256" => vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "p384" => vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "rsa" => vec!["-newkey", "rsa:2048"],
        _ => unreachable!(),
    }
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(pki.dir.path().join("serial"), "01\n").unwrap();
        let conf = format!(
            "[tsa]\ndefault_tsa = t\n[t]\nserial = {}\nsigner_digest = sha256\n\
             default_policy = 1.2.3.4.1\ndigests = sha256, sha384, sha512\ness_cert_id_alg = sha256\n",
            pki.dir.path().join("serial").display()
        );
        std::fs::write(pki.dir.path().join("ts.cnf"), conf).unwrap();
        std::fs::write(
            pki.dir.path().join("eku.cnf"),
            "extendedKeyUsage=critical,timeStamping\n",
        )
        .unwrap();
        pki
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        openssl(self.dir.path(), args)
    }

    /// A self-signed CA `name` (P-256).
    fn ca(&self, name: &str) {
        let (key, pem, subj) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={name}"),
        );
        let mut a = vec!["req", "-x509", "-nodes", "-days", "30", "-subj", &subj];
        a.extend(keyopts("p256"));
        a.extend(["-keyout", &key, "-out", &pem]);
        a.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        self.run(&a);
    }

    /// A TSA certificate `name` (critical timeStamping EKU) issued by `ca`.
    fn tsa(&self, name: &str, kind: &str, ca: &str) {
        let (key, csr, pem, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("/CN={name}"),
        );
        let mut a = vec![
            "req", "-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr,
        ];
        a.extend(keyopts(kind));
        self.run(&a);
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        self.run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "10",
            "-extfile",
            "eku.cnf",
            "-out",
            &pem,
        ]);
    }

    fn der(&self, name: &str) -> Vec<u8> {
        self.run(&["x509", "-in", &format!("{name}.pem"), "-outform", "DER"])
    }

    /// `openssl ts -reply` by `signer` over `data` (imprint `hash`): the bare
    /// token, or the whole TimeStampResp; the signer's certificate in it
    /// unless `certs` is false.
    fn stamp(&self, signer: &str, data: &[u8], hash: &str, token: bool, certs: bool) -> Vec<u8> {
        std::fs::write(self.dir.path().join("data"), data).unwrap();
        let mut q = vec![
            "ts",
            "-query",
            "-data",
            "data",
            hash,
            "-no_nonce",
            "-out",
            "q.tsq",
        ];
        if certs {
            q.push("-cert");
        }
        self.run(&q);
        let (key, pem) = (format!("{signer}.key"), format!("{signer}.pem"));
        let mut r = vec![
            "ts",
            "-reply",
            "-config",
            "ts.cnf",
            "-queryfile",
            "q.tsq",
            "-inkey",
            &key,
            "-signer",
            &pem,
            "-out",
            "r.der",
        ];
        if token {
            r.push("-token_out");
        }
        self.run(&r);
        std::fs::read(self.dir.path().join("r.der")).unwrap()
    }

    /// A trusted root with `ca` as certificate authority and one timestamp
    /// authority per chain (names), valid from 2020 to `end`.
    fn root(&self, tsas: &[&[&str]], end: Option<&str>) -> TrustedRoot {
        let chain = |names: &[&str]| {
            let certs: Vec<_> = (names.iter())
                .map(|n| serde_json::json!({"rawBytes": B64.encode(self.der(n))}))
                .collect();
            let mut valid = serde_json::json!({"start": "2020-01-01T00:00:00Z"});
            if let Some(e) = end {
                valid["end"] = e.into();
            }
            serde_json::json!({"certChain": {"certificates": certs}, "validFor": valid})
        };
        let tsas: Vec<_> = tsas.iter().map(|c| chain(c)).collect();
        let doc = serde_json::json!({"certificateAuthorities": [chain(&["ca"])],
            "tlogs": [], "timestampAuthorities": tsas});
        TrustedRoot::parse(doc.to_string().as_bytes()).unwrap()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[track_caller]
fn near_now(t: Result<i64, String>) {
    let t = t.expect("a verified time");
    assert!((t - now()).abs() < 3600, "genTime {t} is now");
}

#[track_caller]
fn err(r: Result<i64, String>, want: &str) {
    let e = r.expect_err(want);
    assert!(e.contains(want), "{e:?} should say {want:?}");
}

#[test]
fn ecdsa_and_rsa_tokens_and_responses_verify() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.tsa("ec", "p256", "ca");
    pki.tsa("ec384", "p384", "ca");
    pki.tsa("rsa", "rsa", "ca");
    let root = pki.root(&[&["ca"]], None);
    let sig = b"raw signature bytes";
    near_now(verified_time(
        &root,
        &pki.stamp("ec", sig, "-sha256", true, true),
        sig,
    ));
    near_now(verified_time(
        &root,
        &pki.stamp("ec384", sig, "-sha384", false, true),
        sig,
    ));
    near_now(verified_time(
        &root,
        &pki.stamp("rsa", sig, "-sha512", true, true),
        sig,
    ));
    // sigstore's form: the TSA's certificate first in the root's chain, no
    // certificate in the token.
    let leaf_first = pki.root(&[&["rsa", "ca"]], None);
    near_now(verified_time(
        &leaf_first,
        &pki.stamp("rsa", sig, "-sha256", true, false),
        sig,
    ));
    err(
        verified_time(&root, &pki.stamp("rsa", sig, "-sha256", true, false), sig),
        "verifies under no certificate",
    );
}

#[test]
fn each_check_refuses_on_its_own() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.ca("rogue");
    pki.tsa("ec", "p256", "ca");
    pki.tsa("stray", "p256", "rogue");
    let root = pki.root(&[&["ca"]], None);
    let sig = b"raw signature bytes";
    let good = pki.stamp("ec", sig, "-sha256", true, true);
    near_now(verified_time(&root, &good, sig));
    err(verified_time(&root, &good, b"other bytes"), "other bytes");
    // A TSTInfo altered after signing: genTime's year digit changed.
    let at = good
        .windows(2)
        .position(|w| w == [0x18, 0x0f])
        .expect("genTime");
    let mut retimed = good.clone();
    retimed[at + 5] ^= 1;
    err(verified_time(&root, &retimed, sig), "altered after signing");
    // The signature itself altered (its last byte).
    let mut forged = good.clone();
    *forged.last_mut().unwrap() ^= 1;
    err(
        verified_time(&root, &forged, sig),
        "verifies under no certificate",
    );
    err(
        verified_time(&root, &pki.stamp("stray", sig, "-sha256", true, true), sig),
        "chains to no timestamp authority",
    );
    let expired = pki.root(&[&["ca"]], Some("2021-01-01T00:00:00Z"));
    err(
        verified_time(&expired, &good, sig),
        "outside the timestamp authority's validFor",
    );
    let none = pki.root(&[], None);
    err(verified_time(&none, &good, sig), "no timestamp authority");
    err(verified_time(&root, b"\x30\x03\x02\x01\x05", sig), "");
}

#[test]
fn a_broken_timestamp_authority_is_refused_when_the_root_is_read() {
    let pki = Pki::new();
    pki.ca("ca");
    let ca = B64.encode(pki.der("ca"));
    let doc = serde_json::json!({
        "certificateAuthorities": [{"certChain": {"certificates": [{"rawBytes": ca}]}}],
        "timestampAuthorities": [{"certChain": {"certificates": [{"rawBytes": "%%"}]}}]});
    let e = TrustedRoot::parse(doc.to_string().as_bytes()).unwrap_err();
    assert!(
        e.contains("timestampAuthorities[0]: rawBytes is not base64"),
        "{e}"
    );
}

#[test]
fn a_sig_layer_needs_every_time_it_carries_to_verify() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.tsa("ec", "p256", "ca");
    let root = pki.root(&[&["ca"]], None);
    let sig = b"raw signature bytes".to_vec();
    let stamp = serde_json::json!({"SignedRFC3161Timestamp":
        B64.encode(pki.stamp("ec", &sig, "-sha256", false, true))});
    let mut layer = crate::verify::SignatureLayer {
        payload_digest: crate::oci::Digest::of(b"p"),
        payload_size: 1,
        payload: b"p".to_vec(),
        signature: Some(sig.clone()),
        named_key: None,
        certificate: None,
        bundle: None,
        timestamp: Some(stamp.to_string()),
    };
    let times = |l: &crate::verify::SignatureLayer| {
        crate::verify::times::signing_times(&root, l, &sig, b"leaf")
    };
    let t = times(&layer).expect("the timestamp alone is a signing time");
    assert_eq!(t.len(), 1);
    // A Rekor bundle that does not verify refuses, whatever the timestamp says.
    layer.bundle = Some("{}".into());
    assert!(times(&layer).unwrap_err().contains("Rekor bundle"));
    layer.bundle = None;
    layer.timestamp = Some(r#"{"SignedRFC3161Timestamp": "AAAA"}"#.into());
    assert!(times(&layer).unwrap_err().contains("RFC 3161"));
    layer.timestamp = None;
    assert!(times(&layer).unwrap_err().contains("neither"));
}

/// A timestamp is bytes from the source: every truncation of a good token
/// is refused, and no single flipped byte anywhere makes the parser panic
/// or yields a signing time other than the one the authority signed.
#[test]
fn damaged_tokens_never_panic_nor_forge_a_time() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.tsa("ec", "p256", "ca");
    let root = pki.root(&[&["ca"]], None);
    let sig = b"raw signature bytes";
    let token = pki.stamp("ec", sig, "-sha256", false, true);
    let signed = verified_time(&root, &token, sig).expect("the good response verifies");
    for n in 0..token.len() {
        assert!(
            verified_time(&root, &token[..n], sig).is_err(),
            "a response cut at byte {n} of {} is refused",
            token.len()
        );
    }
    for i in 0..token.len() {
        let mut t = token.clone();
        t[i] ^= 0x5a;
        if let Ok(time) = verified_time(&root, &t, sig) {
            assert_eq!(time, signed, "byte {i} flipped changed the verified time");
        }
    }
}
