//! What a local pod may send out through us. The fast path carries a pod's
//! packets to other nodes, whose decapsulation trusts the inner source a
//! node vouches for; so a pod may only speak for itself, and may not reach
//! the nodes' VXLAN port (masqueraded, its datagram would arrive from the
//! trusted node address and be decapsulated there).
use aya_ebpf::programs::TcContext;
use overlay_common::{maps::LocalConfig, stats::Reason, ETH_HLEN, IPPROTO_UDP};

use crate::{
    decap::is_local,
    maps::{ENDPOINTS, NODES},
    parse::{in_subnet, load, Ipv4Hdr, UdpHdr},
    route::ingress_ifindex,
    verdict::Outcome,
};

/// Drops (and counts) a pod packet that forges its source or targets a
/// node's VXLAN port; everything else may go on.
#[inline(always)]
pub fn check(ctx: &TcContext, cfg: &LocalConfig, ip: &Ipv4Hdr) -> Result<(), Outcome> {
    if !source_is_own(ctx, cfg, ip.src) {
        return Err(Outcome::drop(Reason::DropPodSpoofedSource));
    }
    if ip.proto == IPPROTO_UDP && ip.fragment_offset() == 0 {
        if let Some(udp) = load::<UdpHdr>(ctx, ETH_HLEN + ip.header_len()) {
            let to_node = is_local(cfg, ip.dst) || NODES.get_ptr(ip.dst).is_some();
            if to_node && u16::from_be_bytes(udp.dst_port) == cfg.port {
                return Err(Outcome::drop(Reason::DropPodToTunnelPort));
            }
        }
    }
    Ok(())
}

/// On a pod's veth the source must be that pod's address (when we know the
/// pod: the endpoint map names its veth); on the bridge, where the port is
/// unknown, and for a pod not yet in the endpoint map, an address of our
/// lease that no pod may hold (network, gateway, broadcast) is refused.
#[inline(always)]
fn source_is_own(ctx: &TcContext, cfg: &LocalConfig, src: [u8; 4]) -> bool {
    let here = ingress_ifindex(ctx);
    if let Some(ep) = ENDPOINTS.get_ptr(src) {
        // SAFETY: a valid map value pointer, read once.
        let veth = unsafe { (*ep).ifindex };
        return here == cfg.bridge_ifindex || veth == here;
    }
    if !in_subnet(src, cfg.local_subnet, cfg.local_prefix_len) {
        return false;
    }
    let prefix = cfg.local_prefix_len.min(32) as u32;
    let host_mask = if prefix == 0 { u32::MAX } else { u32::MAX >> prefix };
    let host = u32::from_be_bytes(src) & host_mask;
    // The network address, the gateway (the bridge's address, FLANNEL_SUBNET)
    // and the broadcast address.
    host != 0 && host != 1 && host != host_mask
}
