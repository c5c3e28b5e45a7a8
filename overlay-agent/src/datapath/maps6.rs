//! The typed API over the IPv6 maps (`SUBNETS6`, `NODES6`, `ENDPOINTS6`,
//! `CONFIG6`), the v6 half of [`super::maps`]: the same contract (whole
//! entries, one map update each; peer maps a function of the wanted peers,
//! kept so by a userspace index with at most three writes per lease event),
//! over v6 addresses. What the control plane calls, per lease with a v6
//! part (`PublicIPv6` + `BackendV6Data`):
//!
//! - at start and on every full listing: [`DatapathMaps6::reconcile_peers`];
//! - per lease event: [`DatapathMaps6::upsert_peer`] / [`DatapathMaps6::remove_peer`];
//! - once the v6 lease and overlay0 exist: [`DatapathMaps6::set_config`]
//!   (until then, and on v4-only nodes, the programs leave v6 to the kernel);
//! - per local pod with a v6 address: [`DatapathMaps6::upsert_endpoint`] /
//!   [`DatapathMaps6::reconcile_endpoints`].
use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::Ipv6Addr,
};

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData};
use ipnet::Ipv6Net;
use overlay_common::{
    map_names,
    maps::{config_flags, Endpoint, NodeEntry},
    maps6::{LocalConfig6, NextHop6},
};

use super::{
    maps::{ignore_missing, map_err, open_pin, Mode, PeerChanges},
    pins::PinLayout,
    DatapathError,
};

/// This node's v6 side, as the programs see it (`CONFIG6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeConfig6 {
    /// The tunnel's local v6 address (the uplink's; outer source).
    pub local_ip: Ipv6Addr,
    /// Our lease's PublicIPv6 (VXLAN to it is accepted too).
    pub public_ip: Ipv6Addr,
    /// The flannel IPv6Network.
    pub network: Ipv6Net,
    /// Our own v6 lease.
    pub subnet: Ipv6Net,
    pub vni: u32,
    pub port: u16,
    /// overlay0, the metadata VXLAN device whose driver builds the outer
    /// v6 header (its MTU does not matter for v6: the route's does).
    pub tunnel_ifindex: u32,
    /// The v6 uplink and its MTU (encapsulated frames must fit: pod packets
    /// over MTU - 70 go to the kernel, which answers packet too big).
    pub uplink_ifindex: u32,
    pub uplink_mtu: u32,
    pub bridge_ifindex: u32,
    /// `BackendV6Data`'s VtepMAC.
    pub vtep_mac: [u8; 6],
    pub bridge_mac: [u8; 6],
    pub kernel_forwarding: bool,
}

impl NodeConfig6 {
    fn to_wire(self) -> LocalConfig6 {
        LocalConfig6 {
            local_ip: self.local_ip.octets(),
            public_ip: self.public_ip.octets(),
            cluster_net: self.network.network().octets(),
            local_subnet: self.subnet.network().octets(),
            vni: self.vni,
            tunnel_ifindex: self.tunnel_ifindex,
            uplink_ifindex: self.uplink_ifindex,
            bridge_ifindex: self.bridge_ifindex,
            uplink_mtu: self.uplink_mtu,
            flags: config_flags::READY | if self.kernel_forwarding { config_flags::KERNEL_FORWARDING } else { 0 },
            port: self.port,
            cluster_prefix_len: self.network.prefix_len(),
            local_prefix_len: self.subnet.prefix_len(),
            vtep_mac: self.vtep_mac,
            bridge_mac: self.bridge_mac,
        }
    }

