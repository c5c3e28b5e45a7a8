//! The agent's own device, `overlay0`: where the kernel sends what it routes
//! to the cluster network, and, with the vxlan backend, the owner of the
//! kernel's VXLAN socket on our port.
//!
//! - The host reaches remote pods through one route, the flannel Network via
//!   this device, whose egress program encapsulates. It exists from the
//!   start, so the node itself reaches remote pods before any pod bridge
//!   exists, and it does not depend on which bridge (docker0, br-<id>,
//!   cni0) the pods end up on. Pod traffic the fast path leaves to the
//!   kernel (Services, published ports, too big, TTL) takes the same way.
//! - Like flannel.1, it holds our subnet's network address as a /32: the
//!   host's source address towards remote pods, inside our lease.
//! - With vxlan it is a metadata-collecting ("external") VXLAN device: the
//!   kernel aggregates (GROs) UDP-encapsulated traffic only on a port with a
//!   UDP tunnel socket, and such a device registers one. Whatever the socket
//!   receives (what our uplink program left to the kernel, e.g. reassembled
//!   fragments) arrives on this device's ingress, where our program applies
//!   the same checks as on the uplink. Its MAC is our VtepMAC, so frames
//!   for us are the device's own. NOARP: no neighbour entries are needed;
//!   the egress program writes every header itself.
//! - With host-gw it is a dummy (an ifb where the kernel has no dummy
//!   driver): only the route matters.
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use log::{info, warn};
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags},
        link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteScope},
    },
    Handle, LinkDummy, LinkIfb, LinkUnspec, LinkVxlan, RouteMessageBuilder,
};

use super::netlink::{replace_route, req_err, NetlinkError};

/// The device's name. Fixed: one agent per host, and operators look for it.
pub const TUNNEL_DEVICE: &str = "overlay0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelKind {
    /// An external VXLAN device on this UDP port (vxlan backend).
    Vxlan { port: u16 },
    /// A dummy device (host-gw: nothing is encapsulated).
    Plain,
}

#[derive(Clone, Debug)]
pub struct TunnelPlan {
    pub kind: TunnelKind,
    /// The pod MTU (uplink MTU minus the encapsulation).
    pub mtu: u32,
    /// Our VtepMAC (the vxlan device's MAC).
    pub mac: [u8; 6],
    /// The IPv4 side; None on an IPv6-only node, whose device then carries
    /// no IPv4 address or route at all (an earlier run's are removed).
    pub ipv4: Option<TunnelPlan4>,
}

/// What overlay0 carries for IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelPlan4 {
    /// Our lease: the device holds its network address as a /32.
    pub subnet: Ipv4Net,
    /// The flannel Network, routed via the device.
    pub cluster: Ipv4Net,
}

