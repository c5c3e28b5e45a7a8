//! `--healthz-ip/--healthz-port`: /healthz (the process is alive), /readyz
//! (data path attached, lease held, subnet file written, masquerade rules
//! installed: flanneld v0.28.9's meaning) and /metrics
//! (Prometheus text format). A deliberately tiny HTTP/1.1 responder: three
//! GET routes do not justify a web framework.
//!
//! The DaemonSet binds it to the node's address, which pods can reach, so it
//! must stay answerable under abuse: at most [`MAX_CONNECTIONS`] are served
//! at once (a new one pushes out the oldest, so idle connections cannot keep
//! a probe out), a request must arrive whole within [`REQUEST_TIMEOUT`], and
//! accept errors (e.g. out of file descriptors) back off instead of spinning.
use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use log::{debug, info, warn};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    datapath::{DatapathMaps6, PinLayout, PinnedStats},
    etcd::{Backoff, EtcdStatus, Lease},
};

/// The main loop turns at least once a second (the endpoint sync); this long
/// without a turn means it is stuck, and /readyz says so.
pub const MAIN_LOOP_STALL: Duration = Duration::from_secs(30);
/// Connections served at once; probes and a scraper need a handful.
pub const MAX_CONNECTIONS: usize = 32;
/// The whole request (line and headers) must arrive within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Conditions that make the agent not ready while they last, as
/// `overlay_condition{condition=...}` names them.
pub mod condition {
    /// Applying our lease after it moved failed (retried with backoff).
    pub const OWN_LEASE_APPLY: &str = "own_lease_apply_failing";
    /// The network config in etcd is not the one the agent runs with.
    pub const NETWORK_CONFIG_CHANGED: &str = "network_config_changed";
    pub const ALL: [&str; 2] = [OWN_LEASE_APPLY, NETWORK_CONFIG_CHANGED];
}

pub struct Health {
    pub etcd: Arc<EtcdStatus>,
    ready: AtomicBool,
    /// flanneld v0.28.9's /readyz: the masquerade (and forward) rules are in
    /// place (true when none are asked for).
    masq_installed: AtomicBool,
    /// The same for IPv6's ip6tables rules (true without IPv6 or when
    /// none are asked for).
    masq6_installed: AtomicBool,
    peers: AtomicUsize,
    lease: Mutex<Option<(Ipv4Net, Option<SystemTime>)>>,
    /// The pod bridge found (None while there is none).
    pod_bridge: Mutex<Option<String>>,
    /// What is wrong with the host's bridges now (problem kinds).
    bridge_problems: Mutex<Vec<&'static str>>,
    /// Kept open across scrapes; the server starts before the data path is
    /// pinned, so it opens on the first scrape that finds the pin.
    counters: Mutex<PinnedStats>,
    /// Where the v6 maps are pinned (see [`v6_counts`]).
    pins: PinLayout,
    /// Active conditions (see [`condition`]) with what is wrong.
    conditions: Mutex<BTreeMap<&'static str, String>>,
    /// Failed attempts at applying our lease after it moved.
    lease_apply_failures: AtomicU64,
    /// The main loop's last turn (None until it runs).
    heartbeat: Mutex<Option<Instant>>,
    stall_after: Duration,
}

impl Health {
    pub fn new(pins: &PinLayout) -> Arc<Health> {
        Arc::new(Health {
            etcd: EtcdStatus::new(),
            ready: AtomicBool::new(false),
            masq_installed: AtomicBool::new(false),
            masq6_installed: AtomicBool::new(true),
            peers: AtomicUsize::new(0),
            lease: Mutex::new(None),
            pod_bridge: Mutex::new(None),
            bridge_problems: Mutex::new(Vec::new()),
            counters: Mutex::new(PinnedStats::new(pins)),
            pins: pins.clone(),
            conditions: Mutex::new(BTreeMap::new()),
            lease_apply_failures: AtomicU64::new(0),
            heartbeat: Mutex::new(None),
            stall_after: MAIN_LOOP_STALL,
        })
    }

