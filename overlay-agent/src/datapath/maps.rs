//! The typed API over the pinned maps: the only way the control plane
//! changes what the BPF programs see. Every write is a whole entry (one
//! map update), so a packet sees either the old or the new next hop.
//!
//! The peer maps (`SUBNETS`, `NODES`) are a function of the peers the agent
//! wants: [`DatapathMaps::reconcile_peers`] makes them so from whatever is
//! pinned (an earlier run's state, a SIGKILL between two writes), and
//! [`DatapathMaps::upsert_peer`] / [`DatapathMaps::remove_peer`] keep them
//! so, each with at most three map writes, from a userspace index of what
//! the maps hold (no scan of a map per event).
use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    fmt,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};
use ipnet::Ipv4Net;
use overlay_common::{
    map_names,
    maps::{self as wire, config_flags, Endpoint, LocalConfig, NextHop, NodeEntry, UnderlayHop},
    stats::{Counter, Reason, REASON_COUNT},
};

use super::{pins::PinLayout, DatapathError};

/// How a remote subnet is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Encapsulated in VXLAN to the node's public IP.
    Vxlan,
    /// Routed unencapsulated via the node's public IP (host-gw, or
    /// DirectRouting to a peer on the uplink's own L2 segment).
    Direct,
}

impl Mode {
    pub(super) fn to_wire(self) -> wire::Mode {
        match self {
            Mode::Vxlan => wire::Mode::Vxlan,
            Mode::Direct => wire::Mode::Direct,
        }
    }

    pub(super) fn from_wire(v: u8) -> Option<Mode> {
        match wire::Mode::from_u8(v)? {
            wire::Mode::Vxlan => Some(Mode::Vxlan),
            wire::Mode::Direct => Some(Mode::Direct),
        }
    }
}

/// The names `inspect`, the logs and the tests use.
impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Mode::Vxlan => "vxlan",
            Mode::Direct => "direct",
        })
    }
}

/// This node, as the programs see it (the `CONFIG` map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// The tunnel's local address: outer source of what we send and
    /// destination of what we accept (the uplink's address, as flannel.1's
    /// `local`; differs from `public_ip` behind a NAT).
    pub local_ip: Ipv4Addr,
    /// Our lease's PublicIP (VXLAN to it is accepted too).
    pub public_ip: Ipv4Addr,
    /// The flannel Network.
    pub network: Ipv4Net,
    /// Our own lease.
    pub subnet: Ipv4Net,
    pub vni: u32,
    /// VXLAN UDP port.
    pub port: u16,
    pub uplink_ifindex: u32,
    /// Encapsulated frames must fit in it.
    pub uplink_mtu: u32,
    pub bridge_ifindex: u32,
    /// Inner source of what we send, inner destination we accept.
    pub vtep_mac: [u8; 6],
    /// Source MAC of frames delivered to local pods.
    pub bridge_mac: [u8; 6],
    /// Every pod packet through the kernel's forwarding (`--kernel-forwarding`).
    pub kernel_forwarding: bool,
    /// VXLAN decapsulated by the uplink's XDP program (`--xdp-decap`).
    pub xdp_decap: bool,
}

impl NodeConfig {
    fn to_wire(self) -> LocalConfig {
        LocalConfig {
            local_ip: self.local_ip.octets(),
            public_ip: self.public_ip.octets(),
            cluster_net: self.network.network().octets(),
            local_subnet: self.subnet.network().octets(),
            vni: self.vni,
            uplink_ifindex: self.uplink_ifindex,
            bridge_ifindex: self.bridge_ifindex,
            uplink_mtu: self.uplink_mtu,
            port: self.port,
            cluster_prefix_len: self.network.prefix_len(),
            local_prefix_len: self.subnet.prefix_len(),
            vtep_mac: self.vtep_mac,
            bridge_mac: self.bridge_mac,
            flags: config_flags::READY
                | if self.kernel_forwarding { config_flags::KERNEL_FORWARDING } else { 0 }
                | if self.xdp_decap { config_flags::XDP_DECAP } else { 0 },
        }
    }

