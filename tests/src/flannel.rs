//! flannel's kernel data path, as flanneld's vxlan and host-gw backends set
//! it up (shared/reference/flannel-compat.md), in two forms:
//!
//! * [`FlannelRef`]: **our re-implementation of flanneld's vxlan backend,
//!   kernel data path** (and of its host-gw backend). There is no flanneld
//!   binary on these machines, so this is the reference node: it reads the
//!   network config from etcd, creates `flannel.<VNI>`, writes its own lease
//!   (with its VtepMAC), `subnet.env` and, if asked, flanneld's iptables
//!   rules, then lists and watches the leases in etcd (with `etcdctl`, the Go
//!   client flanneld uses) and adds or removes a neighbour, an FDB entry and
//!   a route per lease as flanneld's `handleSubnetEvents` does. It is weaker
//!   than the real flanneld: no lease renewal, no subnet allocation (the test
//!   picks the subnet), no retries, exact-case JSON field names, and whatever
//!   else of flanneld we did not re-implement. A test that passes against it
//!   shows interop with the kernel's VXLAN driven the way we read flanneld's
//!   code, not with flanneld itself.
//! * [`setup_kernel_vxlan`] and [`add_kernel_peer`]: the same kernel state
//!   written once, statically (for strangers, benchmarks and docker seeds).
//!
//! The device: `flannel.<VNI>` (local = public IP, dev = uplink, dstport
//! Backend.Port or 8472, nolearning, outer UDP checksum on (the kernel
//! default, which flanneld keeps), MTU (Backend.MTU or uplink MTU) - 50,
//! address `<subnet>.0/32`).
//!
//! Dual stack (`EnableIPv6`): as flanneld's vxlan backend does, a second
//! device `flannel-v6.<VNI>` (local = the uplink's global IPv6 address, a
//! VtepMAC of its own, no checksum flags: flannel sets neither
//! `udp6zerocsumtx` nor `udp6zerocsumrx`, so the kernel puts and checks a
//! UDP checksum, as IPv6 wants; MTU uplink - 70, the kernel's default for
//! a v6 underlay, since flannel passes none; address `<v6 subnet>/128`,
//! `accept_ra` 0), a dual-stack lease (key `<v4>-<len>&<v6>-<len>`,
//! `PublicIPv6`, `BackendV6Data`), subnet.env's FLANNEL_IPV6_NETWORK and
//! FLANNEL_IPV6_SUBNET, and per v6 lease a neighbour, an FDB entry and a
//! route `<v6 subnet> via <v6 subnet addr> dev flannel-v6.<VNI> onlink`
//! (vxlan_network.go), or with DirectRouting to an on-link PublicIPv6 a
//! plain route via it. flanneld still writes FLANNEL_MTU = uplink - 50 with
//! IPv6 on (its MTU() ignores the v6 device), so a pod on a reference node
//! can send v6 packets that do not fit flannel-v6; the kernel answers them
//! with ICMPv6 packet too big. Not re-implemented for v6: `--ip-masq`
//! (ip6tables), IPv6-only networks.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ipnet::Ipv6Net;

use crate::{
    etcd::Etcd,
    forward::PortForward,
    netns::{ChildHandle, Host, Netns},
};

/// A lease as flannel's vxlan backend uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanLease {
    /// Network address of the subnet, e.g. 10.42.3.0.
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

impl VxlanLease {
    /// The value flanneld writes to `<prefix>/subnets/<ip>-<len>`.
    pub fn etcd_value(&self, vni: u32) -> String {
        lease_value(RefBackend::Vxlan { vni, port: 8472, direct_routing: false }, self, None)
    }

    pub fn etcd_key(&self, prefix: &str) -> String {
        format!("{}/subnets/{}-{}", prefix.trim_end_matches('/'), self.subnet, self.prefix_len)
    }

    /// The first usable address (the bridge's, FLANNEL_SUBNET's).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }
}

pub fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Sets `host` up as flanneld (vxlan backend) would for `own`, plus a `cni0`
/// bridge holding the first address of the lease with MTU uplink - 50.
pub fn setup_kernel_vxlan(host: &Host, vni: u32, own: &VxlanLease, uplink_mtu: u32) -> Result<()> {
    setup_kernel_vxlan_with(host, vni, own, uplink_mtu, UdpCsum::AsFlanneld)
}

/// The outer UDP checksum of a kernel VXLAN device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpCsum {
    /// What flanneld does: it sets no `IFLA_VXLAN_UDP_CSUM` (vishvananda/netlink
    /// sends the attribute only when `UDPCSum` is true, and flannel leaves it
    /// false), so the kernel's default for an IPv4 underlay applies: on
    /// (`ip -d link show` says `udpcsum`).
    AsFlanneld,
    /// `noudpcsum`: outer UDP checksum 0, as our BPF encapsulation sends.
    Off,
}

