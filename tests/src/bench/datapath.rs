//! One topology per data path mode, all alike: two hosts on a veth underlay
//! (MTU 1500), one pod behind `cni0` on each; traffic goes from the pod on
//! host 0 to the pod on host 1. The underlay ([`Underlay`]) is either one
//! veth pair between the hosts' `eth0` (`Testbed::cable()`, a cable between
//! two NICs) or a bridge with a port per host (`Testbed::new(2)`, a switch).
//!
//! | mode | node set-up | pod MTU |
//! |---|---|---|
//! | host-gw | `cni0`, `ip route add <remote subnet> via <remote host>` | 1500 |
//! | flannel | flannel.1 exactly as flanneld's vxlan backend ([`crate::flannel`]) | 1450 |
//! | overlay | the real agent binary, `Backend.Type vxlan`, real etcd | 1450 |
//! | overlay-dr | the same with `Backend.DirectRouting: true` (peers on the same subnet are routed, not encapsulated) | 1450 |
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::agent::{Agent, AgentOptions};
use crate::bench::sockets::{self, CpuTimes, FloodResult, PingPongResult, Wait};
use crate::etcd::Etcd;
use crate::flannel::{add_kernel_peer, setup_kernel_vxlan, VxlanLease};
use crate::netns::{next, ChildHandle, Pod, Testbed};
use overlay_agent::datapath::DatapathMaps;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    #[serde(rename = "host-gw")]
    HostGw,
    #[serde(rename = "flannel")]
    Flannel,
    #[serde(rename = "overlay")]
    Overlay,
    #[serde(rename = "overlay-dr")]
    OverlayDirect,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::HostGw, Mode::Flannel, Mode::Overlay, Mode::OverlayDirect];

    pub fn name(self) -> &'static str {
        match self {
            Mode::HostGw => "host-gw",
            Mode::Flannel => "flannel",
            Mode::Overlay => "overlay",
            Mode::OverlayDirect => "overlay-dr",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mode::HostGw => "plain routes, no encapsulation (the no-overlay limit)",
            Mode::Flannel => "kernel flannel.1 VXLAN, set up as flanneld does",
            Mode::Overlay => "overlay-agent, BPF VXLAN (TC encap on the pod veths and cni0, TC decap + redirect_peer to the pod)",
            Mode::OverlayDirect => "overlay-agent, Backend.DirectRouting: true (same-subnet peers routed by BPF)",
        }
    }

    pub fn parse(s: &str) -> Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| anyhow!("unknown mode {s:?} (known: host-gw, flannel, overlay, overlay-dr)"))
    }
}

/// How the two nodes' `eth0` are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Underlay {
    /// One veth pair: node 0's eth0 <-> node 1's eth0.
    Cable,
    /// A Linux bridge in an underlay namespace, one veth port per node.
    Bridge,
}

impl Underlay {
    pub fn name(self) -> &'static str {
        match self {
            Underlay::Cable => "cable",
            Underlay::Bridge => "bridge",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Underlay::Cable => "the nodes' eth0 are the two ends of one veth pair (a cable between two NICs)",
            Underlay::Bridge => "the nodes' eth0 are veths on a Linux bridge in an underlay namespace (a switch, forwarding on the sender's CPU)",
        }
    }

    pub fn parse(s: &str) -> Result<Underlay> {
        match s {
            "cable" => Ok(Underlay::Cable),
            "bridge" => Ok(Underlay::Bridge),
            _ => bail!("unknown underlay {s:?} (known: cable, bridge)"),
        }
    }

    fn testbed(self) -> Result<Testbed> {
        match self {
            Underlay::Cable => Testbed::cable(),
            Underlay::Bridge => Testbed::new(2),
        }
    }
}

const IPERF_PORT: u16 = 5201;

/// A built topology. Field order is drop order: agents (their pins, then
/// their port forwards) first, the namespaces last.
pub struct Topology {
    pub mode: Mode,
    pub underlay: Underlay,
    agents: Vec<Agent>,
    iperf: Option<ChildHandle>,
    pub client: Pod,
    pub server: Pod,
    pub pod_mtu: u32,
    pub tb: Testbed,
}

fn host_subnet(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let net = Ipv4Addr::new(10, 42, i as u8 + 1, 0);
    (net, Ipv4Addr::new(10, 42, i as u8 + 1, 1))
}

