//! One topology per data path mode, all alike: two hosts on a veth underlay
//! (MTU 1500), one pod behind `cni0` on each; traffic goes from the pod on
//! host 0 to the pod on host 1. The underlay ([`Underlay`]) is one veth pair
//! between the hosts' `eth0` (`Testbed::cable()`, a cable between two NICs),
//! either made NIC-like (`nic`: no TSO/GSO on its ends, so MTU-sized frames
//! cross it, and GRO on receive) or left as veth is (`cable`: 64 KB GSO
//! super-packets cross it whole), or a bridge with a port per host
//! (`Testbed::new(2)`, a switch).
//!
//! | mode | node set-up | pod MTU |
//! |---|---|---|
//! | host-gw | `cni0`, `ip route add <remote subnet> via <remote host>` | 1500 |
//! | flannel | flannel.1 exactly as flanneld's vxlan backend ([`crate::flannel`]), outer UDP checksum on | 1450 |
//! | flannel-nocsum | the same with `noudpcsum` (outer UDP checksum 0, as ours); not run by default | 1450 |
//! | overlay | the real agent binary, `Backend.Type vxlan`, real etcd | 1450 |
//! | overlay-dr | the same with `Backend.DirectRouting: true` (peers on the same subnet are routed, not encapsulated) | 1450 |
//! | overlay-xdp | overlay with `--xdp-decap`: VXLAN decapsulated by native XDP on each uplink, before GRO; not run by default | 1450 |
//! | overlay-xdp-generic | the same in generic XDP (`--xdp-mode=generic`); not run by default | 1450 |
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::agent::{Agent, AgentOptions};
use crate::bench::sockets::{self, CpuTimes, FloodResult, PingPongResult, Wait};
use crate::cluster::add_pod6;
use crate::etcd::Etcd;
use crate::flannel::{
    add_kernel_peer, add_kernel_peer6, kernel_vxlan6_udp_csum, kernel_vxlan_udp_csum, setup_kernel_vxlan6, setup_kernel_vxlan_with,
    Lease6, UdpCsum, VxlanLease, VXLAN6_OVERHEAD,
};
use crate::netns::{next, ChildHandle, Pod, Testbed};
use ipnet::Ipv6Net;
use overlay_agent::datapath::{DatapathMaps, DatapathMaps6};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    #[serde(rename = "host-gw")]
    HostGw,
    #[serde(rename = "flannel")]
    Flannel,
    #[serde(rename = "flannel-nocsum")]
    FlannelNoCsum,
    #[serde(rename = "overlay")]
    Overlay,
    #[serde(rename = "overlay-dr")]
    OverlayDirect,
    #[serde(rename = "overlay-xdp")]
    OverlayXdp,
    #[serde(rename = "overlay-xdp-generic")]
    OverlayXdpGeneric,
    #[serde(rename = "host-gw6")]
    HostGw6,
    #[serde(rename = "flannel6")]
    Flannel6,
    #[serde(rename = "overlay6")]
    Overlay6,
}