/// [`setup_kernel_vxlan`] with a choice of outer UDP checksum.
pub fn setup_kernel_vxlan_with(host: &Host, vni: u32, own: &VxlanLease, uplink_mtu: u32, csum: UdpCsum) -> Result<()> {
    let dev = VxlanDevice { vni, port: 8472, mtu: uplink_mtu - 50, csum, v6: false };
    dev.create(host, host.uplink(), &own.vtep_mac, IpAddr::V4(own.public_ip), &format!("{}/32", own.subnet))?;
    add_pod_bridge(host, own, None, dev.mtu)
}

/// `flannel.<vni>` (or `flannel-v6.<vni>`) as flanneld's vxlan backend
/// creates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VxlanDevice {
    vni: u32,
    port: u16,
    mtu: u32,
    csum: UdpCsum,
    /// The IPv6 device, over the v6 underlay.
    v6: bool,
}

impl VxlanDevice {
    fn name(&self) -> String {
        vxlan_device_name(self.vni, self.v6)
    }

    /// The device with `mac`, sending from `local`, holding `addr` (the
    /// lease's network address as a /32 or /128).
    fn create(&self, ns: &Netns, uplink: &str, mac: &[u8; 6], local: IpAddr, addr: &str) -> Result<()> {
        let dev = self.name();
        // flanneld adds the v6 address without waiting for DAD to finish;
        // nodad keeps it from being tentative for the first second here.
        let nodad = if self.v6 { " nodad" } else { "" };
        ns.ip_batch(&[
            format!(
                "link add {dev} address {} type vxlan id {} local {local} dev {uplink} dstport {} nolearning{}",
                mac_str(mac),
                self.vni,
                self.port,
                match self.csum {
                    UdpCsum::AsFlanneld => "",
                    UdpCsum::Off => " noudpcsum",
                }
            ),
            format!("link set {dev} mtu {} up", self.mtu),
            format!("addr add {addr} dev {dev}{nodad}"),
        ])?;
        if self.v6 {
            // newVXLANDevice: net/ipv6/conf/<dev>/accept_ra = 0.
            ns.set_sysctl(&format!("net/ipv6/conf/{dev}/accept_ra"), "0")?;
        }
        Ok(())
    }
}

/// `flannel.<vni>`, or `flannel-v6.<vni>` for the IPv6 device.
pub fn vxlan_device_name(vni: u32, v6: bool) -> String {
    if v6 {
        format!("flannel-v6.{vni}")
    } else {
        format!("flannel.{vni}")
    }
}

/// A `cni0` bridge with the lease's first address (and the v6 lease's, if
/// any: what the CNI bridge plugin makes from subnet.env; flanneld itself
/// does not), and forwarding.
fn add_pod_bridge(ns: &Netns, own: &VxlanLease, own6: Option<&Lease6>, mtu: u32) -> Result<()> {
    let mut lines = vec![
        "link add cni0 type bridge".into(),
        format!("link set cni0 mtu {mtu} up"),
        format!("addr add {}/{} dev cni0", own.gateway(), own.prefix_len),
    ];
    if let Some(l6) = own6 {
        lines.push(format!("addr add {}/{} dev cni0 nodad", l6.gateway(), l6.subnet.prefix_len()));
    }
    ns.ip_batch(&lines)?;
    if own6.is_some() {
        ns.set_sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    ns.set_sysctl("net.ipv4.ip_forward", "1")
}

/// The IPv6 half of a reference node's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease6 {
    pub subnet: Ipv6Net,
    pub public_ip: Ipv6Addr,
    /// flannel-v6's own VtepMAC (BackendV6Data).
    pub vtep_mac: [u8; 6],
}

impl Lease6 {
    /// The first usable address (the bridge's, FLANNEL_IPV6_SUBNET's).
    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.subnet.network()) + 1)
    }
}

/// Whether `flannel.<vni>` on `host` puts a UDP checksum in the outer header,
/// as the kernel reports it (`udp_csum` of `ip -d -j link show`).
pub fn kernel_vxlan_udp_csum(host: &Host, vni: u32) -> Result<bool> {
    let out = host.run(&["ip", "-d", "-j", "link", "show", "dev", &format!("flannel.{vni}")])?;
    let json: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -d -j link show: {out}"))?;
    json.pointer("/0/linkinfo/info_data/udp_csum")
        .and_then(|v| v.as_bool())
        .ok_or_else(|| anyhow!("flannel.{vni}: no linkinfo.info_data.udp_csum in {out}"))
}

/// Bytes of outer headers on an IPv6 underlay (IPv6 40, UDP 8, VXLAN 8,
/// Ethernet 14): the kernel's own MTU for a VXLAN device over IPv6.
pub const VXLAN6_OVERHEAD: u32 = 70;

/// `flannel-v6.<vni>` alone (no bridge, no etcd), as flanneld's vxlan
/// backend makes it for the v6 half `own` of its lease; with
/// [`add_kernel_peer6`], a static kernel v6 node for the benchmark.
pub fn setup_kernel_vxlan6(host: &Host, vni: u32, own: &Lease6, uplink_mtu: u32) -> Result<()> {
    let dev = VxlanDevice { vni, port: 8472, mtu: uplink_mtu - VXLAN6_OVERHEAD, csum: UdpCsum::AsFlanneld, v6: true };
    dev.create(host, host.uplink(), &own.vtep_mac, IpAddr::V6(own.public_ip), &format!("{}/128", own.subnet.network()))?;
    host.set_sysctl("net/ipv6/conf/all/forwarding", "1")
}

