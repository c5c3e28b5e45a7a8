//! Choosing the uplink and the public IP the way flanneld does: `--iface`
//! (names or addresses, first usable wins), `--iface-regex` (addresses
//! first, then names), `--iface-can-reach` (the route's interface and its
//! source address), else the interface of the default route; `--public-ip`
//! overrides the advertised address. An interface chosen by name gives its
//! first global address, a link-local (169.254/16) one only when it has no
//! other, as flanneld's `GetInterfaceIP4Addrs` does.
//!
//! With IPv6 ([`select_uplink_for`], flannel's `LookupExtIface` with its
//! IP stacks): `--iface` may name an IPv6 address (the interface carrying
//! it); the uplink's IPv6 address is that one, else `--public-ipv6` when the
//! interface carries it, else its first global IPv6 address; `--public-ipv6`
//! overrides the advertised one. Without `--iface`/`--iface-regex`/
//! `--iface-can-reach`, the IPv4 default route picks the interface, the
//! IPv6 default route when there is no IPv4 one or IPv4 is disabled (a dual
//! stack host whose two default routes leave by different interfaces is
//! refused, as flanneld does: name the uplink with `--iface`).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use regex::Regex;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        route::{RouteAddress, RouteAttribute},
    },
    Handle, RouteMessageBuilder,
};

use super::netlink::{ipv4_addrs, links, req_err, IfAddr, Link, NetlinkError};

#[derive(Clone, Debug, Default)]
pub struct IfaceSelection {
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub iface_can_reach: Option<Ipv4Addr>,
    /// `--iface-can-reach` with an IPv6 address (IPv6-only networks).
    pub iface_can_reach_v6: Option<Ipv6Addr>,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
}

/// The address families the network config enables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Families {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl Families {
    pub const IPV4: Families = Families { ipv4: true, ipv6: false };
}

/// The IPv6 side of the uplink (dual-stack and IPv6-only networks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkV6 {
    /// The interface's own IPv6 address: the IPv6 tunnel's local address.
    pub iface_addr: Ipv6Addr,
    pub prefix_len: u8,
    /// What goes into our lease's PublicIPv6.
    pub public_ip: Ipv6Addr,
}

/// An IPv6 address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr6 {
    pub index: u32,
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
}

/// The interface VXLAN leaves by, and the address peers reach us at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// The interface's own IPv4 address: the tunnel's local address (outer
    /// source of what we send), as flannel.1's. `--public-ip` when the
    /// interface carries that address too, since our peers accept VXLAN only
    /// from the PublicIP a lease names; else the interface's first address,
    /// which a NAT in front of us translates to `--public-ip` (flanneld).
    pub iface_addr: Ipv4Addr,
    pub prefix_len: u8,
    /// What goes into our lease's PublicIP. With IPv4 disabled this and
    /// `iface_addr` are `0.0.0.0`, the PublicIP of an IPv6-only lease.
    pub public_ip: Ipv4Addr,
    /// The IPv6 address and PublicIPv6, when IPv6 is enabled.
    pub ipv6: Option<UplinkV6>,
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("--iface {0}: no such interface and no interface has that address")]
    NoSuchInterface(String),
    #[error("--iface {0}: the interface has no usable IPv4 address (a global or link-local one; loopback addresses do not count)")]
    NoAddress(String),
    #[error("{0}: the interface has no global IPv6 address (link-local, loopback and multicast ones do not count), which EnableIPv6 needs")]
    NoIpv6Address(String),
    #[error("--public-ipv6 {0}: {1}")]
    PublicIpv6(Ipv6Addr, String),
    #[error("--iface-can-reach {0}: an IPv6 address, but the network config enables IPv4; give an IPv4 address")]
    CanReachFamily(IpAddr),
    #[error("no route to --iface-can-reach {0}")]
    CannotReachV6(Ipv6Addr),
    #[error("no IPv6 default route: choose the interface with --iface, --iface-regex or --iface-can-reach")]
    NoDefaultRouteV6,
    #[error(
        "the IPv4 default route leaves by {v4} and the IPv6 one by {v6}: a dual-stack uplink is one \
         interface (as flanneld requires); choose it with --iface"
    )]
    DefaultRoutesDiffer { v4: String, v6: String },
    #[error("--iface-regex {0:?} is not a valid regular expression: {1}")]
    BadRegex(String, regex::Error),
    #[error("no interface matches --iface-regex {0:?}")]
    NoRegexMatch(Vec<String>),
    #[error("no route to --iface-can-reach {0}")]
    CannotReach(Ipv4Addr),
    #[error("no default route: choose the interface with --iface, --iface-regex or --iface-can-reach")]
    NoDefaultRoute,
    #[error("interface index {0} vanished while choosing the uplink")]
    Vanished(u32),
    #[error("none of --iface {} is usable: {}", .names.join(", "), .errors.join("; "))]
    NoneUsable { names: Vec<String>, errors: Vec<String> },
}

