//! The pod bridge (`--bridge`, default cni0) and the host routing that
//! sends the node's own traffic for remote pods through the bridge's egress
//! program: one route for the whole cluster network and one permanent
//! neighbour, instead of flannel's route + neighbour + FDB entry per node.
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use log::{info, warn};
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        neighbour::NeighbourState,
    },
    Handle, LinkBridge, LinkUnspec, RouteMessageBuilder,
};

use super::netlink::{ipv4_addrs, link_by_name, links, req_err, Link, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("bridge {0} was created but cannot be found")]
    Missing(String),
    #[error("bridge {0} has no MAC address")]
    NoMac(String),
    #[error("sysctl {path}: {source}")]
    Sysctl { path: String, source: std::io::Error },
}

#[derive(Clone, Debug)]
pub struct BridgePlan {
    pub name: String,
    /// The first address of our lease with its prefix (FLANNEL_SUBNET).
    pub address: Ipv4Net,
    pub mtu: u32,
    /// The flannel Network: routed via the bridge to our egress program.
    pub cluster: Ipv4Net,
    /// Our VtepMAC: the permanent neighbour behind the cluster route, so the
    /// host never ARPs for remote pods.
    pub vtep_mac: [u8; 6],
}

#[derive(Clone, Debug)]
pub struct BridgeInfo {
    pub index: u32,
    pub mac: [u8; 6],
}

/// The bridge's MAC for a node with this VtepMAC: locally administered,
/// unicast, stable, and distinct from the VtepMAC itself.
pub fn bridge_mac_for(vtep_mac: [u8; 6]) -> [u8; 6] {
    let mut mac = vtep_mac;
    mac[0] = ((mac[0] ^ 0x04) & 0xfe) | 0x02;
    mac
}

/// The gateway of the cluster route: our subnet's network address, which
/// no pod ever holds (flannel gives the same address to flannel.1).
pub fn cluster_gateway(address: Ipv4Net) -> Ipv4Addr {
    address.network()
}

pub async fn ensure_bridge(handle: &Handle, plan: &BridgePlan) -> Result<BridgeInfo, BridgeError> {
    let link = match link_by_name(handle, &plan.name).await? {
        Some(link) => link,
        None => {
            info!("creating bridge {}", plan.name);
            // An explicit MAC: otherwise the bridge takes the lowest MAC of
            // its ports and changes it as pods come and go, which flushes
            // its neighbour table (our permanent entry included). Derived
            // from the VtepMAC, which survives restarts and reboots, so pods
            // that outlive a re-created bridge keep a valid gateway entry.
            let mac = bridge_mac_for(plan.vtep_mac);
            handle
                .link()
                .add(LinkBridge::new(&plan.name).mtu(plan.mtu).address(mac.to_vec()).up().build())
                .execute()
                .await
                .map_err(req_err(format!("create bridge {}", plan.name)))?;
            link_by_name(handle, &plan.name).await?.ok_or_else(|| BridgeError::Missing(plan.name.clone()))?
        }
    };
    if link.mtu != plan.mtu {
        info!("setting {} MTU {} (was {})", plan.name, plan.mtu, link.mtu);
    }
    // Setting the bridge's current MAC explicitly pins it (see above) on a
    // bridge someone else created.
    let mut set = LinkUnspec::new_with_index(link.index).mtu(plan.mtu).up();
    if let Some(mac) = link.mac {
        set = set.address(mac.to_vec());
    }
    handle
        .link()
        .set(set.build())
        .execute()
        .await
        .map_err(req_err(format!("set {} up with MTU {}", plan.name, plan.mtu)))?;
    ensure_address(handle, &link, plan).await?;
    ensure_cluster_route(handle, &link, plan).await?;
    let mac = link.mac.ok_or_else(|| BridgeError::NoMac(plan.name.clone()))?;
    Ok(BridgeInfo { index: link.index, mac })
}

/// Exactly one address from the cluster network on the bridge: ours. An
/// address from an older lease would make the host answer for a subnet
/// that is now someone else's.
async fn ensure_address(handle: &Handle, link: &Link, plan: &BridgePlan) -> Result<(), NetlinkError> {
    let mut have = false;
    let mut stream = handle.address().get().set_link_index_filter(link.index).execute();
    let mut stale = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(req_err("list bridge addresses"))? {
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(std::net::IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        });
        let Some(addr) = addr else { continue };
        if addr == plan.address.addr() && msg.header.prefix_len == plan.address.prefix_len() {
            have = true;
        } else if plan.cluster.contains(&addr) {
            stale.push((msg, addr));
        }
    }
    for (msg, addr) in stale {
        info!("removing stale address {addr} from {}", plan.name);
        handle.address().del(msg).execute().await.map_err(req_err(format!("delete {addr}")))?;
    }
    if !have {
        info!("adding {} to {}", plan.address, plan.name);
        handle
            .address()
            .add(link.index, plan.address.addr().into(), plan.address.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(req_err(format!("add {} to {}", plan.address, plan.name)))?;
    }
    Ok(())
}

