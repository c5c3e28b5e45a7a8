//! `--ip-blackhole-route` (flanneld v0.27.1): a blackhole route for our own
//! lease, and in a dual-stack network one for its IPv6 subnet too (flanneld
//! adds one per family it runs), so that packets for pod addresses of this
//! node that no pod holds (or all of them, while the pod bridge is missing)
//! are dropped here instead of following the default route out of the node.
//!
//! The route has a high metric: the pod bridge's own connected route for
//! the lease (metric 0 for IPv4; IPv6's connected routes have metric 256,
//! still below ours) wins whenever the bridge is up, and the blackhole only
//! catches what would otherwise leave through the default route. The
//! metric also marks the route as ours, so a lease change and `cleanup`
//! remove exactly it.
use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    Handle, RouteMessageBuilder,
};

use super::netlink::{replace_route, req_err, NetlinkError};

/// The metric of our blackhole route (see the module doc).
pub const BLACKHOLE_METRIC: u32 = 4242;

/// `ip route replace blackhole <lease> metric 4242 proto static`, after
/// removing our blackhole route for any other subnet of the same family (a
/// previous lease). The other family's route stays.
pub async fn ensure(handle: &Handle, lease: impl Into<IpNet>) -> Result<(), NetlinkError> {
    let lease = lease.into().trunc();
    for (dst, msg) in ours(handle).await? {
        if dst != lease && dst.addr().is_ipv4() == lease.addr().is_ipv4() {
            delete(handle, dst, msg).await?;
        }
    }
    let route = match lease {
        IpNet::V4(net) => blackhole_route(RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(net.network(), net.prefix_len())),
        IpNet::V6(net) => blackhole_route(RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(net.network(), net.prefix_len())),
    };
    replace_route(handle, route, format!("blackhole route {lease} metric {BLACKHOLE_METRIC}")).await
}

/// `blackhole ... proto static metric 4242` for a destination of either family.
fn blackhole_route<T>(to: RouteMessageBuilder<T>) -> RouteMessage {
    to.kind(RouteType::BlackHole).protocol(RouteProtocol::Static).priority(BLACKHOLE_METRIC).build()
}

/// Delete our blackhole routes of both families (all of them, or only the
/// one for `lease`). Returns the subnets whose route was deleted.
pub async fn remove(handle: &Handle, lease: Option<IpNet>) -> Result<Vec<IpNet>, NetlinkError> {
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

async fn delete(handle: &Handle, dst: IpNet, msg: RouteMessage) -> Result<(), NetlinkError> {
    handle.route().del(msg).execute().await.map_err(req_err(format!("delete the blackhole route {dst}")))
}

/// Blackhole routes with our metric in the main table, IPv4 then IPv6.
async fn ours(handle: &Handle) -> Result<Vec<(IpNet, RouteMessage)>, NetlinkError> {
    let mut out = Vec::new();
    for filter in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()] {
        let mut stream = handle.route().get(filter).execute();
        while let Some(msg) = stream.try_next().await.map_err(req_err("list routes"))? {
            if let Some(dst) = our_blackhole(&msg) {
                out.push((dst, msg));
            }
        }
    }
    Ok(out)
}

/// The destination of `msg` if it is a blackhole route with our metric.
fn our_blackhole(msg: &RouteMessage) -> Option<IpNet> {
    if msg.header.kind != RouteType::BlackHole {
        return None;
    }
    let metric = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Priority(p) => Some(*p),
        _ => None,
    });
    if metric != Some(BLACKHOLE_METRIC) {
        return None;
    }
    let dst: std::net::IpAddr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some((*a).into()),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some((*a).into()),
        _ => None,
    })?;
    IpNet::new(dst, msg.header.destination_prefix_length).ok()
}
