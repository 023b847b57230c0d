//! Self-signed certificates for the TLS tests: a throwaway CA and a server
//! certificate it signs for `localhost` and `127.0.0.1`, written as PEM files to a
//! temporary directory removed on drop. Another [`TestCerts`]' CA is the "wrong CA".

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

pub struct TestCerts {
    pub dir: PathBuf,
    /// The CA certificate (PEM) clients trust.
    pub ca: PathBuf,
    /// The server certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TestCerts {
    /// A CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        Self::for_names(name, &["localhost", "127.0.0.1"])
    }

    /// A CA and a server certificate for `names` (host names or IP addresses).
    pub fn for_names(name: &str, names: &[&str]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("vp-tls-{name}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("viewpipe test CA ({name})"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key)?;

        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut server = CertificateParams::new(names.clone())?;
        server.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("localhost", String::as_str),
        );
        let server = server.signed_by(&key, &ca, &ca_key)?;

        let certs = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        };
        write(&certs.ca, &ca.pem())?;
        write(&certs.cert, &server.pem())?;
        write(&certs.key, &key.serialize_pem())?;
        Ok(certs)
    }

    pub fn ca_pem(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&self.ca).context("read the test CA")
    }
}

fn write(path: &Path, pem: &str) -> anyhow::Result<()> {
    std::fs::write(path, pem).with_context(|| format!("write {}", path.display()))
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