    /// None while the agent has not filled the entry in.
    fn from_wire(c: LocalConfig) -> Result<Option<NodeConfig>, DatapathError> {
        if c.flags & config_flags::READY == 0 {
            return Ok(None);
        }
        let net = |addr: [u8; 4], prefix: u8| {
            Ipv4Net::new(Ipv4Addr::from(addr), prefix).map_err(|_| DatapathError::Corrupt("CONFIG with a prefix over 32"))
        };
        Ok(Some(NodeConfig {
            local_ip: Ipv4Addr::from(c.local_ip),
            public_ip: Ipv4Addr::from(c.public_ip),
            network: net(c.cluster_net, c.cluster_prefix_len)?,
            subnet: net(c.local_subnet, c.local_prefix_len)?,
            vni: c.vni,
            port: c.port,
            uplink_ifindex: c.uplink_ifindex,
            uplink_mtu: c.uplink_mtu,
            bridge_ifindex: c.bridge_ifindex,
            vtep_mac: c.vtep_mac,
            bridge_mac: c.bridge_mac,
            kernel_forwarding: c.flags & config_flags::KERNEL_FORWARDING != 0,
            xdp_decap: c.flags & config_flags::XDP_DECAP != 0,
        }))
    }
}

/// A remote node as the data path knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
    pub mode: Mode,
}

/// A local pod the decap path can deliver to directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PodEndpoint {
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// Packet and byte counters, summed over CPUs, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub counters: Vec<(Reason, Counter)>,
}

impl Stats {
    pub fn get(&self, reason: Reason) -> Counter {
        self.counters
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }
}

pub struct DatapathMaps {
    subnets: LpmTrie<MapData, [u8; 4], NextHop>,
    nodes: HashMap<MapData, [u8; 4], NodeEntry>,
    endpoints: HashMap<MapData, [u8; 4], Endpoint>,
    config: Array<MapData, LocalConfig>,
    stats: PerCpuArray<MapData, Counter>,
    /// The programs' own cache (they write it, we only read it); absent in
    /// pins of an agent that predates it.
    underlay: Option<HashMap<MapData, [u8; 4], UnderlayHop>>,
    /// The programs' record of flows the kernel forwarded (read only).
    kernel_flows: Option<HashMap<MapData, wire::FlowKey, u64>>,
    /// What `SUBNETS` and `NODES` hold, as last written; None until read
    /// from the maps (first use), and again after a failed write.
    index: Option<PeerIndex>,
}

/// What the peer maps hold: the peers by subnet, and for each PublicIP how
/// many of them name it (`NODES`' value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PeerIndex {
    peers: BTreeMap<Ipv4Net, Peer>,
    senders: StdHashMap<Ipv4Addr, u32>,
}

impl PeerIndex {
    fn from_peers<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> PeerIndex {
        let mut index = PeerIndex::default();
        for p in peers {
            index.peers.insert(p.subnet, *p);
        }
        for p in index.peers.values() {
            *index.senders.entry(p.public_ip).or_default() += 1;
        }
        index
    }
}

/// A PublicIP that leases name, and how many (the `NODES` map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sender {
    pub public_ip: Ipv4Addr,
    pub leases: u32,
}

/// What [`DatapathMaps::reconcile_peers`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// `SUBNETS` entries written (added or changed).
    pub written: usize,
    /// `SUBNETS` entries removed.
    pub removed: usize,
    /// `NODES` entries written or removed.
    pub senders: usize,
}

/// A flow the kernel forwarded or delivered, whose replies the programs
/// hand to the kernel too (as it left the kernel, after any NAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelFlow {
    pub proto: u8,
    pub src: std::net::SocketAddrV4,
    pub dst: std::net::SocketAddrV4,
}

/// A cached underlay next hop, as the send path uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnderlayEntry {
    pub public_ip: Ipv4Addr,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// CLOCK_MONOTONIC_COARSE nanoseconds of the lookup.
    pub refreshed_ns: u64,
}

