//! Opt-in XDP on the uplink of a native-driver NIC: drops VXLAN from
//! addresses that hold no lease before the kernel allocates an skb for it.
//! Everything else passes to the TC programs, which do the real work (on
//! veths, any XDP program costs TSO on the peer: datapath-findings.md).
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use overlay_common::{stats::Reason, ETH_HLEN, IPPROTO_UDP};

use crate::{
    maps::NODES,
    parse::{EthHdr, Ipv4Hdr, UdpHdr},
    route::config,
    stats::count,
};

#[inline(always)]
fn at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: bounds checked right above against data_end.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

pub fn try_guard(ctx: &XdpContext) -> u32 {
    let pass = xdp_action::XDP_PASS;
    let Some(cfg) = config() else { return pass };
    let Some(eth) = at::<EthHdr>(ctx, 0) else { return pass };
    if eth.proto() != overlay_common::ETH_P_IP {
        return pass;
    }
    let Some(ip) = at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return pass };
    if !ip.is_valid() || ip.proto != IPPROTO_UDP || ip.dst != cfg.public_ip || ip.is_fragment() {
        return pass;
    }
    let hl = ip.header_len();
    if hl > 60 {
        return pass;
    }
    let Some(udp) = at::<UdpHdr>(ctx, ETH_HLEN + hl) else { return pass };
    if u16::from_be_bytes(udp.dst_port) != cfg.port {
        return pass;
    }
    if NODES.get_ptr(ip.src).is_some() {
        return pass;
    }
    let len = (ctx.data_end() - ctx.data()) as u32;
    count(Reason::DropUnknownSender, len);
    crate::drop_log::xdp(ctx, Reason::DropUnknownSender, ip.src, ip.dst, len);
    xdp_action::XDP_DROP
}
