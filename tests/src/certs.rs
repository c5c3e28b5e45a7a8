//! Throw-away TLS material for one test: a CA, a server certificate valid for
//! 127.0.0.1 and localhost, and a client certificate, all signed by the CA.
//!
//! Made with the `openssl` command (Debian package `openssl`): P-256 keys,
//! so generation takes a few tens of milliseconds. Keys are PKCS#8 PEM, which
//! both Go (etcd) and rustls (the agent's etcd client) read.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate, its private key, and the CA that signed it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything [`generate`] writes.
#[derive(Debug, Clone)]
pub struct CertSet {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// Server certificate; its extended key usage also allows client auth
    /// because etcd's HTTP gateway dials its own gRPC port with it.
    pub server: TlsFiles,
    /// Client certificate, CN `client_cn`.
    pub client: TlsFiles,
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = overlay-test
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
";

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (is the Debian package `openssl` installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes a fresh CA, server and client certificate into `dir` (created if
/// needed). The client certificate's CN is `client_cn`; etcd uses it as the
/// user name when auth is enabled and no password is given.
pub fn generate(dir: &Path, client_cn: &str) -> Result<CertSet> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG)?;
    let newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let days = "7";

    let mut args = vec!["req", "-x509", "-config", "openssl.cnf", "-extensions", "ca"];
    args.extend(newkey);
    args.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", days, "-subj", "/CN=overlay-test-ca"]);
    openssl(dir, &args)?;

    for (name, cn, section) in [("server", "127.0.0.1", "server"), ("client", client_cn, "client")] {
        let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
        let subj = format!("/CN={cn}");
        let mut args = vec!["req", "-new", "-config", "openssl.cnf"];
        args.extend(newkey);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &args)?;
        // Distinct serials: some TLS stacks cache or reject duplicates per issuer.
        let serial = format!("0x{}", crate::random_hex(8));
        openssl(
            dir,
            &[
                "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", &serial, "-days",
                days, "-extfile", "openssl.cnf", "-extensions", section, "-out", &crt,
            ],
        )?;
    }

    let ca = dir.join("ca.crt");
    Ok(CertSet {
        ca_cert: ca.clone(),
        ca_key: dir.join("ca.key"),
        server: TlsFiles { ca: ca.clone(), cert: dir.join("server.crt"), key: dir.join("server.key") },
        client: TlsFiles { ca, cert: dir.join("client.crt"), key: dir.join("client.key") },
    })
}
