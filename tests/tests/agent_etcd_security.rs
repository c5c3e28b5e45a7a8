//! The real agent binary against a real TLS etcd (client certificates
//! required) and a real etcd with authentication on, configured the ways
//! flanneld is: `--etcd-cafile/--etcd-certfile/--etcd-keyfile`,
//! `--etcd-username/--etcd-password`, and their `FLANNELD_ETCD_*`
//! environment forms. It must get its lease and become ready; with a wrong
//! CA, no client certificate or a wrong password it must stop with an error
//! that names the problem (not hang, not retry forever).
use std::path::Path;
use std::time::Duration;

use overlay_tests::agent::{Agent, AgentOptions, Launch};
use overlay_tests::certs::{self, TlsFiles};
use overlay_tests::etcd::{Etcd, EtcdOptions};
use overlay_tests::netns::Testbed;

const CONFIG: &str = r#"{"Network":"10.98.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// The agent on a fresh host against `etcd` under a fresh prefix (config
/// written), with `flags` and `env` for the TLS files and credentials.
fn launch(etcd: &Etcd, flags: Vec<String>, env: Vec<(String, String)>) -> (Testbed, Agent, String) {
    let tb = Testbed::new(1).expect("testbed");
    let prefix = format!("/sec-{}/network", tb.id());
    etcd.put(&format!("{prefix}/config"), CONFIG).unwrap();
    let agent = Agent::start_forwarded_with(
        tb.host(0),
        AgentOptions { etcd_endpoints: &etcd.endpoint(), prefix: &prefix, dir: tb.dir(), extra: flags },
        Launch { env, ..Launch::default() },
    )
    .expect("starting the agent");
    (tb, agent, prefix)
}

/// Ready, with its lease in etcd (read back with the test's own identity).
fn assert_works(etcd: &Etcd, flags: Vec<String>, env: Vec<(String, String)>) {
    let what = format!("{flags:?} {env:?}");
    let (_tb, agent, prefix) = launch(etcd, flags, env);
    agent.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let (subnet, len, _) = agent.lease().unwrap();
    let leases = etcd.get_prefix(&format!("{prefix}/subnets/")).unwrap();
    assert!(leases.iter().any(|(k, _)| k.ends_with(&format!("/{subnet}-{len}"))), "{what}: {leases:?}");
}

/// Exits unsuccessfully within 30 s with `needles` in its error line.
fn assert_fails(etcd: &Etcd, flags: Vec<String>, env: Vec<(String, String)>, needles: &[&str]) {
    let what = format!("{flags:?} {env:?}");
    let (_tb, mut agent, _) = launch(etcd, flags, env);
    let status = agent.wait_exit(Duration::from_secs(30));
    let log = agent.log_text();
    assert!(status.is_some_and(|s| !s.success()), "{what}: did not fail ({status:?}); log:\n{log}");
    let error = log.lines().find(|l| l.starts_with("overlay-agent: ")).unwrap_or_default();
    for needle in needles {
        assert!(error.contains(needle), "{what}: {needle:?} not in the error {error:?}; log:\n{log}");
    }
}

fn tls_flags(f: &TlsFiles) -> Vec<String> {
    vec![
        format!("--etcd-cafile={}", f.ca.display()),
        format!("--etcd-certfile={}", f.cert.display()),
        format!("--etcd-keyfile={}", f.key.display()),
    ]
}

fn tls_env(f: &TlsFiles) -> Vec<(String, String)> {
    vec![
        ("FLANNELD_ETCD_CAFILE".into(), f.ca.display().to_string()),
        ("FLANNELD_ETCD_CERTFILE".into(), f.cert.display().to_string()),
        ("FLANNELD_ETCD_KEYFILE".into(), f.key.display().to_string()),
    ]
}

#[test]
fn tls_with_client_certificates() {
    let etcd = Etcd::start_with(EtcdOptions { tls: true, client_cert_auth: true }).unwrap();
    assert!(etcd.endpoint().starts_with("https://"), "{}", etcd.endpoint());
    let files = etcd.tls_files().unwrap().clone();
    assert_works(&etcd, tls_flags(&files), vec![]);
    assert_works(&etcd, vec![], tls_env(&files));

    // A CA that did not sign the server's certificate.
    let other_dir = etcd.dir().join("other-ca");
    let other = certs::generate(&other_dir, "stranger").unwrap();
    let wrong_ca = TlsFiles { ca: other.ca_cert.clone(), ..files.clone() };
    assert_fails(&etcd, tls_flags(&wrong_ca), vec![], &["certificate"]);
    // A client certificate from another CA: the server refuses it.
    assert_fails(
        &etcd,
        tls_flags(&TlsFiles { ca: files.ca.clone(), ..other.client.clone() }),
        vec![],
        &["refused us", "BadCertificate", "etcd refused our client certificate"],
    );
    // A CA file that does not exist: named.
    let missing = TlsFiles { ca: Path::new("/nonexistent/ca.crt").into(), ..files.clone() };
    assert_fails(&etcd, tls_flags(&missing), vec![], &["/nonexistent/ca.crt"]);
}

#[test]
fn username_and_password() {
    let mut etcd = Etcd::start().unwrap();
    etcd.enable_auth("flannel", "s3cret").unwrap();
    let creds = |user: &str, pw: &str| vec![format!("--etcd-username={user}"), format!("--etcd-password={pw}")];
    assert_works(&etcd, creds("flannel", "s3cret"), vec![]);
    assert_works(
        &etcd,
        vec![],
        vec![("FLANNELD_ETCD_USERNAME".into(), "flannel".into()), ("FLANNELD_ETCD_PASSWORD".into(), "s3cret".into())],
    );
    // The flag wins over the environment.
    assert_works(&etcd, creds("flannel", "s3cret"), vec![("FLANNELD_ETCD_PASSWORD".into(), "nope".into())]);

    assert_fails(&etcd, creds("flannel", "nope"), vec![], &["authentication", "\"flannel\"", "--etcd-password"]);
    assert_fails(&etcd, creds("nobody", "s3cret"), vec![], &["authentication", "\"nobody\""]);
    // No credentials against an etcd that wants them.
    assert_fails(&etcd, vec![], vec![], &["etcd"]);
}