pub async fn select_uplink(handle: &Handle, sel: &IfaceSelection) -> Result<Uplink, IfaceError> {
    select_uplink_for(handle, sel, Families::IPV4).await
}

/// The uplink for a network config enabling `families`: IPv4 only is
/// [`select_uplink`]'s choice; with IPv6 the uplink also carries the IPv6
/// address (see the module docs); IPv6 only needs no IPv4 address at all.
pub async fn select_uplink_for(handle: &Handle, sel: &IfaceSelection, families: Families) -> Result<Uplink, IfaceError> {
    if !families.ipv4 {
        return select_ipv6_only(handle, sel).await;
    }
    if sel.iface.is_empty() && sel.iface_regex.is_empty() && sel.iface_can_reach.is_none() {
        if let Some(v6) = sel.iface_can_reach_v6 {
            return Err(IfaceError::CanReachFamily(IpAddr::V6(v6)));
        }
    }
    // `--iface` naming IPv6 addresses: the interfaces carrying them.
    let addrs6 = ipv6_addrs(handle).await?;
    let links = links(handle).await?;
    let by_v6_addr = |spec: &String| -> String {
        match spec.parse::<Ipv6Addr>() {
            Ok(ip) => addrs6
                .iter()
                .find(|a| a.addr == ip)
                .and_then(|a| links.iter().find(|l| l.index == a.index))
                .map_or_else(|| spec.clone(), |l| l.name.clone()),
            Err(_) => spec.clone(),
        }
    };
    let v4_sel = IfaceSelection {
        iface: sel.iface.iter().map(by_v6_addr).collect(),
        ..sel.clone()
    };
    let default_route = sel.iface.is_empty() && sel.iface_regex.is_empty() && sel.iface_can_reach.is_none();
    let mut uplink = match select_ipv4(handle, &v4_sel).await {
        Err(IfaceError::NoDefaultRoute) if families.ipv6 => {
            // No IPv4 default route: the IPv6 one picks the interface.
            let index = default_route_oif_v6(handle).await?.ok_or(IfaceError::NoDefaultRoute)?;
            let name = links.iter().find(|l| l.index == index).ok_or(IfaceError::Vanished(index))?.name.clone();
            select_ipv4(handle, &IfaceSelection { iface: vec![name], ..sel.clone() }).await?
        }
        other => other?,
    };
    if families.ipv6 {
        if default_route {
            if let Some(index) = default_route_oif_v6(handle).await? {
                if index != uplink.index {
                    let v6 = links.iter().find(|l| l.index == index).map_or(index.to_string(), |l| l.name.clone());
                    return Err(IfaceError::DefaultRoutesDiffer { v4: uplink.name.clone(), v6 });
                }
            }
        }
        let wanted = sel.iface.iter().find_map(|s| s.parse::<Ipv6Addr>().ok());
        uplink.ipv6 = Some(uplink_v6(&addrs6, uplink.index, &uplink.name, wanted, sel.public_ipv6)?);
    }
    Ok(uplink)
}

