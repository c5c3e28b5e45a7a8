//! The maps, BTF-typed so `bpftool map dump` prints named fields.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use overlay_common::{
    maps::{
        Endpoint, EndpointKey, FlowKey, FlowSeen, LocalConfig, NextHop, NodeEntry, NodeKey, SubnetAddr,
        UnderlayHop, UnderlayKey,
    },
    maps6::{EndpointKey6, FlowKey6, LocalConfig6, NextHop6, NodeKey6, SubnetAddr6},
    stats::{Counter, REASON_COUNT},
    MAX_ENDPOINTS, MAX_KERNEL_FLOWS, MAX_NODES, MAX_SUBNETS, MAX_UNLEARNT_POD_FLOWS,
};

/// Remote pod subnet -> next hop.
#[btf_map]
pub static SUBNETS: LpmTrie<SubnetAddr, NextHop, { MAX_SUBNETS as usize }> = LpmTrie::new();

/// Remote node PublicIP -> how many leases name it (VXLAN from anyone else
/// is dropped at once).
#[btf_map]
pub static NODES: HashMap<NodeKey, NodeEntry, { MAX_NODES as usize }> = HashMap::new();

/// Local pod IP -> host-side veth and pod MAC.
#[btf_map]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// This node (index 0).
#[btf_map]
pub static CONFIG: Array<LocalConfig, 1> = Array::new();

/// Per-reason counters.
#[btf_map]
pub static STATS: PerCpuArray<Counter, { REASON_COUNT as usize }> = PerCpuArray::new();

/// Remote node PublicIP -> underlay MACs towards it (the programs' cache;
/// LRU so a churning cluster cannot fill it).
#[btf_map]
pub static UNDERLAY: LruHashMap<UnderlayKey, UnderlayHop, { MAX_NODES as usize }> = LruHashMap::new();

/// Flows the kernel forwarded or delivered -> when last seen (see flows.rs;
/// LRU so that no number of flows can fill it).
#[btf_map]
pub static KERNEL_FLOWS: LruHashMap<FlowKey, FlowSeen, { MAX_KERNEL_FLOWS as usize }> = LruHashMap::new();

/// Flows decap handed to the kernel because their pod was not in ENDPOINTS
/// yet -> when (see flows.rs).
#[btf_map]
pub static UNLEARNT_POD_FLOWS: LruHashMap<FlowKey, FlowSeen, { MAX_UNLEARNT_POD_FLOWS as usize }> =
    LruHashMap::new();

/// Remote v6 pod subnet -> next hop (the v6 maps: ipv6/).
#[btf_map]
pub static SUBNETS6: LpmTrie<SubnetAddr6, NextHop6, { MAX_SUBNETS as usize }> = LpmTrie::new();

/// Remote node PublicIPv6 -> how many leases name it.
#[btf_map]
pub static NODES6: HashMap<NodeKey6, NodeEntry, { MAX_NODES as usize }> = HashMap::new();

/// Local pod IPv6 -> host-side veth and pod MAC.
#[btf_map]
pub static ENDPOINTS6: HashMap<EndpointKey6, Endpoint, { MAX_ENDPOINTS as usize }> = HashMap::new();

/// This node's v6 side (index 0).
#[btf_map]
pub static CONFIG6: Array<LocalConfig6, 1> = Array::new();

/// v6 flows the kernel forwarded or delivered -> when last seen.
#[btf_map]
pub static KERNEL_FLOWS6: LruHashMap<FlowKey6, FlowSeen, { MAX_KERNEL_FLOWS as usize }> = LruHashMap::new();

/// v6 flows decap handed to the kernel because their pod was not learnt yet.
#[btf_map]
pub static UNLEARNT_POD_FLOWS6: LruHashMap<FlowKey6, FlowSeen, { MAX_UNLEARNT_POD_FLOWS as usize }> =
    LruHashMap::new();
