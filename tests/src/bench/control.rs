//! The control plane against a real etcd: with N leases present, how long
//! from the agent's start until all of them are in its BPF maps, how fast a
//! new lease reaches the maps, how many etcd requests the agent makes, and
//! how much memory it holds.
//!
//! How each number is taken:
//! * start -> maps: the clock starts just before the agent is spawned; the
//!   pinned `SUBNETS` LPM trie is then counted (keys only) every 10 ms until
//!   it holds all N remote subnets.
//! * change -> map: new leases are written one at a time at a fixed pace (the
//!   writer records when each put was sent and acknowledged); a poller looks
//!   each pending subnet up in `SUBNETS` (one lookup syscall each) every
//!   ~0.2 ms, and the latency is from the put being sent to the entry being
//!   there (the put's own etcd round trip, commit included, is in it). Each
//!   change is written with an etcd lease of its own, granted beforehand, as
//!   flanneld writes every key.
//! * etcd requests: deltas of etcd's own `grpc_server_started_total` (one
//!   per unary request or opened stream), by method, from its /metrics
//!   endpoint, taken around the start (nothing else talks to etcd then) and
//!   around the change stream (minus the writer's own grants and puts).
//! * RSS: VmRSS (and the peak, VmHWM) from /proc/<agent pid>/status after
//!   the change stream (all N peers present), and again after the removal.
//! * removal of half: half the peers' keys are attached to an etcd lease of
//!   their own, which is revoked (what a mass expiry looks like to the
//!   agent: one revision deleting all of them); the clock runs from the
//!   revoke being sent until `SUBNETS` holds that many fewer entries
//!   (counted as at the start, so the resolution is one count of the trie).
//!   Meanwhile another thread in the agent's namespace asks /readyz every
//!   10 ms (a fresh connection each time, 2 s timeout) and records each
//!   answer's latency and whether it was `200`.
//!
//! Where the leases go: slot s is subnet 10.0.1.0 + s * 256 (/24), slots
//! 0..65,535 fill Network 10.0.0.0/8 from its SubnetMin (10.0.1.0) to its
//! SubnetMax (10.255.255.0). The N peers take the top N slots, so the agent
//! takes one of the bottom ones; at N = 65,534 it takes the only one left.
//! The change stream writes new leases into free slots, never the agent's
//! own; when fewer than the stream's length are free (the full network),
//! it changes existing peers instead (a new VtepMAC each, as after a
//! node's reboot made its VXLAN device anew), and the result says which.
//! (Not a new PublicIP: the agent keeps a changed peer's old NODES entry,
//! so at a full /8 that map, 65,536 entries, fills and the changes fail.)
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::lpm_trie::Key;
use etcd_client::{Client, PutOptions};
use serde::Serialize;

use crate::agent::{Agent, AgentOptions};
use crate::bench::stats::percentile;
use crate::control_plane::{count_subnets, grpc_started, open_subnets, put_leases, requests_between, CONTROL_CONFIG};
use crate::etcd::Etcd;
use crate::flannel::VxlanLease;
use crate::netns::{Netns, Testbed};

/// /24 subnets of Network 10.0.0.0/8 that can be leased: SubnetMin
/// 10.0.1.0 to SubnetMax 10.255.255.0.
pub const NETWORK_SLOTS: usize = 65_535;

/// The most peers the network holds next to the agent's own lease: the
/// full /8.
pub const FULL_NETWORK_PEERS: usize = NETWORK_SLOTS - 1;

/// How long the removal of half is waited for before it is recorded as
/// not done (with the count removed by then).
pub const REMOVAL_CAP: Duration = Duration::from_secs(60);

/// Where the agent serves /readyz inside its own namespace.
const HEALTHZ_PORT: u16 = 9807;

