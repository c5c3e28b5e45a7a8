//! Control-plane fixtures shared by the benchmark (`bench::control`) and the
//! integration tests: many synthetic leases written to etcd, etcd's own
//! count of the requests it served, and the agent's pinned `SUBNETS` map.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use aya::maps::{LpmTrie, Map, MapData};
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use overlay_common::maps::NextHop;

use crate::etcd::Etcd;
use crate::flannel::VxlanLease;

/// Keys per etcd transaction when writing the leases (etcd's default
/// --max-txn-ops is 128).
const TXN_BATCH: usize = 100;

/// The network config the synthetic leases fit in.
pub const CONTROL_CONFIG: &str = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

/// The i-th synthetic lease: subnet 10.(1 + i/256).(i%256).0/24 in Network
/// 10.0.0.0/8, PublicIP 100.64.0.0 + i + 1 (never contacted: only map
/// entries are made from it), a unique VtepMAC.
pub fn synthetic_lease(i: usize) -> VxlanLease {
    let i32 = i as u32;
    VxlanLease {
        subnet: Ipv4Addr::new(10, (1 + i / 256) as u8, (i % 256) as u8, 0),
        prefix_len: 24,
        public_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i32 + 1),
        vtep_mac: [0x0e, 0xbe, 0, (i32 >> 16) as u8, (i32 >> 8) as u8, i32 as u8],
    }
}

/// Writes the synthetic leases `range` under `prefix`, attached to the etcd
/// lease `lease_id`, [`TXN_BATCH`] keys per transaction.
pub async fn write_leases(client: &mut Client, prefix: &str, range: std::ops::Range<usize>, lease_id: i64) -> Result<()> {
    put_leases(client, prefix, &range.map(synthetic_lease).collect::<Vec<_>>(), lease_id).await
}

/// Writes `leases` under `prefix` (VNI 1), attached to the etcd lease
/// `lease_id`, [`TXN_BATCH`] keys per transaction.
pub async fn put_leases(client: &mut Client, prefix: &str, leases: &[VxlanLease], lease_id: i64) -> Result<()> {
    for chunk in leases.chunks(TXN_BATCH) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|l| TxnOp::put(l.etcd_key(prefix), l.etcd_value(1), Some(PutOptions::new().with_lease(lease_id))))
            .collect();
        client.txn(Txn::new().and_then(ops)).await?;
    }
    Ok(())
}

/// etcd's `grpc_server_started_total` by method (one per unary request or
/// opened stream), from its /metrics.
pub fn grpc_started(etcd: &Etcd) -> Result<BTreeMap<String, u64>> {
    let addr: SocketAddr = etcd.endpoint().trim_start_matches("http://").parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(parse_grpc_started(&body))
}

pub fn parse_grpc_started(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("grpc_server_started_total{")) {
        let Some(method) = line.split("grpc_method=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        *out.entry(method.to_string()).or_insert(0) += value as u64;
    }
    out
}

/// The requests counted between two [`grpc_started`] readings, by method
/// (methods with none left out).
pub fn requests_between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// The agent's pinned `SUBNETS` LPM trie (remote subnet -> next hop) in
/// `pin_dir` (the agent's versioned pin folder).
pub fn open_subnets(pin_dir: &Path) -> Result<LpmTrie<MapData, [u8; 4], NextHop>> {
    let data = MapData::from_pin(pin_dir.join(overlay_common::map_names::SUBNETS))?;
    Ok(LpmTrie::try_from(Map::from_map_data(data)?)?)
}

/// How many subnets `SUBNETS` holds (keys only: no lookups).
pub fn count_subnets(subnets: &LpmTrie<MapData, [u8; 4], NextHop>) -> usize {
    subnets.keys().filter(|k| k.is_ok()).count()
}

/// How many bpf(2) calls process `pid` (all its threads) makes while
/// `action` runs, counted by `strace -f -c -e trace=bpf` attached to it
/// (its summary written under `dir`). Fails when strace is missing.
pub fn count_bpf_calls<T>(pid: u32, dir: &Path, action: impl FnOnce() -> T) -> Result<(u64, T)> {
    use std::process::{Command, Stdio};
    let which = Command::new("strace").arg("-V").stdout(Stdio::null()).status();
    anyhow::ensure!(
        which.is_ok_and(|s| s.success()),
        "strace is needed to count the agent's bpf calls (apt-get install strace)"
    );
    let out = dir.join(format!("strace-{pid}-{}.txt", crate::random_hex(3)));
    let mut strace = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=bpf", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // Killed if anything below fails, so no strace outlives the test.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the strace child we spawned.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let guard = KillOnDrop(strace.id());
    // strace says so on stderr once it is attached to every thread.
    let mut stderr = std::io::BufReader::new(strace.stderr.take().expect("piped"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line)?;
    anyhow::ensure!(line.contains("attached"), "strace: {line}");
    std::thread::sleep(Duration::from_millis(500));
    let result = action();
    // SIGINT: strace detaches and writes its summary.
    // SAFETY: kill(2) on the strace child we spawned.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    let status = strace.wait()?;
    drop(guard);
    anyhow::ensure!(status.success() || status.code() == Some(130) || status.code().is_none(), "strace: {status}");
    let summary = std::fs::read_to_string(&out)?;
    let calls = summary
        .lines()
        .find(|l| l.trim_end().ends_with(" bpf"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no bpf row in strace's summary:\n{summary}"))?;
    Ok((calls, result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_leases_are_distinct_and_in_the_network() {
        let a = synthetic_lease(0);
        let b = synthetic_lease(10_999);
        assert_eq!(a.subnet, Ipv4Addr::new(10, 1, 0, 0));
        assert_eq!(b.subnet, Ipv4Addr::new(10, 43, 247, 0));
        assert_ne!(a.public_ip, b.public_ip);
        assert_ne!(a.vtep_mac, b.vtep_mac);
    }

    #[test]
    fn grpc_counters_from_metrics() {
        let text = "# HELP x\n\
            grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 12\n\
            grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 2\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 12\n";
        let m = parse_grpc_started(text);
        assert_eq!(m.get("Range"), Some(&12));
        assert_eq!(m.get("Watch"), Some(&2));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn requests_between_readings() {
        let before = BTreeMap::from([("Range".to_string(), 3), ("Put".to_string(), 1)]);
        let after = BTreeMap::from([("Range".to_string(), 10), ("Put".to_string(), 1), ("Watch".to_string(), 2)]);
        let d = requests_between(&before, &after);
        assert_eq!(d, BTreeMap::from([("Range".to_string(), 7), ("Watch".to_string(), 2)]));
    }
}

