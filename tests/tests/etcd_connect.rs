//! Reaching etcd like flanneld: TLS with client certificates, username and
//! password, several endpoints with a dead member; clear errors otherwise.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use overlay_agent::config::NetworkConfig;
use overlay_agent::etcd::{
    connect, spawn_lease_watch, subnet_key, EtcdError, EtcdSettings, LeaseAttrs, LeaseEvent, SubnetManager,
};
use overlay_tests::etcd::{Etcd, EtcdCluster, EtcdOptions};

const P: &str = "/coreos.com/network";
const CONFIG: &str = r#"{"Network":"10.40.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn node(i: u8) -> LeaseAttrs {
    LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 40, i), 1, [0x0e, 0, 0, 0, 40, i])
}

/// Config, acquire, and a watch that sees the lease: the whole path works.
async fn exercise(s: &EtcdSettings, i: u8) {
    let mgr = SubnetManager::new(s.clone()).await.unwrap();
    let cfg = mgr.network_config().await.unwrap();
    let lease = mgr.acquire(&cfg, &node(i), None).await.unwrap();
    let renewed = mgr.renew(&lease).await.unwrap();
    assert_eq!(renewed.subnet, lease.subnet);
    let mut rx = spawn_lease_watch(s.clone(), cfg);
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap() {
        LeaseEvent::Snapshot(v) => assert!(v.iter().any(|l| l.subnet == lease.subnet && l.attrs == node(i))),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let etcd = Etcd::start_with(EtcdOptions { tls: true, client_cert_auth: true }).unwrap();
    etcd.put(&format!("{P}/config"), CONFIG).unwrap();
    let files = etcd.tls_files().unwrap().clone();
    assert!(etcd.endpoint().starts_with("https://"));
    let s = EtcdSettings {
        endpoints: vec![etcd.endpoint()],
        prefix: P.into(),
        keyfile: Some(files.key.clone()),
        certfile: Some(files.cert.clone()),
        cafile: Some(files.ca.clone()),
        username: None,
        password: None,
    };
    exercise(&s, 1).await;

    // flanneld users often write http:// with TLS flags: switched to https.
    let mut s2 = s.clone();
    s2.endpoints = vec![etcd.endpoint().replace("https://", "http://")];
    exercise(&s2, 2).await;

    // Without a client certificate the server refuses us: a clear error, fast.
    let mut no_cert = s.clone();
    no_cert.keyfile = None;
    no_cert.certfile = None;
    let t = Instant::now();
    let e = connect(&no_cert).await.err().expect("refused without a client certificate");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(e.to_string().contains(&etcd.endpoint()), "{e}");

    // Key without cert: flannel's rule is "no client certificate" (and here
    // the CA still gives TLS), so the server refuses too.
    let mut half = s.clone();
    half.certfile = None;
    assert!(connect(&half).await.is_err());

    // A wrong CA file is named.
    let mut bad_ca = s.clone();
    bad_ca.cafile = Some(files.ca.with_file_name("does-not-exist.pem"));
    let e = connect(&bad_ca).await.err().unwrap();
    assert!(matches!(e, EtcdError::TlsFile { what: "cafile", .. }), "{e:?}");
    assert!(e.to_string().contains("does-not-exist.pem"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_and_password() {
    let mut etcd = Etcd::start().unwrap();
    etcd.put(&format!("{P}/config"), CONFIG).unwrap();
    etcd.enable_auth("flannel", "s3cret").unwrap();
    let mut s = EtcdSettings::new(vec![etcd.endpoint()], P);
    s.username = Some("flannel".into());
    s.password = Some("s3cret".into());
    exercise(&s, 1).await;

    // Wrong password: an authentication error naming the user.
    let mut wrong = s.clone();
    wrong.password = Some("nope".into());
    let e = connect(&wrong).await.err().expect("wrong password refused");
    assert!(matches!(e, EtcdError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("flannel"), "{e}");

    // No credentials at all: refused, not hanging.
    let anon = EtcdSettings::new(vec![etcd.endpoint()], P);
    let t = Instant::now();
    assert!(connect(&anon).await.is_err());
    assert!(t.elapsed() < Duration::from_secs(10));

    // etcd restarts and forgets its tokens: the client authenticates again.
    let mgr = SubnetManager::new(s.clone()).await.unwrap();
    let cfg = mgr.network_config().await.unwrap();
    let lease = mgr.acquire(&cfg, &node(2), None).await.unwrap();
    etcd.restart().unwrap();
    let renewed = mgr.renew(&lease).await.expect("renew after an etcd restart");
    assert_eq!(renewed.subnet, lease.subnet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_the_first_member_down() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    cluster.etcdctl(&["put", "--", &format!("{P}/config"), CONFIG]).unwrap();
    let s = EtcdSettings::new(cluster.endpoints(), P);

    // A manager and a watch made while all members run...
    let mgr = SubnetManager::new(s.clone()).await.unwrap();
    let cfg: NetworkConfig = mgr.network_config().await.unwrap();
    let mut rx = spawn_lease_watch(s.clone(), cfg.clone());
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap(),
        LeaseEvent::Snapshot(_)
    ));

    // ...keep working when the first member dies.
    cluster.stop_member(0);
    for i in 1..=5 {
        let lease = mgr.acquire(&cfg, &node(i), None).await.unwrap();
        let renewed = mgr.renew(&lease).await.unwrap();
        assert_eq!(renewed.subnet, lease.subnet);
        // The watch reports each (after a Snapshot if it had to resync).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ev = tokio::time::timeout_at(deadline.into(), rx.recv()).await.expect("event").unwrap();
            match ev {
                LeaseEvent::Added(l) if l.subnet == lease.subnet => break,
                LeaseEvent::Snapshot(v) if v.iter().any(|l| l.subnet == lease.subnet) => break,
                _ => {}
            }
        }
    }

    // A fresh start with the dead member listed first also works.
    exercise(&s, 9).await;
    let listed = cluster.etcdctl(&["get", "--prefix", "--keys-only", &format!("{P}/subnets/")]).unwrap();
    assert_eq!(listed.lines().filter(|l| !l.is_empty()).count(), 6, "{listed}");
    let _ = subnet_key(P, "10.40.1.0/24".parse().unwrap());
}

#[tokio::test]
async fn unreachable_endpoints_fail_clearly() {
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
        })
        .collect();
    let t = Instant::now();
    let e = SubnetManager::new(EtcdSettings::new(dead.clone(), P)).await.err().expect("no etcd there");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(matches!(e, EtcdError::Unreachable { .. }), "{e:?}");
    let m = e.to_string();
    assert!(m.contains(&dead[0]) && m.contains(&dead[1]), "{m}");

    let e = SubnetManager::new(EtcdSettings::new(vec![], P)).await.err().unwrap();
    assert!(matches!(e, EtcdError::Settings(_)), "{e:?}");
}