/// The IPv6 address of interface `index` (`name` for errors): `wanted` (an
/// `--iface` address) when the interface carries it, else `--public-ipv6`
/// when it does, else its first global one.
fn uplink_v6(
    addrs6: &[IfAddr6],
    index: u32,
    name: &str,
    wanted: Option<Ipv6Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<UplinkV6, IfaceError> {
    let on_link = |ip: Option<Ipv6Addr>| ip.and_then(|ip| addrs6.iter().find(|a| a.index == index && a.addr == ip));
    let a = on_link(wanted)
        .or_else(|| on_link(public_ipv6))
        .or_else(|| addrs6.iter().find(|a| a.index == index && is_global_unicast_v6(a.addr)))
        .ok_or_else(|| IfaceError::NoIpv6Address(name.to_string()))?;
    if let Some(p) = public_ipv6 {
        if !is_global_unicast_v6(p) {
            return Err(IfaceError::PublicIpv6(p, "not a global unicast IPv6 address".into()));
        }
    }
    Ok(UplinkV6 {
        iface_addr: a.addr,
        prefix_len: a.prefix_len,
        public_ip: public_ipv6.unwrap_or(a.addr),
    })
}

/// The uplink of an IPv6-only network: `--iface` (names or IPv6
/// addresses), `--iface-regex` (IPv6 addresses first, then names),
/// `--iface-can-reach` (an IPv6 destination), else the IPv6 default route.
async fn select_ipv6_only(handle: &Handle, sel: &IfaceSelection) -> Result<Uplink, IfaceError> {
    let links = links(handle).await?;
    let addrs6 = ipv6_addrs(handle).await?;
    let usable = |index: u32| addrs6.iter().any(|a| a.index == index && is_global_unicast_v6(a.addr));
    let (link, wanted) = if !sel.iface.is_empty() {
        let mut errors = Vec::new();
        let mut found = None;
        for spec in &sel.iface {
            let hit = match spec.parse::<Ipv6Addr>() {
                Ok(ip) => addrs6
                    .iter()
                    .find(|a| a.addr == ip)
                    .and_then(|a| links.iter().find(|l| l.index == a.index))
                    .map(|l| (l, Some(ip)))
                    .ok_or_else(|| IfaceError::NoSuchInterface(spec.clone())),
                Err(_) => match links.iter().find(|l| l.name == *spec) {
                    Some(l) if usable(l.index) => Ok((l, None)),
                    Some(_) => Err(IfaceError::NoIpv6Address(format!("--iface {spec}"))),
                    None => Err(IfaceError::NoSuchInterface(spec.clone())),
                },
            };
            match hit {
                Ok(h) => {
                    found = Some(h);
                    break;
                }
                Err(e) if sel.iface.len() == 1 => return Err(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        found.ok_or_else(|| IfaceError::NoneUsable { names: sel.iface.clone(), errors })?
    } else if !sel.iface_regex.is_empty() {
        let mut found = None;
        'patterns: for pattern in &sel.iface_regex {
            let re = Regex::new(pattern).map_err(|e| IfaceError::BadRegex(pattern.clone(), e))?;
            for link in &links {
                let hit = addrs6
                    .iter()
                    .find(|a| a.index == link.index && is_global_unicast_v6(a.addr) && re.is_match(&a.addr.to_string()));
                if let Some(a) = hit {
                    found = Some((link, Some(a.addr)));
                    break 'patterns;
                }
            }
            if let Some(link) = links.iter().find(|l| re.is_match(&l.name) && usable(l.index)) {
                found = Some((link, None));
                break;
            }
        }
        found.ok_or_else(|| IfaceError::NoRegexMatch(sel.iface_regex.clone()))?
    } else {
        let (index, source) = match (sel.iface_can_reach_v6, sel.iface_can_reach) {
            (Some(dst), _) => route_get_v6(handle, dst).await?.ok_or(IfaceError::CannotReachV6(dst))?,
            (None, Some(v4)) => return Err(IfaceError::CanReachFamily(IpAddr::V4(v4))),
            (None, None) => (default_route_oif_v6(handle).await?.ok_or(IfaceError::NoDefaultRouteV6)?, None),
        };
        let link = links.iter().find(|l| l.index == index).ok_or(IfaceError::Vanished(index))?;
        (link, source)
    };
    let v6 = uplink_v6(&addrs6, link.index, &link.name, wanted, sel.public_ipv6)?;
    Ok(Uplink {
        mac: link.mac.unwrap_or_default(),
        name: link.name.clone(),
        index: link.index,
        mtu: link.mtu,
        iface_addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        public_ip: Ipv4Addr::UNSPECIFIED,
        ipv6: Some(v6),
    })
}

/// [`select_uplink`]'s choice: the interface and its IPv4 address.
async fn select_ipv4(handle: &Handle, sel: &IfaceSelection) -> Result<Uplink, IfaceError> {
    let links = links(handle).await?;
    let addrs = ipv4_addrs(handle).await?;
    let (link, addr) = if !sel.iface.is_empty() {
        let mut errors = Vec::new();
        let mut found = None;
        for spec in &sel.iface {
            match by_spec(&links, &addrs, spec) {
                Ok(hit) => {
                    found = Some(hit);
                    break;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        match found {
            Some(hit) => hit,
            None if sel.iface.len() == 1 => return Err(by_spec(&links, &addrs, &sel.iface[0]).unwrap_err()),
            None => return Err(IfaceError::NoneUsable { names: sel.iface.clone(), errors }),
        }
    } else if !sel.iface_regex.is_empty() {
        by_regex(&links, &addrs, &sel.iface_regex)?
    } else {
        let (index, source) = match sel.iface_can_reach {
            Some(dst) => route_get(handle, dst).await?.ok_or(IfaceError::CannotReach(dst))?,
            None => (default_route_oif(handle).await?.ok_or(IfaceError::NoDefaultRoute)?, None),
        };
        let link = links.iter().find(|l| l.index == index).ok_or(IfaceError::Vanished(index))?;
        // flanneld takes the route's source address for --iface-can-reach:
        // the address the kernel sends to that destination from, which on
        // an interface with several need not be its first.
        let addr = match source.and_then(|src| addrs.iter().find(|a| a.addr == src)) {
            Some(a) => IfAddr { index, ..*a },
            None => preferred_addr(&addrs, index).ok_or_else(|| IfaceError::NoAddress(link.name.clone()))?,
        };
        (link.clone(), addr)
    };
    let iface_addr = match sel.public_ip {
        Some(ip) if addrs.iter().any(|a| a.index == link.index && a.addr == ip) => ip,
        _ => addr.addr,
    };
    Ok(Uplink {
        mac: link.mac.unwrap_or_default(),
        name: link.name,
        index: link.index,
        mtu: link.mtu,
        iface_addr,
        prefix_len: addr.prefix_len,
        public_ip: sel.public_ip.unwrap_or(addr.addr),
        ipv6: None,
    })
}

/// The addresses of interface `index` flanneld would consider, in its order
/// of preference: global unicast first (private ranges count), then
/// link-local; loopback, multicast, unspecified and broadcast never.
fn usable_addrs(addrs: &[IfAddr], index: u32) -> impl Iterator<Item = IfAddr> + '_ {
    let on_link = move |a: &&IfAddr| a.index == index;
    let global = addrs.iter().filter(on_link).filter(|a| is_global_unicast(a.addr));
    let link_local = addrs.iter().filter(on_link).filter(|a| a.addr.is_link_local());
    global.chain(link_local).copied()
}

/// Go's `net.IP.IsGlobalUnicast` for IPv4.
fn is_global_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_link_local() || a.is_broadcast())
}

fn preferred_addr(addrs: &[IfAddr], index: u32) -> Option<IfAddr> {
    usable_addrs(addrs, index).next()
}

/// `--iface` takes an interface name or one of its addresses.
fn by_spec(links: &[Link], addrs: &[IfAddr], spec: &str) -> Result<(Link, IfAddr), IfaceError> {
    if let Ok(ip) = spec.parse::<Ipv4Addr>() {
        let addr = addrs.iter().find(|a| a.addr == ip).ok_or_else(|| IfaceError::NoSuchInterface(spec.into()))?;
        let link = links.iter().find(|l| l.index == addr.index).ok_or(IfaceError::Vanished(addr.index))?;
        return Ok((link.clone(), *addr));
    }
    let link = links.iter().find(|l| l.name == spec).ok_or_else(|| IfaceError::NoSuchInterface(spec.into()))?;
    let addr = preferred_addr(addrs, link.index).ok_or_else(|| IfaceError::NoAddress(spec.into()))?;
    Ok((link.clone(), addr))
}

/// Like flanneld: each regex is tried against the usable addresses of every
/// interface (in interface order, each one's in order of preference), then
/// against every interface name. Unlike flanneld, a name match without a
/// usable address is passed over instead of ending the search in an error.
fn by_regex(links: &[Link], addrs: &[IfAddr], patterns: &[String]) -> Result<(Link, IfAddr), IfaceError> {
    for pattern in patterns {
        let re = Regex::new(pattern).map_err(|e| IfaceError::BadRegex(pattern.clone(), e))?;
        for link in links {
            if let Some(addr) = usable_addrs(addrs, link.index).find(|a| re.is_match(&a.addr.to_string())) {
                return Ok((link.clone(), addr));
            }
        }
        for link in links {
            if !re.is_match(&link.name) {
                continue;
            }
            if let Some(addr) = preferred_addr(addrs, link.index) {
                return Ok((link.clone(), addr));
            }
        }
    }
    Err(IfaceError::NoRegexMatch(patterns.to_vec()))
}

/// Go's `net.IP.IsGlobalUnicast` for IPv6 (unique local fd00::/8 counts).
fn is_global_unicast_v6(a: Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_unicast_link_local())
}

/// IPv6 addresses, in the kernel's order per interface.
pub(super) async fn ipv6_addrs(handle: &Handle) -> Result<Vec<IfAddr6>, NetlinkError> {
    let mut out = Vec::new();
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(req_err("list addresses"))? {
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V6(v6)) => Some(*v6),
            _ => None,
        });
        if let Some(addr) = addr {
            out.push(IfAddr6 { index: msg.header.index, addr, prefix_len: msg.header.prefix_len });
        }
    }
    Ok(out)
}

