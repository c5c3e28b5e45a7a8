//! Map keys and values. Addresses and MACs are stored as network-order
//! byte arrays so `bpftool map dump` shows them readably and the BPF side
//! compares them with packet bytes directly; numbers are host order.
//!
//! Every type has explicit padding: the verifier rejects map keys with
//! uninitialised holes, and userspace must write every byte.

/// How a remote subnet is reached.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Encapsulate in VXLAN to the node's public IP.
    Vxlan = 1,
    /// Route unencapsulated via the node's public IP (host-gw, or
    /// DirectRouting for a peer on the uplink's own L2 segment).
    Direct = 2,
}

impl Mode {
    pub fn from_u8(v: u8) -> Option<Mode> {
        match v {
            1 => Some(Mode::Vxlan),
            2 => Some(Mode::Direct),
            _ => None,
        }
    }
}

/// Data of the `SUBNETS` LPM trie key: a remote pod subnet's network
/// address (the prefix length is the LPM key's own `prefix_len`).
pub type SubnetAddr = [u8; 4];

/// Value of `SUBNETS`: where a remote pod subnet lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The remote node's PublicIP (outer destination / direct next hop).
    pub public_ip: [u8; 4],
    /// The remote node's VtepMAC: inner destination MAC of VXLAN frames.
    pub vtep_mac: [u8; 6],
    /// A [`Mode`] as u8.
    pub mode: u8,
    pub _pad: u8,
}

/// Key of `NODES`: a remote node's PublicIP.
pub type NodeKey = [u8; 4];

/// Value of `NODES`: a PublicIP that at least one lease names, so VXLAN
/// from it is looked at. Which inner sources it may send from is not here:
/// several leases may name one PublicIP (two flanneld on one host, a lease
/// moving between nodes), so the decapsulation looks the inner source up in
/// `SUBNETS` and accepts it only when that entry's `public_ip` is the outer
/// source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    /// How many `SUBNETS` entries name this PublicIP (at least 1): the entry
    /// goes when the last of them does.
    pub leases: u32,
}

/// Key of `ENDPOINTS`: a local pod's IPv4 address.
pub type EndpointKey = [u8; 4];

/// Value of `ENDPOINTS`: how to hand a packet straight to a local pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host-side veth of the pod (target of `bpf_redirect_peer`).
    pub ifindex: u32,
    /// The pod's own MAC (destination MAC written before delivery).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Key of `UNDERLAY`: a remote node's PublicIP.
pub type UnderlayKey = [u8; 4];

/// Value of `UNDERLAY`: the underlay Ethernet header towards a node, as the
/// kernel's FIB and neighbour table gave it at `refreshed_ns`. A cache the
/// programs keep themselves (the agent never writes it), so the send path
/// can write the MACs and `bpf_redirect` instead of a FIB lookup per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnderlayHop {
    /// MAC of the node, or of the gateway towards it.
    pub dst_mac: [u8; 6],
    /// MAC of our uplink.
    pub src_mac: [u8; 6],
    pub _pad: [u8; 4],
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the lookup.
    pub refreshed_ns: u64,
}

/// Key of `KERNEL_FLOWS`: a flow as it left the kernel towards a pod or a
/// remote node (after any NAT). Ports are 0 for protocols without them
/// (ICMP: every ICMP packet between the two addresses is one flow).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// Value of `KERNEL_FLOWS`: `bpf_ktime_get_coarse_ns` when a packet of the
/// flow last passed (refreshed at most once a second).
pub type FlowSeen = u64;

/// Bits of [`LocalConfig::flags`].
pub mod config_flags {
    /// The entry is filled in; until then every program passes everything.
    pub const READY: u32 = 1 << 0;
    /// Every pod packet goes through the kernel's forwarding (and so
    /// through netfilter's FORWARD chain) instead of the fast path:
    /// `--kernel-forwarding`, for hosts whose firewall filters pod traffic.
    pub const KERNEL_FORWARDING: u32 = 1 << 1;
    /// `--xdp-decap`: the uplink's XDP program decapsulates our VXLAN
    /// before the kernel's GRO (xdp_decap.rs in the BPF crate).
    pub const XDP_DECAP: u32 = 1 << 2;
}

/// What the XDP decapsulation writes into a frame's XDP metadata (4 bytes
/// before the frame) so that the uplink's TC program knows the inner frame
/// was decapsulated and checked by us. Metadata only XDP can write, so no
/// sender can forge it.
pub const XDP_DECAP_MARK: u32 = 0x5658_4c44; // "VXLD"

