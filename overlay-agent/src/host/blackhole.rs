//! `--ip-blackhole-route` (flanneld v0.27.1): a blackhole route for our own
//! lease, so that packets for pod addresses of this node that no pod holds
//! (or all of them, while the pod bridge is missing) are dropped here
//! instead of following the default route out of the node.
//!
//! The route has a high metric: the pod bridge's own connected route for
//! the lease (metric 0) wins whenever the bridge is up, and the blackhole
//! only catches what would otherwise leave through the default route. The
//! metric also marks the route as ours, so a lease change and `cleanup`
//! remove exactly it.
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    Handle, RouteMessageBuilder,
};

use super::netlink::{replace_route, req_err, NetlinkError};

/// The metric of our blackhole route (see the module doc).
pub const BLACKHOLE_METRIC: u32 = 4242;

/// `ip route replace blackhole <lease> metric 4242 proto static`, after
/// removing our blackhole route for any other subnet (a previous lease).
pub async fn ensure(handle: &Handle, lease: Ipv4Net) -> Result<(), NetlinkError> {
    let lease = lease.trunc();
    for (dst, msg) in ours(handle).await? {
        if dst != lease {
            delete(handle, dst, msg).await?;
        }
    }
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(lease.network(), lease.prefix_len())
        .kind(RouteType::BlackHole)
        .protocol(RouteProtocol::Static)
        .priority(BLACKHOLE_METRIC)
        .build();
    replace_route(handle, route, format!("blackhole route {lease} metric {BLACKHOLE_METRIC}")).await
}

/// Delete our blackhole routes (all of them, or only the one for `lease`).
/// Returns the subnets whose route was deleted.
pub async fn remove(handle: &Handle, lease: Option<Ipv4Net>) -> Result<Vec<Ipv4Net>, NetlinkError> {
    let mut removed = Vec::new();
    for (dst, msg) in ours(handle).await? {
        if lease.is_some_and(|l| l.trunc() != dst) {
            continue;
        }
        delete(handle, dst, msg).await?;
        removed.push(dst);
    }
    Ok(removed)
}

async fn delete(handle: &Handle, dst: Ipv4Net, msg: RouteMessage) -> Result<(), NetlinkError> {
    handle.route().del(msg).execute().await.map_err(req_err(format!("delete the blackhole route {dst}")))
}

/// Blackhole routes with our metric in the main table.
async fn ours(handle: &Handle) -> Result<Vec<(Ipv4Net, RouteMessage)>, NetlinkError> {
    let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut stream = handle.route().get(filter).execute();
    let mut out = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(req_err("list routes"))? {
        if msg.header.kind != RouteType::BlackHole {
            continue;
        }
        let metric = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        });
        if metric != Some(BLACKHOLE_METRIC) {
            continue;
        }
        let dst = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(*a),
            _ => None,
        });
        let Some(dst) = dst else { continue };
        if let Ok(net) = Ipv4Net::new(dst, msg.header.destination_prefix_length) {
            out.push((net, msg));
        }
    }
    Ok(out)
}