/// `ip -6 route get DST`: the output interface and the source address.
async fn route_get_v6(handle: &Handle, dst: Ipv6Addr) -> Result<Option<(u32, Option<Ipv6Addr>)>, NetlinkError> {
    let msg = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(dst, 128).build();
    let source = |a: &RouteAddress| match a {
        RouteAddress::Inet6(src) => Some(*src),
        _ => None,
    };
    route_get_msg(handle, msg, &dst.to_string(), source).await
}

/// The interface of the main table's IPv6 default route with the lowest
/// metric.
async fn default_route_oif_v6(handle: &Handle) -> Result<Option<u32>, NetlinkError> {
    let msg = RouteMessageBuilder::<Ipv6Addr>::new().build();
    lowest_metric_default(handle.route().get(msg).execute()).await
}

/// `ip route get DST`: the output interface and the source address.
async fn route_get(handle: &Handle, dst: Ipv4Addr) -> Result<Option<(u32, Option<Ipv4Addr>)>, NetlinkError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, 32).build();
    let source = |a: &RouteAddress| match a {
        RouteAddress::Inet(src) => Some(*src),
        _ => None,
    };
    route_get_msg(handle, msg, &dst.to_string(), source).await
}

/// A route get of either family: the output interface and the preferred
/// source address (`source` picks the family's).
async fn route_get_msg<A>(
    handle: &Handle,
    msg: rtnetlink::packet_route::route::RouteMessage,
    dst: &str,
    source: impl Fn(&RouteAddress) -> Option<A>,
) -> Result<Option<(u32, Option<A>)>, NetlinkError> {
    let mut stream = handle.route().get(msg).execute();
    while let Some(route) = stream.try_next().await.map_err(req_err(format!("route get {dst}")))? {
        let mut oif = None;
        let mut src = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::PrefSource(addr) => src = source(addr),
                _ => {}
            }
        }
        if let Some(oif) = oif {
            return Ok(Some((oif, src)));
        }
    }
    Ok(None)
}

