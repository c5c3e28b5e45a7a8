//! The pods on the bridge, from the kernel's own tables: the bridge's
//! neighbour entries give IP -> MAC, its forwarding database gives MAC ->
//! port. What the data path makes of them (direct delivery with
//! `bpf_redirect_peer`, encapsulation on each pod veth) is up to the caller;
//! a pod not found here is still reached, through the host's stack and the
//! bridge.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::{
    packet_route::{
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        AddressFamily,
    },
    Handle,
};

use super::netlink::{links, req_err, NetlinkError};

/// A pod whose IP, MAC and host-side veth are all known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pod {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// The host-side veth: the bridge port the pod sits behind.
    pub veth_ifindex: u32,
}

/// A pod's IPv6 address (dual stack), with its MAC and veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pod6 {
    pub ip: Ipv6Addr,
    pub mac: [u8; 6],
    pub veth_ifindex: u32,
}

/// The pods on a bridge, as the kernel knows them.
#[derive(Clone, Debug, Default)]
pub struct BridgePods {
    /// Pods with a known IP, MAC and veth, by IP.
    pub pods: Vec<Pod>,
    /// Their global IPv6 addresses in our v6 lease, by IP (dual stack).
    pub pods6: Vec<Pod6>,
    /// Names of every veth port of the bridge (where pods' packets enter),
    /// including those whose pod is not known yet.
    pub veths: BTreeSet<String>,
}

/// What the kernel currently knows about pods on `bridge` inside `subnet`
/// (and, with dual stack, inside our v6 lease `subnet6`).
pub async fn discover(
    handle: &Handle,
    bridge: u32,
    subnet: Option<Ipv4Net>,
    subnet6: Option<Ipv6Net>,
) -> Result<BridgePods, NetlinkError> {
    // Ports of the bridge that are veths (bpf_redirect_peer needs a veth).
    let ports: Vec<_> = links(handle)
        .await?
        .into_iter()
        .filter(|l| l.master == Some(bridge) && l.kind.as_deref() == Some("veth"))
        .collect();
    let veth_ports: HashSet<u32> = ports.iter().map(|l| l.index).collect();
    let veths = ports.into_iter().map(|l| l.name).collect();

    let mut mac_port: HashMap<[u8; 6], u32> = HashMap::new();
    let mut fdb = handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
    while let Some(msg) = fdb.try_next().await.map_err(req_err("dump bridge fdb"))? {
        // Permanent entries are the ports' own MACs, not pods behind them.
        if msg.header.state == NeighbourState::Permanent || !veth_ports.contains(&msg.header.ifindex) {
            continue;
        }
        let master = msg.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Controller(m) => Some(*m),
            _ => None,
        });
        if master.is_some_and(|m| m != bridge) {
            continue;
        }
        if let Some(mac) = lladdr(&msg.attributes) {
            mac_port.insert(mac, msg.header.ifindex);
        }
    }

    // A pod: a neighbour of the bridge in our lease (not its network
    // address) whose MAC sits behind a veth port.
    let behind_port = |found: Vec<(IpAddr, [u8; 6])>| -> Vec<(IpAddr, [u8; 6], u32)> {
        found.into_iter().filter_map(|(ip, mac)| mac_port.get(&mac).map(|port| (ip, mac, *port))).collect()
    };
    let mut out = Vec::new();
    // None: an IPv6-only node, whose bridge's IPv4 neighbours are no pods of ours.
    if let Some(subnet) = subnet {
        for (ip, mac, veth_ifindex) in behind_port(bridge_neighbours(handle, bridge, AddressFamily::Inet).await?) {
            match ip {
                IpAddr::V4(ip) if subnet.contains(&ip) && ip != subnet.network() => out.push(Pod { ip, mac, veth_ifindex }),
                _ => {}
            }
        }
    }
    let mut pods6 = Vec::new();
    if let Some(sn) = subnet6 {
        // Link-local addresses (neighbour discovery) stay the kernel's.
        for (ip, mac, veth_ifindex) in behind_port(bridge_neighbours(handle, bridge, AddressFamily::Inet6).await?) {
            match ip {
                IpAddr::V6(ip) if sn.contains(&ip) && ip != sn.network() => pods6.push(Pod6 { ip, mac, veth_ifindex }),
                _ => {}
            }
        }
        pods6.sort_by_key(|p| p.ip);
    }
    out.sort_by_key(|p| p.ip);
    Ok(BridgePods { pods: out, pods6, veths })
}

/// The bridge's usable neighbour entries of one family: (IP, MAC).
async fn bridge_neighbours(
    handle: &Handle,
    bridge: u32,
    family: AddressFamily,
) -> Result<Vec<(IpAddr, [u8; 6])>, NetlinkError> {
    let mut found = Vec::new();
    let mut neigh = handle.neighbours().get().set_address_family(family).execute();
    while let Some(msg) = neigh.try_next().await.map_err(req_err("dump neighbours"))? {
        if msg.header.ifindex != bridge {
            continue;
        }
        let usable = matches!(
            msg.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
        );
        if !usable {
            continue;
        }
        let ip = msg.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        });
        if let (Some(ip), Some(mac)) = (ip, lladdr(&msg.attributes)) {
            found.push((ip, mac));
        }
    }
    Ok(found)
}

fn lladdr(attrs: &[NeighbourAttribute]) -> Option<[u8; 6]> {
    attrs.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(l);
            Some(mac)
        }
        _ => None,
    })
}
