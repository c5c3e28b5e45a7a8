//! A node that runs flannel's kernel data path, set up exactly as flanneld's
//! vxlan backend does it (shared/reference/flannel-compat.md): device
//! `flannel.<VNI>` (local = public IP, dev = uplink, dstport 8472,
//! nolearning, outer UDP checksum on (the kernel default, which flanneld
//! keeps), MTU uplink - 50, address `<subnet>.0/32`), and per remote
//! lease a permanent neighbour, an FDB entry and an onlink route. It is the
//! reference our BPF data path must interoperate with and be compared to.
use std::net::Ipv4Addr;

use anyhow::{anyhow, Context, Result};

use crate::netns::Host;

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
        format!(
            "{{\"PublicIP\":\"{}\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{{\"VNI\":{vni},\"VtepMAC\":\"{}\"}}}}",
            self.public_ip,
            mac_str(&self.vtep_mac)
        )
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
    let dev = format!("flannel.{vni}");
    let mtu = uplink_mtu - 50;
    host.ip_batch(&[
        format!(
            "link add {dev} address {} type vxlan id {vni} local {} dev {} dstport 8472 nolearning{}",
            mac_str(&own.vtep_mac),
            own.public_ip,
            host.uplink(),
            match csum {
                UdpCsum::AsFlanneld => "",
                UdpCsum::Off => " noudpcsum",
            }
        ),
        format!("link set {dev} mtu {mtu} up"),
        format!("addr add {}/32 dev {dev}", own.subnet),
        "link add cni0 type bridge".into(),
        format!("link set cni0 mtu {mtu} up"),
        format!("addr add {}/{} dev cni0", own.gateway(), own.prefix_len),
    ])?;
    host.set_sysctl("net.ipv4.ip_forward", "1")?;
    Ok(())
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

/// What flanneld does when a remote lease appears.
pub fn add_kernel_peer(host: &Host, vni: u32, peer: &VxlanLease) -> Result<()> {
    let dev = format!("flannel.{vni}");
    host.ip_batch(&[
        format!("neigh replace {} lladdr {} dev {dev} nud permanent", peer.subnet, mac_str(&peer.vtep_mac)),
        format!("route replace {}/{} via {} dev {dev} onlink", peer.subnet, peer.prefix_len, peer.subnet),
    ])?;
    host.run(&[
        "bridge", "fdb", "replace", &mac_str(&peer.vtep_mac), "dev", &dev, "dst", &peer.public_ip.to_string(), "self",
        "permanent",
    ])?;
    Ok(())
}
