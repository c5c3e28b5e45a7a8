//! What other network agents left on a node we take over: flanneld's
//! `flannel.<VNI>` device, and the bridge route and address that earlier
//! versions of this agent put on the pod bridge.
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use log::{info, warn};
use rtnetlink::{packet_route::address::AddressAttribute, Handle, RouteMessageBuilder};

use super::netlink::{ipv4_addrs, link_by_name, links, req_err, NetlinkError};

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

/// Removes what agents before the tunnel device added to the pod bridge:
/// the cluster route and our address (the bridge itself stays: pods may
/// still be attached). `cleanup --bridge` only.
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
