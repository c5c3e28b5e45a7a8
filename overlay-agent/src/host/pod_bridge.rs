//! Which bridge the local pods are on. flanneld never creates one: Docker
//! gives docker0 the lease's gateway address (`--bip=$FLANNEL_SUBNET`, or
//! `ifconfig docker0 $FLANNEL_SUBNET`), `docker network create --subnet
//! $FLANNEL_SUBNET` makes a `br-<id>` with it, the CNI bridge plugin makes
//! cni0 with it. So the pod bridge is whatever bridge carries the gateway
//! address, found again every second: it may appear after the agent, be
//! deleted and re-made, or move to another bridge. `--bridge` names it
//! explicitly instead.
//!
//! Nothing depends on finding it but the fast path: until a bridge is
//! found, pod traffic takes the kernel's route via the tunnel device.
use std::{collections::BTreeSet, fmt, net::IpAddr};

use ipnet::IpNet;

use super::{
    iface::ipv6_addrs,
    netlink::{ipv4_addrs, links, Link, NetlinkError},
};
use rtnetlink::Handle;

/// The bridge the pods are on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodBridge {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
}

/// Something about the host's bridges that stops us from finding (or that
/// may hide) the pod bridge: logged when it appears and counted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BridgeProblem {
    /// Several bridges carry the gateway address: the kernel routes our
    /// subnet to one of them; pods on the others are unreachable.
    Ambiguous { gateway: IpAddr, bridges: Vec<String> },
    /// A bridge has an address in our lease that is not the gateway (e.g.
    /// `--bip` with another address): its containers are not on our pod
    /// bridge and only get the kernel path.
    NotGateway { bridge: String, addr: IpNet, gateway: IpNet },
    /// `--bridge` names a device that is not a bridge.
    NotABridge { name: String },
}

impl BridgeProblem {
    /// Label for the metric.
    pub fn kind(&self) -> &'static str {
        match self {
            BridgeProblem::Ambiguous { .. } => "ambiguous_gateway",
            BridgeProblem::NotGateway { .. } => "address_not_gateway",
            BridgeProblem::NotABridge { .. } => "not_a_bridge",
        }
    }
}

impl fmt::Display for BridgeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BridgeProblem::Ambiguous { gateway, bridges } => write!(
                f,
                "bridges {} all carry the gateway address {gateway}: pods on all but one are unreachable; \
                 remove the address from all but the pod bridge (or pass --bridge)",
                bridges.join(", ")
            ),
            BridgeProblem::NotGateway { bridge, addr, gateway } => write!(
                f,
                "bridge {bridge} has {addr}, inside our lease but not the gateway {gateway} \
                 (FLANNEL_SUBNET): its containers get no fast path; give it {gateway} (e.g. dockerd --bip={gateway})"
            ),
            BridgeProblem::NotABridge { name } => write!(f, "--bridge {name} is not a bridge"),
        }
    }
}

/// What a scan of the host found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeScan {
    pub bridge: Option<PodBridge>,
    pub problems: BTreeSet<BridgeProblem>,
}

/// An address on an interface, of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeAddr {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// Looks for the pod bridge: `explicit` (`--bridge`) when given, else the
/// one bridge that carries `gateway` (FLANNEL_SUBNET: the lease's first
/// address with its prefix; on an IPv6-only node FLANNEL_IPV6_SUBNET).
pub async fn scan(handle: &Handle, explicit: Option<&str>, gateway: IpNet) -> Result<BridgeScan, NetlinkError> {
    let addrs: Vec<BridgeAddr> = match gateway {
        IpNet::V4(_) => ipv4_addrs(handle)
            .await?
            .into_iter()
            .map(|a| BridgeAddr { index: a.index, addr: a.addr.into(), prefix_len: a.prefix_len })
            .collect(),
        IpNet::V6(_) => ipv6_addrs(handle)
            .await?
            .into_iter()
            .map(|a| BridgeAddr { index: a.index, addr: a.addr.into(), prefix_len: a.prefix_len })
            .collect(),
    };
    Ok(choose(&links(handle).await?, &addrs, explicit, gateway))
}

/// The decision, apart from netlink.
pub fn choose(links: &[Link], addrs: &[BridgeAddr], explicit: Option<&str>, gateway: IpNet) -> BridgeScan {
    let mut scan = BridgeScan::default();
    let lease = gateway.trunc();
    let bridges: Vec<&Link> = links.iter().filter(|l| l.kind.as_deref() == Some("bridge")).collect();
    let carries = |link: &Link, addr: IpAddr| addrs.iter().any(|a| a.index == link.index && a.addr == addr);

    if let Some(name) = explicit {
        match links.iter().find(|l| l.name == name) {
            Some(link) if link.kind.as_deref() == Some("bridge") => scan.bridge = pod_bridge(link),
            Some(_) => {
                scan.problems.insert(BridgeProblem::NotABridge { name: name.to_string() });
            }
            None => {}
        }
    } else {
        let with_gateway: Vec<&&Link> = bridges.iter().filter(|l| carries(l, gateway.addr())).collect();
        match with_gateway.as_slice() {
            [one] => scan.bridge = pod_bridge(one),
            [] => {}
            many => {
                scan.problems.insert(BridgeProblem::Ambiguous {
                    gateway: gateway.addr(),
                    bridges: many.iter().map(|l| l.name.clone()).collect(),
                });
            }
        }
    }
    for bridge in &bridges {
        for a in addrs.iter().filter(|a| a.index == bridge.index) {
            if lease.contains(&a.addr) && a.addr != gateway.addr() {
                let addr = IpNet::new(a.addr, a.prefix_len).unwrap_or(lease);
                scan.problems.insert(BridgeProblem::NotGateway { bridge: bridge.name.clone(), addr, gateway });
            }
        }
    }
    scan
}

