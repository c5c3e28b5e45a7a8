//! The contract between the BPF programs and the agent: shared constants and
//! the `#[repr(C)]` map keys and values. Nothing else belongs here.
//!
//! Whenever a type in [`maps`] or [`stats`] changes layout, bump
//! [`PIN_VERSION`]: aya does not check a reused pinned map's key or value
//! size, so an old pin with a new layout would be read as garbage.
#![no_std]

pub mod maps;
pub mod maps6;
pub mod stats;

/// Version of the pinned state layout. Part of the pin folder's name.
pub const PIN_VERSION: u32 = 4;
/// Where the agent pins its maps, programs and links by default; the
/// versioned folder is `{PIN_ROOT}/v{PIN_VERSION}`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/overlay";
/// `PIN_ROOT` + `/v` + `PIN_VERSION`, for humans and docs.
pub const PIN_DIR: &str = "/sys/fs/bpf/overlay/v4";

/// Linux's default VXLAN port, which flannel uses when Backend.Port is 0
/// (not IANA's 4789).
pub const VXLAN_DEFAULT_PORT: u16 = 8472;

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const VXLAN_HLEN: usize = 8;
/// Bytes VXLAN adds over IPv4: outer IPv4 + UDP + VXLAN + inner Ethernet.
pub const VXLAN_OVERHEAD: usize = IPV4_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN;
pub const IPV6_HLEN: usize = 40;
/// Bytes VXLAN adds over IPv6 (flannel-v6's overhead): outer IPv6 + UDP +
/// VXLAN + inner Ethernet.
pub const VXLAN6_OVERHEAD: usize = IPV6_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// VXLAN flags byte with the I bit ("VNI is valid"), RFC 7348.
pub const VXLAN_FLAG_VNI: u8 = 0x08;

/// Names of the maps as they appear in the object and in the pin folder.
pub mod map_names {
    pub const SUBNETS: &str = "SUBNETS";
    pub const NODES: &str = "NODES";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const CONFIG: &str = "CONFIG";
    pub const STATS: &str = "STATS";
    /// The programs' own cache of underlay next hops (the agent only reads
    /// it). Added after v1 shipped: an agent adopting v1 pins without it
    /// creates and pins it, and older agents ignore it, so no new version.
    pub const UNDERLAY: &str = "UNDERLAY";
    /// Flows the kernel forwarded or delivered (the programs keep it): their
    /// replies go through the kernel too, so conntrack and NAT see both ways.
    pub const KERNEL_FLOWS: &str = "KERNEL_FLOWS";
    /// Flows the decapsulation handed to the kernel only because it did not
    /// know the destination pod yet (the programs keep it): the kernel
    /// delivering them says nothing about NAT, so they are not recorded
    /// in `KERNEL_FLOWS`.
    pub const UNLEARNT_POD_FLOWS: &str = "UNLEARNT_POD_FLOWS";
    /// The IPv6 counterparts of the maps above (maps6.rs).
    pub const SUBNETS6: &str = "SUBNETS6";
    pub const NODES6: &str = "NODES6";
    pub const ENDPOINTS6: &str = "ENDPOINTS6";
    pub const CONFIG6: &str = "CONFIG6";
    pub const KERNEL_FLOWS6: &str = "KERNEL_FLOWS6";
    pub const UNLEARNT_POD_FLOWS6: &str = "UNLEARNT_POD_FLOWS6";
    /// Every map, all pinned in the pin folder.
    pub const ALL: [&str; 14] = [
        SUBNETS,
        NODES,
        ENDPOINTS,
        CONFIG,
        STATS,
        UNDERLAY,
        KERNEL_FLOWS,
        UNLEARNT_POD_FLOWS,
        SUBNETS6,
        NODES6,
        ENDPOINTS6,
        CONFIG6,
        KERNEL_FLOWS6,
        UNLEARNT_POD_FLOWS6,
    ];
}

/// Names of the programs in the object.
pub mod program_names {
    /// TC ingress on the pod bridge and on each pod veth: traffic from
    /// local pods.
    pub const FROM_PODS: &str = "from_pods";
    /// TC egress on each pod veth: what the kernel delivers to a local pod.
    pub const TO_PODS: &str = "to_pods";
    /// TC egress on the agent's tunnel device: what the kernel routes to
    /// remote pods (the host's own traffic, and pod traffic it forwarded).
    pub const FROM_HOST: &str = "from_host";
    /// TC ingress on the agent's tunnel device: VXLAN the kernel itself
    /// received (e.g. reassembled from fragments), checked like ours.
    pub const FROM_TUNNEL: &str = "from_tunnel";
    /// TC ingress on the uplink: VXLAN from other nodes.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// Optional XDP on the uplink: drops VXLAN from strangers before an skb exists.
    pub const XDP_GUARD: &str = "xdp_guard";
}

/// Capacity of the maps. A flannel network of /8 with /24 leases has 65,535
/// subnets at most; 65,536 remote subnets is the ceiling we support.
pub const MAX_SUBNETS: u32 = 65_536;
pub const MAX_NODES: u32 = 65_536;
pub const MAX_ENDPOINTS: u32 = 16_384;
/// Concurrent flows whose replies must go through the kernel. LRU: past
/// this, the least recently seen flow is forgotten (and its replies take
/// the fast path again).
pub const MAX_KERNEL_FLOWS: u32 = 65_536;
/// Flows to pods the decapsulation did not know yet (seconds' worth).
pub const MAX_UNLEARNT_POD_FLOWS: u32 = 16_384;