pub(super) fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl DatapathMaps {
    /// Takes the maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
        };
        // UNDERLAY stays in the object: the agent never needs the cache, and
        // `inspect` reads it from its pin.
        Self::from_maps(
            take(map_names::SUBNETS)?,
            take(map_names::NODES)?,
            take(map_names::ENDPOINTS)?,
            take(map_names::CONFIG)?,
            take(map_names::STATS)?,
        )
    }

    /// Opens the pinned maps without loading anything: what `inspect` and
    /// tests use.
    pub fn open_pinned(pins: &PinLayout) -> Result<Self, DatapathError> {
        let open = |name: &'static str| open_pin(pins, name);
        let mut maps = Self::from_maps(
            open(map_names::SUBNETS)?,
            open(map_names::NODES)?,
            open(map_names::ENDPOINTS)?,
            open(map_names::CONFIG)?,
            open(map_names::STATS)?,
        )?;
        if pins.map(map_names::UNDERLAY).exists() {
            let map = open(map_names::UNDERLAY)?;
            maps.underlay = Some(HashMap::try_from(map).map_err(map_err(map_names::UNDERLAY))?);
        }
        if pins.map(map_names::KERNEL_FLOWS).exists() {
            let map = open(map_names::KERNEL_FLOWS)?;
            maps.kernel_flows = Some(HashMap::try_from(map).map_err(map_err(map_names::KERNEL_FLOWS))?);
        }
        Ok(maps)
    }

    fn from_maps(
        subnets: Map,
        nodes: Map,
        endpoints: Map,
        config: Map,
        stats: Map,
    ) -> Result<Self, DatapathError> {
        Ok(DatapathMaps {
            subnets: LpmTrie::try_from(subnets).map_err(map_err(map_names::SUBNETS))?,
            nodes: HashMap::try_from(nodes).map_err(map_err(map_names::NODES))?,
            endpoints: HashMap::try_from(endpoints).map_err(map_err(map_names::ENDPOINTS))?,
            config: Array::try_from(config).map_err(map_err(map_names::CONFIG))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err(map_names::STATS))?,
            underlay: None,
            kernel_flows: None,
            index: None,
        })
    }

    /// Writes this node's configuration and marks it ready: until then
    /// every program passes everything.
    pub fn set_config(&mut self, cfg: &NodeConfig) -> Result<(), DatapathError> {
        self.config.set(0, cfg.to_wire(), 0).map_err(map_err(map_names::CONFIG))
    }

    /// Marks the configuration as not filled in: the IPv4 programs then
    /// pass every IPv4 packet to the kernel (an IPv6-only node). The VtepMAC
    /// and the rest stay for whoever reads the pins.
    pub fn clear_config(&mut self) -> Result<(), DatapathError> {
        let mut c = self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        if c.flags & config_flags::READY == 0 {
            return Ok(());
        }
        c.flags &= !config_flags::READY;
        self.config.set(0, c, 0).map_err(map_err(map_names::CONFIG))
    }

    /// The configuration, or `None` when the agent never filled it in.
    pub fn config(&self) -> Result<Option<NodeConfig>, DatapathError> {
        NodeConfig::from_wire(self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))?)
    }

    /// The VtepMAC a previous agent configured, so a restart keeps it even
    /// when etcd lost our lease. None when nothing (usable) is pinned.
    pub fn pinned_vtep_mac(pins: &PinLayout) -> Option<[u8; 6]> {
        let maps = Self::open_pinned(pins).ok()?;
        let cfg = maps.config().ok()??;
        Some(cfg.vtep_mac).filter(|mac| *mac != [0; 6])
    }

    /// Makes `SUBNETS` and `NODES` hold exactly `wanted` (and, for each
    /// PublicIP, how many of `wanted` name it), whatever they held before:
    /// the start's and every Snapshot's step. Reads both maps once; writes
    /// only what differs. Senders are added before the subnets that name
    /// them and removed after, so VXLAN from a peer is accepted as soon as
    /// we send to it.
    pub fn reconcile_peers(&mut self, wanted: &BTreeMap<Ipv4Net, Peer>) -> Result<PeerChanges, DatapathError> {
        self.index = None;
        let want = PeerIndex::from_peers(wanted.values());
        // One pass over SUBNETS: what it holds, and the keys to remove
        // (not wanted, or of a mode this agent does not know, which
        // peers() cannot show). Only we write the map, so this stays true
        // while we write (a second pass after the writes cost 65,534
        // syscalls at a full /8).
        let mut held_peers: StdHashMap<Ipv4Net, Peer> = StdHashMap::new();
        let mut stale = Vec::new();
        for item in self.subnets.iter() {
            let (key, hop) = item.map_err(map_err(map_names::SUBNETS))?;
            let subnet = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)
                .map_err(|_| DatapathError::Corrupt("SUBNETS key with a prefix over 32"))?;
            if !want.peers.contains_key(&subnet) {
                stale.push(key);
            } else if let Some(peer) = peer_of(subnet, &hop) {
                held_peers.insert(subnet, peer);
            }
        }
        let held_senders: StdHashMap<Ipv4Addr, u32> =
            self.nodes()?.into_iter().map(|s| (s.public_ip, s.leases)).collect();
        let mut changes = PeerChanges::default();
        for (ip, n) in &want.senders {
            if held_senders.get(ip) != Some(n) {
                self.write_sender(*ip, *n)?;
                changes.senders += 1;
            }
        }
        for peer in want.peers.values() {
            if held_peers.get(&peer.subnet) != Some(peer) {
                self.write_subnet(peer)?;
                changes.written += 1;
            }
        }
        for key in stale {
            ignore_missing(self.subnets.remove(&key)).map_err(map_err(map_names::SUBNETS))?;
            changes.removed += 1;
        }
        for ip in held_senders.keys().filter(|ip| !want.senders.contains_key(ip)) {
            ignore_missing(self.nodes.remove(&ip.octets())).map_err(map_err(map_names::NODES))?;
            changes.senders += 1;
        }
        self.index = Some(want);
        Ok(changes)
    }

    /// Adds or replaces a remote node's lease: at most three map writes.
    /// The sender is written first, so its VXLAN is accepted as soon as we
    /// start sending to it; a PublicIP the lease no longer names stops
    /// being accepted once no lease names it.
    pub fn upsert_peer(&mut self, peer: &Peer) -> Result<(), DatapathError> {
        let result = self.try_upsert_peer(peer);
        if result.is_err() {
            // Whatever got written, the maps are read afresh next time.
            self.index = None;
        }
        result
    }

    fn try_upsert_peer(&mut self, peer: &Peer) -> Result<(), DatapathError> {
        let old = self.index()?.peers.get(&peer.subnet).copied();
        if old == Some(*peer) {
            return Ok(());
        }
        let old_ip = old.map(|p| p.public_ip).filter(|ip| *ip != peer.public_ip);
        if old.is_none() || old_ip.is_some() {
            let n = self.index()?.senders.get(&peer.public_ip).copied().unwrap_or(0) + 1;
            self.write_sender(peer.public_ip, n)?;
            self.index()?.senders.insert(peer.public_ip, n);
        }
        self.write_subnet(peer)?;
        self.index()?.peers.insert(peer.subnet, *peer);
        if let Some(ip) = old_ip {
            self.release_sender(ip)?;
        }
        Ok(())
    }

    /// Removes a remote subnet and, if no other subnet names its PublicIP,
    /// that sender: at most two map writes. Absent entries are not an error.
    pub fn remove_peer(&mut self, subnet: Ipv4Net) -> Result<(), DatapathError> {
        let result = self.try_remove_peer(subnet);
        if result.is_err() {
            self.index = None;
        }
        result
    }

    fn try_remove_peer(&mut self, subnet: Ipv4Net) -> Result<(), DatapathError> {
        let Some(old) = self.index()?.peers.get(&subnet).copied() else {
            return Ok(());
        };
        ignore_missing(self.subnets.remove(&subnet_key(subnet))).map_err(map_err(map_names::SUBNETS))?;
        self.index()?.peers.remove(&subnet);
        self.release_sender(old.public_ip)
    }

    /// One lease fewer names `ip`: decrements its count, or removes it.
    fn release_sender(&mut self, ip: Ipv4Addr) -> Result<(), DatapathError> {
        let n = self.index()?.senders.get(&ip).copied().unwrap_or(0).saturating_sub(1);
        if n == 0 {
            ignore_missing(self.nodes.remove(&ip.octets())).map_err(map_err(map_names::NODES))?;
            self.index()?.senders.remove(&ip);
        } else {
            self.write_sender(ip, n)?;
            self.index()?.senders.insert(ip, n);
        }
        Ok(())
    }

    fn write_sender(&mut self, ip: Ipv4Addr, leases: u32) -> Result<(), DatapathError> {
        self.nodes.insert(ip.octets(), NodeEntry { leases }, 0).map_err(map_err(map_names::NODES))
    }

    fn write_subnet(&mut self, peer: &Peer) -> Result<(), DatapathError> {
        let hop = NextHop {
            public_ip: peer.public_ip.octets(),
            vtep_mac: peer.vtep_mac,
            mode: peer.mode.to_wire() as u8,
            _pad: 0,
        };
        self.subnets.insert(&subnet_key(peer.subnet), hop, 0).map_err(map_err(map_names::SUBNETS))
    }

    /// The index, read from the maps when there is none.
    fn index(&mut self) -> Result<&mut PeerIndex, DatapathError> {
        if self.index.is_none() {
            let peers = self.peers()?;
            let mut index = PeerIndex::from_peers(&peers);
            // The counts as the maps hold them: a difference is repaired by
            // the next reconcile, and must not be papered over here.
            index.senders = self.nodes()?.into_iter().map(|s| (s.public_ip, s.leases)).collect();
            self.index = Some(index);
        }
        Ok(self.index.as_mut().expect("filled above"))
    }

    /// The peers as the maps hold them (what the agent installed).
    pub fn installed_peers(&mut self) -> Result<&BTreeMap<Ipv4Net, Peer>, DatapathError> {
        Ok(&self.index()?.peers)
    }

    pub fn peers(&self) -> Result<Vec<Peer>, DatapathError> {
        let mut out = Vec::new();
        for item in self.subnets.iter() {
            let (key, hop) = item.map_err(map_err(map_names::SUBNETS))?;
            let subnet = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)
                .map_err(|_| DatapathError::Corrupt("SUBNETS key with a prefix over 32"))?;
            out.extend(peer_of(subnet, &hop));
        }
        out.sort_by_key(|p| (p.subnet.network(), p.subnet.prefix_len()));
        Ok(out)
    }

    /// Known senders: the PublicIPs VXLAN is accepted from, with how many
    /// leases name each (which inner sources each may use is `peers()`).
    pub fn nodes(&self) -> Result<Vec<Sender>, DatapathError> {
        let mut out = Vec::new();
        for item in self.nodes.iter() {
            let (ip, node) = item.map_err(map_err(map_names::NODES))?;
            out.push(Sender { public_ip: Ipv4Addr::from(ip), leases: node.leases });
        }
        out.sort();
        Ok(out)
    }

    pub fn upsert_endpoint(&mut self, ep: &PodEndpoint) -> Result<(), DatapathError> {
        let value = Endpoint { ifindex: ep.ifindex, mac: ep.mac, _pad: [0; 2] };
        self.endpoints
            .insert(ep.ip.octets(), value, 0)
            .map_err(map_err(map_names::ENDPOINTS))
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), DatapathError> {
        ignore_missing(self.endpoints.remove(&ip.octets())).map_err(map_err(map_names::ENDPOINTS))
    }

    /// Makes the endpoint map equal to `wanted`; returns (added or changed,
    /// removed).
    pub fn reconcile_endpoints(&mut self, wanted: &[PodEndpoint]) -> Result<(usize, usize), DatapathError> {
        let current: StdHashMap<Ipv4Addr, PodEndpoint> = self.endpoints()?.into_iter().map(|e| (e.ip, e)).collect();
        let wanted_ips: HashSet<Ipv4Addr> = wanted.iter().map(|e| e.ip).collect();
        let mut changed = 0;
        for ep in wanted {
            if current.get(&ep.ip) != Some(ep) {
                self.upsert_endpoint(ep)?;
                changed += 1;
            }
        }
        let mut removed = 0;
        for ip in current.keys().filter(|ip| !wanted_ips.contains(ip)) {
            self.remove_endpoint(*ip)?;
            removed += 1;
        }
        Ok((changed, removed))
    }

    pub fn endpoints(&self) -> Result<Vec<PodEndpoint>, DatapathError> {
        let mut out = Vec::new();
        for item in self.endpoints.iter() {
            let (ip, ep) = item.map_err(map_err(map_names::ENDPOINTS))?;
            out.push(PodEndpoint { ip: Ipv4Addr::from(ip), ifindex: ep.ifindex, mac: ep.mac });
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    /// The send path's cached underlay next hops, by node.
    pub fn underlay(&self) -> Result<Vec<UnderlayEntry>, DatapathError> {
        let Some(map) = &self.underlay else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in map.iter() {
            let (ip, hop) = match item {
                Ok(kv) => kv,
                // The programs evict and replace entries while we iterate.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(map_names::UNDERLAY)(e)),
            };
            out.push(UnderlayEntry {
                public_ip: Ipv4Addr::from(ip),
                dst_mac: hop.dst_mac,
                src_mac: hop.src_mac,
                refreshed_ns: hop.refreshed_ns,
            });
        }
        out.sort_by_key(|e| e.public_ip);
        Ok(out)
    }

    /// The flows whose replies go through the kernel (pinned maps only).
    pub fn kernel_flows(&self) -> Result<Vec<KernelFlow>, DatapathError> {
        let Some(map) = &self.kernel_flows else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in map.keys() {
            let k = match item {
                Ok(k) => k,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(map_names::KERNEL_FLOWS)(e)),
            };
            let port = |p: [u8; 2]| u16::from_be_bytes(p);
            out.push(KernelFlow {
                proto: k.proto,
                src: std::net::SocketAddrV4::new(Ipv4Addr::from(k.src), port(k.src_port)),
                dst: std::net::SocketAddrV4::new(Ipv4Addr::from(k.dst), port(k.dst_port)),
            });
        }
        out.sort();
        Ok(out)
    }

    /// Counters summed over all CPUs.
    pub fn stats(&self) -> Result<Stats, DatapathError> {
        sum_stats(&self.stats)
    }
}