/// The interface of the main table's default route with the lowest metric.
async fn default_route_oif(handle: &Handle) -> Result<Option<u32>, NetlinkError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
    lowest_metric_default(handle.route().get(msg).execute()).await
}

/// Of the routes `stream` lists, the main table's default route with the
/// lowest metric: its output interface.
async fn lowest_metric_default(
    mut stream: impl futures::Stream<Item = Result<rtnetlink::packet_route::route::RouteMessage, rtnetlink::Error>> + Unpin,
) -> Result<Option<u32>, NetlinkError> {
    let mut best: Option<(u32, u32)> = None;
    while let Some(route) = stream.try_next().await.map_err(req_err("list routes"))? {
        if route.header.destination_prefix_length != 0 || route.header.table != 254 {
            continue;
        }
        let mut oif = None;
        let mut metric = 0;
        for a in &route.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Priority(p) => metric = *p,
                _ => {}
            }
        }
        if let Some(oif) = oif {
            if best.is_none_or(|(_, m)| metric < m) {
                best = Some((oif, metric));
            }
        }
    }
    Ok(best.map(|(oif, _)| oif))
}

/// Whether `peer` is on one of the uplink's own subnets (reachable without
/// a router): flannel's test for DirectRouting.
pub async fn on_link(handle: &Handle, uplink: &Uplink, peer: Ipv4Addr) -> Result<bool, NetlinkError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(peer, 32).build();
    let mut stream = handle.route().get(msg).execute();
    // A route get answers with the one route the kernel would use.
    let Some(route) = stream.try_next().await.map_err(req_err(format!("route get {peer}")))? else {
        return Ok(false);
    };
    let mut oif = None;
    let mut gateway = false;
    for a in &route.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(_)) => gateway = true,
            _ => {}
        }
    }
    Ok(oif == Some(uplink.index) && !gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> Link {
        Link { index, name: name.into(), mtu: 1500, mac: None, kind: None, master: None }
    }

    fn addr(index: u32, a: [u8; 4], prefix_len: u8) -> IfAddr {
        IfAddr { index, addr: Ipv4Addr::from(a), prefix_len }
    }

    /// lo; eth0 with a link-local address listed before its global one;
    /// eth1 with two global addresses; eth2 with only a link-local one.
    fn host() -> (Vec<Link>, Vec<IfAddr>) {
        let links = vec![link(1, "lo"), link(2, "eth0"), link(3, "eth1"), link(4, "eth2")];
        let addrs = vec![
            addr(1, [127, 0, 0, 1], 8),
            addr(2, [169, 254, 9, 9], 16),
            addr(2, [192, 168, 10, 2], 24),
            addr(3, [10, 20, 0, 2], 24),
            addr(3, [10, 30, 0, 2], 24),
            addr(4, [169, 254, 7, 7], 16),
        ];
        (links, addrs)
    }

    #[test]
    fn by_name_prefers_a_global_address_over_link_local() {
        let (links, addrs) = host();
        let (l, a) = by_spec(&links, &addrs, "eth0").unwrap();
        assert_eq!((l.name.as_str(), a.addr), ("eth0", Ipv4Addr::new(192, 168, 10, 2)));
        // Link-local only: it will do.
        let (_, a) = by_spec(&links, &addrs, "eth2").unwrap();
        assert_eq!(a.addr, Ipv4Addr::new(169, 254, 7, 7));
        // Loopback addresses are never usable.
        assert!(matches!(by_spec(&links, &addrs, "lo"), Err(IfaceError::NoAddress(_))));
    }

    #[test]
    fn by_address_takes_that_address() {
        let (links, addrs) = host();
        let (l, a) = by_spec(&links, &addrs, "10.30.0.2").unwrap();
        assert_eq!((l.name.as_str(), a.addr), ("eth1", Ipv4Addr::new(10, 30, 0, 2)));
        assert!(matches!(by_spec(&links, &addrs, "10.99.0.1"), Err(IfaceError::NoSuchInterface(_))));
    }

    #[test]
    fn regex_matches_addresses_before_names() {
        let (links, addrs) = host();
        // "eth" matches no address: by name, first interface with a usable one.
        let (l, a) = by_regex(&links, &addrs, &["^eth".into()]).unwrap();
        assert_eq!((l.name.as_str(), a.addr), ("eth0", Ipv4Addr::new(192, 168, 10, 2)));
        // An address match wins over a name match, and is taken as is.
        let (l, a) = by_regex(&links, &addrs, &["^eth0$".into(), "^10\\.30\\.".into()]).unwrap();
        assert_eq!((l.name.as_str(), a.addr), ("eth0", Ipv4Addr::new(192, 168, 10, 2)));
        let (l, a) = by_regex(&links, &addrs, &["^10\\.30\\.".into(), "^eth0$".into()]).unwrap();
        assert_eq!((l.name.as_str(), a.addr), ("eth1", Ipv4Addr::new(10, 30, 0, 2)));
        // Loopback's address does not count.
        assert!(matches!(by_regex(&links, &addrs, &["^127\\.".into()]), Err(IfaceError::NoRegexMatch(_))));
        assert!(matches!(by_regex(&links, &addrs, &["(".into()]), Err(IfaceError::BadRegex(..))));
    }
}