    /// The main loop is alive (called on each of its turns).
    pub fn heartbeat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Sets (Some: what is wrong) or clears (None) one of [`condition`].
    pub fn set_condition(&self, name: &'static str, problem: Option<String>) {
        let mut c = self.conditions.lock().unwrap_or_else(|p| p.into_inner());
        match problem {
            Some(p) => c.insert(name, p),
            None => c.remove(name),
        };
    }

    pub fn add_lease_apply_failure(&self) {
        self.lease_apply_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// How long the main loop has gone without a turn, when that is more
    /// than [`MAIN_LOOP_STALL`].
    fn main_loop_stalled(&self) -> Option<Duration> {
        let beat = (*self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()))?;
        let age = beat.elapsed();
        (age > self.stall_after).then_some(age)
    }

    pub fn datapath_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn set_masq_installed(&self, installed: bool) {
        self.masq_installed.store(installed, Ordering::SeqCst);
    }

    pub fn set_masq6_installed(&self, installed: bool) {
        self.masq6_installed.store(installed, Ordering::SeqCst);
    }

    pub fn set_peers(&self, n: usize) {
        self.peers.store(n, Ordering::Relaxed);
    }

    pub fn set_pod_bridge(&self, name: Option<&str>) {
        *self.pod_bridge.lock().unwrap_or_else(|p| p.into_inner()) = name.map(str::to_string);
    }

    pub fn set_bridge_problems(&self, kinds: impl Iterator<Item = &'static str>) {
        *self.bridge_problems.lock().unwrap_or_else(|p| p.into_inner()) = kinds.collect();
    }

    pub fn set_lease(&self, lease: &Lease) {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some((lease.subnet, lease.expiration));
    }

    fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// What /readyz is waiting for, or None when ready.
    fn not_ready_reason(&self) -> Option<String> {
        if self.lease.lock().map(|l| l.is_none()).unwrap_or(true) {
            return Some("no subnet lease yet".into());
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Some("the data path or the subnet file is not set up yet".into());
        }
        if !self.masq_installed.load(Ordering::SeqCst) {
            return Some("the masquerade rules are not installed".into());
        }
        if !self.masq6_installed.load(Ordering::SeqCst) {
            return Some("the IPv6 (ip6tables) masquerade rules are not installed".into());
        }
        let mut why = Vec::new();
        if let Some(age) = self.main_loop_stalled() {
            why.push(format!("the main loop has not run for {} s (stuck)", age.as_secs()));
        }
        let conditions = self.conditions.lock().unwrap_or_else(|p| p.into_inner());
        why.extend(conditions.iter().map(|(name, problem)| format!("{name}: {problem}")));
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let stats = self.counters.lock().unwrap_or_else(|p| p.into_inner()).read();
        match stats {
            Ok(stats) => {
                out.push_str("# HELP overlay_packets_total Packets seen by the BPF data path, by outcome.\n");
                out.push_str("# TYPE overlay_packets_total counter\n");
                for (reason, c) in &stats.counters {
                    let _ = writeln!(out, "overlay_packets_total{{reason=\"{}\"}} {}", reason.name(), c.packets);
                }
                out.push_str("# HELP overlay_bytes_total Bytes seen by the BPF data path, by outcome.\n");
                out.push_str("# TYPE overlay_bytes_total counter\n");
                for (reason, c) in &stats.counters {
                    let _ = writeln!(out, "overlay_bytes_total{{reason=\"{}\"}} {}", reason.name(), c.bytes);
                }
                let drops: u64 = stats.counters.iter().filter(|(r, _)| r.is_drop()).map(|(_, c)| c.packets).sum();
                out.push_str("# HELP overlay_dropped_packets_total All drops (sum of the drop_* reasons).\n");
                out.push_str("# TYPE overlay_dropped_packets_total counter\n");
                let _ = writeln!(out, "overlay_dropped_packets_total {drops}");
            }
            Err(e) => debug!("metrics: cannot read counters: {e}"),
        }
        let gauge = |out: &mut String, name: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        let _ = writeln!(
            out,
            "# HELP overlay_build_info The agent's version (always 1).\n# TYPE overlay_build_info gauge\n\
             overlay_build_info{{version=\"{}\",pin_layout=\"v{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::datapath::pins::VERSION
        );
        gauge(&mut out, "overlay_leases_known", "Remote subnets installed in the data path.", self.peers.load(Ordering::Relaxed).to_string());
        if let Some((peers, endpoints)) = v6_counts(&self.pins) {
            gauge(&mut out, "overlay_leases_known_v6", "Remote IPv6 subnets installed in the data path (IPv6 on only).", peers.to_string());
            gauge(&mut out, "overlay_pod_endpoints_v6", "Local pods' IPv6 addresses on the fast path (IPv6 on only).", endpoints.to_string());
        }
        gauge(&mut out, "overlay_etcd_connected", "1 while the lease watch is connected to etcd.", u8::from(self.etcd.is_connected()).to_string());
        counter(&mut out, "overlay_etcd_watch_events_total", "Lease additions and removals received from etcd.", self.etcd.events());
        counter(&mut out, "overlay_etcd_resyncs_total", "Full lease lists read from etcd (1 at start, then after each outage or compaction).", self.etcd.snapshots());
        counter(&mut out, "overlay_etcd_errors_total", "etcd errors seen by the lease watch (failed lists, broken watches).", self.etcd.errors());
        counter(&mut out, "overlay_etcd_skipped_leases_total", "Lease keys or values in etcd that could not be parsed and were skipped.", self.etcd.skipped());
        if let Some(t) = self.etcd.last_sync() {
            gauge(&mut out, "overlay_etcd_last_sync_timestamp_seconds", "Last successful sync with etcd (Unix time).", unix(t));
        }
        if let Some((_, Some(exp))) = *self.lease.lock().unwrap_or_else(|p| p.into_inner()) {
            gauge(&mut out, "overlay_lease_expiry_timestamp_seconds", "When our subnet lease expires unless renewed (Unix time).", unix(exp));
        }
        {
            let bridge = self.pod_bridge.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let _ = writeln!(
                out,
                "# HELP overlay_pod_bridge 1 while a pod bridge is found (the one carrying the lease's gateway, or --bridge), by name.\n# TYPE overlay_pod_bridge gauge"
            );
            match bridge {
                Some(name) => {
                    let _ = writeln!(out, "overlay_pod_bridge{{bridge=\"{name}\"}} 1");
                }
                None => {
                    let _ = writeln!(out, "overlay_pod_bridge{{bridge=\"\"}} 0");
                }
            }
            let problems = self.bridge_problems.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let _ = writeln!(
                out,
                "# HELP overlay_pod_bridge_problems Problems with the host's bridges now (see the log), by kind.\n# TYPE overlay_pod_bridge_problems gauge"
            );
            for kind in ["ambiguous_gateway", "address_not_gateway", "not_a_bridge"] {
                let n = problems.iter().filter(|k| **k == kind).count();
                let _ = writeln!(out, "overlay_pod_bridge_problems{{kind=\"{kind}\"}} {n}");
            }
        }
        {
            let conditions = self.conditions.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let _ = writeln!(
                out,
                "# HELP overlay_condition 1 while this keeps the agent not ready (see /readyz and the log), by condition.\n# TYPE overlay_condition gauge"
            );
            let stalled = self.main_loop_stalled().is_some();
            let _ = writeln!(out, "overlay_condition{{condition=\"main_loop_stalled\"}} {}", u8::from(stalled));
            for name in condition::ALL {
                let _ = writeln!(out, "overlay_condition{{condition=\"{name}\"}} {}", u8::from(conditions.contains_key(name)));
            }
        }
        counter(&mut out, "overlay_lease_apply_failures_total", "Failed attempts at applying our lease after it moved (retried with backoff).", self.lease_apply_failures.load(Ordering::Relaxed));
        gauge(&mut out, "overlay_ready", "1 once the data path is attached, the lease held and the subnet file written.", u8::from(self.is_ready()).to_string());
        out
    }
}