    fn from_wire(c: LocalConfig6) -> Result<Option<NodeConfig6>, DatapathError> {
        if c.flags & config_flags::READY == 0 {
            return Ok(None);
        }
        let net = |addr: [u8; 16], prefix: u8| {
            Ipv6Net::new(Ipv6Addr::from(addr), prefix).map_err(|_| DatapathError::Corrupt("CONFIG6 with a prefix over 128"))
        };
        Ok(Some(NodeConfig6 {
            local_ip: Ipv6Addr::from(c.local_ip),
            public_ip: Ipv6Addr::from(c.public_ip),
            network: net(c.cluster_net, c.cluster_prefix_len)?,
            subnet: net(c.local_subnet, c.local_prefix_len)?,
            vni: c.vni,
            port: c.port,
            tunnel_ifindex: c.tunnel_ifindex,
            uplink_ifindex: c.uplink_ifindex,
            uplink_mtu: c.uplink_mtu,
            bridge_ifindex: c.bridge_ifindex,
            vtep_mac: c.vtep_mac,
            bridge_mac: c.bridge_mac,
            kernel_forwarding: c.flags & config_flags::KERNEL_FORWARDING != 0,
        }))
    }
}

/// The v6 part of a remote node's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer6 {
    pub subnet: Ipv6Net,
    /// The lease's PublicIPv6.
    pub public_ip: Ipv6Addr,
    /// `BackendV6Data`'s VtepMAC (zero for host-gw).
    pub vtep_mac: [u8; 6],
    pub mode: Mode,
}

/// A local pod's v6 address, for direct delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PodEndpoint6 {
    pub ip: Ipv6Addr,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// A PublicIPv6 that leases name, and how many (`NODES6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sender6 {
    pub public_ip: Ipv6Addr,
    pub leases: u32,
}

/// The peers by subnet and, per PublicIPv6, how many name it: what the
/// peer maps hold, as last written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Index6 {
    peers: BTreeMap<Ipv6Net, Peer6>,
    senders: StdHashMap<Ipv6Addr, u32>,
}

impl Index6 {
    fn of(peers: &BTreeMap<Ipv6Net, Peer6>) -> Index6 {
        let mut senders = StdHashMap::new();
        for p in peers.values() {
            *senders.entry(p.public_ip).or_default() += 1;
        }
        Index6 { peers: peers.clone(), senders }
    }
}

pub struct DatapathMaps6 {
    subnets: LpmTrie<MapData, [u8; 16], NextHop6>,
    nodes: HashMap<MapData, [u8; 16], NodeEntry>,
    endpoints: HashMap<MapData, [u8; 16], Endpoint>,
    config: Array<MapData, LocalConfig6>,
    /// None until read from the maps, and again after a failed write.
    index: Option<Index6>,
}