#[derive(Clone, Debug, Serialize)]
pub struct ControlResult {
    pub leases: usize,
    /// Time to write the N leases with etcd-client (not the agent's).
    pub write_s: f64,
    /// Agent spawned -> its log says "ready" (lease acquired, data path
    /// installed, subnet file written).
    pub ready_s: f64,
    /// Agent spawned -> all N remote subnets in SUBNETS.
    pub all_in_maps_s: f64,
    /// The agent's own lease (left out of the change stream).
    pub own_subnet: String,
    /// etcd requests (unary calls + streams opened) during the start, by
    /// method, and their sum divided by N.
    pub start_requests: BTreeMap<String, u64>,
    pub start_requests_per_lease: f64,
    /// "new leases" (free subnets other than the agent's) or "changed
    /// leases" (existing peers given a new VtepMAC: the network had too
    /// few free subnets).
    pub change_kind: &'static str,
    /// Watch responses sent to the agent during the change stream.
    pub changes: usize,
    pub change_rate_per_s: f64,
    pub change_to_map_p50_ms: f64,
    pub change_to_map_p99_ms: f64,
    pub change_to_map_max_ms: f64,
    /// From the put's acknowledgement instead of its sending.
    pub ack_to_map_p50_ms: f64,
    pub ack_to_map_p99_ms: f64,
    pub put_ack_p50_ms: f64,
    /// Agent requests during the change stream (the writer's puts excluded).
    pub change_requests: BTreeMap<String, u64>,
    pub change_requests_per_change: f64,
    /// With all N peers present (after the change stream).
    pub rss_mb: f64,
    pub rss_peak_mb: f64,
    /// Peers removed at once (one etcd lease revoked).
    pub removed: usize,
    /// Revoke sent -> that many fewer entries in SUBNETS (NaN when that
    /// did not happen within [`REMOVAL_CAP`]).
    pub remove_half_s: f64,
    /// How many of them were gone from SUBNETS when the measurement ended
    /// (all of them, or as many as within [`REMOVAL_CAP`]).
    pub removed_in_time: usize,
    /// /readyz asked during the removal: how many times, the slowest
    /// answer, and how many were not `200` (or not answered in 2 s).
    pub readyz_polls: usize,
    pub readyz_p99_ms: f64,
    pub readyz_max_ms: f64,
    pub readyz_failures: usize,
    /// The first failure, if any.
    pub readyz_first_failure: Option<String>,
    pub rss_after_removal_mb: f64,
}

fn status_kb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

pub struct ControlOptions {
    pub changes: usize,
    /// Pause between two changes of the stream.
    pub change_interval: Duration,
}

/// When a put was sent, and when etcd acknowledged it.
type SentAcked = (Instant, Instant);

/// The subnet of slot `s` (see the module comment).
pub fn slot_subnet(s: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 0)) + ((s as u32) << 8))
}

/// The peer lease in slot `s`: PublicIP 100.64.0.0 + s + 1 (never
/// contacted: only map entries are made from it), a unique VtepMAC;
/// `generation` 1 is the same peer with a new VtepMAC (its VXLAN device
/// made anew, as after a reboot).
pub fn slot_lease(s: usize, generation: u8) -> VxlanLease {
    let s32 = s as u32;
    VxlanLease {
        subnet: slot_subnet(s),
        prefix_len: 24,
        public_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + s32 + 1),
        vtep_mac: [0x0e, 0xbe + generation, 0, (s32 >> 16) as u8, (s32 >> 8) as u8, s32 as u8],
    }
}