/// (remote v6 subnets, local v6 pod endpoints) from the pinned v6 maps,
/// None while IPv6 is off (no CONFIG6) or nothing is pinned. Opened anew
/// per scrape: cheap next to a scrape, and never a stale map after the
/// agent re-pins. (The drop counters are shared by both families.)
fn v6_counts(pins: &PinLayout) -> Option<(usize, usize)> {
    let read = || -> Result<Option<(usize, usize)>, crate::datapath::DatapathError> {
        let maps = DatapathMaps6::open_pinned(pins)?;
        if maps.config()?.is_none() {
            return Ok(None);
        }
        Ok(Some((maps.peers()?.len(), maps.endpoints()?.len())))
    };
    read().unwrap_or_else(|e| {
        debug!("metrics: cannot read the v6 maps: {e}");
        None
    })
}

fn unix(t: SystemTime) -> String {
    format!("{:.3}", t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0))
}

/// Binds now (so a bad address fails the start) and serves in the background.
pub async fn spawn(ip: IpAddr, port: u16, health: Arc<Health>) -> Result<SocketAddr> {
    let addr = SocketAddr::new(ip, port);
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the health server to {addr}"))?;
    let addr = listener.local_addr().unwrap_or(addr);
    info!("serving /healthz, /readyz and /metrics on {addr}");
    tokio::spawn(accept_loop(listener, health));
    Ok(addr)
}

async fn accept_loop(listener: TcpListener, health: Arc<Health>) {
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut failing = false;
    // Oldest first.
    let mut open: VecDeque<tokio::task::AbortHandle> = VecDeque::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if failing {
                    info!("health server: accepting connections again");
                    failing = false;
                }
                backoff.reset();
                open.retain(|h| !h.is_finished());
                if open.len() >= MAX_CONNECTIONS {
                    // The oldest has had the longest to send its request: a
                    // probe sends at once, an idle connection never does.
                    if let Some(oldest) = open.pop_front() {
                        oldest.abort();
                    }
                }
                let health = health.clone();
                let task = tokio::spawn(async move {
                    let _ = serve(stream, &health).await;
                });
                open.push_back(task.abort_handle());
            }
            // E.g. EMFILE: the connection stays in the backlog, so accepting
            // again at once would spin.
            Err(e) => {
                let d = backoff.next_delay();
                if !failing {
                    warn!("health server: accepting a connection failed: {e}; backing off");
                    failing = true;
                } else {
                    debug!("health server: accept failed again: {e}; waiting {d:?}");
                }
                tokio::time::sleep(d).await;
            }
        }
    }
}