/// What flanneld does on `flannel-v6.<vni>` when the v6 half `peer` of a
/// remote lease appears.
pub fn add_kernel_peer6(host: &Host, vni: u32, peer: &Lease6) -> Result<()> {
    let subnet = peer.subnet;
    let dev = vxlan_device_name(vni, true);
    add_vxlan_entries(host, &dev, IpAddr::V6(subnet.network()), subnet.prefix_len(), IpAddr::V6(peer.public_ip), &peer.vtep_mac)
}

/// Whether `flannel-v6.<vni>` on `host` puts a UDP checksum in the outer
/// header, as the kernel reports it (`udp_zero_csum6_tx` of `ip -d -j link show`).
pub fn kernel_vxlan6_udp_csum(host: &Host, vni: u32) -> Result<bool> {
    let dev = vxlan_device_name(vni, true);
    let out = host.run(&["ip", "-d", "-j", "link", "show", "dev", &dev])?;
    let json: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -d -j link show: {out}"))?;
    json.pointer("/0/linkinfo/info_data/udp_zero_csum6_tx")
        .and_then(|v| v.as_bool())
        .map(|zero| !zero)
        .ok_or_else(|| anyhow!("{dev}: no linkinfo.info_data.udp_zero_csum6_tx in {out}"))
}

/// What flanneld does when a remote lease appears.
pub fn add_kernel_peer(host: &Host, vni: u32, peer: &VxlanLease) -> Result<()> {
    add_kernel_peer_dev(host, &format!("flannel.{vni}"), peer)
}

fn add_kernel_peer_dev(ns: &Netns, dev: &str, peer: &VxlanLease) -> Result<()> {
    add_vxlan_entries(ns, dev, IpAddr::V4(peer.subnet), peer.prefix_len, IpAddr::V4(peer.public_ip), &peer.vtep_mac)
}

/// flanneld's three entries for a remote lease (either family): the
/// neighbour for the subnet's network address, the FDB entry to the
/// public IP, the onlink route via the network address.
fn add_vxlan_entries(ns: &Netns, dev: &str, subnet: IpAddr, len: u8, public_ip: IpAddr, mac: &[u8; 6]) -> Result<()> {
    ns.ip_batch(&[
        format!("neigh replace {subnet} lladdr {} dev {dev} nud permanent", mac_str(mac)),
        format!("route replace {subnet}/{len} via {subnet} dev {dev} onlink"),
    ])?;
    ns.run(&["bridge", "fdb", "replace", &mac_str(mac), "dev", dev, "dst", &public_ip.to_string(), "self", "permanent"])?;
    Ok(())
}

/// Undoes [`add_vxlan_entries`].
fn del_vxlan_entries(ns: &Netns, dev: &str, subnet: IpAddr, len: u8, public_ip: IpAddr, mac: &[u8; 6]) -> Result<()> {
    ns.ip_batch(&[format!("neigh del {subnet} dev {dev}")])?;
    ns.run(&["bridge", "fdb", "del", &mac_str(mac), "dev", dev, "dst", &public_ip.to_string(), "self"])?;
    // Deleting the neighbour does not take the onlink route with it.
    ns.ip_batch(&[format!("route del {subnet}/{len} dev {dev}")])
}

/// The backend flanneld runs, from `<prefix>/config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefBackend {
    Vxlan { vni: u32, port: u16, direct_routing: bool },
    HostGw,
}

/// What flanneld reads from `<prefix>/config` (exact-case field names only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefConfig {
    pub network: Ipv4Addr,
    pub network_len: u8,
    pub backend: RefBackend,
    /// Backend.MTU: the underlay MTU to assume (default: the uplink's).
    pub mtu: Option<u32>,
    /// IPv6Network, when EnableIPv6 is true.
    pub ipv6_network: Option<Ipv6Net>,
}

impl RefConfig {
    pub fn parse(json: &str) -> Result<RefConfig> {
        let v: serde_json::Value = serde_json::from_str(json).with_context(|| format!("network config {json:?}"))?;
        let net = v["Network"].as_str().ok_or_else(|| anyhow!("no Network in {json}"))?;
        let (addr, len) = net.split_once('/').ok_or_else(|| anyhow!("Network {net:?} is not a CIDR"))?;
        let b = &v["Backend"];
        let backend = match b["Type"].as_str().unwrap_or("vxlan") {
            "vxlan" => RefBackend::Vxlan {
                vni: b["VNI"].as_u64().unwrap_or(1) as u32,
                // Port 0 (or none): the kernel's default VXLAN port, 8472.
                port: Some(b["Port"].as_u64().unwrap_or(0) as u16).filter(|p| *p != 0).unwrap_or(8472),
                direct_routing: b["DirectRouting"].as_bool().unwrap_or(false),
            },
            "host-gw" => RefBackend::HostGw,
            other => bail!("backend {other:?}: the reference does vxlan and host-gw only"),
        };
        let ipv6_network = match v["EnableIPv6"].as_bool().unwrap_or(false) {
            true => {
                let net = v["IPv6Network"].as_str().ok_or_else(|| anyhow!("EnableIPv6 without IPv6Network in {json}"))?;
                Some(net.parse().with_context(|| format!("IPv6Network {net:?}"))?)
            }
            false => None,
        };
        Ok(RefConfig {
            network: addr.parse()?,
            network_len: len.parse()?,
            backend,
            mtu: b["MTU"].as_u64().map(|m| m as u32),
            ipv6_network,
        })
    }
}

