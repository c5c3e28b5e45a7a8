//! Acquiring, reusing, renewing, releasing and keeping our own lease against
//! a real etcd.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use ipnet::{Ipv4Net, Ipv6Net};
use overlay_agent::config::{BackendType, NetworkConfig};
use overlay_agent::etcd::{
    spawn_lease_keeper, spawn_lease_watch, subnet_key, EtcdError, EtcdSettings, Lease, LeaseAttrs, LeaseEvent,
    PreviousSubnets, SubnetManager,
};
use overlay_tests::etcd::Etcd;

const PREFIX: &str = "/coreos.com/network";

fn settings(etcd: &Etcd) -> EtcdSettings {
    EtcdSettings::new(vec![etcd.endpoint()], PREFIX)
}

fn node(i: u8) -> LeaseAttrs {
    LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 64, i), 1, [0x0e, 0, 0, 0, 0, i])
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

async fn setup(config: &str) -> (Etcd, SubnetManager, NetworkConfig) {
    let etcd = Etcd::start().unwrap();
    etcd.put(&format!("{PREFIX}/config"), config).unwrap();
    let mgr = SubnetManager::new(settings(&etcd)).await.unwrap();
    let cfg = mgr.network_config().await.unwrap();
    (etcd, mgr, cfg)
}

/// (remaining TTL, granted TTL) of an etcd lease, through the client.
async fn ttl_of(mgr: &SubnetManager, id: i64) -> (i64, i64) {
    let r = mgr.client().lease_time_to_live(id, None).await.unwrap();
    (r.ttl(), r.granted_ttl())
}

/// Waits for `f` to hold, polling every 50 ms.
async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn acquire_creates_the_key_with_a_24h_etcd_lease() {
    let (etcd, mgr, cfg) = setup(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).await;
    let attrs = node(3);
    let lease = mgr.acquire(&cfg, &attrs, None).await.unwrap();
    assert!(cfg.is_compatible_subnet(lease.subnet), "{}", lease.subnet);
    // Random among the first 100 free subnets from SubnetMin.
    let first = u32::from(cfg.subnet_min);
    let idx = (u32::from(lease.subnet.addr()) - first) / 256;
    assert!(idx < 100, "{} is not among the first 100 subnets", lease.subnet);

    let key = subnet_key(PREFIX, lease.subnet);
    assert_eq!(etcd.get(&key).unwrap().as_deref(), Some(attrs.to_json().as_str()));
    assert_eq!(
        attrs.to_json(),
        r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"}}"#
    );
    assert_ne!(lease.etcd_lease, 0);
    let (ttl, granted) = ttl_of(&mgr, lease.etcd_lease).await;
    assert_eq!(granted, 86400);
    assert!(ttl > 86390, "{ttl}");
    // etcdctl agrees the key is attached to that lease.
    let out = etcd
        .etcdctl(&["lease", "timetolive", &format!("{:x}", lease.etcd_lease), "--keys"])
        .unwrap();
    assert!(out.contains("granted with TTL(86400s)") && out.contains(&key), "{out}");
    let exp = lease.expiration.unwrap().duration_since(SystemTime::now()).unwrap();
    assert!(exp > Duration::from_secs(86300), "{exp:?}");
}

