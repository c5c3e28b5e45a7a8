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
//!   there (the put's own etcd round trip, commit included, is in it).
//! * etcd requests: deltas of etcd's own `grpc_server_started_total` (one
//!   per unary request or opened stream), by method, from its /metrics
//!   endpoint, taken around the start (nothing else talks to etcd then) and
//!   around the change stream (minus the writer's own puts).
//! * RSS: VmRSS (and the peak, VmHWM) from /proc/<agent pid>/status at the end.
use std::collections::BTreeMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::lpm_trie::Key;
use etcd_client::{Client, PutOptions};
use serde::Serialize;

use crate::agent::{Agent, AgentOptions};
use crate::bench::stats::percentile;
use crate::control_plane::{
    count_subnets, grpc_started, open_subnets, requests_between, synthetic_lease, write_leases, CONTROL_CONFIG,
};
use crate::etcd::Etcd;
use crate::netns::Testbed;

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
    /// etcd requests (unary calls + streams opened) during the start, by
    /// method, and their sum divided by N.
    pub start_requests: BTreeMap<String, u64>,
    pub start_requests_per_lease: f64,
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
    pub rss_mb: f64,
    pub rss_peak_mb: f64,
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

/// One run with `n` leases present: a fresh one-host testbed and prefix on
/// the shared `etcd`.
pub fn run(etcd: &Etcd, n: usize, opts: &ControlOptions) -> Result<ControlResult> {
    crate::netns::ensure_bpffs()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tb = Testbed::new(1)?;
    let prefix = format!("/bench-cp-{n}-{}/network", tb.id());
    etcd.put(&format!("{prefix}/config"), CONTROL_CONFIG)?;
    let endpoint = etcd.endpoint();
    let (mut client, lease_id) = rt.block_on(async {
        let mut c = Client::connect([endpoint.as_str()], None).await?;
        let id = c.lease_grant(86_400, None).await?.id();
        Ok::<_, etcd_client::Error>((c, id))
    })?;
    let t = Instant::now();
    rt.block_on(write_leases(&mut client, &prefix, 0..n, lease_id))?;
    let write_s = t.elapsed().as_secs_f64();

    let before = grpc_started(etcd)?;
    let t0 = Instant::now();
    let mut agent = Agent::start_forwarded(
        tb.host(0),
        AgentOptions { etcd_endpoints: &endpoint, prefix: &prefix, dir: tb.dir(), extra: vec![] },
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

    // The change stream.
    let m = opts.changes;
    // When change j's put was sent and when etcd acknowledged it.
    let sent: Arc<Mutex<Vec<Option<SentAcked>>>> = Arc::new(Mutex::new(vec![None; m]));
    let writer = {
        let sent = sent.clone();
        let prefix = prefix.clone();
        let interval = opts.change_interval;
        std::thread::spawn(move || -> Result<()> {
            let start = Instant::now();
            rt.block_on(async {
                for j in 0..m {
                    let due = start + interval * j as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        tokio::time::sleep(wait).await;
                    }
                    let l = synthetic_lease(n + j);
                    let t = Instant::now();
                    client
                        .put(l.etcd_key(&prefix), l.etcd_value(1), Some(PutOptions::new().with_lease(lease_id)))
                        .await?;
                    sent.lock().unwrap()[j] = Some((t, Instant::now()));
                }
                Ok(())
            })
        })
    };
    let mut seen: Vec<Option<Instant>> = vec![None; m];
    let mut remaining = m;
    let stream_start = Instant::now();
    let stream_deadline = stream_start + opts.change_interval * m as u32 + Duration::from_secs(30);
    while remaining > 0 && Instant::now() < stream_deadline {
        let sent_now: Vec<bool> = sent.lock().unwrap().iter().map(|s| s.is_some()).collect();
        for j in 0..m {
            // Not acknowledged yet does not mean not applied: look up
            // everything written or being written.
            if seen[j].is_some() || (j > 0 && !sent_now[j - 1] && !sent_now[j]) {
                continue;
            }
            let l = synthetic_lease(n + j);
            let key = Key::new(32, Ipv4Addr::from(u32::from(l.subnet) + 1).octets());
            if let Ok(hop) = subnets.get(&key, 0) {
                if hop.public_ip == l.public_ip.octets() {
                    seen[j] = Some(Instant::now());
                    remaining -= 1;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    writer.join().map_err(|_| anyhow!("writer panicked"))??;
    let stream_s = stream_start.elapsed().as_secs_f64();
    if remaining > 0 {
        bail!("{remaining} of {m} new leases never reached the maps");
    }
    std::thread::sleep(Duration::from_millis(300));
    let after_stream = grpc_started(etcd)?;
    let mut change_requests = requests_between(&after_start, &after_stream);
    if let Some(p) = change_requests.get_mut("Put") {
        *p = p.saturating_sub(m as u64);
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
    let rss_peak_mb = status_kb(pid, "VmHWM:").unwrap_or(f64::NAN) / 1024.0;
    agent.stop();
    drop(agent);
    drop(tb);
    let change_total: u64 = change_requests.values().sum();
    Ok(ControlResult {
        leases: n,
        write_s,
        ready_s,
        all_in_maps_s,
        start_requests,
        start_requests_per_lease: start_total as f64 / n as f64,
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
    })
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