/// How a [`FlannelRef`] node is started.
#[derive(Clone, Debug)]
pub struct RefOptions {
    /// Subnet of the node's lease (flanneld would allocate one; the test
    /// picks it).
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub vtep_mac: [u8; 6],
    /// `--ip-masq`: flanneld's nat and filter chains (flannel-compat.md).
    pub ip_masq: bool,
    /// `--subnet-file`.
    pub subnet_file: PathBuf,
    /// The v6 subnet and flannel-v6's VtepMAC, used when the network
    /// config has EnableIPv6.
    pub v6: Option<(Ipv6Net, [u8; 6])>,
}

/// A remote lease as the reference applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedLease {
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: Option<[u8; 6]>,
    /// Routed directly (host-gw, or DirectRouting to an on-link peer).
    pub direct: bool,
    /// The lease's IPv6 half, when both it and this node have one.
    pub v6: Option<Applied6>,
}

/// The IPv6 half of a remote lease as the reference applied it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied6 {
    pub subnet: Ipv6Net,
    pub public_ip: Ipv6Addr,
    pub vtep_mac: Option<[u8; 6]>,
    /// Routed via PublicIPv6 (host-gw, or DirectRouting to an on-link peer).
    pub direct: bool,
}

/// Our re-implementation of flanneld's vxlan backend (and host-gw), kernel
/// data path, driven by real etcd watches. See the module documentation
/// for what it does and how it falls short of flanneld.
pub struct FlannelRef {
    ns: Netns,
    uplink: String,
    pub lease: VxlanLease,
    /// The lease's IPv6 half (dual-stack networks).
    pub lease6: Option<Lease6>,
    pub config: RefConfig,
    /// The pod MTU it chose (FLANNEL_MTU).
    pub pod_mtu: u32,
    lease_key: String,
    endpoint: String,
    watch: Option<ChildHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<Mutex<RefState>>,
    // Last: the watch goes before its way to etcd.
    _forward: PortForward,
}

#[derive(Default)]
struct RefState {
    applied: BTreeMap<String, AppliedLease>,
    errors: Vec<String>,
}

fn etcdctl_in(ns: &Netns, endpoint: &str) -> Command {
    let mut cmd = ns.command("etcdctl");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3").arg(format!("--endpoints={endpoint}")).stdin(Stdio::null());
    cmd
}