impl TunnelPlan4 {
    /// The host's own address towards remote pods (flannel.1's address).
    pub fn local_address(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

/// An address family of overlay0's addresses and routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The device as found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelDevice {
    pub index: u32,
}

/// Makes the device, its address and the cluster route match `plan`,
/// creating (or re-creating, when it has the wrong kind or port) the device.
pub async fn ensure(handle: &Handle, plan: &TunnelPlan) -> Result<TunnelDevice, NetlinkError> {
    let index = match find(handle).await? {
        Some((index, kind)) if kind == Some(plan.kind) => index,
        Some((index, kind)) => {
            info!("re-creating {TUNNEL_DEVICE} ({kind:?} -> {:?})", plan.kind);
            handle.link().del(index).execute().await.map_err(req_err(format!("delete {TUNNEL_DEVICE}")))?;
            create(handle, plan).await?
        }
        None => create(handle, plan).await?,
    };
    let mut set = LinkUnspec::new_with_index(index).mtu(plan.mtu).arp(false).up();
    // The VtepMAC matters only where frames for us arrive (vxlan); an ifb
    // cannot change its MAC at all.
    if plan.kind != TunnelKind::Plain {
        set = set.address(plan.mac.to_vec());
    }
    handle
        .link()
        .set(set.build())
        .execute()
        .await
        .map_err(req_err(format!("set {TUNNEL_DEVICE} up with MTU {}", plan.mtu)))?;
    match &plan.ipv4 {
        Some(p4) => {
            ensure_address(handle, index, p4).await?;
            ensure_route(handle, index, p4).await?;
        }
        None => {
            for gone in clear_family(handle, index, Family::V4).await? {
                info!("removed {gone} from {TUNNEL_DEVICE} (IPv4 is disabled)");
            }
        }
    }
    Ok(TunnelDevice { index })
}

/// Re-asserts the cluster route (cheap, idempotent): a route deleted by hand
/// must not cut the host off from remote pods for long.
pub async fn resync_route(handle: &Handle, plan: &TunnelPlan) -> Result<(), NetlinkError> {
    match find(handle).await? {
        Some((index, _)) => match &plan.ipv4 {
            Some(p4) => ensure_route(handle, index, p4).await,
            None => Ok(()),
        },
        None => {
            warn!("{TUNNEL_DEVICE} is gone: re-creating it");
            ensure(handle, plan).await.map(|_| ())
        }
    }
}

/// Deletes the device (its address and route go with it).
pub async fn remove(handle: &Handle) -> Result<bool, NetlinkError> {
    match find(handle).await? {
        Some((index, _)) => {
            handle.link().del(index).execute().await.map_err(req_err(format!("delete {TUNNEL_DEVICE}")))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The device's ifindex and, when it is one we make, its kind.
async fn find(handle: &Handle) -> Result<Option<(u32, Option<TunnelKind>)>, NetlinkError> {
    let mut stream = handle.link().get().match_name(TUNNEL_DEVICE.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some((msg.header.index, kind_of(&msg)))),
        Ok(None) => Ok(None),
        // ENODEV: there is no such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(req_err(format!("look up {TUNNEL_DEVICE}"))(e)),
    }
}

fn kind_of(msg: &LinkMessage) -> Option<TunnelKind> {
    let infos = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    })?;
    let mut is_dummy = false;
    let mut vxlan = None;
    for info in infos {
        match info {
            LinkInfo::Kind(InfoKind::Dummy | InfoKind::Ifb) => is_dummy = true,
            LinkInfo::Data(InfoData::Vxlan(attrs)) => vxlan = Some(attrs),
            _ => {}
        }
    }
    if is_dummy {
        return Some(TunnelKind::Plain);
    }
    let attrs = vxlan?;
    let external = attrs.iter().any(|a| matches!(a, InfoVxlan::CollectMetadata(true)));
    let port = attrs.iter().find_map(|a| match a {
        InfoVxlan::Port(p) => Some(*p),
        _ => None,
    })?;
    external.then_some(TunnelKind::Vxlan { port })
}

async fn create(handle: &Handle, plan: &TunnelPlan) -> Result<u32, NetlinkError> {
    info!("creating {TUNNEL_DEVICE} ({:?})", plan.kind);
    let msg = match plan.kind {
        // No VNI: an external device takes every VNI (our programs check it).
        TunnelKind::Vxlan { port } => rtnetlink::LinkMessageBuilder::<LinkVxlan>::new(TUNNEL_DEVICE)
            .port(port)
            .learning(false)
            .collect_metadata(true)
            .mtu(plan.mtu)
            .address(plan.mac.to_vec())
            .arp(false)
            .up()
            .build(),
        TunnelKind::Plain => LinkDummy::new(TUNNEL_DEVICE).mtu(plan.mtu).arp(false).up().build(),
    };
    let created = handle.link().add(msg).execute().await;
    match created {
        // No dummy driver in this kernel: an ifb does the same job here (a
        // device whose egress our program handles; it sends nothing itself).
        Err(rtnetlink::Error::NetlinkError(e))
            if plan.kind == TunnelKind::Plain && e.raw_code() == -libc::EOPNOTSUPP =>
        {
            info!("no dummy driver: making {TUNNEL_DEVICE} an ifb");
            let msg = LinkIfb::new(TUNNEL_DEVICE).mtu(plan.mtu).arp(false).up().build();
            handle.link().add(msg).execute().await.map_err(req_err(format!("create {TUNNEL_DEVICE} (ifb)")))?;
        }
        other => other.map_err(req_err(format!("create {TUNNEL_DEVICE}")))?,
    }
    match find(handle).await? {
        Some((index, _)) => Ok(index),
        None => Err(NetlinkError::Missing(TUNNEL_DEVICE.to_string())),
    }
}

/// Exactly one address from the cluster network on the device: our
/// subnet's network address. One from an older lease would make the host
/// answer for a subnet that is now someone else's.
async fn ensure_address(handle: &Handle, index: u32, plan: &TunnelPlan4) -> Result<(), NetlinkError> {
    ensure_only_address(handle, index, plan.local_address().into(), 32).await
}

/// `want`/`prefix_len` is overlay0's one address of its family: others of
/// that family (an earlier lease's) go; IPv6 link-local ones (the
/// kernel's) stay. An IPv6 address is added without duplicate address
/// detection: a tentative address cannot source a route (EINVAL), and the
/// address is ours by lease.
pub(super) async fn ensure_only_address(handle: &Handle, index: u32, want: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
    let mut have = false;
    let mut stale = Vec::new();
    let mut stream = handle.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = stream.try_next().await.map_err(req_err(format!("list {TUNNEL_DEVICE} addresses")))? {
        // IPv4 carries IFA_LOCAL (the address) and IFA_ADDRESS (the peer);
        // IPv6 only IFA_ADDRESS.
        let addr = msg.attributes.iter().find_map(|a| match (a, want) {
            (AddressAttribute::Local(a @ IpAddr::V4(_)), IpAddr::V4(_)) => Some(*a),
            (AddressAttribute::Address(IpAddr::V6(a)), IpAddr::V6(_)) if !a.is_unicast_link_local() => Some(IpAddr::V6(*a)),
            _ => None,
        });
        match addr {
            Some(a) if a == want && msg.header.prefix_len == prefix_len => have = true,
            Some(_) => stale.push(msg),
            None => {}
        }
    }
    for msg in stale {
        handle.address().del(msg).execute().await.map_err(req_err(format!("delete a stale {TUNNEL_DEVICE} address")))?;
    }
    if !have {
        info!("adding {want}/{prefix_len} to {TUNNEL_DEVICE}");
        let mut req = handle.address().add(index, want, prefix_len).replace();
        if want.is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(req_err(format!("add {want}/{prefix_len} to {TUNNEL_DEVICE}")))?;
    }
    Ok(())
}

async fn ensure_route(handle: &Handle, index: u32, plan: &TunnelPlan4) -> Result<(), NetlinkError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(plan.cluster.network(), plan.cluster.prefix_len())
        .output_interface(index)
        .scope(RouteScope::Link)
        .pref_source(plan.local_address())
        .build();
    replace_route(handle, route, format!("route {} dev {TUNNEL_DEVICE}", plan.cluster)).await
}