/// The pinned counters alone, kept open for a reader that polls them
/// (`/metrics`) instead of opening the map per read. The pin is checked
/// (one stat) at every read, so a map pinned later, or pinned anew after
/// `cleanup` and another agent's start, is picked up.
pub struct PinnedStats {
    path: PathBuf,
    /// The open map and the (device, inode) of the pin it came from.
    open: Option<((u64, u64), PerCpuArray<MapData, Counter>)>,
}

impl PinnedStats {
    /// Opens nothing yet: the map may not be pinned so far.
    pub fn new(pins: &PinLayout) -> PinnedStats {
        PinnedStats { path: pins.map(map_names::STATS), open: None }
    }

    pub fn read(&mut self) -> Result<Stats, DatapathError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                self.open = None;
                return Err(e.into());
            }
        };
        let id = (meta.dev(), meta.ino());
        if self.open.as_ref().is_none_or(|(open_id, _)| *open_id != id) {
            let data = MapData::from_pin(&self.path)
                .map_err(|source| DatapathError::OpenPin { path: self.path.clone(), source })?;
            let map = Map::from_map_data(data).map_err(map_err(map_names::STATS))?;
            self.open = Some((id, PerCpuArray::try_from(map).map_err(map_err(map_names::STATS))?));
        }
        let (_, map) = self.open.as_ref().expect("opened above");
        sum_stats(map)
    }
}

