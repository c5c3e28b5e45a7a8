//! Map keys and values of the IPv6 half (dual stack, flannel's
//! `EnableIPv6`): the v6 counterparts of [`crate::maps`], in separate maps
//! so a v4-only node pays nothing for them. Same conventions: addresses and
//! MACs as network-order bytes, numbers host order, every padding byte a
//! field. `NODES6` values are [`crate::maps::NodeEntry`] and `ENDPOINTS6`
//! values [`crate::maps::Endpoint`], as for v4.

/// Data of the `SUBNETS6` LPM trie key: a remote pod subnet's v6 network
/// address (the prefix length is the LPM key's own `prefix_len`).
pub type SubnetAddr6 = [u8; 16];

/// Value of `SUBNETS6`: where a remote v6 pod subnet lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop6 {
    /// The remote node's PublicIPv6 (outer destination / direct next hop).
    pub public_ip: [u8; 16],
    /// The VtepMAC of the lease's `BackendV6Data` (flannel's v6 device has
    /// its own MAC): inner destination MAC of what we send it.
    pub vtep_mac: [u8; 6],
    /// A [`crate::maps::Mode`] as u8.
    pub mode: u8,
    pub _pad: u8,
}

/// Key of `NODES6`: a PublicIPv6 that at least one lease names.
pub type NodeKey6 = [u8; 16];

/// Key of `ENDPOINTS6`: a local pod's IPv6 address.
pub type EndpointKey6 = [u8; 16];

/// Value of the one-entry `CONFIG6` array: this node's v6 side. Complete in
/// itself (VNI, port, bridge), so an IPv6-only node needs no v4 `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalConfig6 {
    /// The tunnel's local v6 address: outer source of what we send, and
    /// where v6 VXLAN for us arrives (the uplink's, as flannel-v6's `local`).
    pub local_ip: [u8; 16],
    /// Our lease's PublicIPv6: VXLAN addressed to it is ours too.
    pub public_ip: [u8; 16],
    /// The flannel IPv6Network.
    pub cluster_net: [u8; 16],
    /// This node's own v6 lease (network address).
    pub local_subnet: [u8; 16],
    pub vni: u32,
    /// The agent's metadata ("external") VXLAN device, `overlay0`: v6 frames
    /// are handed to it with their tunnel key, and the kernel writes the
    /// outer IPv6 + UDP header with its checksum (see ipv6/encap.rs).
    pub tunnel_ifindex: u32,
    /// The v6 uplink (host-gw / DirectRouting send there).
    pub uplink_ifindex: u32,
    pub bridge_ifindex: u32,
    /// MTU of the v6 uplink: encapsulated frames must fit in it.
    pub uplink_mtu: u32,
    /// [`crate::maps::config_flags`] (READY, KERNEL_FORWARDING).
    pub flags: u32,
    /// VXLAN UDP port, host order.
    pub port: u16,
    pub cluster_prefix_len: u8,
    pub local_prefix_len: u8,
    /// Our v6 VtepMAC (`BackendV6Data`): inner source of what we send,
    /// inner destination we accept.
    pub vtep_mac: [u8; 6],
    /// MAC of the pod bridge: source MAC of frames delivered to local pods.
    pub bridge_mac: [u8; 6],
}

/// Key of `KERNEL_FLOWS6`: a v6 flow as it left the kernel towards a pod
/// or a remote node (after any NAT); see [`crate::maps::FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKey6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey6 {
    /// The same flow seen from the other end.
    pub const fn reversed(&self) -> FlowKey6 {
        FlowKey6 {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

// SAFETY: #[repr(C)], integers and byte arrays only, every padding byte a
// field (checked below): any bit pattern is valid, no byte uninitialised.
#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for NextHop6 {}
    unsafe impl aya::Pod for LocalConfig6 {}
    unsafe impl aya::Pod for FlowKey6 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn next_hop6_layout() {
        assert_eq!(size_of::<NextHop6>(), 24);
        assert_eq!(align_of::<NextHop6>(), 1);
        assert_eq!(16 + 6 + 1 + 1, 24);
    }

    #[test]
    fn keys6_layout() {
        assert_eq!(size_of::<SubnetAddr6>(), 16);
        assert_eq!(size_of::<NodeKey6>(), 16);
        assert_eq!(size_of::<EndpointKey6>(), 16);
    }

    #[test]
    fn local_config6_layout() {
        assert_eq!(size_of::<LocalConfig6>(), 104);
        assert_eq!(align_of::<LocalConfig6>(), 4);
        // The sum of the fields equals the size: no hidden padding.
        assert_eq!(16 * 4 + 4 * 6 + 2 + 1 + 1 + 6 + 6, 104);
    }

    #[test]
    fn flow_key6_layout() {
        assert_eq!(size_of::<FlowKey6>(), 40);
        assert_eq!(align_of::<FlowKey6>(), 1);
        assert_eq!(16 + 16 + 2 + 2 + 1 + 3, 40);
        let k = FlowKey6 { src: [1; 16], dst: [2; 16], src_port: [0, 3], dst_port: [0, 4], proto: 6, _pad: [0; 3] };
        assert_eq!(k.reversed().reversed(), k);
        assert_eq!(k.reversed().src, [2; 16]);
    }
}
