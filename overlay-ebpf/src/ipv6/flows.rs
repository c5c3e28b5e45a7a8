//! flows.rs for IPv6: v6 flows the kernel forwarded or delivered (after any
//! NAT, e.g. a dual-stack Service's DNAT), so their replies go through the
//! kernel too, and v6 flows handed to the kernel only because their pod was
//! not learnt yet.
use aya_ebpf::programs::TcContext;
use overlay_common::{maps6::FlowKey6, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN};

use super::{
    config6,
    parse::{eth_ipv6, in_subnet6, Ipv6Hdr},
};
use crate::{
    flows::remember,
    maps::{KERNEL_FLOWS6, UNLEARNT_POD_FLOWS6},
    parse::load,
};

/// The flow of the IPv6 packet `ip` (after the Ethernet header). Ports only
/// when TCP or UDP follows the fixed header directly; packets with
/// extension headers count as the portless flow between the two addresses.
#[inline(always)]
pub fn key(ctx: &TcContext, ip: &Ipv6Hdr) -> FlowKey6 {
    let mut key = FlowKey6 { src: ip.src, dst: ip.dst, proto: ip.next_hdr, ..FlowKey6::default() };
    if ip.next_hdr == IPPROTO_TCP || ip.next_hdr == IPPROTO_UDP {
        if let Some(ports) = load::<[u8; 4]>(ctx, ETH_HLEN + IPV6_HLEN) {
            key.src_port = [ports[0], ports[1]];
            key.dst_port = [ports[2], ports[3]];
        }
    }
    key
}

#[inline(always)]
pub fn record(key: &FlowKey6) {
    remember(&KERNEL_FLOWS6, key);
}

#[inline(always)]
pub fn note_unlearnt_pod(key: &FlowKey6) {
    remember(&UNLEARNT_POD_FLOWS6, key);
}

#[inline(always)]
pub fn is_reply_of_kernel_flow(key: &FlowKey6) -> bool {
    KERNEL_FLOWS6.get_ptr(key.reversed()).is_some()
}

/// TC egress on a pod veth, for a v6 frame: a flow from a remote v6 pod the
/// kernel delivers is recorded (flows.rs's `try_to_pod`).
#[inline(always)]
pub fn on_delivery(ctx: &TcContext) {
    let Some(cfg) = config6() else { return };
    let Some((_, ip)) = eth_ipv6(ctx) else { return };
    if in_subnet6(&ip.src, &cfg.cluster_net, cfg.cluster_prefix_len)
        && !in_subnet6(&ip.src, &cfg.local_subnet, cfg.local_prefix_len)
    {
        let key = key(ctx, &ip);
        if UNLEARNT_POD_FLOWS6.get_ptr(key).is_none() {
            record(&key);
        }
    }
}