/// Re-asserts the cluster route and its neighbour (cheap, idempotent): a
/// neighbour flush or a route deleted by hand must not cut the host off
/// from remote pods for long.
pub async fn resync_cluster_route(handle: &Handle, plan: &BridgePlan) -> Result<(), BridgeError> {
    let link = link_by_name(handle, &plan.name).await?.ok_or_else(|| BridgeError::Missing(plan.name.clone()))?;
    ensure_cluster_route(handle, &link, plan).await?;
    Ok(())
}

async fn ensure_cluster_route(handle: &Handle, link: &Link, plan: &BridgePlan) -> Result<(), NetlinkError> {
    let gateway = cluster_gateway(plan.address);
    handle
        .neighbours()
        .add(link.index, gateway.into())
        .link_layer_address(&plan.vtep_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(req_err(format!("neighbour {gateway} on {}", plan.name)))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(plan.cluster.network(), plan.cluster.prefix_len())
        .gateway(gateway)
        .output_interface(link.index)
        .onlink()
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(req_err(format!("route {} via {gateway} dev {}", plan.cluster, plan.name)))?;
    Ok(())
}

/// Removes what `ensure_bridge` added: the cluster route, the neighbour and
/// our address (the bridge itself stays: pods may still be attached).
pub async fn remove_bridge_setup(handle: &Handle, name: &str, cluster: Option<Ipv4Net>) -> Result<(), NetlinkError> {
    let Some(link) = link_by_name(handle, name).await? else { return Ok(()) };
    if let Some(cluster) = cluster {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cluster.network(), cluster.prefix_len())
            .output_interface(link.index)
            .build();
        if let Err(e) = handle.route().del(route).execute().await {
            warn!("route {cluster} on {name}: {e}");
        }
    }
    for addr in ipv4_addrs(handle).await?.into_iter().filter(|a| a.index == link.index) {
        let in_cluster = cluster.is_none_or(|c| c.contains(&addr.addr));
        if !in_cluster {
            continue;
        }
        let mut stream = handle.address().get().set_link_index_filter(link.index).execute();
        while let Some(msg) = stream.try_next().await.map_err(req_err("list bridge addresses"))? {
            let matches = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Local(std::net::IpAddr::V4(v4)) if *v4 == addr.addr)
            });
            if matches {
                info!("removing {}/{} from {name}", addr.addr, addr.prefix_len);
                handle.address().del(msg).execute().await.map_err(req_err("delete address"))?;
                break;
            }
        }
    }
    Ok(())
}

/// flanneld's VXLAN device (`flannel.<VNI>`) on a node we take over: its
/// per-node routes would win over our cluster route and its socket would
/// compete for the VXLAN port. Deleting it removes its routes too.
pub async fn remove_flannel_devices(handle: &Handle) -> Result<Vec<String>, NetlinkError> {
    let mut removed = Vec::new();
    for link in links(handle).await? {
        if link.kind.as_deref() == Some("vxlan") && link.name.starts_with("flannel.") {
            info!("deleting {} left by flanneld: this agent replaces it", link.name);
            handle.link().del(link.index).execute().await.map_err(req_err(format!("delete {}", link.name)))?;
            removed.push(link.name);
        }
    }
    Ok(removed)
}

/// IP forwarding on, and reverse-path filtering loose on the uplink:
/// decapsulated packets arrive on the uplink from pod addresses that the
/// host routes via the bridge, which strict rp_filter would drop.
pub fn ensure_sysctls(uplink: &str) -> Result<(), BridgeError> {
    set_sysctl("net/ipv4/ip_forward", "1", true)?;
    for dev in ["all", uplink] {
        let path = format!("net/ipv4/conf/{dev}/rp_filter");
        if read_sysctl(&path)?.trim() == "1" {
            set_sysctl(&path, "2", false)?;
            info!("{path}: strict reverse-path filtering set to loose (2) for decapsulated traffic");
        }
    }
    Ok(())
}

fn read_sysctl(path: &str) -> Result<String, BridgeError> {
    let full = format!("/proc/sys/{path}");
    std::fs::read_to_string(&full).map_err(|source| BridgeError::Sysctl { path: full, source })
}

fn set_sysctl(path: &str, value: &str, log_change: bool) -> Result<(), BridgeError> {
    let old = read_sysctl(path)?;
    if old.trim() == value {
        return Ok(());
    }
    let full = format!("/proc/sys/{path}");
    std::fs::write(&full, value).map_err(|source| BridgeError::Sysctl { path: full, source })?;
    if log_change {
        info!("{path} = {value}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_mac_is_stable_local_unicast_and_not_the_vtep_mac() {
        for vtep in [[0x02, 1, 2, 3, 4, 5], [0xfe, 0xff, 0, 0, 0, 1], [0x06, 0, 0, 0, 0, 0]] {
            let mac = bridge_mac_for(vtep);
            assert_eq!(mac, bridge_mac_for(vtep));
            assert_ne!(mac, vtep);
            assert_eq!(mac[0] & 0x01, 0, "unicast");
            assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        }
    }
}
