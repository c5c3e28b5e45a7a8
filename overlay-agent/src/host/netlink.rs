//! Reading the host's links and addresses over rtnetlink: the small set of
//! queries the rest of `host` and `datapath::endpoints` build on.
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
        route::RouteMessage,
    },
    Handle,
};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{0} was created but cannot be found")]
    Missing(String),
    #[error("netlink {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// A rtnetlink handle whose connection runs on the current tokio runtime.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

pub fn req_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// `ip route replace <route>`: the route is created or, where one with the
/// same destination, table and metric exists, overwritten.
pub async fn replace_route(handle: &Handle, route: RouteMessage, what: impl Into<String>) -> Result<(), NetlinkError> {
    handle.route().add(route).replace().execute().await.map_err(req_err(what))
}

/// What we need to know about a network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub kind: Option<String>,
    /// Ifindex of the bridge (or bond) this link is a port of.
    pub master: Option<u32>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            kind: None,
            master: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(a);
                    link.mac = Some(mac);
                }
                LinkAttribute::Controller(m) => link.master = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind_name(kind));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Vxlan => "vxlan".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

pub async fn links(handle: &Handle) -> Result<Vec<Link>, NetlinkError> {
    let mut out = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(req_err("list links"))? {
        out.push(Link::from_message(&msg));
    }
    Ok(out)
}

pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>, NetlinkError> {
    Ok(links(handle).await?.into_iter().find(|l| l.name == name))
}

/// An IPv4 address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub index: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// IPv4 addresses, in the kernel's order (primary first) per interface.
pub async fn ipv4_addrs(handle: &Handle) -> Result<Vec<IfAddr>, NetlinkError> {
    let mut out = Vec::new();
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(req_err("list addresses"))? {
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        });
        let addr = local.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            })
        });
        if let Some(addr) = addr {
            out.push(IfAddr { index: msg.header.index, addr, prefix_len: msg.header.prefix_len });
        }
    }
    Ok(out)
}