impl DatapathMaps6 {
    /// Takes the v6 maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        Self::from_maps(
            take(map_names::SUBNETS6)?,
            take(map_names::NODES6)?,
            take(map_names::ENDPOINTS6)?,
            take(map_names::CONFIG6)?,
        )
    }

    /// Opens the pinned v6 maps (`inspect`, tests).
    pub fn open_pinned(pins: &PinLayout) -> Result<Self, DatapathError> {
        let open = |name: &'static str| open_pin(pins, name);
        Self::from_maps(
            open(map_names::SUBNETS6)?,
            open(map_names::NODES6)?,
            open(map_names::ENDPOINTS6)?,
            open(map_names::CONFIG6)?,
        )
    }

    fn from_maps(subnets: Map, nodes: Map, endpoints: Map, config: Map) -> Result<Self, DatapathError> {
        Ok(DatapathMaps6 {
            subnets: LpmTrie::try_from(subnets).map_err(map_err(map_names::SUBNETS6))?,
            nodes: HashMap::try_from(nodes).map_err(map_err(map_names::NODES6))?,
            endpoints: HashMap::try_from(endpoints).map_err(map_err(map_names::ENDPOINTS6))?,
            config: Array::try_from(config).map_err(map_err(map_names::CONFIG6))?,
            index: None,
        })
    }

    /// Writes the node's v6 side and marks it ready: from then on the
    /// programs handle v6 pod traffic.
    pub fn set_config(&mut self, cfg: &NodeConfig6) -> Result<(), DatapathError> {
        self.config.set(0, cfg.to_wire(), 0).map_err(map_err(map_names::CONFIG6))
    }

    /// Turns v6 off again (the programs leave v6 to the kernel).
    pub fn clear_config(&mut self) -> Result<(), DatapathError> {
        self.config.set(0, LocalConfig6::default(), 0).map_err(map_err(map_names::CONFIG6))
    }

    pub fn config(&self) -> Result<Option<NodeConfig6>, DatapathError> {
        NodeConfig6::from_wire(self.config.get(&0, 0).map_err(map_err(map_names::CONFIG6))?)
    }

    /// Makes `SUBNETS6` and `NODES6` hold exactly `wanted`, whatever they
    /// held; senders are added before the subnets naming them and removed
    /// after.
    pub fn reconcile_peers(&mut self, wanted: &BTreeMap<Ipv6Net, Peer6>) -> Result<PeerChanges, DatapathError> {
        self.index = None;
        let held_peers: BTreeMap<Ipv6Net, Peer6> = self.peers()?.into_iter().map(|p| (p.subnet, p)).collect();
        let held_senders: StdHashMap<Ipv6Addr, u32> =
            self.nodes()?.into_iter().map(|s| (s.public_ip, s.leases)).collect();
        let want = Index6::of(wanted);
        let mut changes = PeerChanges::default();
        for (ip, n) in want.senders.iter().filter(|(ip, n)| held_senders.get(ip) != Some(n)) {
            self.write_sender(*ip, *n)?;
            changes.senders += 1;
        }
        for peer in want.peers.values().filter(|p| held_peers.get(&p.subnet) != Some(p)) {
            self.write_subnet(peer)?;
            changes.written += 1;
        }
        // Every key, also those peers() skips (a mode this agent does not know).
        let keys: Vec<Key<[u8; 16]>> =
            self.subnets.keys().collect::<Result<_, _>>().map_err(map_err(map_names::SUBNETS6))?;
        for key in keys {
            let subnet = subnet_of(&key)?;
            if !want.peers.contains_key(&subnet) {
                ignore_missing(self.subnets.remove(&key)).map_err(map_err(map_names::SUBNETS6))?;
                changes.removed += 1;
            }
        }
        for ip in held_senders.keys().filter(|ip| !want.senders.contains_key(ip)) {
            ignore_missing(self.nodes.remove(&ip.octets())).map_err(map_err(map_names::NODES6))?;
            changes.senders += 1;
        }
        self.index = Some(want);
        Ok(changes)
    }

    /// Adds or replaces a lease's v6 part: at most three map writes.
    pub fn upsert_peer(&mut self, peer: &Peer6) -> Result<(), DatapathError> {
        let result = self.try_upsert_peer(peer);
        if result.is_err() {
            self.index = None;
        }
        result
    }

    fn try_upsert_peer(&mut self, peer: &Peer6) -> Result<(), DatapathError> {
        let old = self.index()?.peers.get(&peer.subnet).copied();
        if old == Some(*peer) {
            return Ok(());
        }
        let moved_from = old.map(|p| p.public_ip).filter(|ip| *ip != peer.public_ip);
        if old.is_none() || moved_from.is_some() {
            self.add_sender(peer.public_ip)?;
        }
        self.write_subnet(peer)?;
        self.index()?.peers.insert(peer.subnet, *peer);
        if let Some(ip) = moved_from {
            self.release_sender(ip)?;
        }
        Ok(())
    }

    /// Removes a lease's v6 subnet and, when no other names it, its sender.
    pub fn remove_peer(&mut self, subnet: Ipv6Net) -> Result<(), DatapathError> {
        let result = self.try_remove_peer(subnet);
        if result.is_err() {
            self.index = None;
        }
        result
    }

    fn try_remove_peer(&mut self, subnet: Ipv6Net) -> Result<(), DatapathError> {
        let Some(old) = self.index()?.peers.remove(&subnet) else {
            return Ok(());
        };
        let key = Key::new(subnet.prefix_len() as u32, subnet.network().octets());
        ignore_missing(self.subnets.remove(&key)).map_err(map_err(map_names::SUBNETS6))?;
        self.release_sender(old.public_ip)
    }

    fn add_sender(&mut self, ip: Ipv6Addr) -> Result<(), DatapathError> {
        let n = self.index()?.senders.get(&ip).copied().unwrap_or(0) + 1;
        self.write_sender(ip, n)?;
        self.index()?.senders.insert(ip, n);
        Ok(())
    }

    fn release_sender(&mut self, ip: Ipv6Addr) -> Result<(), DatapathError> {
        let n = self.index()?.senders.get(&ip).copied().unwrap_or(0).saturating_sub(1);
        if n > 0 {
            self.write_sender(ip, n)?;
            self.index()?.senders.insert(ip, n);
            return Ok(());
        }
        ignore_missing(self.nodes.remove(&ip.octets())).map_err(map_err(map_names::NODES6))?;
        self.index()?.senders.remove(&ip);
        Ok(())
    }

    fn write_sender(&mut self, ip: Ipv6Addr, leases: u32) -> Result<(), DatapathError> {
        self.nodes.insert(ip.octets(), NodeEntry { leases }, 0).map_err(map_err(map_names::NODES6))
    }

    fn write_subnet(&mut self, peer: &Peer6) -> Result<(), DatapathError> {
        let hop = NextHop6 {
            public_ip: peer.public_ip.octets(),
            vtep_mac: peer.vtep_mac,
            mode: peer.mode.to_wire() as u8,
            _pad: 0,
        };
        let key = Key::new(peer.subnet.prefix_len() as u32, peer.subnet.network().octets());
        self.subnets.insert(&key, hop, 0).map_err(map_err(map_names::SUBNETS6))
    }

    fn index(&mut self) -> Result<&mut Index6, DatapathError> {
        if self.index.is_none() {
            let peers = self.peers()?.into_iter().map(|p| (p.subnet, p)).collect();
            let mut index = Index6::of(&peers);
            // The counts as the maps hold them (a reconcile repairs them).
            index.senders = self.nodes()?.into_iter().map(|s| (s.public_ip, s.leases)).collect();
            self.index = Some(index);
        }
        Ok(self.index.get_or_insert_with(Index6::default))
    }

    pub fn peers(&self) -> Result<Vec<Peer6>, DatapathError> {
        let mut out = Vec::new();
        for item in self.subnets.iter() {
            let (key, hop) = item.map_err(map_err(map_names::SUBNETS6))?;
            let Some(mode) = Mode::from_wire(hop.mode) else { continue };
            out.push(Peer6 { subnet: subnet_of(&key)?, public_ip: Ipv6Addr::from(hop.public_ip), vtep_mac: hop.vtep_mac, mode });
        }
        out.sort_by_key(|p| (p.subnet.network(), p.subnet.prefix_len()));
        Ok(out)
    }

    /// The PublicIPv6s VXLAN is accepted from, with how many leases name each.
    pub fn nodes(&self) -> Result<Vec<Sender6>, DatapathError> {
        let mut out: Vec<Sender6> = self
            .nodes
            .iter()
            .map(|item| item.map(|(ip, n)| Sender6 { public_ip: Ipv6Addr::from(ip), leases: n.leases }))
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::NODES6))?;
        out.sort();
        Ok(out)
    }

    pub fn upsert_endpoint(&mut self, ep: &PodEndpoint6) -> Result<(), DatapathError> {
        let value = Endpoint { ifindex: ep.ifindex, mac: ep.mac, _pad: [0; 2] };
        self.endpoints.insert(ep.ip.octets(), value, 0).map_err(map_err(map_names::ENDPOINTS6))
    }

    pub fn remove_endpoint(&mut self, ip: Ipv6Addr) -> Result<(), DatapathError> {
        ignore_missing(self.endpoints.remove(&ip.octets())).map_err(map_err(map_names::ENDPOINTS6))
    }

    /// Makes `ENDPOINTS6` equal to `wanted`; returns (added or changed, removed).
    pub fn reconcile_endpoints(&mut self, wanted: &[PodEndpoint6]) -> Result<(usize, usize), DatapathError> {
        let mut stale: StdHashMap<Ipv6Addr, PodEndpoint6> = self.endpoints()?.into_iter().map(|e| (e.ip, e)).collect();
        let mut changed = 0;
        for ep in wanted {
            if stale.remove(&ep.ip) != Some(*ep) {
                self.upsert_endpoint(ep)?;
                changed += 1;
            }
        }
        for ip in stale.keys() {
            self.remove_endpoint(*ip)?;
        }
        Ok((changed, stale.len()))
    }

    pub fn endpoints(&self) -> Result<Vec<PodEndpoint6>, DatapathError> {
        let mut out: Vec<PodEndpoint6> = self
            .endpoints
            .iter()
            .map(|item| item.map(|(ip, ep)| PodEndpoint6 { ip: Ipv6Addr::from(ip), ifindex: ep.ifindex, mac: ep.mac }))
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::ENDPOINTS6))?;
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }
}