fn pod_bridge(link: &Link) -> Option<PodBridge> {
    // A bridge without a MAC cannot be addressed by pods; treat as absent.
    Some(PodBridge { index: link.index, name: link.name.clone(), mac: link.mac? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: &str) -> Link {
        Link { index, name: name.into(), mtu: 1450, mac: Some([2, 0, 0, 0, 0, index as u8]), kind: Some(kind.into()), master: None }
    }

    fn addr(index: u32, a: &str) -> BridgeAddr {
        let net: IpNet = a.parse().unwrap();
        BridgeAddr { index, addr: net.addr(), prefix_len: net.prefix_len() }
    }

    fn gw() -> IpNet {
        "10.1.74.1/24".parse().unwrap()
    }

    #[test]
    fn an_ipv6_only_node_finds_the_bridge_by_its_v6_gateway() {
        let links = [link(1, "eth0", "veth"), link(7, "cni0", "bridge"), link(8, "docker0", "bridge")];
        let addrs = [addr(1, "fd00::10/64"), addr(7, "fd42:0:0:3::1/64"), addr(8, "fd42:0:0:3::80/64")];
        let scan = choose(&links, &addrs, None, "fd42:0:0:3::1/64".parse().unwrap());
        assert_eq!(scan.bridge.map(|b| b.name), Some("cni0".to_string()));
        let kinds: Vec<_> = scan.problems.iter().map(|p| p.kind()).collect();
        assert_eq!(kinds, ["address_not_gateway"]);
    }

    #[test]
    fn the_bridge_with_the_gateway_is_the_pod_bridge_whatever_its_name() {
        for name in ["docker0", "br-0123456789ab", "cni0"] {
            let links = [link(1, "eth0", "veth"), link(7, name, "bridge")];
            let addrs = [addr(1, "192.168.1.10/24"), addr(7, "10.1.74.1/24")];
            let scan = choose(&links, &addrs, None, gw());
            assert_eq!(scan.bridge.map(|b| b.name), Some(name.to_string()));
            assert!(scan.problems.is_empty());
        }
    }

    #[test]
    fn no_bridge_yet_is_no_problem() {
        let scan = choose(&[link(1, "eth0", "veth")], &[addr(1, "192.168.1.10/24")], None, gw());
        assert_eq!(scan, BridgeScan::default());
    }

    #[test]
    fn the_gateway_on_a_non_bridge_is_not_the_pod_bridge() {
        let scan = choose(&[link(3, "dummy9", "dummy")], &[addr(3, "10.1.74.1/24")], None, gw());
        assert_eq!(scan.bridge, None);
    }

    #[test]
    fn two_bridges_with_the_gateway_are_reported_and_neither_chosen() {
        let links = [link(4, "cni0", "bridge"), link(5, "docker0", "bridge")];
        let addrs = [addr(4, "10.1.74.1/24"), addr(5, "10.1.74.1/24")];
        let scan = choose(&links, &addrs, None, gw());
        assert_eq!(scan.bridge, None);
        let problems: Vec<_> = scan.problems.iter().map(|p| p.kind()).collect();
        assert_eq!(problems, ["ambiguous_gateway"]);
        assert!(scan.problems.iter().next().unwrap().to_string().contains("cni0, docker0"));
    }

    #[test]
    fn an_address_in_our_lease_that_is_not_the_gateway_is_reported() {
        let links = [link(5, "docker0", "bridge")];
        let addrs = [addr(5, "10.1.74.129/25")];
        let scan = choose(&links, &addrs, None, gw());
        assert_eq!(scan.bridge, None);
        let p = scan.problems.iter().next().unwrap();
        assert_eq!(p.kind(), "address_not_gateway");
        assert!(p.to_string().contains("docker0") && p.to_string().contains("10.1.74.129/25"));
    }

    #[test]
    fn an_explicit_bridge_wins_and_must_be_a_bridge() {
        let links = [link(4, "cni0", "bridge"), link(5, "mybr", "bridge"), link(6, "eth1", "veth")];
        let addrs = [addr(4, "10.1.74.1/24")];
        assert_eq!(choose(&links, &addrs, Some("mybr"), gw()).bridge.map(|b| b.index), Some(5));
        let scan = choose(&links, &addrs, Some("eth1"), gw());
        assert_eq!(scan.bridge, None);
        assert_eq!(scan.problems.iter().next().unwrap().kind(), "not_a_bridge");
        assert_eq!(choose(&links, &addrs, Some("missing0"), gw()).bridge, None);
    }
}
