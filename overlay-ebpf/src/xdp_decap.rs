//! `--xdp-decap`: our VXLAN checked and decapsulated in XDP on the uplink,
//! before the kernel's GRO, so the inner TCP is aggregated like any TCP
//! without a UDP tunnel socket. The checks are decap.rs's (sender, VNI,
//! VtepMAC, inner source). The inner frame then goes up the uplink's stack
//! with [`XDP_DECAP_MARK`] in its XDP metadata, and from_uplink (TC)
//! delivers it as decap.rs delivers what it decapsulates. A frame without
//! the mark is whatever the underlay sent, never taken for decapsulated.
//! Fragments are left to the kernel as in TC (they reach overlay0's socket
//! after reassembly, and tunnel.rs checks them).
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use overlay_common::{
    maps::{LocalConfig, XDP_DECAP_MARK},
    stats::Reason,
    ETH_HLEN, UDP_HLEN, VXLAN_FLAG_VNI, VXLAN_HLEN,
};

use crate::{
    decap::{check_inner, sender},
    guard::at,
    parse::{EthHdr, Ipv4Hdr, VxlanHdr},
};

/// `ip` is the outer header of a datagram for our VXLAN port, not a
/// fragment. Returns the XDP action, or the drop reason.
#[inline(always)]
pub fn try_decap(ctx: &XdpContext, cfg: &LocalConfig, ip: &Ipv4Hdr) -> Result<u32, Reason> {
    sender(ip.src).map_err(|o| o.reason)?;
    let l4 = ETH_HLEN + ip.header_len();
    let vxlan: VxlanHdr = at(ctx, l4 + UDP_HLEN).ok_or(Reason::DropMalformed)?;
    if vxlan.flags & VXLAN_FLAG_VNI == 0 {
        return Err(Reason::DropMalformed);
    }
    if vxlan.vni() != cfg.vni {
        return Err(Reason::DropBadVni);
    }
    let inner_eth_off = l4 + UDP_HLEN + VXLAN_HLEN;
    let inner_eth: EthHdr = at(ctx, inner_eth_off).ok_or(Reason::DropMalformed)?;
    let inner: Ipv4Hdr = at(ctx, inner_eth_off + ETH_HLEN).ok_or(Reason::DropMalformed)?;
    check_inner(cfg, ip.src, &inner_eth, &inner).map_err(|o| o.reason)?;

    // SAFETY: plain helper calls on our context; the pointers are checked
    // against the new bounds before use.
    unsafe {
        if bpf_xdp_adjust_head(ctx.ctx, inner_eth_off as i32) != 0 {
            return Err(Reason::DropError);
        }
        if bpf_xdp_adjust_meta(ctx.ctx, -4) != 0 {
            return Err(Reason::DropError);
        }
    }
    let meta = ctx.metadata();
    if meta + 4 > ctx.data() {
        return Err(Reason::DropError);
    }
    // SAFETY: the 4 bytes before data are the metadata area just made
    // (bounds checked right above, and by the verifier).
    unsafe { core::ptr::write_unaligned(meta as *mut u32, XDP_DECAP_MARK) };
    Ok(xdp_action::XDP_PASS)
}
