//! What a local pod may send out through us over IPv6 (pod_guard.rs's
//! rules): only from its own address, and never to a node's VXLAN port.
use aya_ebpf::programs::TcContext;
use overlay_common::{maps6::LocalConfig6, stats::Reason, ETH_HLEN, IPPROTO_UDP, IPV6_HLEN};

use super::{
    is_local6,
    parse::{in_subnet6, FragHdr, Ipv6Hdr, NEXT_DEST_OPTS, NEXT_FRAGMENT, NEXT_HOP_BY_HOP, NEXT_ROUTING},
};
use crate::{
    maps::{ENDPOINTS6, NODES6},
    parse::{load, UdpHdr},
    route::ingress_ifindex,
    verdict::Outcome,
};

#[inline(always)]
pub fn check(ctx: &TcContext, cfg: &LocalConfig6, ip: &Ipv6Hdr) -> Result<(), Outcome> {
    if !source_is_own(ctx, cfg, &ip.src) {
        return Err(Outcome::drop(Reason::DropPodSpoofedSource));
    }
    let to_node = is_local6(cfg, &ip.dst) || NODES6.get_ptr(ip.dst).is_some();
    if to_node && reaches_port(ctx, ip, cfg.port) {
        return Err(Outcome::drop(Reason::DropPodToTunnelPort));
    }
    Ok(())
}

/// Whether the packet (to a node) may be UDP to `port`. A UDP header right
/// after the IPv6 header or after a first fragment's header is read; any
/// other extension header in front of the transport is refused outright
/// rather than walked (pods have no business sending those to a node),
/// and later fragments cannot be reassembled without the first.
#[inline(always)]
fn reaches_port(ctx: &TcContext, ip: &Ipv6Hdr, port: u16) -> bool {
    let l4 = ETH_HLEN + IPV6_HLEN;
    let udp_at = |off: usize| load::<UdpHdr>(ctx, off).is_some_and(|u| u16::from_be_bytes(u.dst_port) == port);
    match ip.next_hdr {
        IPPROTO_UDP => udp_at(l4),
        NEXT_FRAGMENT => match load::<FragHdr>(ctx, l4) {
            Some(frag) if frag.offset() == 0 => match frag.next_hdr {
                IPPROTO_UDP => udp_at(l4 + 8),
                NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS | NEXT_FRAGMENT => true,
                _ => false,
            },
            Some(_) => false,
            None => true,
        },
        NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS => true,
        _ => false,
    }
}

/// On a pod's veth the source must be that pod's address (`ENDPOINTS6`);
/// on the bridge and for pods not learnt yet, an address of our v6 lease
/// that is not the subnet-router anycast (the network address) nor the
/// gateway (the first address, FLANNEL_IPV6_SUBNET's).
#[inline(always)]
fn source_is_own(ctx: &TcContext, cfg: &LocalConfig6, src: &[u8; 16]) -> bool {
    let here = ingress_ifindex(ctx);
    if let Some(ep) = ENDPOINTS6.get_ptr(src) {
        // SAFETY: a valid map value pointer, read once.
        let veth = unsafe { (*ep).ifindex };
        return here == cfg.bridge_ifindex || veth == here;
    }
    if !in_subnet6(src, &cfg.local_subnet, cfg.local_prefix_len) {
        return false;
    }
    let mut gateway = cfg.local_subnet;
    gateway[15] |= 1;
    *src != cfg.local_subnet && *src != gateway
}
