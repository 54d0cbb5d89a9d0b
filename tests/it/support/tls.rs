//! A throw-away CA and a server certificate for 127.0.0.1 / localhost, made with rcgen.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// Files of a server TLS setup, all inside one directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM of the CA that signed the server certificate (give this to clients).
    pub ca_pem: PathBuf,
    /// Server certificate (PEM, leaf only).
    pub cert_pem: PathBuf,
    /// Server private key (PKCS#8 PEM).
    pub key_pem: PathBuf,
    /// A directory holding only `ca.crt`, for skopeo's `--cert-dir` style flags
    /// (containers/image treats any `*.key` there as a client key, so none is put there).
    pub cert_dir: PathBuf,
}

impl TlsFiles {
    /// Generates a CA and a leaf for `127.0.0.1` and `localhost` under `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        fs::create_dir_all(dir).expect("create tls dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "regkeeper test CA");
        ca_params.distinguished_name = dn;
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign CA");

        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("leaf params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "127.0.0.1");
        leaf_params.distinguished_name = dn;
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("sign leaf");

        let files = TlsFiles {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("cert.pem"),
            key_pem: dir.join("key.pem"),
            cert_dir: dir.join("certdir"),
        };
        fs::write(&files.ca_pem, ca.pem()).expect("write ca.pem");
        fs::write(&files.cert_pem, leaf.pem()).expect("write cert.pem");
        fs::write(&files.key_pem, leaf_key.serialize_pem()).expect("write key.pem");
        fs::create_dir_all(&files.cert_dir).expect("create certdir");
        fs::write(files.cert_dir.join("ca.crt"), ca.pem()).expect("write certdir/ca.crt");
        files
    }

    /// The CA certificate as PEM bytes.
    pub fn ca_pem_bytes(&self) -> Vec<u8> {
        fs::read(&self.ca_pem).expect("read ca.pem")
    }
}
