//! The endpoint map (local pod IP -> host-side veth, pod MAC) that lets the
//! decap path hand packets straight to a pod with `bpf_redirect_peer`.
//! Kept from the kernel's own tables: the bridge's neighbour entries give
//! IP -> MAC, its forwarding database gives MAC -> port. A pod not (yet)
//! in the map is still reached, through the host's stack and the bridge.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::{
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        AddressFamily,
    },
    Handle,
};

use super::{maps::PodEndpoint, DatapathError, DatapathMaps};
use crate::host::netlink::{links, req_err, NetlinkError};

/// The pods on a bridge, as the kernel knows them.
#[derive(Clone, Debug, Default)]
pub struct Discovered {
    /// Pods with a known IP, MAC and veth: direct delivery is possible.
    pub endpoints: Vec<PodEndpoint>,
    /// Names of every veth port of the bridge (where pods' packets enter).
    pub veths: std::collections::BTreeSet<String>,
}

/// What the kernel currently knows about pods on `bridge` inside `subnet`.
pub async fn discover(handle: &Handle, bridge: u32, subnet: Ipv4Net) -> Result<Discovered, NetlinkError> {
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

    let mut out = Vec::new();
    let mut neigh = handle.neighbours().get().set_address_family(AddressFamily::Inet).execute();
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
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let (Some(ip), Some(mac)) = (ip, lladdr(&msg.attributes)) else { continue };
        if !subnet.contains(&ip) || ip == subnet.network() {
            continue;
        }
        if let Some(port) = mac_port.get(&mac) {
            out.push(PodEndpoint { ip, ifindex: *port, mac });
        }
    }
    out.sort_by_key(|e| e.ip);
    Ok(Discovered { endpoints: out, veths })
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

/// Makes the endpoint map equal to `wanted`; returns (added or changed,
/// removed).
pub fn reconcile(maps: &mut DatapathMaps, wanted: &[PodEndpoint]) -> Result<(usize, usize), DatapathError> {
    let current: HashMap<Ipv4Addr, PodEndpoint> = maps.endpoints()?.into_iter().map(|e| (e.ip, e)).collect();
    let wanted_ips: HashSet<Ipv4Addr> = wanted.iter().map(|e| e.ip).collect();
    let mut changed = 0;
    for ep in wanted {
        if current.get(&ep.ip) != Some(ep) {
            maps.upsert_endpoint(ep)?;
            changed += 1;
        }
    }
    let mut removed = 0;
    for ip in current.keys().filter(|ip| !wanted_ips.contains(ip)) {
        maps.remove_endpoint(*ip)?;
        removed += 1;
    }
    Ok((changed, removed))
}
