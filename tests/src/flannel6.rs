//! A kernel `flannel-v6.<VNI>` node: the IPv6 half of flanneld's vxlan
//! backend, set up with iproute2 as flanneld sets it up over netlink. This
//! is OUR reading of flanneld's code (a reference we wrote, like
//! [`crate::flannel`]), not flanneld itself:
//!
//! * the device: `vxlan id <VNI> local <PublicIPv6> dev <uplink> dstport
//!   8472 nolearning`, its own VtepMAC (`BackendV6Data`), MTU uplink − 70
//!   (IPv6 40 + UDP 8 + VXLAN 8 + Ethernet 14), the lease's network address
//!   as a /128. flanneld sets no UDP checksum attribute, so the kernel's
//!   IPv6 default applies: the outer UDP checksum is computed (IPv6 needs it);
//! * per remote lease: `route <subnet> via <subnet's network address> dev
//!   flannel-v6.<VNI> onlink`, a permanent neighbour entry for that address
//!   with the peer's VtepMAC, and an FDB entry sending that MAC to its
//!   PublicIPv6.
use std::net::Ipv6Addr;

use anyhow::{anyhow, Context, Result};
use ipnet::Ipv6Net;

use crate::flannel::mac_str;
use crate::netns::Netns;

/// Bytes of outer headers on an IPv6 underlay.
pub const VXLAN6_OVERHEAD: u32 = 70;

/// The v6 half of a node's lease as the kernel device needs it.
#[derive(Clone, Debug)]
pub struct Vxlan6Lease {
    pub subnet: Ipv6Net,
    pub public_ip: Ipv6Addr,
    pub vtep_mac: [u8; 6],
}

impl Vxlan6Lease {
    /// The lease's first usable address: the pods' gateway on cni0.
    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.subnet.network()) + 1)
    }
}

pub fn device_name(vni: u32) -> String {
    format!("flannel-v6.{vni}")
}

/// `flannel-v6.<vni>` for our lease `own` on `ns`'s `uplink`.
pub fn setup_kernel_vxlan6(ns: &Netns, uplink: &str, vni: u32, own: &Vxlan6Lease, uplink_mtu: u32) -> Result<()> {
    let dev = device_name(vni);
    ns.ip_batch(&[
        format!("link add {dev} type vxlan id {vni} local {} dev {uplink} dstport 8472 nolearning", own.public_ip),
        format!("link set {dev} address {} mtu {} up", mac_str(&own.vtep_mac), uplink_mtu - VXLAN6_OVERHEAD),
        format!("addr add {}/128 dev {dev} nodad", own.subnet.network()),
    ])?;
    ns.set_sysctl("net/ipv6/conf/all/forwarding", "1")
}

/// What flanneld does on `ns` when the remote lease `peer` appears.
pub fn add_kernel_peer6(ns: &Netns, vni: u32, peer: &Vxlan6Lease) -> Result<()> {
    let dev = device_name(vni);
    let gw = peer.subnet.network();
    ns.ip_batch(&[
        format!("neigh add {gw} lladdr {} dev {dev} nud permanent", mac_str(&peer.vtep_mac)),
        format!("route add {} via {gw} dev {dev} onlink", peer.subnet),
    ])?;
    ns.run(&["bridge", "fdb", "append", &mac_str(&peer.vtep_mac), "dev", &dev, "dst", &peer.public_ip.to_string()])
        .map(|_| ())
}

/// Whether `flannel-v6.<vni>` on `ns` puts a UDP checksum in the outer
/// header, as the kernel reports it (`udp_zero_csum6_tx` of `ip -d -j link show`).
pub fn kernel_vxlan6_udp_csum(ns: &Netns, vni: u32) -> Result<bool> {
    let dev = device_name(vni);
    let out = ns.run(&["ip", "-d", "-j", "link", "show", "dev", &dev])?;
    let json: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -d -j link show: {out}"))?;
    json.pointer("/0/linkinfo/info_data/udp_zero_csum6_tx")
        .and_then(|v| v.as_bool())
        .map(|zero| !zero)
        .ok_or_else(|| anyhow!("{dev}: no linkinfo.info_data.udp_zero_csum6_tx in {out}"))
}