impl Topology {
    /// Builds `mode`'s two nodes on `underlay`. `etcd` is needed for the
    /// agent modes.
    pub fn build(mode: Mode, underlay: Underlay, etcd: Option<&Etcd>) -> Result<Topology> {
        crate::netns::ensure_bpffs()?;
        let tb = underlay.testbed()?;
        if underlay == Underlay::Bridge {
            // The underlay bridge stands in for a physical switch, which
            // costs the nodes nothing. With br_netfilter loaded (as on
            // Kubernetes nodes), every frame it forwards would also go
            // through the underlay namespace's netfilter hooks (~15% of a
            // 64-byte packet's cost in every mode), so that is switched off
            // there. The nodes' own cni0 bridges keep the host's
            // br_netfilter setting.
            for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"] {
                let _ = tb.underlay().set_sysctl(&format!("net/bridge/{key}"), "0");
            }
        }
        let mut agents = Vec::new();
        let mut pods = Vec::new();
        let pod_mtu;
        match mode {
            Mode::HostGw => {
                pod_mtu = 1500;
                for i in 0..2 {
                    let host = tb.host(i);
                    let (_, gw) = host_subnet(i);
                    host.add_bridge("cni0", Some(&format!("{gw}/24")), pod_mtu)?;
                    let (other_net, _) = host_subnet(1 - i);
                    host.run(&["ip", "route", "add", &format!("{other_net}/24"), "via", &tb.host(1 - i).ip().to_string()])?;
                    pods.push(host.add_pod("cni0", &format!("{}/24", next(gw, 1)), gw, pod_mtu)?);
                }
            }
            Mode::Flannel => {
                pod_mtu = 1450;
                let leases: Vec<VxlanLease> = (0..2)
                    .map(|i| VxlanLease {
                        subnet: host_subnet(i).0,
                        prefix_len: 24,
                        public_ip: tb.host(i).ip(),
                        vtep_mac: [0x0e, 0, 0, 0, 0xfa, i as u8 + 1],
                    })
                    .collect();
                for i in 0..2 {
                    let host = tb.host(i);
                    setup_kernel_vxlan(host, 1, &leases[i], tb.underlay_mtu())?;
                    add_kernel_peer(host, 1, &leases[1 - i])?;
                    let gw = leases[i].gateway();
                    pods.push(host.add_pod("cni0", &format!("{}/24", next(gw, 1)), gw, pod_mtu)?);
                }
            }
            Mode::Overlay | Mode::OverlayDirect => {
                let etcd = etcd.ok_or_else(|| anyhow!("the agent modes need etcd"))?;
                let direct = mode == Mode::OverlayDirect;
                let prefix = format!("/bench-{}-{}/network", mode.name(), tb.id());
                let config = format!(
                    r#"{{"Network":"10.42.0.0/16","Backend":{{"Type":"vxlan"{}}}}}"#,
                    if direct { r#","DirectRouting":true"# } else { "" }
                );
                etcd.put(&format!("{prefix}/config"), &config)?;
                for i in 0..2 {
                    let agent = Agent::start_forwarded(
                        tb.host(i),
                        AgentOptions { etcd_endpoints: &etcd.endpoint(), prefix: &prefix, dir: tb.dir(), extra: vec![] },
                    )?;
                    agents.push(agent);
                }
                for a in &agents {
                    a.wait_ready(Duration::from_secs(60))?;
                }
                pod_mtu = agents[0].flannel_mtu()?;
                for (i, a) in agents.iter().enumerate() {
                    let (_, len, gw) = a.lease()?;
                    pods.push(tb.host(i).add_pod("cni0", &format!("{}/{len}", next(gw, 1)), gw, pod_mtu)?);
                }
                // Both nodes know each other.
                for a in &agents {
                    crate::poll_until(Duration::from_secs(30), "the peer in the maps", || {
                        let peers = DatapathMaps::open_pinned(&a.pins())?.peers()?;
                        if peers.is_empty() {
                            bail!("no peer yet");
                        }
                        if direct && peers.iter().any(|p| p.mode != overlay_agent::datapath::Mode::Direct) {
                            bail!("DirectRouting: peer not in direct mode yet: {peers:?}");
                        }
                        Ok(())
                    })?;
                }
            }
        }
        let server = pods.pop().expect("two pods");
        let client = pods.pop().expect("two pods");
        let mut topo = Topology { mode, underlay, agents, iperf: None, client, server, pod_mtu, tb };
        topo.wait_connected()?;
        topo.wait_endpoints()?;
        topo.start_iperf()?;
        Ok(topo)
    }

