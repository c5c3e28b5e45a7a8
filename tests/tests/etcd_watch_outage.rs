//! etcd goes away for a few seconds: the lease watch and the lease keeper
//! back off without spinning (flannel #2171), and when etcd is back the watch
//! re-lists with a fresh Snapshot and the keeper carries on.
//!
//! Alone in its test binary: it measures this process's CPU time.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use overlay_agent::etcd::{
    spawn_lease_keeper, spawn_lease_watch_with_status, subnet_key, EtcdSettings, EtcdStatus, LeaseAttrs,
    LeaseEvent, SubnetManager,
};
use overlay_tests::etcd::Etcd;

const P: &str = "/coreos.com/network";

/// user + system CPU time of this process, from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3; utime and stime are fields 14 and 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_backs_off_quietly_then_resyncs() {
    let mut etcd = Etcd::start().unwrap();
    etcd.put(&format!("{P}/config"), r#"{"Network":"10.30.0.0/16"}"#).unwrap();
    let other = LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 9, 2), 1, [0xaa, 0, 0, 0, 9, 2]);
    etcd.put(&format!("{P}/subnets/10.30.2.0-24"), &other.to_json()).unwrap();

    let settings = EtcdSettings::new(vec![etcd.endpoint()], P);
    let mgr = SubnetManager::new(settings.clone()).await.unwrap();
    let cfg = mgr.network_config().await.unwrap();
    let ours = LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 9, 1), 1, [0xaa, 0, 0, 0, 9, 1]);
    let lease = mgr.acquire(&cfg, &ours, None).await.unwrap();
    let our_key = subnet_key(P, lease.subnet);
    let mut own = spawn_lease_keeper(mgr, cfg.clone(), lease.clone(), Duration::from_secs(3600), ours.clone());

    let status = EtcdStatus::new();
    let mut rx = spawn_lease_watch_with_status(settings, cfg, status.clone());
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap() {
        LeaseEvent::Snapshot(v) => assert_eq!(v.len(), 2),
        other => panic!("{other:?}"),
    }

    // Outage.
    etcd.stop();
    let s = status.clone();
    wait_for("the watch to notice the outage", Duration::from_secs(10), move || !s.is_connected()).await;
    let cpu0 = cpu_time();
    let errors0 = status.errors();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu = cpu_time() - cpu0;
    let errors = status.errors() - errors0;
    eprintln!("outage: {cpu:?} CPU, {errors} failed attempts in 5 s");
    assert!(cpu < Duration::from_millis(300), "{cpu:?} of CPU in 5 s of outage: spinning");
    assert!(errors <= 10, "{errors} failed attempts in 5 s: not backing off");
    assert!(!status.is_connected());
    assert!(rx.try_recv().is_err(), "no events while etcd is away");

    // Back, with a change made while we were away.
    etcd.restart().unwrap();
    let newcomer = LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 9, 3), 1, [0xaa, 0, 0, 0, 9, 3]);
    // Our own lease was allocated at random: the newcomer takes another
    // subnet (a put over our own would be a change, not a newcomer).
    let newcomer_net: ipnet::Ipv4Net = ["10.30.3.0/24", "10.30.4.0/24"]
        .iter()
        .map(|n| n.parse().unwrap())
        .find(|n| *n != lease.subnet)
        .unwrap();
    etcd.put(&format!("{P}/subnets/{}-24", newcomer_net.network()), &newcomer.to_json()).unwrap();
    let t = Instant::now();
    let snap = match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await.expect("a Snapshot").unwrap() {
        LeaseEvent::Snapshot(v) => v,
        other => panic!("expected a Snapshot first, got {other:?}"),
    };
    eprintln!("resynced {:?} after etcd answered again", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(8), "resynced after {:?}", t.elapsed());
    let mut subnets: Vec<_> = snap.iter().map(|l| l.subnet).collect();
    if !subnets.contains(&newcomer_net) {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap() {
            LeaseEvent::Added(l) => subnets.push(l.subnet),
            other => panic!("{other:?}"),
        }
    }
    subnets.sort();
    let want: Vec<ipnet::Ipv4Net> = {
        let mut v = vec!["10.30.2.0/24".parse().unwrap(), newcomer_net, lease.subnet];
        v.sort();
        v
    };
    assert_eq!(subnets, want);
    assert!(status.is_connected());
    assert_eq!(status.snapshots(), 2);

    // The keeper lived through it: our key is there and still defended.
    assert_eq!(etcd.get(&our_key).unwrap().as_deref(), Some(ours.to_json().as_str()));
    etcd.delete(&our_key).unwrap();
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::timeout_at(deadline.into(), own.changed()).await.expect("keeper reacts").unwrap();
        if own.borrow().etcd_lease != lease.etcd_lease {
            break;
        }
    }
    eprintln!("keeper took the key back after {:?}", t.elapsed());
    assert_eq!(own.borrow().subnet, lease.subnet);
    assert_eq!(etcd.get(&our_key).unwrap().as_deref(), Some(ours.to_json().as_str()));
}
