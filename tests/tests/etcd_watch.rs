//! The lease watch against a real etcd: Snapshot, then Added/Removed for puts,
//! deletes and expiry; malformed data skipped; compaction → fresh Snapshot;
//! a watch started from a listing made by the caller (the agent's start).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use overlay_agent::config::NetworkConfig;
use overlay_agent::etcd::{
    spawn_lease_watch, spawn_lease_watch_from, spawn_lease_watch_with_status, EtcdSettings, EtcdStatus, LeaseAttrs,
    LeaseEvent, LeaseId, SubnetManager,
};
use overlay_tests::control_plane::{grpc_started, requests_between};
use overlay_tests::etcd::Etcd;
use tokio::sync::mpsc::Receiver;

const P: &str = "/flannel/network";

fn cfg() -> NetworkConfig {
    NetworkConfig::parse(r#"{"Network":"10.20.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap()
}

fn settings(etcd: &Etcd) -> EtcdSettings {
    EtcdSettings::new(vec![etcd.endpoint()], P)
}

fn attrs(i: u8) -> LeaseAttrs {
    LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 0, i), 1, [0xaa, 0, 0, 0, 0, i])
}

fn key(s: &str) -> String {
    format!("{P}/subnets/{s}")
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

async fn next(rx: &mut Receiver<LeaseEvent>) -> LeaseEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("watch task alive")
}

async fn snapshot(rx: &mut Receiver<LeaseEvent>) -> BTreeMap<Ipv4Net, LeaseAttrs> {
    match next(rx).await {
        LeaseEvent::Snapshot(v) => {
            for l in &v {
                assert_eq!(l.expiration, None, "no per-lease TTL lookups");
            }
            v.into_iter().map(|l| (l.subnet, l.attrs)).collect()
        }
        other => panic!("expected a Snapshot, got {other:?}"),
    }
}

async fn added(rx: &mut Receiver<LeaseEvent>) -> (Ipv4Net, LeaseAttrs) {
    match next(rx).await {
        LeaseEvent::Added(l) => (l.subnet, l.attrs),
        other => panic!("expected Added, got {other:?}"),
    }
}