fn sum_stats(map: &PerCpuArray<MapData, Counter>) -> Result<Stats, DatapathError> {
    let mut counters = Vec::with_capacity(REASON_COUNT as usize);
    for reason in Reason::ALL {
        let per_cpu = map.get(&(reason as u32), 0).map_err(map_err(map_names::STATS))?;
        let mut total = Counter::default();
        for c in per_cpu.iter() {
            total.packets += c.packets;
            total.bytes += c.bytes;
        }
        counters.push((reason, total));
    }
    Ok(Stats { counters })
}

pub(super) fn open_pin(pins: &PinLayout, name: &'static str) -> Result<Map, DatapathError> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).map_err(|source| DatapathError::OpenPin { path, source })?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// Now on CLOCK_MONOTONIC_COARSE, the clock of the programs'
/// `bpf_ktime_get_coarse_ns` (what [`UnderlayEntry::refreshed_ns`] is on).
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer; this clock always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The peer a `SUBNETS` entry stands for; None for a mode this agent does
/// not know.
fn peer_of(subnet: Ipv4Net, hop: &NextHop) -> Option<Peer> {
    Some(Peer {
        subnet,
        public_ip: Ipv4Addr::from(hop.public_ip),
        vtep_mac: hop.vtep_mac,
        mode: Mode::from_wire(hop.mode)?,
    })
}

fn subnet_key(subnet: Ipv4Net) -> Key<[u8; 4]> {
    Key::new(subnet.prefix_len() as u32, subnet.network().octets())
}

pub(super) fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeConfig {
        NodeConfig {
            local_ip: Ipv4Addr::new(192, 168, 1, 10),
            public_ip: Ipv4Addr::new(192, 168, 1, 10),
            network: "10.42.0.0/16".parse().unwrap(),
            subnet: "10.42.7.0/24".parse().unwrap(),
            vni: 1,
            port: 8472,
            uplink_ifindex: 2,
            uplink_mtu: 1500,
            bridge_ifindex: 3,
            vtep_mac: [0x0e, 1, 2, 3, 4, 5],
            bridge_mac: [0x0e, 6, 7, 8, 9, 10],
            kernel_forwarding: false,
            xdp_decap: false,
        }
    }

    #[test]
    fn the_index_counts_the_leases_naming_each_public_ip() {
        let peer = |subnet: &str, ip: [u8; 4]| Peer {
            subnet: subnet.parse().unwrap(),
            public_ip: Ipv4Addr::from(ip),
            vtep_mac: [0x0e, 0, 0, 0, 0, 1],
            mode: Mode::Vxlan,
        };
        let peers = [peer("10.42.1.0/24", [192, 168, 1, 1]), peer("10.42.2.0/24", [192, 168, 1, 1]), peer("10.42.3.0/24", [192, 168, 1, 2])];
        let index = PeerIndex::from_peers(&peers);
        assert_eq!(index.peers.len(), 3);
        assert_eq!(index.senders.get(&Ipv4Addr::new(192, 168, 1, 1)), Some(&2));
        assert_eq!(index.senders.get(&Ipv4Addr::new(192, 168, 1, 2)), Some(&1));
        // The same subnet twice: the later entry wins and is counted once.
        let moved = [peer("10.42.1.0/24", [192, 168, 1, 1]), peer("10.42.1.0/24", [192, 168, 1, 3])];
        let index = PeerIndex::from_peers(&moved);
        assert_eq!(index.senders.len(), 1);
        assert_eq!(index.senders.get(&Ipv4Addr::new(192, 168, 1, 3)), Some(&1));
    }

    #[test]
    fn kernel_forwarding_is_a_flag_of_the_config() {
        let on = NodeConfig { kernel_forwarding: true, ..node() };
        assert_eq!(on.to_wire().flags, config_flags::READY | config_flags::KERNEL_FORWARDING);
        assert_eq!(NodeConfig::from_wire(on.to_wire()).unwrap(), Some(on));
        assert_eq!(node().to_wire().flags, config_flags::READY);
        let xdp = NodeConfig { xdp_decap: true, ..node() };
        assert_eq!(xdp.to_wire().flags, config_flags::READY | config_flags::XDP_DECAP);
        assert_eq!(NodeConfig::from_wire(xdp.to_wire()).unwrap(), Some(xdp));
    }

    #[test]
    fn node_config_round_trips_through_the_map_value() {
        let wire = node().to_wire();
        assert_eq!(wire.cluster_net, [10, 42, 0, 0]);
        assert_eq!((wire.cluster_prefix_len, wire.local_subnet, wire.local_prefix_len), (16, [10, 42, 7, 0], 24));
        assert_eq!(wire.flags, config_flags::READY);
        assert_eq!(NodeConfig::from_wire(wire).unwrap(), Some(node()));
    }

    #[test]
    fn an_unfilled_config_is_none_and_a_bad_prefix_is_corrupt() {
        let mut wire = node().to_wire();
        wire.flags = 0;
        assert_eq!(NodeConfig::from_wire(wire).unwrap(), None);
        wire.flags = config_flags::READY;
        wire.local_prefix_len = 33;
        assert!(matches!(NodeConfig::from_wire(wire), Err(DatapathError::Corrupt(_))));
    }

    #[test]
    fn modes_round_trip_and_have_their_inspect_names() {
        for (mode, name) in [(Mode::Vxlan, "vxlan"), (Mode::Direct, "direct")] {
            assert_eq!(Mode::from_wire(mode.to_wire() as u8), Some(mode));
            assert_eq!(mode.to_string(), name);
        }
        assert_eq!(format!("{:<7}|", Mode::Direct), "direct |");
        assert_eq!(Mode::from_wire(0), None);
    }
}
