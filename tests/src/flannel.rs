//! A node that runs flannel's kernel data path, set up exactly as flanneld's
//! vxlan backend does it (shared/reference/flannel-compat.md): device
//! `flannel.<VNI>` (local = public IP, dev = uplink, dstport 8472,
//! nolearning, MTU uplink - 50, address `<subnet>.0/32`), and per remote
//! lease a permanent neighbour, an FDB entry and an onlink route. It is the
//! reference our BPF data path must interoperate with and be compared to.
use std::net::Ipv4Addr;

use anyhow::Result;

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
    let dev = format!("flannel.{vni}");
    let mtu = uplink_mtu - 50;
    host.ip_batch(&[
        format!(
            "link add {dev} address {} type vxlan id {vni} local {} dev {} dstport 8472 nolearning",
            mac_str(&own.vtep_mac),
            own.public_ip,
            host.uplink()
        ),
        format!("link set {dev} mtu {mtu} up"),
        format!("addr add {}/32 dev {dev}", own.subnet),
        "link add cni0 type bridge".into(),
        format!("link set cni0 mtu {mtu} up"),
        format!("addr add {}/{} dev cni0", own.gateway(), own.prefix_len),
    ])?;
    // flannel.1 has UDP checksums on by default in flanneld (udpcsum): the
    // kernel's default for vxlan over IPv4 is also on.
    host.set_sysctl("net.ipv4.ip_forward", "1")?;
    Ok(())
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