impl Mode {
    pub const ALL: [Mode; 10] = [
        Mode::HostGw,
        Mode::Flannel,
        Mode::FlannelNoCsum,
        Mode::Overlay,
        Mode::OverlayDirect,
        Mode::OverlayXdp,
        Mode::OverlayXdpGeneric,
        Mode::HostGw6,
        Mode::Flannel6,
        Mode::Overlay6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::HostGw => "host-gw",
            Mode::Flannel => "flannel",
            Mode::FlannelNoCsum => "flannel-nocsum",
            Mode::Overlay => "overlay",
            Mode::OverlayDirect => "overlay-dr",
            Mode::OverlayXdp => "overlay-xdp",
            Mode::OverlayXdpGeneric => "overlay-xdp-generic",
            Mode::HostGw6 => "host-gw6",
            Mode::Flannel6 => "flannel6",
            Mode::Overlay6 => "overlay6",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mode::HostGw => "plain routes, no encapsulation (the no-overlay limit)",
            Mode::Flannel => "kernel flannel.1 VXLAN, set up as flanneld does (outer UDP checksum on)",
            Mode::FlannelNoCsum => "kernel flannel.1 VXLAN as flanneld's, but noudpcsum (outer UDP checksum 0, like ours)",
            Mode::Overlay => "overlay-agent, BPF VXLAN (TC encap on the pod veths and cni0, TC decap + redirect_peer to the pod)",
            Mode::OverlayDirect => "overlay-agent, Backend.DirectRouting: true (same-subnet peers routed by BPF)",
            Mode::OverlayXdp => "overlay-agent with --xdp-decap: VXLAN decapsulated in native XDP on the uplink, before GRO",
            Mode::OverlayXdpGeneric => "overlay-agent with --xdp-decap --xdp-mode=generic: the same in generic XDP",
            Mode::HostGw6 => "IPv6 pods, plain IPv6 routes via the peer's underlay address, no encapsulation",
            Mode::Flannel6 => "IPv6 pods over kernel flannel-v6.1 VXLAN on the IPv6 underlay, set up as flanneld does (outer UDP checksum on)",
            Mode::Overlay6 => "IPv6 pods, overlay-agent dual stack: BPF on the pod side, VXLAN over IPv6 through overlay0 (outer UDP checksum on)",
        }
    }

    pub fn parse(s: &str) -> Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                anyhow!("unknown mode {s:?} (known: {})", known.join(", "))
            })
    }

    /// Whether this mode runs flannel's kernel VXLAN (flannel.1).
    pub fn is_flannel(self) -> bool {
        matches!(self, Mode::Flannel | Mode::FlannelNoCsum | Mode::Flannel6)
    }

    /// Whether the pods talk over IPv6 (on an IPv6 underlay).
    pub fn is_v6(self) -> bool {
        matches!(self, Mode::HostGw6 | Mode::Flannel6 | Mode::Overlay6)
    }

    /// Whether this mode runs overlay-agent.
    pub fn is_agent(self) -> bool {
        matches!(self, Mode::Overlay | Mode::OverlayDirect | Mode::OverlayXdp | Mode::OverlayXdpGeneric | Mode::Overlay6)
    }
}

/// How the two nodes' `eth0` are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Underlay {
    /// One veth pair made NIC-like: on both ends [`NIC_OFFLOADS`] (no
    /// TSO/GSO, so only MTU-sized frames cross it, as on a physical link;
    /// GRO on receive, as a NIC driver does).
    Nic,
    /// One veth pair as veth is: node 0's eth0 <-> node 1's eth0 (64 KB GSO
    /// super-packets cross it whole, which no physical link does).
    Cable,
    /// A Linux bridge in an underlay namespace, one veth port per node.
    Bridge,
}

impl Underlay {
    pub fn name(self) -> &'static str {
        match self {
            Underlay::Nic => "nic",
            Underlay::Cable => "cable",
            Underlay::Bridge => "bridge",
        }
    }

    /// The `ethtool -K` settings of the cable's two ends (`nic` only).
    pub fn offloads(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Underlay::Nic => NIC_OFFLOADS,
            Underlay::Cable | Underlay::Bridge => &[],
        }
    }

    /// The name and its offloads, e.g. "nic (cable ends: tso off, gso off, gro on)".
    pub fn label(self) -> String {
        let offloads = self.offloads();
        if offloads.is_empty() {
            return self.name().into();
        }
        let o: Vec<String> = offloads.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!("{} (cable ends: {})", self.name(), o.join(", "))
    }

    pub fn describe(self) -> &'static str {
        match self {
            Underlay::Nic => {
                "the nodes' eth0 are the two ends of one veth pair made NIC-like with `ethtool -K <end> tso off gso off gro on`: \
                 MTU-sized frames on the wire, GRO on receive (a cable between two NICs)"
            }
            Underlay::Cable => {
                "the nodes' eth0 are the two ends of one veth pair as veth is (64 KB GSO super-packets cross it whole)"
            }
            Underlay::Bridge => "the nodes' eth0 are veths on a Linux bridge in an underlay namespace (a switch, forwarding on the sender's CPU)",
        }
    }

    pub fn parse(s: &str) -> Result<Underlay> {
        match s {
            "nic" => Ok(Underlay::Nic),
            "cable" => Ok(Underlay::Cable),
            "bridge" => Ok(Underlay::Bridge),
            _ => bail!("unknown underlay {s:?} (known: nic, cable, bridge)"),
        }
    }

    /// Fails, naming the problem, if this underlay cannot be built here
    /// (`nic` needs ethtool): checked before anything is started.
    pub fn check_tools(self) -> Result<()> {
        if !self.offloads().is_empty() && !ethtool_installed() {
            bail!(
                "--underlay {} needs ethtool, which is not installed (`cargo xtask setup` installs it, or \
                 `apt-get install -y ethtool`); `--underlay cable` runs without it",
                self.name()
            );
        }
        Ok(())
    }

    fn testbed(self) -> Result<Testbed> {
        match self {
            Underlay::Nic => {
                self.check_tools()?;
                let tb = Testbed::cable()?;
                for host in tb.hosts() {
                    set_offloads(host, host.uplink(), NIC_OFFLOADS)?;
                }
                Ok(tb)
            }
            Underlay::Cable => Testbed::cable(),
            Underlay::Bridge => Testbed::new(2),
        }
    }
}