async fn serve(mut stream: TcpStream, health: &Health) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // One deadline for the whole request: a trickle of bytes does not
    // extend it.
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf[len..]))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            break;
        }
        len += n;
    }
    let request = String::from_utf8_lossy(&buf[..len]);
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match health.not_ready_reason() {
            None => ("200 OK", "text/plain", "ready\n".to_string()),
            Some(why) => ("503 Service Unavailable", "text/plain", format!("not ready: {why}\n")),
        },
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", health.metrics()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "method not allowed\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample line belongs to a family announced by HELP and TYPE
    /// just before it (the exposition is valid without pinned maps too).
    fn check_exposition(text: &str) {
        let mut help = None::<String>;
        let mut kind = None::<String>;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                help = rest.split_whitespace().next().map(String::from);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split_whitespace().next().map(String::from);
                assert_eq!(name, help, "TYPE without HELP: {line}");
                kind = name;
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(name), kind.as_deref(), "sample without HELP/TYPE: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }

    #[test]
    fn metrics_without_pins_or_lease() {
        let h = Health::new(&PinLayout::new("/nonexistent/overlay-health-test"));
        let text = h.metrics();
        check_exposition(&text);
        assert!(text.contains("\noverlay_ready 0\n"), "{text}");
        assert!(text.contains("\noverlay_leases_known 0\n"), "{text}");
        assert!(!text.contains("overlay_lease_expiry_timestamp_seconds"), "no lease, no expiry: {text}");
        assert_eq!(h.not_ready_reason().as_deref(), Some("no subnet lease yet"));
        assert!(
            text.contains(&format!(
                "overlay_build_info{{version=\"{}\",pin_layout=\"v{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                crate::datapath::pins::VERSION
            )),
            "{text}"
        );
        assert!(text.contains("\noverlay_pod_bridge{bridge=\"\"} 0\n"), "no pod bridge yet: {text}");
        assert!(text.contains("\noverlay_pod_bridge_problems{kind=\"ambiguous_gateway\"} 0\n"), "{text}");
    }

    #[test]
    fn metrics_with_a_lease() {
        let h = Health::new(&PinLayout::new("/nonexistent/overlay-health-test"));
        let expiry = SystemTime::now() + std::time::Duration::from_secs(86400);
        *h.lease.lock().unwrap() = Some(("10.42.3.0/24".parse().unwrap(), Some(expiry)));
        assert_eq!(h.not_ready_reason().as_deref(), Some("the data path or the subnet file is not set up yet"));
        h.datapath_ready();
        h.set_peers(4);
        assert_eq!(h.not_ready_reason().as_deref(), Some("the masquerade rules are not installed"));
        h.set_masq_installed(true);
        assert_eq!(h.not_ready_reason(), None);
        h.set_masq6_installed(false);
        assert_eq!(h.not_ready_reason().as_deref(), Some("the IPv6 (ip6tables) masquerade rules are not installed"));
        h.set_masq6_installed(true);
        let text = h.metrics();
        check_exposition(&text);
        assert!(text.contains("\noverlay_ready 1\n") && text.contains("\noverlay_leases_known 4\n"), "{text}");
        assert!(text.contains("\noverlay_lease_expiry_timestamp_seconds "), "{text}");
    }

    fn ready_health() -> Arc<Health> {
        let h = Health::new(&PinLayout::new("/nonexistent/overlay-health-test"));
        *h.lease.lock().unwrap() = Some(("10.42.3.0/24".parse().unwrap(), None));
        h.datapath_ready();
        h.set_masq_installed(true);
        h
    }

    #[test]
    fn a_stalled_main_loop_is_not_ready() {
        let mut h = Arc::into_inner(ready_health()).unwrap();
        h.stall_after = Duration::from_millis(50);
        assert_eq!(h.not_ready_reason(), None, "no heartbeat yet: the loop has not started");
        h.heartbeat();
        assert_eq!(h.not_ready_reason(), None);
        std::thread::sleep(Duration::from_millis(120));
        let why = h.not_ready_reason().expect("stale heartbeat");
        assert!(why.contains("main loop"), "{why}");
        assert!(h.metrics().contains("\noverlay_condition{condition=\"main_loop_stalled\"} 1\n"));
        h.heartbeat();
        assert_eq!(h.not_ready_reason(), None);
    }

    #[test]
    fn conditions_make_it_not_ready_until_cleared() {
        let h = ready_health();
        h.set_condition(condition::NETWORK_CONFIG_CHANGED, Some("Network 10.42.0.0/16 -> 10.43.0.0/16".into()));
        h.add_lease_apply_failure();
        let why = h.not_ready_reason().unwrap();
        assert!(why.contains("network_config_changed") && why.contains("10.43.0.0/16"), "{why}");
        let text = h.metrics();
        check_exposition(&text);
        assert!(text.contains("\noverlay_condition{condition=\"network_config_changed\"} 1\n"), "{text}");
        assert!(text.contains("\noverlay_condition{condition=\"own_lease_apply_failing\"} 0\n"), "{text}");
        assert!(text.contains("\noverlay_lease_apply_failures_total 1\n"), "{text}");
        assert!(text.contains("\noverlay_ready 0\n"), "{text}");
        h.set_condition(condition::NETWORK_CONFIG_CHANGED, None);
        assert_eq!(h.not_ready_reason(), None);
    }

    /// Real sockets on loopback: far more idle connections than are served
    /// at once do not keep /readyz from answering.
    #[tokio::test]
    async fn readyz_answers_past_many_idle_connections() {
        let h = ready_health();
        let addr = spawn("127.0.0.1".parse().unwrap(), 0, h).await.unwrap();
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS * 4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut probe = TcpStream::connect(addr).await.unwrap();
        probe.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(REQUEST_TIMEOUT / 2, probe.read_to_string(&mut answer))
            .await
            .expect("/readyz answered while the idle connections are open")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ready\n"), "{answer}");
        // The oldest idle connections were closed to make room.
        let mut first = idle.remove(0);
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(REQUEST_TIMEOUT / 2, first.read(&mut byte)).await.expect("closed by the server");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
}
