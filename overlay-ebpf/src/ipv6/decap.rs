//! Remote node -> local v6 pod or host. v6 VXLAN is checked twice and
//! decapsulated by the kernel in between:
//!
//! 1. `from_uplink` (TC ingress of the uplink) checks the encapsulated
//!    frame's bytes, as decap.rs does for v4: sender holds a lease
//!    (`NODES6`), our VNI, our v6 VtepMAC, inner source inside a lease that
//!    names the sender; it drops and counts what fails, and passes the rest
//!    to overlay0's VXLAN socket.
//! 2. The socket verifies the UDP checksum (IPv6 requires one; a TC program
//!    cannot check it cheaply), reassembles fragments, aggregates (GRO),
//!    strips the outer header and hands the inner frame, with the tunnel
//!    metadata, to overlay0's ingress: `from_tunnel`, which repeats the
//!    checks from that metadata (the socket must never be a way around
//!    them: fragments reach it without step 1) and delivers the frame,
//!    straight into the pod (`bpf_redirect_peer`) as for v4.
use aya_ebpf::{bindings::bpf_tunnel_key, btf_maps::lpm_trie::Key, helpers::bpf_redirect_peer, programs::TcContext};
use overlay_common::{
    maps::{config_flags, Endpoint},
    maps6::LocalConfig6,
    stats::Reason,
    ETH_HLEN, ETH_P_IPV6, IPPROTO_UDP, IPV6_HLEN, UDP_HLEN, VXLAN_HLEN,
};

use super::{
    config6,
    encap::decrement_hop_limit,
    flows, is_local6,
    parse::{eth_ipv6, in_subnet6, Ipv6Hdr},
    remote,
};
use crate::{
    decap::vxlan_header,
    maps::{ENDPOINTS6, NODES6, SUBNETS6},
    parse::{load, EthHdr, UdpHdr},
    route::set_macs,
    verdict::Outcome,
};

const PACKET_HOST: u32 = 0;

/// TC ingress on the uplink, for an IPv6 frame (step 1).
pub fn try_ingress(ctx: &TcContext) -> Result<Outcome, Outcome> {
    let not_ours = Outcome::pass(Reason::PassedNotOurs);
    let Some(cfg) = config6() else {
        return Ok(not_ours);
    };
    let (_eth, ip) = eth_ipv6(ctx).ok_or(not_ours)?;
    // Fragments (a fragment header) are not ours here: the kernel
    // reassembles them, and from_tunnel checks what its socket gets.
    if ip.next_hdr != IPPROTO_UDP || !is_local6(&cfg, &ip.dst) {
        return Ok(not_ours);
    }
    let l4 = ETH_HLEN + IPV6_HLEN;
    let udp: UdpHdr = load(ctx, l4).ok_or(not_ours)?;
    if u16::from_be_bytes(udp.dst_port) != cfg.port {
        return Ok(not_ours);
    }
    // Our VXLAN port from here on: anything wrong is dropped and counted.
    sender(&ip.src)?;
    vxlan_header(ctx, l4 + UDP_HLEN, cfg.vni)?;
    let malformed = Outcome::drop(Reason::DropMalformed);
    let inner_eth_off = l4 + UDP_HLEN + VXLAN_HLEN;
    let inner_eth: EthHdr = load(ctx, inner_eth_off).ok_or(malformed)?;
    let inner: Ipv6Hdr = load(ctx, inner_eth_off + ETH_HLEN).ok_or(malformed)?;
    check_inner(&cfg, &ip.src, &inner_eth, &inner)?;
    Ok(Outcome::pass(Reason::PassedToVxlanDriver))
}

/// TC ingress on overlay0 for a frame its socket received over IPv6, with
/// the socket's tunnel metadata `key` (step 2).
pub fn from_tunnel(ctx: &TcContext, key: &bpf_tunnel_key) -> Result<Outcome, Outcome> {
    let Some(cfg) = config6() else {
        return Err(Outcome::drop(Reason::DropUnknownSender));
    };
    let peer = remote(key);
    sender(&peer)?;
    if key.tunnel_id != cfg.vni {
        return Err(Outcome::drop(Reason::DropBadVni));
    }
    let malformed = Outcome::drop(Reason::DropMalformed);
    let inner_eth: EthHdr = load(ctx, 0).ok_or(malformed)?;
    let inner: Ipv6Hdr = load(ctx, ETH_HLEN).ok_or(malformed)?;
    check_inner(&cfg, &peer, &inner_eth, &inner)?;
    // The driver typed the frame by its destination MAC against overlay0's
    // own (the v4 VtepMAC): for our v6 VtepMAC that is "another host",
    // which IPv6 would drop.
    ctx.change_type(PACKET_HOST).map_err(|_| Outcome::drop(Reason::DropError))?;
    Ok(deliver(ctx, &cfg, &inner))
}

/// Is `addr` a PublicIPv6 that some lease names?
#[inline(always)]
pub fn sender(addr: &[u8; 16]) -> Result<(), Outcome> {
    if NODES6.get_ptr(addr).is_some() {
        Ok(())
    } else {
        Err(Outcome::drop(Reason::DropUnknownSender))
    }
}

/// The inner frame the node at `sender_ip` sent: for our v6 VtepMAC, IPv6,
/// from a lease that names `sender_ip` (or from the node itself).
#[inline(always)]
pub fn check_inner(cfg: &LocalConfig6, sender_ip: &[u8; 16], inner_eth: &EthHdr, inner: &Ipv6Hdr) -> Result<(), Outcome> {
    if inner_eth.dst != cfg.vtep_mac {
        return Err(Outcome::drop(Reason::DropWrongVtepMac));
    }
    if inner_eth.proto() != ETH_P_IPV6 || !inner.is_valid() {
        return Err(Outcome::drop(Reason::DropMalformed));
    }
    if inner.src != *sender_ip && !leased_to(&inner.src, sender_ip) {
        return Err(Outcome::drop(Reason::DropSpoofedSource));
    }
    Ok(())
}

#[inline(always)]
fn leased_to(addr: &[u8; 16], public_ip: &[u8; 16]) -> bool {
    SUBNETS6.get(&Key::new(128, *addr)).is_some_and(|nh| nh.public_ip == *public_ip)
}

/// decap.rs's `deliver` for a v6 frame (Ethernet + IPv6 at the start).
#[inline(always)]
fn deliver(ctx: &TcContext, cfg: &LocalConfig6, inner: &Ipv6Hdr) -> Outcome {
    let to_host = Outcome::pass(Reason::DecapToHost);
    if inner.hop_limit <= 1 || cfg.flags & config_flags::KERNEL_FORWARDING != 0 {
        return to_host;
    }
    let flow = flows::key(ctx, inner);
    let Some(ep) = ENDPOINTS6.get_ptr(inner.dst).map(|p| unsafe { *p }) else {
        if in_subnet6(&inner.dst, &cfg.local_subnet, cfg.local_prefix_len) {
            flows::note_unlearnt_pod(&flow);
        }
        return to_host;
    };
    let ep: Endpoint = ep;
    if flows::is_reply_of_kernel_flow(&flow) {
        return Outcome::pass(Reason::PassedKernelFlow);
    }
    if decrement_hop_limit(ctx, inner).is_err() || set_macs(ctx, &ep.mac, &cfg.bridge_mac).is_err() {
        return Outcome::drop(Reason::DropError);
    }
    // SAFETY: plain helper call.
    let ret = unsafe { bpf_redirect_peer(ep.ifindex, 0) };
    Outcome::redirected(ret, Reason::DecapToPod)
}