/// Removes every address and main-table route of `family` from overlay0
/// (ifindex `index`), but the kernel's own IPv6 link-local and multicast
/// ones: what an earlier run with that family enabled left (a dual-stack
/// run before an IPv4-only or IPv6-only one) would otherwise keep routing
/// that family's cluster network into a device whose programs no longer
/// handle it. Returns what was removed, for the log.
pub async fn clear_family(handle: &Handle, index: u32, family: Family) -> Result<Vec<String>, NetlinkError> {
    let mut removed = Vec::new();
    let mut addrs = Vec::new();
    let mut stream = handle.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = stream.try_next().await.map_err(req_err(format!("list {TUNNEL_DEVICE} addresses")))? {
        let addr = msg.attributes.iter().find_map(|a| match (a, family) {
            (AddressAttribute::Local(a @ IpAddr::V4(_)), Family::V4) => Some(*a),
            (AddressAttribute::Address(IpAddr::V6(a)), Family::V6) if !a.is_unicast_link_local() => Some(IpAddr::V6(*a)),
            _ => None,
        });
        if let Some(addr) = addr {
            addrs.push((format!("address {addr}/{}", msg.header.prefix_len), msg));
        }
    }
    for (what, msg) in addrs {
        handle.address().del(msg).execute().await.map_err(req_err(format!("delete {what} from {TUNNEL_DEVICE}")))?;
        removed.push(what);
    }
    let filter = match family {
        Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        Family::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    };
    let mut routes = Vec::new();
    let mut stream = handle.route().get(filter).execute();
    while let Some(msg) = stream.try_next().await.map_err(req_err("list routes"))? {
        let oif = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif != Some(index) || msg.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let dst = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        let kernel_v6 = matches!(dst, Some(IpAddr::V6(a)) if a.is_unicast_link_local() || a.is_multicast());
        if kernel_v6 {
            continue;
        }
        let dst = dst.map_or("default".to_string(), |a| format!("{a}/{}", msg.header.destination_prefix_length));
        routes.push((format!("route {dst}"), msg));
    }
    for (what, msg) in routes {
        match handle.route().del(msg).execute().await {
            Ok(()) => removed.push(what),
            // Gone with the address it used as its source.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
            Err(e) => return Err(req_err(format!("delete {what} via {TUNNEL_DEVICE}"))(e)),
        }
    }
    Ok(removed)
}