fn run_etcdctl_in(ns: &Netns, endpoint: &str, args: &[&str]) -> Result<String> {
    let out = etcdctl_in(ns, endpoint).args(args).output().context("running etcdctl (Debian package etcd-client)")?;
    if !out.status.success() {
        bail!("etcdctl {} in {}: {}", args.join(" "), ns.name(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl FlannelRef {
    /// Starts the reference on `host` against `etcd` under `prefix`: as
    /// flanneld does at start, in order: config, device, own lease (a new
    /// etcd lease of 86400 s, VtepMAC in BackendData), subnet.env, iptables,
    /// then one listing of the leases and a watch from its revision.
    pub fn start(host: &Host, etcd: &Etcd, prefix: &str, opts: &RefOptions) -> Result<FlannelRef> {
        let target: SocketAddr = etcd
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .with_context(|| format!("etcd endpoint {}", etcd.endpoint()))?;
        let forward = PortForward::into_ns(host, target)?;
        let endpoint = forward.url();
        let ns: Netns = (**host).clone();
        let prefix = prefix.trim_end_matches('/').to_string();
        let config_json = run_etcdctl_in(&ns, &endpoint, &["get", "--print-value-only", &format!("{prefix}/config")])?;
        let config = RefConfig::parse(config_json.trim())?;
        // The uplink's MTU and address, as flanneld finds them (not
        // /sys/class/net: nsenter --net leaves /sys showing the root
        // namespace; not the testbed's record: a test may re-address it).
        let link = ns.run(&["ip", "-j", "addr", "show", "dev", host.uplink()])?;
        let link: serde_json::Value = serde_json::from_str(&link).with_context(|| format!("ip -j addr: {link}"))?;
        let uplink_mtu =
            link.pointer("/0/mtu").and_then(|m| m.as_u64()).ok_or_else(|| anyhow!("no mtu in {link}"))? as u32;
        let public_ip: Ipv4Addr = link
            .pointer("/0/addr_info")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .find(|a| a["family"] == "inet")
            .and_then(|a| a["local"].as_str())
            .ok_or_else(|| anyhow!("no IPv4 address on {}: {link}", host.uplink()))?
            .parse()?;
        let underlay_mtu = config.mtu.unwrap_or(uplink_mtu);
        let lease = VxlanLease {
            subnet: opts.subnet,
            prefix_len: opts.prefix_len,
            public_ip,
            vtep_mac: opts.vtep_mac,
        };
        // Without a v6 subnet in the options, the node is IPv4-only whatever
        // the config says (as a flanneld from before dual stack would be).
        let lease6 = match (config.ipv6_network, opts.v6) {
            (None, _) | (_, None) => None,
            (Some(net6), Some((subnet, vtep_mac))) => {
                ensure!(net6.contains(&subnet), "v6 subnet {subnet} outside IPv6Network {net6}");
                // flanneld's ExtV6Addr: the uplink's global IPv6 address.
                let public_ip: Ipv6Addr = link
                    .pointer("/0/addr_info")
                    .and_then(|a| a.as_array())
                    .into_iter()
                    .flatten()
                    .find(|a| a["family"] == "inet6" && a["scope"] == "global")
                    .and_then(|a| a["local"].as_str())
                    .ok_or_else(|| anyhow!("EnableIPv6 but no global IPv6 address on {}: {link}", host.uplink()))?
                    .parse()?;
                Some(Lease6 { subnet: subnet.trunc(), public_ip, vtep_mac })
            }
        };
        let pod_mtu = match config.backend {
            RefBackend::Vxlan { vni, port, .. } => {
                let dev = VxlanDevice { vni, port, mtu: underlay_mtu - 50, csum: UdpCsum::AsFlanneld, v6: false };
                dev.create(&ns, host.uplink(), &lease.vtep_mac, IpAddr::V4(public_ip), &format!("{}/32", lease.subnet))?;
                if let Some(l6) = &lease6 {
                    let dev6 = VxlanDevice { mtu: underlay_mtu - 70, v6: true, ..dev };
                    let addr = format!("{}/128", l6.subnet.network());
                    dev6.create(&ns, host.uplink(), &l6.vtep_mac, IpAddr::V6(l6.public_ip), &addr)?;
                }
                // flanneld's FLANNEL_MTU is the v4 device's, IPv6 or not.
                dev.mtu
            }
            RefBackend::HostGw => underlay_mtu,
        };
        add_pod_bridge(&ns, &lease, lease6.as_ref(), pod_mtu)?;

        let lease_key = match &lease6 {
            None => lease.etcd_key(&prefix),
            Some(l6) => format!("{}&{}-{}", lease.etcd_key(&prefix), l6.subnet.network(), l6.subnet.prefix_len()),
        };
        let granted = run_etcdctl_in(&ns, &endpoint, &["lease", "grant", "86400"])?;
        // "lease 694d8a5e1a0c3b0f granted with TTL(86400s)"
        let id = granted.split_whitespace().nth(1).ok_or_else(|| anyhow!("etcdctl lease grant said {granted:?}"))?;
        let value = lease_value(config.backend, &lease, lease6.as_ref());
        run_etcdctl_in(&ns, &endpoint, &["put", &format!("--lease={id}"), &lease_key, &value])?;

        let ipmasq = opts.ip_masq;
        let v6_env = match (&config.ipv6_network, &lease6) {
            (Some(net6), Some(l6)) => {
                format!("FLANNEL_IPV6_NETWORK={net6}\nFLANNEL_IPV6_SUBNET={}/{}\n", l6.gateway(), l6.subnet.prefix_len())
            }
            _ => String::new(),
        };
        std::fs::write(
            &opts.subnet_file,
            format!(
                "FLANNEL_NETWORK={}/{}\nFLANNEL_SUBNET={}/{}\n{v6_env}FLANNEL_MTU={pod_mtu}\nFLANNEL_IPMASQ={ipmasq}\n",
                config.network,
                config.network_len,
                lease.gateway(),
                lease.prefix_len
            ),
        )?;
        if ipmasq {
            write_flanneld_iptables(&ns, &config, &lease)?;
        }

        let mut r = FlannelRef {
            ns,
            uplink: host.uplink().to_string(),
            lease,
            lease6,
            config,
            pod_mtu,
            lease_key,
            endpoint,
            watch: None,
            thread: None,
            state: Arc::default(),
            _forward: forward,
        };
        r.start_watch(&prefix)?;
        Ok(r)
    }

    fn start_watch(&mut self, prefix: &str) -> Result<()> {
        let subnets = format!("{prefix}/subnets/");
        let listing = run_etcdctl_in(&self.ns, &self.endpoint, &["get", "--prefix", &subnets, "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&listing).with_context(|| format!("etcdctl get: {listing}"))?;
        let rev = v.pointer("/header/revision").and_then(|r| r.as_i64()).ok_or_else(|| anyhow!("no revision"))?;
        let b64 = |x: &serde_json::Value| -> String {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(x.as_str().unwrap_or("")).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let handler = LeaseHandler {
            ns: self.ns.clone(),
            uplink: self.uplink.clone(),
            own: self.lease,
            v6: self.lease6.is_some(),
            backend: self.config.backend,
            subnets_prefix: subnets.clone(),
            state: self.state.clone(),
        };
        for kv in v["kvs"].as_array().into_iter().flatten() {
            handler.event(&b64(&kv["key"]), Some(&b64(&kv["value"])));
        }
        let mut cmd = etcdctl_in(&self.ns, &self.endpoint);
        cmd.args(["watch", "--prefix", &subnets, &format!("--rev={}", rev + 1)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let child = self.ns.spawn(cmd)?;
        let stdout = child.take_stdout().ok_or_else(|| anyhow!("etcdctl watch: no stdout"))?;
        self.watch = Some(child);
        self.thread = Some(std::thread::spawn(move || {
            read_watch_events(stdout, |key, value| {
                handler.event(&key, value.as_deref());
                true
            })
        }));
        Ok(())
    }

    /// The remote leases it has in the kernel now, by etcd key.
    pub fn applied(&self) -> BTreeMap<String, AppliedLease> {
        lock(&self.state).applied.clone()
    }

    /// What went wrong applying leases (empty when all went well).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.state).errors.clone()
    }

    /// Waits until its applied subnets are exactly `subnets`.
    pub fn wait_applied(&self, subnets: &[Ipv4Addr], timeout: Duration) -> Result<()> {
        let mut want: Vec<Ipv4Addr> = subnets.to_vec();
        want.sort();
        crate::poll_until(timeout, &format!("reference {} applying {want:?}", self.ns.name()), || {
            let mut got: Vec<Ipv4Addr> = self.applied().values().map(|l| l.subnet).collect();
            got.sort();
            ensure!(got == want, "applied {got:?}, errors {:?}", self.errors());
            Ok(())
        })
    }

    /// Waits until the v6 subnets it has applied are exactly `subnets`.
    pub fn wait_applied6(&self, subnets: &[Ipv6Net], timeout: Duration) -> Result<()> {
        let mut want: Vec<Ipv6Net> = subnets.to_vec();
        want.sort();
        crate::poll_until(timeout, &format!("reference {} applying {want:?}", self.ns.name()), || {
            let mut got: Vec<Ipv6Net> = self.applied().values().filter_map(|l| l.v6.map(|v| v.subnet)).collect();
            got.sort();
            ensure!(got == want, "applied {got:?}, errors {:?}", self.errors());
            Ok(())
        })
    }

    /// Its lease's key in etcd.
    pub fn lease_key(&self) -> &str {
        &self.lease_key
    }

    /// flanneld stopping (SIGTERM): the watch ends; the device, the
    /// entries, the lease and subnet.env stay, as flanneld leaves them.
    pub fn stop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.kill();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FlannelRef {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads `etcdctl watch` output (`PUT`/key/value or `DELETE`/key, one a
/// line) and hands each change to `f` (value None for a DELETE) until the
/// watch ends or `f` returns false.
pub(crate) fn read_watch_events(out: impl std::io::Read, mut f: impl FnMut(String, Option<String>) -> bool) {
    let mut lines = BufReader::new(out).lines();
    while let Some(Ok(op)) = lines.next() {
        let put = match op.as_str() {
            "PUT" => true,
            "DELETE" => false,
            _ => continue,
        };
        let Some(Ok(key)) = lines.next() else { break };
        let value = if put { lines.next().and_then(|l| l.ok()) } else { None };
        if !f(key, value) {
            break;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lease value flanneld writes: vxlan with BackendData (and, dual
/// stack, PublicIPv6 and BackendV6Data with flannel-v6's VtepMAC), or
/// host-gw with neither.
fn lease_value(backend: RefBackend, lease: &VxlanLease, lease6: Option<&Lease6>) -> String {
    let public6 = lease6.map_or("null".to_string(), |l6| format!("\"{}\"", l6.public_ip));
    match backend {
        RefBackend::Vxlan { vni, .. } => {
            let data = |mac: &[u8; 6]| format!("{{\"VNI\":{vni},\"VtepMAC\":\"{}\"}}", mac_str(mac));
            let v6_data = lease6.map_or(String::new(), |l6| format!(",\"BackendV6Data\":{}", data(&l6.vtep_mac)));
            format!(
                "{{\"PublicIP\":\"{}\",\"PublicIPv6\":{public6},\"BackendType\":\"vxlan\",\"BackendData\":{}{v6_data}}}",
                lease.public_ip,
                data(&lease.vtep_mac)
            )
        }
        RefBackend::HostGw => {
            format!("{{\"PublicIP\":\"{}\",\"PublicIPv6\":{public6},\"BackendType\":\"host-gw\"}}", lease.public_ip)
        }
    }
}

/// flanneld's `--ip-masq` rules (iptables mode), in the node's namespace.
fn write_flanneld_iptables(ns: &Netns, config: &RefConfig, own: &VxlanLease) -> Result<()> {
    let cluster = format!("{}/{}", config.network, config.network_len);
    let pod = format!("{}/{}", own.subnet, own.prefix_len);
    let c = ["-m", "comment", "--comment", "flanneld masq"];
    let f = ["-m", "comment", "--comment", "flanneld forward"];
    let mut rules: Vec<Vec<&str>> = vec![
        vec!["-t", "nat", "-N", "FLANNEL-POSTRTG"],
        [&["-t", "nat", "-A", "POSTROUTING"][..], &c, &["-j", "FLANNEL-POSTRTG"]].concat(),
        [&["-t", "nat", "-A", "FLANNEL-POSTRTG", "-m", "mark", "--mark", "0x4000/0x4000"][..], &c, &["-j", "RETURN"]]
            .concat(),
        [&["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", &pod, "-d", &cluster][..], &c, &["-j", "RETURN"]].concat(),
        [&["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", &cluster, "-d", &pod][..], &c, &["-j", "RETURN"]].concat(),
        [&["-t", "nat", "-A", "FLANNEL-POSTRTG", "!", "-s", &cluster, "-d", &pod][..], &c, &["-j", "RETURN"]].concat(),
        [
            &["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", &cluster, "!", "-d", "224.0.0.0/4"][..],
            &c,
            &["-j", "MASQUERADE", "--random-fully"],
        ]
        .concat(),
        [
            &["-t", "nat", "-A", "FLANNEL-POSTRTG", "!", "-s", &cluster, "-d", &cluster][..],
            &c,
            &["-j", "MASQUERADE", "--random-fully"],
        ]
        .concat(),
        vec!["-t", "filter", "-N", "FLANNEL-FWD"],
        [&["-t", "filter", "-A", "FORWARD"][..], &f, &["-j", "FLANNEL-FWD"]].concat(),
    ];
    rules.push([&["-t", "filter", "-A", "FLANNEL-FWD", "-s", &cluster][..], &f, &["-j", "ACCEPT"]].concat());
    rules.push([&["-t", "filter", "-A", "FLANNEL-FWD", "-d", &cluster][..], &f, &["-j", "ACCEPT"]].concat());
    for rule in rules {
        ns.run(&[&["iptables", "-w"][..], &rule].concat())?;
    }
    Ok(())
}

/// Applies lease events to the kernel as flanneld's backends do
/// (vxlan_network.go / route_network.go `handleSubnetEvents`).
struct LeaseHandler {
    ns: Netns,
    uplink: String,
    own: VxlanLease,
    /// This node runs flannel-v6 (EnableIPv6).
    v6: bool,
    backend: RefBackend,
    subnets_prefix: String,
    state: Arc<Mutex<RefState>>,
}

/// `10.42.3.0-24`, or the dual-stack `10.42.3.0-24&fd42:0:3::-64`; None
/// for keys flanneld skips (IPv6-only ones too: the reference does not do
/// IPv6-only networks).
fn parse_lease_key(key: &str) -> Option<(Ipv4Addr, u8, Option<Ipv6Net>)> {
    let (v4, v6) = match key.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (key, None),
    };
    let (net, len) = v4.split_once('-')?;
    let (subnet, prefix_len) = (net.parse().ok()?, len.parse().ok()?);
    let v6 = match v6 {
        None => None,
        Some(v6) => {
            let (net, len) = v6.split_once('-')?;
            Some(Ipv6Net::new(net.parse().ok()?, len.parse().ok()?).ok()?)
        }
    };
    Some((subnet, prefix_len, v6))
}

impl LeaseHandler {
    fn event(&self, key: &str, value: Option<&str>) {
        if let Err(e) = self.try_event(key, value) {
            log::warn!("reference {}: {key}: {e:#}", self.ns.name());
            lock(&self.state).errors.push(format!("{key}: {e:#}"));
        }
    }

    fn try_event(&self, key: &str, value: Option<&str>) -> Result<()> {
        // `<prefix>/subnets/10.42.3.0-24[&fd42:0:3::-64]`; keys that do not
        // parse are skipped.
        let Some((subnet, prefix_len, subnet6)) = key.strip_prefix(&self.subnets_prefix).and_then(parse_lease_key)
        else {
            return Ok(());
        };
        if subnet == self.own.subnet {
            return Ok(());
        }
        let Some(value) = value else {
            // Out of the kernel first: `applied` says what the kernel has.
            let applied = lock(&self.state).applied.get(key).cloned();
            if let Some(lease) = applied {
                self.remove(&lease)?;
                lock(&self.state).applied.remove(key);
            }
            return Ok(());
        };
        let v: serde_json::Value = serde_json::from_str(value).with_context(|| format!("lease value {value:?}"))?;
        let public_ip: Ipv4Addr =
            v["PublicIP"].as_str().ok_or_else(|| anyhow!("no PublicIP"))?.parse().context("PublicIP")?;
        let backend_type = v["BackendType"].as_str().unwrap_or("");
        // flannel's ip.DirectRouting: one route to the peer, with no gateway.
        let on_link = |ip: IpAddr| -> Result<bool> { Ok(!self.ns.run(&["ip", "route", "get", &ip.to_string()])?.contains(" via ")) };
        let public6: Option<Ipv6Addr> = match v["PublicIPv6"].as_str() {
            Some(a) => Some(a.parse().context("PublicIPv6")?),
            None => None,
        };
        // The v6 half, when this node and the lease both have one.
        let half6 = match (self.v6, subnet6, public6) {
            (true, Some(subnet), Some(public_ip)) => Some((subnet, public_ip)),
            _ => None,
        };
        let lease = match self.backend {
            RefBackend::Vxlan { direct_routing, .. } => {
                if backend_type != "vxlan" {
                    // flanneld: "ignoring non-vxlan v4Subnet".
                    return Ok(());
                }
                let mac =
                    v.pointer("/BackendData/VtepMAC").and_then(|m| m.as_str()).ok_or_else(|| anyhow!("no VtepMAC"))?;
                let vtep_mac = crate::netns::parse_mac(mac)?;
                let direct = direct_routing && on_link(IpAddr::V4(public_ip))?;
                let v6 = match half6 {
                    None => None,
                    Some((subnet, public_ip)) => {
                        let mac = v
                            .pointer("/BackendV6Data/VtepMAC")
                            .and_then(|m| m.as_str())
                            .ok_or_else(|| anyhow!("no BackendV6Data VtepMAC"))?;
                        let vtep_mac = Some(crate::netns::parse_mac(mac)?);
                        let direct = direct_routing && on_link(IpAddr::V6(public_ip))?;
                        Some(Applied6 { subnet, public_ip, vtep_mac, direct })
                    }
                };
                AppliedLease { subnet, prefix_len, public_ip, vtep_mac: Some(vtep_mac), direct, v6 }
            }
            RefBackend::HostGw => {
                if backend_type != "host-gw" {
                    return Ok(());
                }
                let v6 = half6.map(|(subnet, public_ip)| Applied6 { subnet, public_ip, vtep_mac: None, direct: true });
                AppliedLease { subnet, prefix_len, public_ip, vtep_mac: None, direct: true, v6 }
            }
        };
        self.add(&lease)?;
        lock(&self.state).applied.insert(key.to_string(), lease);
        Ok(())
    }

    fn add(&self, l: &AppliedLease) -> Result<()> {
        let cidr = format!("{}/{}", l.subnet, l.prefix_len);
        match (self.backend, l.vtep_mac) {
            (RefBackend::HostGw, _) => {
                self.ns.ip_batch(&[format!("route replace {cidr} via {} dev {}", l.public_ip, self.uplink)])?
            }
            (RefBackend::Vxlan { .. }, _) if l.direct => {
                self.ns.ip_batch(&[format!("route replace {cidr} via {}", l.public_ip)])?
            }
            (RefBackend::Vxlan { vni, .. }, Some(mac)) => {
                let peer =
                    VxlanLease { subnet: l.subnet, prefix_len: l.prefix_len, public_ip: l.public_ip, vtep_mac: mac };
                add_kernel_peer_dev(&self.ns, &vxlan_device_name(vni, false), &peer)?
            }
            (RefBackend::Vxlan { .. }, None) => bail!("vxlan lease without a VtepMAC"),
        }
        let Some(l6) = l.v6 else { return Ok(()) };
        match (self.backend, l6.vtep_mac) {
            (RefBackend::HostGw, _) => {
                self.ns.ip_batch(&[format!("route replace {} via {} dev {}", l6.subnet, l6.public_ip, self.uplink)])
            }
            (RefBackend::Vxlan { .. }, _) if l6.direct => {
                self.ns.ip_batch(&[format!("route replace {} via {}", l6.subnet, l6.public_ip)])
            }
            (RefBackend::Vxlan { vni, .. }, Some(mac)) => {
                let (net, len) = (IpAddr::V6(l6.subnet.network()), l6.subnet.prefix_len());
                add_vxlan_entries(&self.ns, &vxlan_device_name(vni, true), net, len, IpAddr::V6(l6.public_ip), &mac)
            }
            (RefBackend::Vxlan { .. }, None) => bail!("vxlan lease without a BackendV6Data VtepMAC"),
        }
    }

    fn remove(&self, l: &AppliedLease) -> Result<()> {
        if let Some(l6) = l.v6 {
            match (self.backend, l6.vtep_mac) {
                (RefBackend::Vxlan { vni, .. }, Some(mac)) if !l6.direct => {
                    let (net, len) = (IpAddr::V6(l6.subnet.network()), l6.subnet.prefix_len());
                    del_vxlan_entries(&self.ns, &vxlan_device_name(vni, true), net, len, IpAddr::V6(l6.public_ip), &mac)?
                }
                _ => self.ns.ip_batch(&[format!("route del {} via {}", l6.subnet, l6.public_ip)])?,
            }
        }
        match (self.backend, l.vtep_mac) {
            (RefBackend::Vxlan { vni, .. }, Some(mac)) if !l.direct => {
                let (net, public_ip) = (IpAddr::V4(l.subnet), IpAddr::V4(l.public_ip));
                del_vxlan_entries(&self.ns, &vxlan_device_name(vni, false), net, l.prefix_len, public_ip, &mac)
            }
            _ => self.ns.ip_batch(&[format!("route del {}/{} via {}", l.subnet, l.prefix_len, l.public_ip)]),
        }
    }
}
