//! A real, independent RFC 3161 timestamp authority: `openssl ts -reply`
//! with a certificate authority and a TSA certificate (P-256, critical
//! timeStamping extended key usage) made by `openssl req` / `x509` in a
//! temp dir. `stamp` returns the DER TimeStampResp, which cosign puts in
//! `dev.sigstore.cosign/rfc3161timestamp` as `{"SignedRFC3161Timestamp": <base64>}`.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

pub struct Tsa {
    dir: tempfile::TempDir,
}

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

impl Default for Tsa {
    fn default() -> Self {
        Self::new()
    }
}

impl Tsa {
    pub fn new() -> Tsa {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("serial"), "01\n").unwrap();
        std::fs::write(
            d.join("eku.cnf"),
            "extendedKeyUsage=critical,timeStamping\n",
        )
        .unwrap();
        let conf = format!(
            "[tsa]\ndefault_tsa = t\n[t]\nserial = {}\nsigner_digest = sha256\n\
             default_policy = 1.2.3.4.1\ndigests = sha256, sha384, sha512\ness_cert_id_alg = sha256\n",
            d.join("serial").display()
        );
        std::fs::write(d.join("ts.cnf"), conf).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "30", "-subj", "/CN=tsa-root"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        openssl(d, &ca);
        let mut csr = vec![
            "req", "-subj", "/CN=tsa", "-keyout", "tsa.key", "-out", "tsa.csr",
        ];
        csr.extend(ec);
        openssl(d, &csr);
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "tsa.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "10",
                "-extfile",
                "eku.cnf",
                "-out",
                "tsa.pem",
            ],
        );
        Tsa { dir }
    }

    /// The TimeStampResp over `data` (SHA-256 imprint, the TSA certificate
    /// in the token).
    pub fn stamp(&self, data: &[u8]) -> Vec<u8> {
        let d = self.dir.path();
        std::fs::write(d.join("data"), data).unwrap();
        openssl(
            d,
            &[
                "ts",
                "-query",
                "-data",
                "data",
                "-sha256",
                "-cert",
                "-no_nonce",
                "-out",
                "q.tsq",
            ],
        );
        openssl(
            d,
            &[
                "ts",
                "-reply",
                "-config",
                "ts.cnf",
                "-queryfile",
                "q.tsq",
                "-inkey",
                "tsa.key",
                "-signer",
                "tsa.pem",
                "-out",
                "r.tsr",
            ],
        );
        std::fs::read(d.join("r.tsr")).unwrap()
    }

    /// cosign's annotation value for a timestamp over `data`.
    pub fn annotation(&self, data: &[u8]) -> String {
        json!({"SignedRFC3161Timestamp": B64.encode(self.stamp(data))}).to_string()
    }

    /// The `timestampAuthorities[]` entry of a trusted_root.json for this
    /// TSA: its certificate first, then the root.
    pub fn authority(&self) -> Value {
        let der = |pem: &str| openssl(self.dir.path(), &["x509", "-in", pem, "-outform", "DER"]);
        json!({"subject": {"organization": "test", "commonName": "tsa"},
            "certChain": {"certificates": [{"rawBytes": B64.encode(der("tsa.pem"))},
                {"rawBytes": B64.encode(der("ca.pem"))}]},
            "validFor": {"start": "2020-01-01T00:00:00Z"}})
    }
}
