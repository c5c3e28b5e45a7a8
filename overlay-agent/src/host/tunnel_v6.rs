//! overlay0's IPv6 side (dual stack): the device itself is
//! [`super::tunnel_device`]'s; here it gets our v6 subnet's first address
//! as a /128 (as flanneld gives `flannel-v6.<VNI>`) and the route of the
//! flannel IPv6Network through it, with the MTU a v6 underlay leaves (the
//! route's MTU, not the device's, is what the kernel answers "packet too
//! big" from; see docs/datapath.md, "IPv6 (dual stack)").
use std::net::{IpAddr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::Ipv6Net;
use log::info;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags},
        route::{RouteAttribute, RouteMetric, RouteScope},
    },
    Handle, RouteMessageBuilder,
};

use super::{
    netlink::{replace_route, req_err, NetlinkError},
    tunnel_device::TUNNEL_DEVICE,
};

/// What overlay0 carries for IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelPlan6 {
    /// Our v6 lease.
    pub subnet: Ipv6Net,
    /// The flannel IPv6Network.
    pub cluster: Ipv6Net,
    /// The v6 network route's MTU: the underlay's minus the IPv6 VXLAN
    /// overhead (70).
    pub route_mtu: u32,
}

impl TunnelPlan6 {
    pub fn local_address(&self) -> Ipv6Addr {
        self.subnet.network()
    }
}

/// The address and the route on overlay0 (ifindex `index`), replacing a
/// global v6 address of an earlier lease.
pub async fn ensure(handle: &Handle, index: u32, plan: &TunnelPlan6) -> Result<(), NetlinkError> {
    ensure_address(handle, index, plan).await?;
    ensure_route(handle, index, plan).await
}

async fn ensure_address(handle: &Handle, index: u32, plan: &TunnelPlan6) -> Result<(), NetlinkError> {
    let want = plan.local_address();
    let mut have = false;
    let mut stale = Vec::new();
    let mut stream = handle.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = stream.try_next().await.map_err(req_err(format!("list {TUNNEL_DEVICE} addresses")))? {
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V6(v6)) => Some(*v6),
            _ => None,
        });
        match addr {
            // The kernel's own link-local address stays.
            Some(a) if a.is_unicast_link_local() => {}
            Some(a) if a == want && msg.header.prefix_len == 128 => have = true,
            Some(_) => stale.push(msg),
            None => {}
        }
    }
    for msg in stale {
        handle.address().del(msg).execute().await.map_err(req_err(format!("delete a stale {TUNNEL_DEVICE} v6 address")))?;
    }
    if !have {
        info!("adding {want}/128 to {TUNNEL_DEVICE}");
        let mut req = handle.address().add(index, want.into(), 128).replace();
        // No duplicate address detection: a tentative address cannot be
        // the route's source (EINVAL), and the address is ours by lease.
        req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        req.execute()
            .await
            .map_err(req_err(format!("add {want}/128 to {TUNNEL_DEVICE}")))?;
    }
    Ok(())
}

async fn ensure_route(handle: &Handle, index: u32, plan: &TunnelPlan6) -> Result<(), NetlinkError> {
    let mut route = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(plan.cluster.network(), plan.cluster.prefix_len())
        .output_interface(index)
        .scope(RouteScope::Universe)
        .pref_source(plan.local_address())
        .build();
    route.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(plan.route_mtu)]));
    replace_route(
        handle,
        route,
        format!("route {} dev {TUNNEL_DEVICE} mtu {}", plan.cluster, plan.route_mtu),
    )
    .await
}