/// One run with `n` peer leases present (at most [`FULL_NETWORK_PEERS`]):
/// a fresh one-host testbed and prefix on the shared `etcd`.
pub fn run(etcd: &Etcd, n: usize, opts: &ControlOptions) -> Result<ControlResult> {
    if n == 0 || n > FULL_NETWORK_PEERS {
        bail!("{n} leases: the network 10.0.0.0/8 of /24s holds 1 to {FULL_NETWORK_PEERS} peers next to the agent");
    }
    crate::netns::ensure_bpffs()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tb = Testbed::new(1)?;
    let prefix = format!("/bench-cp-{n}-{}/network", tb.id());
    etcd.put(&format!("{prefix}/config"), CONTROL_CONFIG)?;
    let endpoint = etcd.endpoint();
    // Two etcd leases: the half of the peers that is removed at the end
    // hangs on `doomed`, everything else on `kept`.
    let (mut client, kept, doomed) = rt.block_on(async {
        let mut c = Client::connect([endpoint.as_str()], None).await?;
        let kept = c.lease_grant(86_400, None).await?.id();
        let doomed = c.lease_grant(86_400, None).await?.id();
        Ok::<_, etcd_client::Error>((c, kept, doomed))
    })?;
    let peer_slots: Vec<usize> = (NETWORK_SLOTS - n..NETWORK_SLOTS).collect();
    let removed = n / 2;
    // Every other peer is removed, so the removal is spread over the trie.
    let (doomed_leases, kept_leases): (Vec<VxlanLease>, Vec<VxlanLease>) = {
        let (d, k): (Vec<usize>, Vec<usize>) = peer_slots.iter().copied().partition(|&s| !(s - peer_slots[0]).is_multiple_of(2));
        (d.into_iter().map(|s| slot_lease(s, 0)).collect(), k.into_iter().map(|s| slot_lease(s, 0)).collect())
    };
    debug_assert_eq!(doomed_leases.len(), removed);
    let t = Instant::now();
    rt.block_on(async {
        put_leases(&mut client, &prefix, &kept_leases, kept).await?;
        put_leases(&mut client, &prefix, &doomed_leases, doomed).await
    })?;
    let write_s = t.elapsed().as_secs_f64();

    let before = grpc_started(etcd)?;
    let t0 = Instant::now();
    let mut agent = Agent::start_forwarded(
        tb.host(0),
        AgentOptions {
            etcd_endpoints: &endpoint,
            prefix: &prefix,
            dir: tb.dir(),
            extra: vec!["--healthz-ip=127.0.0.1".into(), format!("--healthz-port={HEALTHZ_PORT}")],
        },
    )?;
    let pins = agent.pin_dir();
    let mut ready_s = None;
    let mut subnets = None;
    let all_in_maps_s = loop {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("{n} leases: not all in the maps after 120 s; agent log ends:\n{}", tail(&agent.log_text()));
        }
        if !agent.is_running() {
            bail!("the agent exited; its log ends:\n{}", tail(&agent.log_text()));
        }
        if ready_s.is_none() && agent.log_text_contains_ready() {
            ready_s = Some(t0.elapsed().as_secs_f64());
        }
        if subnets.is_none() {
            subnets = open_subnets(&pins).ok();
        }
        if let Some(m) = &subnets {
            if count_subnets(m) >= n {
                break t0.elapsed().as_secs_f64();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ready_s = match ready_s {
        Some(r) => r,
        None => {
            agent.wait_ready(Duration::from_secs(30))?;
            t0.elapsed().as_secs_f64()
        }
    };
    // Let the agent finish what it does after the last map write (logging),
    // then read the counters.
    std::thread::sleep(Duration::from_millis(300));
    let after_start = grpc_started(etcd)?;
    let start_requests = requests_between(&before, &after_start);
    let start_total: u64 = start_requests.values().sum();
    let subnets = subnets.expect("opened");
    let (own_subnet, _, _) = agent.lease()?;

    // The change stream: new leases in free slots other than the agent's,
    // or, when too few are free, new PublicIPs for existing peers.
    let m = opts.changes;
    let free: Vec<usize> = (0..NETWORK_SLOTS - n).filter(|&s| slot_subnet(s) != own_subnet).collect();
    let (change_kind, stream): (&'static str, Vec<VxlanLease>) = if free.len() >= m {
        ("new leases", free[..m].iter().map(|&s| slot_lease(s, 0)).collect())
    } else {
        // Kept peers only: the removal below counts on the doomed ones
        // being there.
        let kept_slots = peer_slots.iter().filter(|&&s| (s - peer_slots[0]).is_multiple_of(2));
        ("changed leases", kept_slots.take(m).map(|&s| slot_lease(s, 1)).collect())
    };
    if stream.len() < m {
        bail!("{n} leases: room for only {} of {m} changes", stream.len());
    }
    // Each change hangs on an etcd lease of its own, as every flanneld
    // writes its key. Not on `kept`: etcd 3.4's auth applier walks every key
    // of a put's lease on each put, also with auth off (later etcd returns
    // early then); with 32,767 keys on `kept` a put took ~25 ms p50 against
    // 3 ms with a lease of its own, a cost no cluster of flanneld nodes (one
    // key per lease) pays. Granted before the stream.
    let own_leases: Vec<i64> = rt.block_on(async {
        let mut ids = Vec::with_capacity(stream.len());
        for _ in &stream {
            ids.push(client.lease_grant(86_400, None).await?.id());
        }
        Ok::<_, etcd_client::Error>(ids)
    })?;
    // When change j's put was sent and when etcd acknowledged it.
    let sent: Arc<Mutex<Vec<Option<SentAcked>>>> = Arc::new(Mutex::new(vec![None; m]));
    let writer = {
        let sent = sent.clone();
        let prefix = prefix.clone();
        let interval = opts.change_interval;
        let stream = stream.clone();
        std::thread::spawn(move || -> Result<(Client, tokio::runtime::Runtime)> {
            let start = Instant::now();
            rt.block_on(async {
                for (j, l) in stream.iter().enumerate() {
                    let due = start + interval * j as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        tokio::time::sleep(wait).await;
                    }
                    let t = Instant::now();
                    client
                        .put(l.etcd_key(&prefix), l.etcd_value(1), Some(PutOptions::new().with_lease(own_leases[j])))
                        .await?;
                    sent.lock().unwrap()[j] = Some((t, Instant::now()));
                }
                Ok::<_, anyhow::Error>(())
            })?;
            Ok((client, rt))
        })
    };
    let mut seen: Vec<Option<Instant>> = vec![None; m];
    let mut remaining = m;
    let stream_start = Instant::now();
    let stream_deadline = stream_start + opts.change_interval * m as u32 + Duration::from_secs(30);
    while remaining > 0 && Instant::now() < stream_deadline {
        let sent_now: Vec<bool> = sent.lock().unwrap().iter().map(|s| s.is_some()).collect();
        for (j, l) in stream.iter().enumerate() {
            // Not acknowledged yet does not mean not applied: look up
            // everything written or being written.
            if seen[j].is_some() || (j > 0 && !sent_now[j - 1] && !sent_now[j]) {
                continue;
            }
            let key = Key::new(32, Ipv4Addr::from(u32::from(l.subnet) + 1).octets());
            if let Ok(hop) = subnets.get(&key, 0) {
                if hop.public_ip == l.public_ip.octets() && hop.vtep_mac == l.vtep_mac {
                    seen[j] = Some(Instant::now());
                    remaining -= 1;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let (mut client, rt) = writer.join().map_err(|_| anyhow!("writer panicked"))??;
    let stream_s = stream_start.elapsed().as_secs_f64();
    if remaining > 0 {
        bail!("{remaining} of {m} {change_kind} never reached the maps");
    }
    std::thread::sleep(Duration::from_millis(300));
    let after_stream = grpc_started(etcd)?;
    let mut change_requests = requests_between(&after_start, &after_stream);
    // The writer's own requests: the leases granted and the puts.
    for method in ["Put", "LeaseGrant"] {
        if let Some(p) = change_requests.get_mut(method) {
            *p = p.saturating_sub(m as u64);
        }
    }
    change_requests.retain(|_, v| *v > 0);
    let sent = sent.lock().unwrap().clone();
    let mut from_send = Vec::with_capacity(m);
    let mut from_ack = Vec::with_capacity(m);
    let mut put_ack = Vec::with_capacity(m);
    for (s, seen) in sent.iter().zip(&seen) {
        let (Some((t_sent, t_ack)), Some(t_seen)) = (s, seen) else { continue };
        from_send.push(t_seen.saturating_duration_since(*t_sent).as_secs_f64() * 1e3);
        from_ack.push(t_seen.saturating_duration_since(*t_ack).as_secs_f64() * 1e3);
        put_ack.push(t_ack.saturating_duration_since(*t_sent).as_secs_f64() * 1e3);
    }
    for v in [&mut from_send, &mut from_ack, &mut put_ack] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    let pid = agent.pid().context("agent pid")?;
    let rss_mb = status_kb(pid, "VmRSS:").unwrap_or(f64::NAN) / 1024.0;

    // Removal of half, /readyz asked throughout.
    let present = count_subnets(&subnets);
    let target = present.saturating_sub(removed);
    let stop = AtomicBool::new(false);
    let (remove_half_s, readyz) = std::thread::scope(|s| -> Result<(Option<f64>, Vec<ReadyzPoll>)> {
        let poller = s.spawn(|| poll_readyz(tb.host(0).ns(), &stop));
        // The poller's first answers come before the removal starts.
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let outcome = (|| -> Result<Option<f64>> {
            rt.block_on(client.lease_revoke(doomed))?;
            loop {
                if count_subnets(&subnets) <= target {
                    break Ok(Some(t.elapsed().as_secs_f64()));
                }
                // Not finishing is a result too (the goal is missed), not
                // a failed run: the count left is reported.
                if t.elapsed() > REMOVAL_CAP {
                    break Ok(None);
                }
                if !agent.is_running() {
                    bail!("the agent exited during the removal; its log ends:\n{}", tail(&agent.log_text()));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })();
        // Keep asking a little after the maps settled: the agent may still
        // be logging the removals.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let polls = poller.join().map_err(|_| anyhow!("readyz poller panicked"))?;
        Ok((outcome?, polls))
    })?;
    let mut readyz_ms: Vec<f64> = readyz.iter().map(|p| p.ms).collect();
    readyz_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let failures: Vec<&ReadyzPoll> = readyz.iter().filter(|p| p.failure.is_some()).collect();
    let removed_in_time = present.saturating_sub(count_subnets(&subnets)).min(removed);
    let rss_peak_mb = status_kb(pid, "VmHWM:").unwrap_or(f64::NAN) / 1024.0;
    let rss_after_removal_mb = status_kb(pid, "VmRSS:").unwrap_or(f64::NAN) / 1024.0;
    agent.stop();
    drop(agent);
    drop(tb);
    let change_total: u64 = change_requests.values().sum();
    Ok(ControlResult {
        leases: n,
        write_s,
        ready_s,
        all_in_maps_s,
        own_subnet: format!("{own_subnet}/24"),
        start_requests,
        start_requests_per_lease: start_total as f64 / n as f64,
        change_kind,
        changes: m,
        change_rate_per_s: m as f64 / stream_s,
        change_to_map_p50_ms: percentile(&from_send, 50.0),
        change_to_map_p99_ms: percentile(&from_send, 99.0),
        change_to_map_max_ms: from_send.last().copied().unwrap_or(f64::NAN),
        ack_to_map_p50_ms: percentile(&from_ack, 50.0),
        ack_to_map_p99_ms: percentile(&from_ack, 99.0),
        put_ack_p50_ms: percentile(&put_ack, 50.0),
        change_requests,
        change_requests_per_change: change_total as f64 / m as f64,
        rss_mb,
        rss_peak_mb,
        removed,
        remove_half_s: remove_half_s.unwrap_or(f64::NAN),
        removed_in_time,
        readyz_polls: readyz.len(),
        readyz_p99_ms: percentile(&readyz_ms, 99.0),
        readyz_max_ms: readyz_ms.last().copied().unwrap_or(f64::NAN),
        readyz_failures: failures.len(),
        readyz_first_failure: failures.first().and_then(|p| p.failure.clone()),
        rss_after_removal_mb,
    })
}

struct ReadyzPoll {
    ms: f64,
    failure: Option<String>,
}

/// Asks the agent's /readyz in `ns` every 10 ms until `stop`.
fn poll_readyz(ns: &Netns, stop: &AtomicBool) -> Vec<ReadyzPoll> {
    ns.in_ns(|| {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, HEALTHZ_PORT));
        let mut polls = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let failure = match readyz_once(addr) {
                Ok(status) if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") => None,
                Ok(status) => Some(format!("answered {status:?}")),
                Err(e) => Some(format!("{e:#}")),
            };
            polls.push(ReadyzPoll { ms: t.elapsed().as_secs_f64() * 1e3, failure });
            std::thread::sleep(Duration::from_millis(10));
        }
        polls
    })
}

/// One GET /readyz on a fresh connection: the status line.
fn readyz_once(addr: SocketAddr) -> Result<String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body).context("read")?;
    Ok(body.lines().next().unwrap_or("").to_string())
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

trait ReadyInLog {
    fn log_text_contains_ready(&self) -> bool;
}

impl ReadyInLog for Agent {
    fn log_text_contains_ready(&self) -> bool {
        // Only the head of the log matters: "ready" comes before the peers.
        let Ok(mut f) = std::fs::File::open(&self.log) else { return false };
        let mut head = vec![0u8; 64 * 1024];
        let n = f.read(&mut head).unwrap_or(0);
        String::from_utf8_lossy(&head[..n]).lines().any(|l| l.ends_with(" ready") || l.ends_with("] ready"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_the_network_from_subnet_min_to_subnet_max() {
        assert_eq!(slot_subnet(0), Ipv4Addr::new(10, 0, 1, 0));
        assert_eq!(slot_subnet(255), Ipv4Addr::new(10, 1, 0, 0));
        assert_eq!(slot_subnet(NETWORK_SLOTS - 1), Ipv4Addr::new(10, 255, 255, 0));
        let a = slot_lease(7, 0);
        let b = slot_lease(7, 1);
        assert_eq!(a.subnet, b.subnet);
        assert_eq!(a.public_ip, b.public_ip);
        assert_ne!(a.vtep_mac, b.vtep_mac);
        assert_ne!(slot_lease(NETWORK_SLOTS - 1, 0).vtep_mac, slot_lease(0, 0).vtep_mac);
    }
}