    fn wait_connected(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.client.ping(self.server.ip()).is_ok() && self.server.ping(self.client.ip()).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{}: the pods cannot ping each other", self.mode.name());
            }
        }
    }

    /// The agents learn their pods from the bridge's neighbour and FDB
    /// entries (which traffic creates): wait until each has its pod in
    /// ENDPOINTS, so that the decap path delivers straight to the pod
    /// (`bpf_redirect_peer`) during the measurements.
    fn wait_endpoints(&self) -> Result<()> {
        for (a, pod) in self.agents.iter().zip([&self.client, &self.server]) {
            let pod_ip = pod.ip();
            crate::poll_until(Duration::from_secs(20), "the pod in the agent's ENDPOINTS", || {
                if !DatapathMaps::open_pinned(&a.pins())?.endpoints()?.iter().any(|e| e.ip == pod_ip) {
                    // Keep the neighbour entries fresh while waiting.
                    let _ = self.client.ping(self.server.ip());
                    bail!("pod {pod_ip} not in ENDPOINTS yet");
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn start_iperf(&mut self) -> Result<()> {
        if let Some(old) = self.iperf.take() {
            old.kill();
        }
        let mut cmd = self.server.command("iperf3");
        cmd.args(["-s", "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.iperf = Some(self.server.spawn(cmd)?);
        crate::poll_until(Duration::from_secs(10), "iperf3 server listening", || {
            let out = self.server.run(&["ss", "-Hltn", &format!("sport = :{IPERF_PORT}")])?;
            if out.trim().is_empty() {
                bail!("not listening yet");
            }
            Ok(())
        })
    }

    /// Sets `gso_max_size` (which also caps the IPv4 limit) of both pods' eth0 (an
    /// experiment knob: `--pod-gso-max-size`).
    pub fn set_pod_gso_max_size(&self, size: u32) -> Result<()> {
        for pod in [&self.client, &self.server] {
            pod.run(&["ip", "link", "set", "dev", "eth0", "gso_max_size", &size.to_string()])?;
        }
        Ok(())
    }

    /// Pid of the agent on host `i`, if this mode runs agents.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.agents.get(i).and_then(|a| a.pid())
    }

    pub fn agent_pin_dirs(&self) -> Vec<std::path::PathBuf> {
        self.agents.iter().map(|a| a.pin_dir()).collect()
    }

    /// iperf3 TCP from the client pod, `streams` parallel streams, with
    /// /proc/stat sampled around the run. Retried once (with a fresh server)
    /// if iperf3 fails.
    pub fn tcp(&mut self, secs: u32, streams: u32) -> Result<TcpResult> {
        match self.tcp_once(secs, streams) {
            Ok(r) => Ok(r),
            Err(e) => {
                eprintln!("    {}: iperf3 failed ({e:#}); restarting its server and retrying", self.mode.name());
                self.start_iperf()?;
                self.tcp_once(secs, streams)
            }
        }
    }

    fn tcp_once(&self, secs: u32, streams: u32) -> Result<TcpResult> {
        let before = CpuTimes::now();
        let t = Instant::now();
        let out = self.client.exec(&[
            "iperf3",
            "-c",
            &self.server.ip().to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ])?;
        let wall = t.elapsed().as_secs_f64();
        let after = CpuTimes::now();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 -J output: {}", String::from_utf8_lossy(&out.stdout)))?;
        if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
            bail!("iperf3: {err}");
        }
        let recv = json.pointer("/end/sum_received").ok_or_else(|| anyhow!("no end.sum_received"))?;
        let bps = recv.get("bits_per_second").and_then(|v| v.as_f64()).unwrap_or(0.0);
        let bytes = recv.get("bytes").and_then(|v| v.as_f64()).unwrap_or(0.0);
        let retransmits = json.pointer("/end/sum_sent/retransmits").and_then(|v| v.as_u64()).unwrap_or(0);
        if bps <= 0.0 || bytes <= 0.0 {
            bail!("iperf3 reported no throughput");
        }
        let kernel_s = after.kernel_seconds_since(&before);
        let gbit = bytes * 8.0 / 1e9;
        Ok(TcpResult {
            gbps: bps / 1e9,
            retransmits,
            kernel_cpu_s: kernel_s,
            user_cpu_s: after.user_seconds_since(&before),
            wall_s: wall,
            cpu_s_per_gbit: kernel_s / gbit,
        })
    }

    pub fn udp_pps(&self, secs: f64) -> Result<FloodResult> {
        sockets::udp_flood(&self.client, &self.server, Duration::from_secs_f64(secs), 64)
    }

    /// `round_trips` recorded request/response round trips (after a tenth
    /// as many, at least 100, unrecorded), both sockets waiting as `wait` says.
    pub fn latency(&self, round_trips: usize, wait: Wait) -> Result<PingPongResult> {
        sockets::udp_ping_pong(&self.client, &self.server, round_trips, warmup_round_trips(round_trips), 64, wait)
    }

    /// The same request/response between two sockets of the client pod
    /// over loopback: no data path, only what every mode pays on top of it.
    pub fn latency_floor(&self, round_trips: usize, wait: Wait) -> Result<PingPongResult> {
        sockets::udp_ping_pong(&self.client, &self.client, round_trips, warmup_round_trips(round_trips), 64, wait)
    }

    /// The same UDP flood between two sockets of the client pod over loopback.
    pub fn udp_pps_floor(&self, secs: f64) -> Result<FloodResult> {
        sockets::udp_flood(&self.client, &self.client, Duration::from_secs_f64(secs), 64)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TcpResult {
    pub gbps: f64,
    pub retransmits: u64,
    /// system + softirq + irq seconds over all CPUs during the run.
    pub kernel_cpu_s: f64,
    pub user_cpu_s: f64,
    pub wall_s: f64,
    pub cpu_s_per_gbit: f64,
}

/// Unrecorded round trips before `round_trips` recorded ones: 2,000 before 20,000.
pub fn warmup_round_trips(round_trips: usize) -> usize {
    (round_trips / 10).max(100)
}