#[tokio::test]
async fn restart_reuses_our_lease_by_public_ip() {
    let (etcd, mgr, cfg) = setup(r#"{"Network":"10.6.0.0/16"}"#).await;
    let attrs = node(7);
    let first = mgr.acquire(&cfg, &attrs, None).await.unwrap();
    // Another node's lease must not be confused with ours.
    let other = mgr.acquire(&cfg, &node(8), None).await.unwrap();
    assert_ne!(other.subnet, first.subnet);

    // "Restart": a fresh manager finds the lease (for the VtepMAC) and reuses it.
    let mgr2 = SubnetManager::new(settings(&etcd)).await.unwrap();
    let found = mgr2.find_own_lease(attrs.public_ip).await.unwrap().expect("own lease");
    assert_eq!(found.subnet, first.subnet);
    assert_eq!(found.attrs.vtep_mac, attrs.vtep_mac);
    assert_eq!(found.etcd_lease, first.etcd_lease);
    assert!(found.expiration.is_some());
    assert!(mgr2.find_own_lease(Ipv4Addr::new(1, 1, 1, 1)).await.unwrap().is_none());

    // Even with another previous subnet, the PublicIP match wins.
    let again = mgr2.acquire(&cfg, &found.attrs, Some(net("10.6.200.0/24"))).await.unwrap();
    assert_eq!(again.subnet, first.subnet);
    assert_eq!(again.etcd_lease, first.etcd_lease, "the etcd lease is kept");
    assert_eq!(again.attrs.vtep_mac, attrs.vtep_mac);

    // Changed attributes (new MAC): the value is updated, the etcd lease kept.
    let mut changed = attrs.clone();
    changed.vtep_mac = Some([0x0e, 1, 2, 3, 4, 5]);
    let updated = mgr2.acquire(&cfg, &changed, None).await.unwrap();
    assert_eq!(updated.subnet, first.subnet);
    assert_eq!(updated.etcd_lease, first.etcd_lease);
    let key = subnet_key(PREFIX, first.subnet);
    assert_eq!(etcd.get(&key).unwrap().unwrap(), changed.to_json());
    let (_, granted) = ttl_of(&mgr2, updated.etcd_lease).await;
    assert_eq!(granted, 86400);
    // Exactly two leases exist.
    assert_eq!(etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap().len(), 2);
}

#[tokio::test]
async fn previous_subnet_is_used_when_free_and_ignored_when_taken() {
    let (etcd, mgr, cfg) = setup(r#"{"Network":"10.7.0.0/16"}"#).await;
    let l = mgr.acquire(&cfg, &node(1), Some(net("10.7.77.0/24"))).await.unwrap();
    assert_eq!(l.subnet, net("10.7.77.0/24"));

    // Taken by node 1: node 2 gets another one.
    let l2 = mgr.acquire(&cfg, &node(2), Some(net("10.7.77.0/24"))).await.unwrap();
    assert_ne!(l2.subnet, net("10.7.77.0/24"));

    // A key written by someone else (flannel) occupies its subnet too.
    etcd.put(
        &format!("{PREFIX}/subnets/10.7.88.0-24"),
        r#"{"PublicIP":"192.168.1.132","BackendType":"vxlan","BackendData":{"VtepMAC":"12:b9:d6:fb:f8:e3"}}"#,
    )
    .unwrap();
    let l3 = mgr.acquire(&cfg, &node(3), Some(net("10.7.88.0/24"))).await.unwrap();
    assert_ne!(l3.subnet, net("10.7.88.0/24"));

    // Incompatible previous subnets are ignored: outside Network, wrong
    // length, the never-handed-out first subnet.
    for bad in ["10.8.1.0/24", "10.7.90.0/25", "10.7.0.0/24"] {
        let l = mgr.acquire(&cfg, &node(10), Some(net(bad))).await.unwrap();
        assert_ne!(l.subnet, net(bad));
        assert!(cfg.is_compatible_subnet(l.subnet));
        mgr.release(&l).await.unwrap();
    }
}

#[tokio::test]
async fn subnet_min_max_are_respected_and_out_of_subnets_is_clear() {
    let (etcd, mgr, cfg) = setup(
        r#"{"Network":"10.9.0.0/16","SubnetMin":"10.9.10.0","SubnetMax":"10.9.12.0","Backend":{"Type":"host-gw"}}"#,
    )
    .await;
    let mut got = HashSet::new();
    for i in 1..=3 {
        let l = mgr.acquire(&cfg, &LeaseAttrs::host_gw(Ipv4Addr::new(10, 0, 0, i)), None).await.unwrap();
        got.insert(l.subnet);
    }
    let want: HashSet<Ipv4Net> = ["10.9.10.0/24", "10.9.11.0/24", "10.9.12.0/24"].iter().map(|s| net(s)).collect();
    assert_eq!(got, want);
    let e = mgr.acquire(&cfg, &LeaseAttrs::host_gw(Ipv4Addr::new(10, 0, 0, 4)), None).await.unwrap_err();
    assert!(matches!(e, EtcdError::OutOfSubnets { .. }), "{e:?}");
    let m = e.to_string();
    for part in ["out of subnets", "10.9.0.0/16", "10.9.10.0", "10.9.12.0", "/coreos.com/network/subnets/"] {
        assert!(m.contains(part), "{m:?} lacks {part:?}");
    }
    // A host-gw lease value has no BackendData.
    assert_eq!(
        etcd.get(&format!("{PREFIX}/subnets/10.9.10.0-24")).unwrap().map(|v| v.contains("BackendData")),
        Some(false)
    );
}

#[tokio::test]
async fn tiny_network_runs_out() {
    // A /28 gives /30 subnets; the first is never handed out: 3 usable.
    let (_etcd, mgr, cfg) = setup(r#"{"Network":"10.10.0.0/28"}"#).await;
    assert_eq!(cfg.subnet_len, 30);
    let mut got = HashSet::new();
    for i in 1..=3 {
        got.insert(mgr.acquire(&cfg, &node(i), None).await.unwrap().subnet);
    }
    assert_eq!(got.len(), 3);
    assert!(!got.contains(&net("10.10.0.0/30")));
    let e = mgr.acquire(&cfg, &node(4), None).await.unwrap_err();
    assert!(matches!(e, EtcdError::OutOfSubnets { total: 3, .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_acquire_concurrently() {
    // 31 subnets for 20 nodes: plenty of lost races, all retried.
    let (etcd, _mgr, cfg) = setup(r#"{"Network":"10.11.0.0/19"}"#).await;
    let mut tasks = Vec::new();
    for i in 1..=20u8 {
        let s = settings(&etcd);
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let m = SubnetManager::new(s).await?;
            m.acquire(&cfg, &node(i), None).await
        }));
    }
    let mut subnets = HashSet::new();
    for t in tasks {
        let l = t.await.unwrap().expect("every node gets a lease");
        assert!(cfg.is_compatible_subnet(l.subnet));
        assert!(subnets.insert(l.subnet), "{} handed out twice", l.subnet);
    }
    assert_eq!(subnets.len(), 20);
    let kvs = etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap();
    assert_eq!(kvs.len(), 20);
    let ips: HashSet<Ipv4Addr> = kvs.iter().map(|(_, v)| LeaseAttrs::from_json(v).unwrap().public_ip).collect();
    assert_eq!(ips.len(), 20, "each node's value landed in its own key");
}

#[tokio::test]
async fn renew_extends_the_ttl() {
    let (_etcd, mut mgr, cfg) = setup(r#"{"Network":"10.12.0.0/16"}"#).await;
    mgr.set_lease_ttl(Duration::from_secs(20));
    let lease = mgr.acquire(&cfg, &node(1), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (before, granted) = ttl_of(&mgr, lease.etcd_lease).await;
    assert_eq!(granted, 20);
    assert!(before <= 18, "{before}");
    let renewed = mgr.renew(&lease).await.unwrap();
    assert_eq!(renewed.subnet, lease.subnet);
    assert_eq!(renewed.etcd_lease, lease.etcd_lease);
    let (after, _) = ttl_of(&mgr, lease.etcd_lease).await;
    assert!(after >= 19, "{after}");
    assert!(renewed.expiration.unwrap() > lease.expiration.unwrap());
}

#[tokio::test]
async fn renew_and_release_notice_a_lost_lease() {
    let (etcd, mgr, cfg) = setup(r#"{"Network":"10.13.0.0/16"}"#).await;
    let lease = mgr.acquire(&cfg, &node(1), None).await.unwrap();
    let key = subnet_key(PREFIX, lease.subnet);
    etcd.delete(&key).unwrap();
    let e = mgr.renew(&lease).await.unwrap_err();
    assert!(matches!(e, EtcdError::LeaseLost { .. }), "{e:?}");
    assert!(e.to_string().contains(&key));

    // Taken over by another PublicIP.
    let lease = mgr.acquire(&cfg, &node(2), None).await.unwrap();
    let key = subnet_key(PREFIX, lease.subnet);
    etcd.put(&key, &node(9).to_json()).unwrap();
    let e = mgr.renew(&lease).await.unwrap_err();
    assert!(e.to_string().contains("192.168.64.9"), "{e}");
    // release leaves someone else's key alone.
    mgr.release(&lease).await.unwrap();
    assert!(etcd.get(&key).unwrap().is_some());

    // release of our own lease: key gone, etcd lease revoked.
    let lease = mgr.acquire(&cfg, &node(3), None).await.unwrap();
    let key = subnet_key(PREFIX, lease.subnet);
    mgr.release(&lease).await.unwrap();
    assert!(etcd.get(&key).unwrap().is_none());
    let (ttl, _) = ttl_of(&mgr, lease.etcd_lease).await;
    assert_eq!(ttl, -1, "revoked");
}

#[tokio::test]
async fn reservations_and_stale_own_leases() {
    let (etcd, mgr, cfg) = setup(r#"{"Network":"10.14.0.0/16","SubnetMin":"10.14.10.0"}"#).await;
    // A reservation: put by an administrator without an etcd lease.
    let key = format!("{PREFIX}/subnets/10.14.50.0-24");
    etcd.put(&key, &node(5).to_json()).unwrap();
    let l = mgr.acquire(&cfg, &node(5), None).await.unwrap();
    assert_eq!(l.subnet, net("10.14.50.0/24"));
    assert_eq!(l.etcd_lease, 0);
    assert_eq!(l.expiration, None);
    let r = mgr.renew(&l).await.unwrap();
    assert_eq!(r.etcd_lease, 0);
    assert!(etcd.get(&key).unwrap().is_some());

    // A lease with our PublicIP that the config no longer allows (below
    // SubnetMin) is deleted and a fitting one is taken.
    let stale = format!("{PREFIX}/subnets/10.14.3.0-24");
    etcd.put(&stale, &node(6).to_json()).unwrap();
    let l = mgr.acquire(&cfg, &node(6), None).await.unwrap();
    assert!(cfg.is_compatible_subnet(l.subnet));
    assert!(etcd.get(&stale).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_takes_a_deleted_or_stolen_key_back_and_renews() {
    let (etcd, mut mgr, cfg) = setup(r#"{"Network":"10.15.0.0/16"}"#).await;
    // A short TTL: with the 60 min default margin, renewals happen halfway.
    mgr.set_lease_ttl(Duration::from_secs(2));
    let attrs = node(1);
    let lease = mgr.acquire(&cfg, &attrs, None).await.unwrap();
    let key = subnet_key(PREFIX, lease.subnet);
    let mut rx = spawn_lease_keeper(mgr, cfg.clone(), lease.clone(), Duration::from_secs(3600), attrs.clone());

    // Renewals keep the key alive well past its TTL.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(etcd.get(&key).unwrap().as_deref(), Some(attrs.to_json().as_str()), "key survived 2x its TTL");

    // Deleted by someone: taken back, same subnet (still free).
    etcd.delete(&key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::timeout_at(deadline.into(), rx.changed()).await.expect("keeper reacts").unwrap();
        if rx.borrow().etcd_lease != lease.etcd_lease {
            break;
        }
    }
    let now: Lease = rx.borrow().clone();
    assert_eq!(now.subnet, lease.subnet);
    assert_eq!(etcd.get(&key).unwrap().as_deref(), Some(attrs.to_json().as_str()));

    // Overwritten by another node: we move to another subnet.
    etcd.put(&key, &node(2).to_json()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::timeout_at(deadline.into(), rx.changed()).await.expect("keeper reacts").unwrap();
        if rx.borrow().subnet != lease.subnet {
            break;
        }
    }
    let moved = rx.borrow().clone();
    let new_key = subnet_key(PREFIX, moved.subnet);
    assert_eq!(etcd.get(&new_key).unwrap().as_deref(), Some(attrs.to_json().as_str()));
    assert_eq!(etcd.get(&key).unwrap().unwrap(), node(2).to_json(), "the other node's key is left alone");

    // Still renewing the new lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(etcd.get(&new_key).unwrap().is_some());
    drop(rx);
    // With the receiver gone the keeper stops: the key then expires.
    wait_for("the key to expire after the keeper stopped", Duration::from_secs(10), || {
        etcd.get(&new_key).unwrap().is_none()
    })
    .await;
}

/// Acquiring from a listing that is out of date: the subnet it shows free
/// was taken since, so creating it fails, and the next attempt lists afresh
/// and takes the one subnet still free.
#[tokio::test]
async fn acquiring_from_an_out_of_date_listing_lists_again() {
    // SubnetMin is the second /24: three subnets to hand out.
    let (etcd, mgr, cfg) = setup(r#"{"Network":"10.30.0.0/22","SubnetLen":24}"#).await;
    let listing = mgr.list().await.unwrap();
    assert!(listing.is_empty());
    etcd.put(&subnet_key(PREFIX, net("10.30.1.0/24")), &node(1).to_json()).unwrap();
    etcd.put(&subnet_key(PREFIX, net("10.30.2.0/24")), &node(2).to_json()).unwrap();

    let lease = mgr
        .acquire_from(Some(&listing), &cfg, &node(9), Some(net("10.30.1.0/24")))
        .await
        .unwrap();
    assert_eq!(lease.subnet, net("10.30.3.0/24"));
    let stored = etcd.get(&subnet_key(PREFIX, lease.subnet)).unwrap().expect("our key");
    assert_eq!(stored, node(9).to_json());
    let other = etcd.get(&subnet_key(PREFIX, net("10.30.1.0/24"))).unwrap();
    assert_eq!(other, Some(node(1).to_json()), "the other node's lease is left alone");
}

// ---- dual stack and IPv6-only (issue #15) ----

const DUAL_CONFIG: &str = r#"{"Network":"10.50.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:50::/48","Backend":{"Type":"vxlan"}}"#;

fn net6(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

/// Node `i` of a dual-stack vxlan cluster: its two VtepMACs differ.
fn dual_node(i: u8) -> LeaseAttrs {
    LeaseAttrs::for_node(
        BackendType::Vxlan,
        1,
        Some((Ipv4Addr::new(192, 168, 64, i), [0x0e, 0, 0, 0, 0, i])),
        Some((format!("fd00:64::{i}").parse().unwrap(), [0x0e, 0, 0, 0, 6, i])),
    )
}

/// Node `i` of an IPv6-only vxlan cluster.
fn v6_node(i: u8) -> LeaseAttrs {
    LeaseAttrs::for_node(BackendType::Vxlan, 1, None, Some((format!("fd00:64::{i}").parse().unwrap(), [0x0e, 0, 0, 0, 6, i])))
}

/// A dual-stack lease is one key holding both subnets, with exactly the
/// value flanneld writes; a restarted node finds it (and both VtepMACs) by
/// its PublicIP and reuses it, renews it, and after a release asks for the
/// same two subnets again from its subnet file.
#[tokio::test]
async fn dual_stack_lease_is_flannels_key_and_value_and_is_reused() {
    let (etcd, mgr, cfg) = setup(DUAL_CONFIG).await;
    let attrs = dual_node(3);
    let lease = mgr.acquire(&cfg, &attrs, None).await.unwrap();
    let v6 = lease.ipv6_subnet.expect("an IPv6 subnet");
    assert!(cfg.is_compatible_subnet(lease.subnet), "{}", lease.subnet);
    assert!(cfg.is_compatible_ipv6_subnet(Some(v6)), "{v6}");
    let key = format!("{PREFIX}/subnets/{}-24&{}-64", lease.subnet.addr(), v6.addr());
    let want = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:03"}}"#;
    assert_eq!(etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap(), vec![(key.clone(), want.to_string())]);
    assert_eq!(ttl_of(&mgr, lease.etcd_lease).await.1, 86400);

    // A restart: found by PublicIP with both VtepMACs, reused as it is.
    let mgr2 = SubnetManager::new(settings(&etcd)).await.unwrap();
    let listing = mgr2.list().await.unwrap();
    let own = mgr2.find_own_lease_for(&listing, attrs.public_ip, None).await.unwrap().expect("own lease");
    assert_eq!((own.subnet, own.ipv6_subnet), (lease.subnet, lease.ipv6_subnet));
    assert_eq!((own.attrs.vtep_mac, own.attrs.v6_vtep_mac), (attrs.vtep_mac, attrs.v6_vtep_mac));
    let again = mgr2.acquire_from(Some(&listing), &cfg, &own.attrs, None).await.unwrap();
    assert_eq!((again.subnet, again.ipv6_subnet, again.etcd_lease), (lease.subnet, lease.ipv6_subnet, lease.etcd_lease));
    let renewed = mgr2.renew(&again).await.unwrap();
    assert_eq!(renewed.etcd_lease, lease.etcd_lease);
    assert_eq!(etcd.get(&key).unwrap().as_deref(), Some(want));

    // Released (the key is gone), then started again with the subnet
    // file's two subnets: the same pair.
    mgr2.release(&again).await.unwrap();
    assert!(etcd.get(&key).unwrap().is_none());
    let previous = PreviousSubnets { ipv4: Some(lease.subnet), ipv6: lease.ipv6_subnet };
    let back = mgr2.acquire(&cfg, &attrs, previous).await.unwrap();
    assert_eq!((back.subnet, back.ipv6_subnet), (lease.subnet, lease.ipv6_subnet));
    assert_ne!(back.etcd_lease, lease.etcd_lease, "a new etcd lease");
}

/// A mixed cluster: IPv4-only leases of old nodes (flannel's value without
/// PublicIPv6) next to dual-stack ones are all listed with their parts; a
/// new node avoids every taken IPv4 and IPv6 subnet, and running out of
/// either is said clearly.
#[tokio::test]
async fn mixed_ipv4_only_and_dual_leases_are_listed_and_avoided() {
    let (etcd, mgr, cfg) = setup(
        r#"{"Network":"10.51.0.0/16","SubnetMin":"10.51.1.0","SubnetMax":"10.51.3.0","EnableIPv6":true,"IPv6Network":"fc00:51::/48","IPv6SubnetMin":"fc00:51:0:1::","IPv6SubnetMax":"fc00:51:0:2::"}"#,
    )
    .await;
    let old = r#"{"PublicIP":"192.168.64.1","BackendType":"vxlan","BackendData":{"VtepMAC":"0e:00:00:00:00:01"}}"#;
    etcd.put(&format!("{PREFIX}/subnets/10.51.1.0-24"), old).unwrap();
    etcd.put(&format!("{PREFIX}/subnets/10.51.2.0-24&fc00:51:0:1::-64"), &dual_node(2).to_json()).unwrap();
    let (mut leases, _) = mgr.list_leases().await.unwrap();
    leases.sort_by_key(|l| l.subnet);
    let parts: Vec<_> = leases.iter().map(|l| (l.subnet, l.ipv6_subnet, l.attrs.public_ipv6)).collect();
    assert_eq!(
        parts,
        [
            (net("10.51.1.0/24"), None, None),
            (net("10.51.2.0/24"), Some(net6("fc00:51:0:1::/64")), Some("fd00:64::2".parse().unwrap())),
        ]
    );
    assert_eq!(leases[0].attrs.vtep_mac, Some([0x0e, 0, 0, 0, 0, 1]));
    assert_eq!(leases[1].attrs.v6_vtep_mac, Some([0x0e, 0, 0, 0, 6, 2]));
    // The lease watch (what the daemon follows) says the same; a stray
    // IPv6-only lease, which has no IPv4 subnet in this IPv4 network, is
    // skipped, not taken for the whole IPv4 space.
    etcd.put(&format!("{PREFIX}/subnets/0.0.0.0-0&fc00:51:0:7::-64"), &v6_node(8).to_json()).unwrap();
    let mut rx = spawn_lease_watch(settings(&etcd), cfg.clone());
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap() {
        LeaseEvent::Snapshot(mut got) => {
            got.sort_by_key(|l| l.subnet);
            assert_eq!(got, leases, "the watch's Snapshot");
        }
        other => panic!("{other:?}"),
    }
    drop(rx);
    etcd.delete(&format!("{PREFIX}/subnets/0.0.0.0-0&fc00:51:0:7::-64")).unwrap();

    // The one free pair left.
    let l = mgr.acquire(&cfg, &dual_node(3), None).await.unwrap();
    assert_eq!((l.subnet, l.ipv6_subnet), (net("10.51.3.0/24"), Some(net6("fc00:51:0:2::/64"))));
    assert!(etcd.get(&format!("{PREFIX}/subnets/10.51.3.0-24&fc00:51:0:2::-64")).unwrap().is_some());
    let e = mgr.acquire(&cfg, &dual_node(4), None).await.unwrap_err().to_string();
    assert!(e.contains("out of subnets") && e.contains("10.51.0.0/16"), "{e}");

    // IPv4 room but no IPv6 room: the IPv6 range is named.
    etcd.put(&format!("{PREFIX}/config"), r#"{"Network":"10.51.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:51::/48","IPv6SubnetMin":"fc00:51:0:1::","IPv6SubnetMax":"fc00:51:0:2::"}"#).unwrap();
    let cfg = mgr.network_config().await.unwrap();
    let e = mgr.acquire(&cfg, &dual_node(5), None).await.unwrap_err();
    assert!(matches!(e, EtcdError::OutOfIpv6Subnets { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("IPv6Network fc00:51::/48") && e.contains("fc00:51:0:2::"), "{e}");
}

/// An IPv6-only node's lease: flannel's `0.0.0.0-0&<v6>-<len>` key and
/// `"PublicIP":"0.0.0.0"` value without BackendData. Every such lease has
/// that PublicIP, so a node finds its own by PublicIPv6 (flanneld would
/// take the first IPv6-only lease it lists for its own).
#[tokio::test]
async fn ipv6_only_leases_are_flannels_and_found_by_public_ipv6() {
    let (etcd, mgr, cfg) = setup(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:52::/48","Backend":{"Type":"vxlan"}}"#).await;
    let a = mgr.acquire(&cfg, &v6_node(1), None).await.unwrap();
    assert_eq!(a.ipv4_subnet(), None);
    let a6 = a.ipv6_subnet.unwrap();
    let key_a = format!("{PREFIX}/subnets/0.0.0.0-0&{}-64", a6.addr());
    assert_eq!(
        etcd.get(&key_a).unwrap().as_deref(),
        Some(r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:01"}}"#)
    );
    let b = mgr.acquire(&cfg, &v6_node(2), None).await.unwrap();
    assert_ne!(b.ipv6_subnet, a.ipv6_subnet, "node 2 took node 1's lease");
    assert_eq!(etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap().len(), 2);
    // Each finds its own again.
    let listing = mgr.list().await.unwrap();
    let own = mgr.find_own_lease_for(&listing, Ipv4Addr::UNSPECIFIED, Some("fd00:64::2".parse().unwrap())).await.unwrap();
    assert_eq!(own.map(|l| l.ipv6_subnet), Some(b.ipv6_subnet));
    let again = mgr.acquire(&cfg, &v6_node(1), None).await.unwrap();
    assert_eq!((again.ipv6_subnet, again.etcd_lease), (a.ipv6_subnet, a.etcd_lease));
    let renewed = mgr.renew(&again).await.unwrap();
    assert_eq!(renewed.etcd_lease, a.etcd_lease);
    // A previous IPv6 subnet (from the subnet file) is asked for again.
    mgr.release(&again).await.unwrap();
    assert!(etcd.get(&key_a).unwrap().is_none());
    let back = mgr.acquire(&cfg, &v6_node(1), PreviousSubnets { ipv4: None, ipv6: Some(a6) }).await.unwrap();
    assert_eq!(back.ipv6_subnet, Some(a6));
}

/// IPv6 enabled on a running IPv4 cluster: the node's IPv4-only lease no
/// longer fits, and is replaced by a dual one with the same IPv4 subnet
/// (flanneld deletes it and takes a random one: the node's pods move).
#[tokio::test]
async fn enabling_ipv6_keeps_a_nodes_ipv4_subnet() {
    let (etcd, mgr, cfg) = setup(r#"{"Network":"10.53.0.0/16"}"#).await;
    let v4 = mgr.acquire(&cfg, &node(7), None).await.unwrap();
    etcd.put(&format!("{PREFIX}/config"), r#"{"Network":"10.53.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:53::/48"}"#).unwrap();
    let cfg = mgr.network_config().await.unwrap();
    let attrs = LeaseAttrs { public_ipv6: Some("fd00:64::7".parse().unwrap()), v6_vni: Some(1), v6_vtep_mac: Some([0x0e, 0, 0, 0, 6, 7]), ..node(7) };
    let dual = mgr.acquire(&cfg, &attrs, None).await.unwrap();
    assert_eq!(dual.subnet, v4.subnet, "the IPv4 subnet moved");
    assert!(dual.ipv6_subnet.is_some());
    let keys: Vec<String> = etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, [dual.key(PREFIX)], "the IPv4-only key is gone");
}

/// The keeper of a dual-stack lease renews the dual key and takes the same
/// pair back when the key is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_keeps_a_dual_stack_lease() {
    let (etcd, mut mgr, cfg) = setup(DUAL_CONFIG).await;
    mgr.set_lease_ttl(Duration::from_secs(2));
    let attrs = dual_node(1);
    let lease = mgr.acquire(&cfg, &attrs, None).await.unwrap();
    let key = lease.key(PREFIX);
    assert!(key.contains('&'), "{key}");
    let mut rx = spawn_lease_keeper(mgr, cfg.clone(), lease.clone(), Duration::from_secs(3600), attrs.clone());
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(etcd.get(&key).unwrap().as_deref(), Some(attrs.to_json().as_str()), "key survived 2x its TTL");
    etcd.delete(&key).unwrap();
    wait_for("the dual key to be back", Duration::from_secs(10), || etcd.get(&key).unwrap().is_some()).await;
    let now = rx.borrow_and_update().clone();
    assert_eq!((now.subnet, now.ipv6_subnet), (lease.subnet, lease.ipv6_subnet));
}

/// Dual-stack keys differ per pair, so put-if-absent alone would let two
/// nodes starting at once share an IPv4 subnet (with different IPv6 ones),
/// or an IPv6 subnet: flanneld does. Twelve nodes for twelve pairs, all at
/// once: every half is handed out once, and an IPv4-only node of a mixed
/// cluster racing them does not share its subnet either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_nodes_acquire_concurrently_without_sharing_a_half() {
    let (etcd, _mgr, cfg) = setup(
        r#"{"Network":"10.54.0.0/16","SubnetMin":"10.54.1.0","SubnetMax":"10.54.13.0","EnableIPv6":true,"IPv6Network":"fc00:54::/48","IPv6SubnetMin":"fc00:54:0:1::","IPv6SubnetMax":"fc00:54:0:c::"}"#,
    )
    .await;
    let mut tasks = Vec::new();
    for i in 1..=12u8 {
        let s = settings(&etcd);
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move { SubnetManager::new(s).await?.acquire(&cfg, &dual_node(i), None).await }));
    }
    // An old IPv4-only node (flannel's IPv4 key) taking the 13th IPv4 subnet.
    let v4cfg = NetworkConfig::parse(r#"{"Network":"10.54.0.0/16","SubnetMin":"10.54.1.0","SubnetMax":"10.54.13.0"}"#).unwrap();
    let s = settings(&etcd);
    let old = tokio::spawn(async move { SubnetManager::new(s).await?.acquire(&v4cfg, &node(99), None).await });
    let mut v4 = HashSet::new();
    let mut v6 = HashSet::new();
    for t in tasks {
        let l = t.await.unwrap().expect("every node gets a lease");
        assert!(v4.insert(l.subnet), "{} handed out twice", l.subnet);
        assert!(v6.insert(l.ipv6_subnet.unwrap()), "{:?} handed out twice", l.ipv6_subnet);
    }
    let old = old.await.unwrap().expect("the IPv4-only node gets a lease");
    assert!(v4.insert(old.subnet), "{} shared with the IPv4-only node", old.subnet);
    assert_eq!((v4.len(), v6.len()), (13, 12));
    assert_eq!(etcd.get_prefix(&format!("{PREFIX}/subnets/")).unwrap().len(), 13);
}
