//! Opt-in XDP on the uplink. `--xdp-guard`: drops VXLAN from addresses
//! that hold no lease before the kernel allocates an skb for it (on a
//! native-driver NIC); everything else passes to the TC programs, which do
//! the real work. `--xdp-decap`: our VXLAN is checked and decapsulated
//! right here (xdp_decap.rs). On veths, any XDP program costs TSO on the
//! peer and a copy of most frames: datapath-findings.md, BENCHMARKS.md.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use overlay_common::{maps::config_flags, stats::Reason, ETH_HLEN, IPPROTO_UDP, IPV6_HLEN};

use crate::{
    decap::is_local,
    ipv6::{config6, is_local6, parse::Ipv6Hdr},
    maps::{NODES, NODES6},
    parse::{EthHdr, Ipv4Hdr, UdpHdr},
    route::config,
    stats::count,
};

#[inline(always)]
pub fn at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
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
    let Some(eth) = at::<EthHdr>(ctx, 0) else { return pass };
    if eth.proto() == overlay_common::ETH_P_IPV6 {
        return guard_v6(ctx);
    }
    let Some(cfg) = config() else { return pass };
    if eth.proto() != overlay_common::ETH_P_IP {
        return pass;
    }
    let Some(ip) = at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return pass };
    if !ip.is_valid() || ip.proto != IPPROTO_UDP || !is_local(&cfg, ip.dst) || ip.is_fragment() {
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
    if cfg.flags & config_flags::XDP_DECAP != 0 {
        return match crate::xdp_decap::try_decap(ctx, &cfg, &ip) {
            Ok(action) => action,
            Err(reason) => {
                let len = (ctx.data_end() - ctx.data()) as u32;
                count(reason, len);
                crate::drop_log::xdp(ctx, reason, ip.src, ip.dst, len);
                xdp_action::XDP_DROP
            }
        };
    }
    if NODES.get_ptr(ip.src).is_some() {
        return pass;
    }
    let len = (ctx.data_end() - ctx.data()) as u32;
    count(Reason::DropUnknownSender, len);
    crate::drop_log::xdp(ctx, Reason::DropUnknownSender, ip.src, ip.dst, len);
    xdp_action::XDP_DROP
}

/// `--xdp-guard` for v6 VXLAN: dropped when its source holds no lease
/// (`NODES6`); everything else passes to TC (`--xdp-decap` is v4 only: v6
/// VXLAN is decapsulated by overlay0's socket, ipv6/decap.rs).
#[inline(always)]
fn guard_v6(ctx: &XdpContext) -> u32 {
    let pass = xdp_action::XDP_PASS;
    let Some(cfg) = config6() else { return pass };
    let Some(ip) = at::<Ipv6Hdr>(ctx, ETH_HLEN) else { return pass };
    if !ip.is_valid() || ip.next_hdr != IPPROTO_UDP || !is_local6(&cfg, &ip.dst) {
        return pass;
    }
    let Some(udp) = at::<UdpHdr>(ctx, ETH_HLEN + IPV6_HLEN) else { return pass };
    if u16::from_be_bytes(udp.dst_port) != cfg.port || NODES6.get_ptr(ip.src).is_some() {
        return pass;
    }
    let len = (ctx.data_end() - ctx.data()) as u32;
    count(Reason::DropUnknownSender, len);
    crate::drop_log::xdp6(ctx, Reason::DropUnknownSender, ip.src, ip.dst, len);
    xdp_action::XDP_DROP
}