/// `--underlay nic`: what `ethtool -K` sets on both cable ends. Without TSO
/// and GSO the sender segments to the MTU before the cable (as a NIC's wire
/// carries only MTU-sized frames); GRO merges them again on the receiving
/// end, as a NIC driver's NAPI poll does.
pub const NIC_OFFLOADS: &[(&str, &str)] = &[("tso", "off"), ("gso", "off"), ("gro", "on")];

/// The `ethtool -k` features the short names of [`NIC_OFFLOADS`] stand for.
fn feature_name(short: &str) -> &str {
    match short {
        "tso" => "tcp-segmentation-offload",
        "gso" => "generic-segmentation-offload",
        "gro" => "generic-receive-offload",
        other => other,
    }
}

fn ethtool_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("ethtool").is_file()))
}

/// `ethtool -K <dev> <settings>` in `host`'s namespace, then checks with
/// `ethtool -k` that every feature is what was asked.
fn set_offloads(host: &crate::netns::Host, dev: &str, settings: &[(&str, &str)]) -> Result<()> {
    let mut argv = vec!["ethtool", "-K", dev];
    for (k, v) in settings {
        argv.extend([*k, *v]);
    }
    host.run(&argv).with_context(|| format!("{}: ethtool -K {dev}", host.name()))?;
    let now = offloads(host, dev)?;
    for (k, v) in settings {
        let feature = feature_name(k);
        match now.get(feature) {
            Some(state) if state == v => {}
            state => bail!("{}: {dev}: {feature} is {state:?} after `ethtool -K {dev} {k} {v}`", host.name()),
        }
    }
    Ok(())
}

/// The TSO/GSO/GRO state of `dev` as `ethtool -k` prints it ("on", "off",
/// "off [fixed]" shortened to "off").
fn offloads(host: &crate::netns::Host, dev: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let out = host.run(&["ethtool", "-k", dev]).with_context(|| format!("{}: ethtool -k {dev}", host.name()))?;
    let wanted = ["tcp-segmentation-offload", "generic-segmentation-offload", "generic-receive-offload", "rx-udp-gro-forwarding"];
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| wanted.contains(&k.trim()))
        .map(|(k, v)| (k.trim().to_string(), v.split_whitespace().next().unwrap_or("").to_string()))
        .collect())
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
    /// The addresses the traffic runs between: the pods' IPv4 addresses, or
    /// their IPv6 ones in the v6 modes.
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
    pub pod_mtu: u32,
    pub tb: Testbed,
}

fn host_subnet(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let net = Ipv4Addr::new(10, 42, i as u8 + 1, 0);
    (net, Ipv4Addr::new(10, 42, i as u8 + 1, 1))
}

/// Node `i`'s address on the IPv6 underlay (the v6 modes).
fn host_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

/// Node `i`'s IPv6 pod subnet in host-gw6 and flannel6 (overlay6 takes the
/// one its lease says).
fn host_subnet6(i: usize) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0xfd42, 0, i as u16 + 1, 0, 0, 0, 0, 0), 64).expect("a /64")
}