fn subnet_of(key: &Key<[u8; 16]>) -> Result<Ipv6Net, DatapathError> {
    Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8)
        .map_err(|_| DatapathError::Corrupt("SUBNETS6 key with a prefix over 128"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeConfig6 {
        NodeConfig6 {
            local_ip: "fd00:77::10".parse().unwrap(),
            public_ip: "fd00:77::10".parse().unwrap(),
            network: "fd42::/32".parse().unwrap(),
            subnet: "fd42:0:7::/64".parse().unwrap(),
            vni: 1,
            port: 8472,
            tunnel_ifindex: 4,
            uplink_ifindex: 2,
            uplink_mtu: 1500,
            bridge_ifindex: 3,
            vtep_mac: [0x0e, 1, 2, 3, 4, 6],
            bridge_mac: [0x0e, 6, 7, 8, 9, 10],
            kernel_forwarding: false,
        }
    }

    #[test]
    fn node_config6_round_trips_through_the_map_value() {
        let wire = node().to_wire();
        assert_eq!(wire.cluster_prefix_len, 32);
        assert_eq!(wire.local_subnet, "fd42:0:7::".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(wire.flags, config_flags::READY);
        assert_eq!(NodeConfig6::from_wire(wire).unwrap(), Some(node()));
        let kf = NodeConfig6 { kernel_forwarding: true, ..node() };
        assert_eq!(NodeConfig6::from_wire(kf.to_wire()).unwrap(), Some(kf));
    }

    #[test]
    fn an_unfilled_config6_is_none_and_a_bad_prefix_is_corrupt() {
        let mut wire = node().to_wire();
        wire.flags = 0;
        assert_eq!(NodeConfig6::from_wire(wire).unwrap(), None);
        wire.flags = config_flags::READY;
        wire.local_prefix_len = 129;
        assert!(matches!(NodeConfig6::from_wire(wire), Err(DatapathError::Corrupt(_))));
    }

    #[test]
    fn the_index_counts_the_leases_naming_each_public_ipv6() {
        let peer = |subnet: &str, ip: &str| {
            let p = Peer6 { subnet: subnet.parse().unwrap(), public_ip: ip.parse().unwrap(), vtep_mac: [2; 6], mode: Mode::Vxlan };
            (p.subnet, p)
        };
        let peers = BTreeMap::from([peer("fd42:0:1::/64", "fd00::1"), peer("fd42:0:2::/64", "fd00::1"), peer("fd42:0:3::/64", "fd00::2")]);
        let index = Index6::of(&peers);
        assert_eq!(index.senders.get(&"fd00::1".parse().unwrap()), Some(&2));
        assert_eq!(index.senders.get(&"fd00::2".parse().unwrap()), Some(&1));
    }
}
