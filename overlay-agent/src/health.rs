//! `--healthz-ip/--healthz-port`: /healthz (the process is alive), /readyz
//! (data path attached, lease held, subnet file written, masquerade rules
//! installed: flanneld v0.28.9's meaning) and /metrics
//! (Prometheus text format). A deliberately tiny HTTP/1.1 responder: three
//! GET routes do not justify a web framework.
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use log::{debug, info};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    datapath::{PinLayout, PinnedStats},
    etcd::EtcdStatus,
    etcd::Lease,
};

pub struct Health {
    pub etcd: Arc<EtcdStatus>,
    ready: AtomicBool,
    /// flanneld v0.28.9's /readyz: the masquerade (and forward) rules are in
    /// place (true when none are asked for).
    masq_installed: AtomicBool,
    peers: AtomicUsize,
    lease: Mutex<Option<(Ipv4Net, Option<SystemTime>)>>,
    /// The pod bridge found (None while there is none).
    pod_bridge: Mutex<Option<String>>,
    /// What is wrong with the host's bridges now (problem kinds).
    bridge_problems: Mutex<Vec<&'static str>>,
    /// Kept open across scrapes; the server starts before the data path is
    /// pinned, so it opens on the first scrape that finds the pin.
    counters: Mutex<PinnedStats>,
}

impl Health {
    pub fn new(pins: &PinLayout) -> Arc<Health> {
        Arc::new(Health {
            etcd: EtcdStatus::new(),
            ready: AtomicBool::new(false),
            masq_installed: AtomicBool::new(false),
            peers: AtomicUsize::new(0),
            lease: Mutex::new(None),
            pod_bridge: Mutex::new(None),
            bridge_problems: Mutex::new(Vec::new()),
            counters: Mutex::new(PinnedStats::new(pins)),
        })
    }

    pub fn datapath_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn set_masq_installed(&self, installed: bool) {
        self.masq_installed.store(installed, Ordering::SeqCst);
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
    fn not_ready_reason(&self) -> Option<&'static str> {
        if self.lease.lock().map(|l| l.is_none()).unwrap_or(true) {
            Some("no subnet lease yet")
        } else if !self.ready.load(Ordering::SeqCst) {
            Some("the data path or the subnet file is not set up yet")
        } else if !self.masq_installed.load(Ordering::SeqCst) {
            Some("the masquerade rules are not installed")
        } else {
            None
        }
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
        gauge(&mut out, "overlay_ready", "1 once the data path is attached, the lease held and the subnet file written.", u8::from(self.is_ready()).to_string());
        out
    }
}

fn unix(t: SystemTime) -> String {
    format!("{:.3}", t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0))
}

/// Binds now (so a bad address fails the start) and serves in the background.
pub async fn spawn(ip: IpAddr, port: u16, health: Arc<Health>) -> Result<()> {
    let addr = SocketAddr::new(ip, port);
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the health server to {addr}"))?;
    info!("serving /healthz, /readyz and /metrics on {addr}");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let health = health.clone();
            tokio::spawn(async move {
                let _ = serve(stream, &health).await;
            });
        }
    });
    Ok(())
}

async fn serve(mut stream: TcpStream, health: &Health) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf[len..]))
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
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
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
        assert_eq!(h.not_ready_reason(), Some("no subnet lease yet"));
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
        assert_eq!(h.not_ready_reason(), Some("the data path or the subnet file is not set up yet"));
        h.datapath_ready();
        h.set_peers(4);
        assert_eq!(h.not_ready_reason(), Some("the masquerade rules are not installed"));
        h.set_masq_installed(true);
        assert_eq!(h.not_ready_reason(), None);
        let text = h.metrics();
        check_exposition(&text);
        assert!(text.contains("\noverlay_ready 1\n") && text.contains("\noverlay_leases_known 4\n"), "{text}");
        assert!(text.contains("\noverlay_lease_expiry_timestamp_seconds "), "{text}");
    }
}