/// The v6 modes' underlay: an IPv6 address on each node's eth0 (next to
/// its IPv4 one) and IPv6 forwarding on.
fn add_underlay6(tb: &Testbed) -> Result<()> {
    for (i, host) in tb.hosts().iter().enumerate() {
        host.ip_batch(&[format!("addr add {}/64 dev {} nodad", host_ip6(i), host.uplink())])?;
        host.set_sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
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
        // The pods' IPv6 addresses, in the v6 modes.
        let mut pods6: Vec<Ipv6Addr> = Vec::new();
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
            Mode::Flannel | Mode::FlannelNoCsum => {
                pod_mtu = 1450;
                let csum = if mode == Mode::FlannelNoCsum { UdpCsum::Off } else { UdpCsum::AsFlanneld };
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
                    setup_kernel_vxlan_with(host, 1, &leases[i], tb.underlay_mtu(), csum)?;
                    add_kernel_peer(host, 1, &leases[1 - i])?;
                    let gw = leases[i].gateway();
                    pods.push(host.add_pod("cni0", &format!("{}/24", next(gw, 1)), gw, pod_mtu)?);
                }
            }
            Mode::HostGw6 => {
                pod_mtu = 1500;
                add_underlay6(&tb)?;
                for i in 0..2 {
                    let host = tb.host(i);
                    let (_, gw) = host_subnet(i);
                    host.add_bridge("cni0", Some(&format!("{gw}/24")), pod_mtu)?;
                    host.ip_batch(&[format!("route add {} via {}", host_subnet6(1 - i), host_ip6(1 - i))])?;
                    let pod = host.add_pod("cni0", &format!("{}/24", next(gw, 1)), gw, pod_mtu)?;
                    pods6.push(add_pod6(host, &pod, host_subnet6(i), 2));
                    pods.push(pod);
                }
            }
            Mode::Flannel6 => {
                pod_mtu = tb.underlay_mtu() - VXLAN6_OVERHEAD;
                add_underlay6(&tb)?;
                let leases: Vec<Lease6> = (0..2)
                    .map(|i| Lease6 { subnet: host_subnet6(i), public_ip: host_ip6(i), vtep_mac: [0x0e, 0, 0, 0, 0xf6, i as u8 + 1] })
                    .collect();
                for i in 0..2 {
                    let host = tb.host(i);
                    setup_kernel_vxlan6(host, 1, &leases[i], tb.underlay_mtu())?;
                    add_kernel_peer6(host, 1, &leases[1 - i])?;
                    let (_, gw) = host_subnet(i);
                    host.add_bridge("cni0", Some(&format!("{gw}/24")), pod_mtu)?;
                    let pod = host.add_pod("cni0", &format!("{}/24", next(gw, 1)), gw, pod_mtu)?;
                    pods6.push(add_pod6(host, &pod, leases[i].subnet, 2));
                    pods.push(pod);
                }
            }
            Mode::Overlay | Mode::OverlayDirect | Mode::OverlayXdp | Mode::OverlayXdpGeneric | Mode::Overlay6 => {
                let etcd = etcd.ok_or_else(|| anyhow!("the agent modes need etcd"))?;
                if mode.is_v6() {
                    add_underlay6(&tb)?;
                }
                let direct = mode == Mode::OverlayDirect;
                let prefix = format!("/bench-{}-{}/network", mode.name(), tb.id());
                let config = format!(
                    r#"{{"Network":"10.42.0.0/16"{},"Backend":{{"Type":"vxlan"{}}}}}"#,
                    if mode.is_v6() { r#","EnableIPv6":true,"IPv6Network":"fd42::/48""# } else { "" },
                    if direct { r#","DirectRouting":true"# } else { "" }
                );
                etcd.put(&format!("{prefix}/config"), &config)?;
                for i in 0..2 {
                    let agent = Agent::start_forwarded(
                        tb.host(i),
                        AgentOptions {
                            etcd_endpoints: &etcd.endpoint(),
                            prefix: &prefix,
                            dir: tb.dir(),
                            extra: match mode {
                                Mode::OverlayXdp => vec!["--xdp-decap".into()],
                                Mode::OverlayXdpGeneric => vec!["--xdp-decap".into(), "--xdp-mode=generic".into()],
                                _ => vec![],
                            },
                        },
                    )?;
                    agents.push(agent);
                }
                for a in &agents {
                    a.wait_ready(Duration::from_secs(60))?;
                }
                pod_mtu = agents[0].flannel_mtu()?;
                for (i, a) in agents.iter().enumerate() {
                    let (_, len, gw) = a.lease()?;
                    let pod = tb.host(i).add_pod("cni0", &format!("{}/{len}", next(gw, 1)), gw, pod_mtu)?;
                    if mode.is_v6() {
                        pods6.push(add_pod6(tb.host(i), &pod, a.lease6()?.0, 2));
                    }
                    pods.push(pod);
                }
                // Both nodes know each other.
                for a in &agents {
                    crate::poll_until(Duration::from_secs(30), "the peer in the maps", || {
                        let peers = DatapathMaps::open_pinned(&a.pins())?.peers()?;
                        if peers.is_empty() {
                            bail!("no peer yet");
                        }
                        if mode.is_v6() && DatapathMaps6::open_pinned(&a.pins())?.peers()?.is_empty() {
                            bail!("no IPv6 peer yet");
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
        let (client_ip, server_ip) = match pods6[..] {
            [c, s] => (IpAddr::V6(c), IpAddr::V6(s)),
            _ => (IpAddr::V4(client.ip()), IpAddr::V4(server.ip())),
        };
        let mut topo = Topology { mode, underlay, agents, iperf: None, client, server, client_ip, server_ip, pod_mtu, tb };
        topo.wait_connected()?;
        topo.wait_endpoints()?;
        topo.start_iperf()?;
        Ok(topo)
    }

    fn wait_connected(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if ping(&self.client, self.server_ip).is_ok() && ping(&self.server, self.client_ip).is_ok() {
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
        for (a, pod_ip) in self.agents.iter().zip([self.client_ip, self.server_ip]) {
            crate::poll_until(Duration::from_secs(20), "the pod in the agent's ENDPOINTS", || {
                let known = match pod_ip {
                    IpAddr::V4(ip) => DatapathMaps::open_pinned(&a.pins())?.endpoints()?.iter().any(|e| e.ip == ip),
                    IpAddr::V6(ip) => DatapathMaps6::open_pinned(&a.pins())?.endpoints()?.iter().any(|e| e.ip == ip),
                };
                if !known {
                    // Keep the neighbour entries fresh while waiting.
                    let _ = ping(&self.client, self.server_ip);
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

    /// The offloads of both nodes' `eth0` (the cable's ends) as `ethtool -k`
    /// reports them now; empty if ethtool is not installed.
    pub fn underlay_offloads(&self) -> Result<serde_json::Value> {
        if !ethtool_installed() {
            return Ok(serde_json::json!({}));
        }
        let mut out = serde_json::Map::new();
        for (i, host) in self.tb.hosts().iter().enumerate() {
            out.insert(format!("node{i} {}", host.uplink()), serde_json::to_value(offloads(host, host.uplink())?)?);
        }
        Ok(serde_json::Value::Object(out))
    }

    /// The outer UDP checksum of this mode's VXLAN as the sending node
    /// makes it: flannel.1's `udp_csum` read back from the kernel; our BPF
    /// encapsulation always writes 0. None for modes without encapsulation.
    pub fn outer_udp_csum(&self) -> Result<Option<bool>> {
        Ok(match self.mode {
            Mode::Flannel6 => Some(kernel_vxlan6_udp_csum(self.tb.host(0), 1)?),
            m if m.is_flannel() => Some(kernel_vxlan_udp_csum(self.tb.host(0), 1)?),
            // IPv6 VXLAN leaves through overlay0's kernel driver, with a
            // tunnel key that asks for the checksum IPv6 UDP must carry.
            Mode::Overlay6 => Some(true),
            Mode::OverlayDirect => None,
            m if m.is_agent() => Some(false),
            _ => None,
        })
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
            &self.server_ip.to_string(),
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
        sockets::udp_flood((&self.client, self.client_ip), (&self.server, self.server_ip), Duration::from_secs_f64(secs), 64)
    }

    /// `round_trips` recorded request/response round trips (after a tenth
    /// as many, at least 100, unrecorded), both sockets waiting as `wait` says.
    pub fn latency(&self, round_trips: usize, wait: Wait) -> Result<PingPongResult> {
        let (from, to) = ((&self.client, self.client_ip), (&self.server, self.server_ip));
        sockets::udp_ping_pong(from, to, round_trips, warmup_round_trips(round_trips), 64, wait)
    }

    /// The same request/response between two sockets of the client pod
    /// over loopback: no data path, only what every mode pays on top of it.
    pub fn latency_floor(&self, round_trips: usize, wait: Wait) -> Result<PingPongResult> {
        let own = (&self.client, self.client_ip);
        sockets::udp_ping_pong(own, own, round_trips, warmup_round_trips(round_trips), 64, wait)
    }

    /// The same UDP flood between two sockets of the client pod over loopback.
    pub fn udp_pps_floor(&self, secs: f64) -> Result<FloodResult> {
        let own = (&self.client, self.client_ip);
        sockets::udp_flood(own, own, Duration::from_secs_f64(secs), 64)
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

/// One ping from `from` to `to`, over IPv4 or IPv6.
fn ping(from: &Pod, to: IpAddr) -> Result<String> {
    let family = if to.is_ipv6() { "-6" } else { "-4" };
    from.run(&["ping", family, "-c", "1", "-W", "1", &to.to_string()])
}

/// Unrecorded round trips before `round_trips` recorded ones: 2,000 before 20,000.
pub fn warmup_round_trips(round_trips: usize) -> usize {
    (round_trips / 10).max(100)
}