/// Value of the one-entry `CONFIG` array: this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalConfig {
    /// The tunnel's local address: outer source of what we send, and where
    /// VXLAN for us arrives. The uplink's own address, which differs from
    /// the lease's PublicIP when `--public-ip` names a NAT's address (as
    /// flannel.1's `local`).
    pub local_ip: [u8; 4],
    /// Our lease's PublicIP: VXLAN addressed to it is ours too (a PublicIP
    /// that is a second address of this host).
    pub public_ip: [u8; 4],
    /// The flannel Network.
    pub cluster_net: [u8; 4],
    /// This node's own lease (network address).
    pub local_subnet: [u8; 4],
    pub vni: u32,
    pub uplink_ifindex: u32,
    pub bridge_ifindex: u32,
    /// MTU of the uplink: encapsulated frames must fit in it.
    pub uplink_mtu: u32,
    /// VXLAN UDP port, host order.
    pub port: u16,
    pub cluster_prefix_len: u8,
    pub local_prefix_len: u8,
    /// Our VtepMAC: inner source of what we send, inner destination we accept.
    pub vtep_mac: [u8; 6],
    /// MAC of the bridge: source MAC of frames delivered to local pods.
    pub bridge_mac: [u8; 6],
    /// [`config_flags`].
    pub flags: u32,
}

// SAFETY: all types are #[repr(C)], made only of integers and byte arrays,
// with every padding byte spelled out as a field (checked by the tests
// below), so any bit pattern is valid and no byte is uninitialised.
#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for NodeEntry {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for LocalConfig {}
    unsafe impl aya::Pod for UnderlayHop {}
    unsafe impl aya::Pod for FlowKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn next_hop_layout() {
        assert_eq!(size_of::<NextHop>(), 12);
        assert_eq!(align_of::<NextHop>(), 1);
        // LPM trie keys are {u32 prefix_len, [u8; 4]}: 8 bytes, and the value
        // is stored right after the key, so it must not need more than 8.
        assert!(8 % align_of::<NextHop>() == 0);
    }

    #[test]
    fn node_entry_layout() {
        assert_eq!(size_of::<NodeKey>(), 4);
        assert_eq!(size_of::<NodeEntry>(), 4);
        assert_eq!(align_of::<NodeEntry>(), 4);
    }

    #[test]
    fn endpoint_layout() {
        assert_eq!(size_of::<EndpointKey>(), 4);
        assert_eq!(size_of::<Endpoint>(), 12);
        assert_eq!(align_of::<Endpoint>(), 4);
    }

    #[test]
    fn underlay_hop_layout() {
        assert_eq!(size_of::<UnderlayKey>(), 4);
        assert_eq!(size_of::<UnderlayHop>(), 24);
        assert_eq!(align_of::<UnderlayHop>(), 8);
        // The sum of the fields equals the size: no hidden padding.
        assert_eq!(6 + 6 + 4 + 8, 24);
    }

    #[test]
    fn flow_key_layout() {
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(align_of::<FlowKey>(), 1);
        assert_eq!(4 + 4 + 2 + 2 + 1 + 3, 16);
        let k = FlowKey { src: [1; 4], dst: [2; 4], src_port: [0, 3], dst_port: [0, 4], proto: 6, _pad: [0; 3] };
        assert_eq!(k.reversed().reversed(), k);
        assert_eq!(k.reversed().src, [2; 4]);
        assert_eq!(k.reversed().src_port, [0, 4]);
    }

    #[test]
    fn local_config_layout() {
        assert_eq!(size_of::<LocalConfig>(), 52);
        assert_eq!(align_of::<LocalConfig>(), 4);
        // The sum of the fields equals the size: no hidden padding.
        assert_eq!(4 + 4 + 4 + 4 + 4 + 4 + 4 + 4 + 2 + 1 + 1 + 6 + 6 + 4, 52);
    }

    #[test]
    fn mode_round_trips() {
        assert_eq!(Mode::from_u8(Mode::Vxlan as u8), Some(Mode::Vxlan));
        assert_eq!(Mode::from_u8(Mode::Direct as u8), Some(Mode::Direct));
        assert_eq!(Mode::from_u8(0), None);
        assert_eq!(Mode::from_u8(3), None);
    }
}
