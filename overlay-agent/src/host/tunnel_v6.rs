//! overlay0's IPv6 side (dual stack): the device itself is
//! [`super::tunnel_device`]'s; here it gets our v6 subnet's first address
//! as a /128 (as flanneld gives `flannel-v6.<VNI>`) and the route of the
//! flannel IPv6Network through it, with the MTU a v6 underlay leaves (the
//! route's MTU, not the device's, is what the kernel answers "packet too
//! big" from; see docs/datapath.md, "IPv6 (dual stack)").
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use rtnetlink::{
    packet_route::route::{RouteAttribute, RouteMetric, RouteScope},
    Handle, RouteMessageBuilder,
};

use super::{
    netlink::{replace_route, NetlinkError},
    tunnel_device::{ensure_only_address, TUNNEL_DEVICE},
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
    ensure_only_address(handle, index, plan.local_address().into(), 128).await?;
    ensure_route(handle, index, plan).await
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