async fn removed(rx: &mut Receiver<LeaseEvent>) -> Ipv4Net {
    match next(rx).await {
        LeaseEvent::Removed(id) => id.ipv4,
        other => panic!("expected Removed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_added_and_removed() {
    let etcd = Etcd::start().unwrap();
    etcd.put(&key("10.20.1.0-24"), &attrs(1).to_json()).unwrap();
    etcd.put(&key("10.20.2.0-24"), &attrs(2).to_json()).unwrap();
    // Not leases: ignored without fuss.
    etcd.put(&format!("{P}/config"), r#"{"Network":"10.20.0.0/16"}"#).unwrap();
    etcd.put("/elsewhere/subnets/10.20.3.0-24", &attrs(3).to_json()).unwrap();

    let status = EtcdStatus::new();
    let mut rx = spawn_lease_watch_with_status(settings(&etcd), cfg(), status.clone());
    let snap = snapshot(&mut rx).await;
    assert_eq!(
        snap,
        BTreeMap::from([(net("10.20.1.0/24"), attrs(1)), (net("10.20.2.0/24"), attrs(2))])
    );
    assert!(status.is_connected());
    assert!(status.last_sync().is_some());
    assert_eq!(status.snapshots(), 1);

    // New lease.
    etcd.put(&key("10.20.3.0-24"), &attrs(3).to_json()).unwrap();
    assert_eq!(added(&mut rx).await, (net("10.20.3.0/24"), attrs(3)));
    // Same value again (e.g. a flannel renewal): nothing to report, so the
    // next event is the following put.
    etcd.put(&key("10.20.3.0-24"), &attrs(3).to_json()).unwrap();
    etcd.put(&key("10.20.4.0-24"), &attrs(4).to_json()).unwrap();
    assert_eq!(added(&mut rx).await, (net("10.20.4.0/24"), attrs(4)));
    // Changed value (a node restarted with a new VtepMAC).
    let mut a1 = attrs(1);
    a1.vtep_mac = Some([0xaa, 1, 1, 1, 1, 1]);
    etcd.put(&key("10.20.1.0-24"), &a1.to_json()).unwrap();
    assert_eq!(added(&mut rx).await, (net("10.20.1.0/24"), a1));
    // Deleted.
    etcd.delete(&key("10.20.2.0-24")).unwrap();
    assert_eq!(removed(&mut rx).await, net("10.20.2.0/24"));
    // Deleting something that is not a lease says nothing.
    etcd.delete("/elsewhere/subnets/10.20.3.0-24").unwrap();
    etcd.delete(&format!("{P}/subnets/not-a-lease")).unwrap();

    // Expiry arrives as a DELETE → Removed.
    let out = etcd.etcdctl(&["lease", "grant", "1"]).unwrap();
    let id = out.split_whitespace().nth(1).expect("lease id").to_string();
    etcd.etcdctl(&["put", &format!("--lease={id}"), "--", &key("10.20.5.0-24"), &attrs(5).to_json()])
        .unwrap();
    assert_eq!(added(&mut rx).await, (net("10.20.5.0/24"), attrs(5)));
    let t = std::time::Instant::now();
    assert_eq!(removed(&mut rx).await, net("10.20.5.0/24"));
    assert!(t.elapsed() < Duration::from_secs(5));

    assert_eq!(status.snapshots(), 1, "no resync in normal operation");
    assert!(status.events() >= 5);
    assert!(status.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_data_is_skipped_and_good_leases_still_arrive() {
    let etcd = Etcd::start().unwrap();
    let good = attrs(1).to_json();
    let bad: Vec<(String, String)> = vec![
        (key("10.20.3.0-24"), "not json".into()),
        (key("10.20.4.0-24"), r#"{"PublicIP":5}"#.into()),
        (key("10.20.5.0-24"), r#"{"PublicIP":"1.2.3.4","BackendData":{"VNI":"x"}}"#.into()),
        (key("10.20.6.0-24"), r#"{"BackendType":"vxlan"}"#.into()),
        (key("10.20.7.0-24"), r#"["PublicIP"]"#.into()),
        (key("garbage"), good.clone()),
        (key("10.99.0.0-24"), good.clone()),
        (key("10.20.8.0-25"), good.clone()),
        (key("10.20.9.1-24"), good.clone()),
        (key("10.20.10.0-24/extra"), good.clone()),
        (key("10.20.0.0-16"), good.clone()),
    ];
    for (k, v) in &bad {
        etcd.put(k, v).unwrap();
    }
    etcd.put(&key("10.20.1.0-24"), &good).unwrap();
    // Dual stack: the IPv4 part is used.
    etcd.put(&key("10.20.11.0-24&fd00:20:11::-64"), &attrs(11).to_json()).unwrap();

    let status = EtcdStatus::new();
    let mut rx = spawn_lease_watch_with_status(settings(&etcd), cfg(), status.clone());
    let snap = snapshot(&mut rx).await;
    assert_eq!(
        snap,
        BTreeMap::from([(net("10.20.1.0/24"), attrs(1)), (net("10.20.11.0/24"), attrs(11))])
    );
    assert!(status.skipped() >= bad.len() as u64);

    // The same garbage while watching: skipped, and the good lease behind it
    // still arrives next.
    for (k, v) in &bad {
        etcd.put(k, &format!("{v} ")).unwrap();
    }
    etcd.put(&key("10.20.12.0-24"), &attrs(12).to_json()).unwrap();
    assert_eq!(added(&mut rx).await, (net("10.20.12.0/24"), attrs(12)));

    // A valid lease replaced by garbage is no longer a lease: Removed.
    etcd.put(&key("10.20.12.0-24"), "{broken").unwrap();
    assert_eq!(removed(&mut rx).await, net("10.20.12.0/24"));
    // ...and comes back when fixed.
    etcd.put(&key("10.20.12.0-24"), &attrs(12).to_json()).unwrap();
    assert_eq!(added(&mut rx).await, (net("10.20.12.0/24"), attrs(12)));
    // Deleting a garbage key says nothing; the next good event is next.
    etcd.delete(&key("10.20.3.0-24")).unwrap();
    etcd.delete(&key("10.20.1.0-24")).unwrap();
    assert_eq!(removed(&mut rx).await, net("10.20.1.0/24"));
    assert!(status.is_connected());
}

/// A consumer that stops reading lets the watch fall behind; etcd then
/// serves it from history, and a compaction meanwhile cancels it with
/// `compact_revision`. The task must re-list once and send a fresh Snapshot
/// (flannel #2470: hot loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_gives_a_fresh_snapshot() {
    let etcd = Etcd::start().unwrap();
    let cfg = NetworkConfig::parse(r#"{"Network":"10.0.0.0/8"}"#).unwrap();
    let status = EtcdStatus::new();
    let mut rx = spawn_lease_watch_with_status(settings(&etcd), cfg, status.clone());
    assert!(snapshot(&mut rx).await.is_empty());

    // Many puts while nobody reads: the task blocks on its channel, HTTP/2
    // flow control fills up, etcd parks the watcher as a "victim"; once we read
    // again it is served from history, which the compaction has removed.
    let client = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    // Enough to overflow our channel (256 events), the client's HTTP/2 stream
    // window (2 MiB) and etcd's per-watch buffer (128 responses).
    let pad = "x".repeat(10_000);
    const N: u32 = 1200;
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let mut c = client.clone();
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..N).step_by(8) {
                let k = key(&format!("10.{}.{}.0-24", 1 + i / 256, i % 256));
                let v = format!(
                    r#"{{"PublicIP":"192.168.{}.{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"aa:00:00:00:00:01"}},"Pad":"{pad}"}}"#,
                    i / 256,
                    i % 256
                );
                c.put(k, v, None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    etcd.compact_to_latest().unwrap();

    // Drain: some Added, then one Snapshot holding everything.
    let mut adds = 0;
    let snap = loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
        let ev = ev.unwrap_or_else(|_| panic!("no Snapshot after {adds} Added events"));
        match ev.unwrap() {
            LeaseEvent::Added(_) => adds += 1,
            LeaseEvent::Snapshot(v) => break v,
            LeaseEvent::Removed(n) => panic!("unexpected Removed({n})"),
        }
    };
    assert!(adds < N as usize, "the watch fell behind");
    assert_eq!(snap.len(), N as usize);
    assert_eq!(status.snapshots(), 2);
    // And it is live again, without more resyncs.
    etcd.put(&key("10.200.0.0-24"), &attrs(1).to_json()).unwrap();
    loop {
        match next(&mut rx).await {
            LeaseEvent::Added(l) if l.subnet == net("10.200.0.0/24") => break,
            LeaseEvent::Added(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(status.snapshots(), 2);
}

/// The watch task (and the etcd client's tasks with it) ends once nobody
/// listens: on this test's own runtime no task is left alive.
#[tokio::test]
async fn dropping_the_receiver_ends_the_task() {
    let etcd = Etcd::start().unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    assert_eq!(metrics.num_alive_tasks(), 0, "tasks alive before the watch");
    let mut rx = spawn_lease_watch(settings(&etcd), cfg());
    assert!(snapshot(&mut rx).await.is_empty());
    assert!(metrics.num_alive_tasks() >= 1, "the watch task runs while its receiver exists");
    drop(rx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} task(s) still alive 10 s after the receiver was dropped",
            metrics.num_alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A watch handed a listing starts from it: its first Snapshot is the listing
/// as it was, and what changed between the listing and the watch (a new
/// lease, a changed one, a deleted one) arrives as events, because it
/// watches from the listing's revision + 1. It lists nothing itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_listing_misses_nothing_changed_after_it() {
    let etcd = Etcd::start().unwrap();
    etcd.put(&key("10.20.1.0-24"), &attrs(1).to_json()).unwrap();
    etcd.put(&key("10.20.2.0-24"), &attrs(2).to_json()).unwrap();
    let mgr = SubnetManager::new(settings(&etcd)).await.unwrap();
    let listing = mgr.list().await.unwrap();
    assert_eq!(listing.len(), 2);

    // Between the listing and the watch.
    etcd.put(&key("10.20.3.0-24"), &attrs(3).to_json()).unwrap();
    let mut changed = attrs(2);
    changed.vtep_mac = Some([0xaa, 2, 2, 2, 2, 2]);
    etcd.put(&key("10.20.2.0-24"), &changed.to_json()).unwrap();
    etcd.delete(&key("10.20.1.0-24")).unwrap();

    let before = grpc_started(&etcd).unwrap();
    let status = EtcdStatus::new();
    let mut rx = spawn_lease_watch_from(settings(&etcd), cfg(), status.clone(), listing);
    assert_eq!(
        snapshot(&mut rx).await,
        BTreeMap::from([(net("10.20.1.0/24"), attrs(1)), (net("10.20.2.0/24"), attrs(2))]),
        "the first Snapshot is the listing handed over"
    );
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(next(&mut rx).await);
    }
    let added = |subnet: &str, attrs: &LeaseAttrs| {
        events.iter().any(|e| matches!(e, LeaseEvent::Added(l) if l.subnet == net(subnet) && l.attrs == *attrs))
    };
    assert!(added("10.20.3.0/24", &attrs(3)), "the new lease: {events:?}");
    assert!(added("10.20.2.0/24", &changed), "the changed lease: {events:?}");
    assert!(events.contains(&LeaseEvent::Removed(LeaseId { ipv4: net("10.20.1.0/24"), ipv6: None })), "the deleted lease: {events:?}");
    assert_eq!(status.snapshots(), 1);

    let during = requests_between(&before, &grpc_started(&etcd).unwrap());
    assert_eq!(
        during.get("Range"),
        Some(&1),
        "the watch's only read must be its connection probe, no listing: {during:?}"
    );
}

/// Only the first listing is handed over: a watch whose listing is older than
/// a compaction cannot resume from it and lists again (a second Snapshot,
/// with the current leases), then follows changes as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_older_than_a_compaction_is_listed_again() {
    let etcd = Etcd::start().unwrap();
    etcd.put(&key("10.20.1.0-24"), &attrs(1).to_json()).unwrap();
    let mgr = SubnetManager::new(settings(&etcd)).await.unwrap();
    let listing = mgr.list().await.unwrap();
    etcd.put(&key("10.20.2.0-24"), &attrs(2).to_json()).unwrap();
    etcd.delete(&key("10.20.1.0-24")).unwrap();
    etcd.compact_to_latest().unwrap();

    let status = EtcdStatus::new();
    let mut rx = spawn_lease_watch_from(settings(&etcd), cfg(), status.clone(), listing);
    assert_eq!(snapshot(&mut rx).await, BTreeMap::from([(net("10.20.1.0/24"), attrs(1))]));
    assert_eq!(
        snapshot(&mut rx).await,
        BTreeMap::from([(net("10.20.2.0/24"), attrs(2))]),
        "a fresh listing after the compaction"
    );
    assert_eq!(status.snapshots(), 2);
    etcd.put(&key("10.20.3.0-24"), &attrs(3).to_json()).unwrap();
    match next(&mut rx).await {
        LeaseEvent::Added(l) => assert_eq!((l.subnet, l.attrs), (net("10.20.3.0/24"), attrs(3))),
        other => panic!("expected Added(10.20.3.0/24), got {other:?}"),
    }
}
