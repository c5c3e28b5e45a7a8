//! v6 pod or host -> remote v6 pod: look the destination up in `SUBNETS6`
//! and hand the frame to overlay0's VXLAN driver with a tunnel key (VXLAN),
//! or route it unencapsulated to the peer (host-gw, DirectRouting).
//!
//! Why the kernel writes the outer header here, when for v4 we write it
//! ourselves: IPv6 requires a UDP checksum (RFC 8200 8.1; kernel VXLAN,
//! flannel-v6's device included, drops zero-checksum v6 VXLAN unless
//! `udp6zerocsumrx` is set). A TC program can compute one only over bytes
//! it can see, and not for a GSO packet at all: `bpf_skb_adjust_room`
//! marks it SKB_GSO_UDP_TUNNEL, never ..._CSUM, so each segment would leave
//! with the super-packet's checksum. The metadata device's driver builds
//! the outer IPv6 + UDP + VXLAN itself, checksummed per segment (GSO
//! UDP_TUNNEL_CSUM), exactly as flannel-v6's driver does (same code), from
//! the tunnel key set here. The frame reaches the driver through overlay0's
//! TC egress, where `from_host` sees the key and lets it pass.
use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    btf_maps::lpm_trie::Key,
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use overlay_common::{
    maps::Mode,
    maps6::{LocalConfig6, NextHop6},
    stats::Reason,
    ETH_HLEN, VXLAN6_OVERHEAD,
};

use super::{
    config6, flows,
    parse::{eth_ipv6, in_subnet6, is_routable_source, Ipv6Hdr, HOP_LIMIT_OFF},
    pod_guard, set_tunnel_key, tunnel_key,
};
use crate::{
    encap::kernel_must_see,
    maps::SUBNETS6,
    route::{fits_uplink, ingress_ifindex, set_macs, Origin},
    verdict::Outcome,
};

const AF_INET6: u32 = 10;

pub fn try_egress(ctx: &TcContext, origin: Origin) -> Result<Outcome, Outcome> {
    let not_ours = Outcome::pass(Reason::PassedNotOurs);
    let Some(cfg) = config6() else {
        return Ok(not_ours);
    };
    let Some((eth, ip)) = eth_ipv6(ctx) else {
        return Ok(not_ours);
    };
    if origin == Origin::Host && tunnel_key(ctx).is_some() {
        // A frame we encapsulated (below) on its way into the driver.
        return Ok(Outcome::pass(Reason::PassedToVxlanDriver));
    }
    if origin == Origin::Pod {
        if eth.dst != cfg.bridge_mac || !is_routable_source(&ip.src) {
            // Between pods of this node, or link-local (neighbour
            // discovery with the gateway): the kernel's.
            return Ok(not_ours);
        }
        pod_guard::check(ctx, &cfg, &ip)?;
        // As for v4: the fast path starts on a pod's veth only.
        if ingress_ifindex(ctx) == cfg.bridge_ifindex {
            return Ok(Outcome::pass(Reason::PassedToKernel));
        }
    }
    let Some(nh) = SUBNETS6.get(&Key::new(128, ip.dst)).copied() else {
        if origin == Origin::Host
            && in_subnet6(&ip.dst, &cfg.cluster_net, cfg.cluster_prefix_len)
            && !in_subnet6(&ip.dst, &cfg.local_subnet, cfg.local_prefix_len)
        {
            return Err(Outcome::drop(Reason::DropNoRoute));
        }
        return Ok(not_ours);
    };
    let flow = flows::key(ctx, &ip);
    if let Some(kernel) =
        kernel_must_see(origin, cfg.flags, || flows::is_reply_of_kernel_flow(&flow), || flows::record(&flow))
    {
        return Ok(kernel);
    }
    match Mode::from_u8(nh.mode) {
        Some(Mode::Vxlan) => vxlan(ctx, &cfg, &nh, &ip, origin),
        Some(Mode::Direct) => direct(ctx, &cfg, &nh, &ip, origin),
        None => Err(Outcome::drop(Reason::DropError)),
    }
}

/// What a router does before forwarding: a non-GSO packet that will not fit
/// the uplink once sent goes to the kernel, which answers ICMPv6 packet too
/// big (IPv6 routers never fragment) from the MTU of its route to the v6
/// network via overlay0 (uplink - 70); so does hop limit <= 1 (time
/// exceeded). Pod packets lose one hop, host packets are the host's own.
#[inline(always)]
fn router_checks(
    ctx: &TcContext,
    cfg: &LocalConfig6,
    ip: &Ipv6Hdr,
    origin: Origin,
    overhead: u32,
) -> Result<(), Outcome> {
    fits_uplink(ctx, cfg.uplink_mtu, origin, overhead)?;
    if origin == Origin::Pod {
        if ip.hop_limit <= 1 {
            return Err(Outcome::pass(Reason::PassedToKernel));
        }
        decrement_hop_limit(ctx, ip).map_err(|_| Outcome::drop(Reason::DropError))?;
    }
    Ok(())
}

/// IPv6 has no header checksum: one byte to write.
#[inline(always)]
pub fn decrement_hop_limit(ctx: &TcContext, ip: &Ipv6Hdr) -> Result<(), ()> {
    ctx.store(ETH_HLEN + HOP_LIMIT_OFF, &(ip.hop_limit - 1), 0).map_err(|_| ())
}

fn vxlan(ctx: &TcContext, cfg: &LocalConfig6, nh: &NextHop6, ip: &Ipv6Hdr, origin: Origin) -> Result<Outcome, Outcome> {
    router_checks(ctx, cfg, ip, origin, VXLAN6_OVERHEAD as u32)?;
    let error = Outcome::drop(Reason::DropError);
    set_tunnel_key(ctx, cfg, &nh.public_ip).map_err(|_| error)?;
    // The driver sends the Ethernet header as the inner one: between
    // VtepMACs (the v6 ones, BackendV6Data), as flannel-v6 frames it.
    set_macs(ctx, &nh.vtep_mac, &cfg.vtep_mac).map_err(|_| error)?;
    match origin {
        // SAFETY: plain helper call: to overlay0's egress, then its driver.
        Origin::Pod => Ok(Outcome::redirected(unsafe { bpf_redirect(cfg.tunnel_ifindex, 0) }, Reason::Encapsulated)),
        // Already at overlay0's egress: on into its driver.
        Origin::Host => Ok(Outcome::pass(Reason::Encapsulated)),
    }
}

/// host-gw and DirectRouting: routed via the peer's PublicIPv6 on the
/// uplink's segment; the kernel's neighbour table gives the MACs.
fn direct(ctx: &TcContext, cfg: &LocalConfig6, nh: &NextHop6, ip: &Ipv6Hdr, origin: Origin) -> Result<Outcome, Outcome> {
    router_checks(ctx, cfg, ip, origin, 0)?;
    // SAFETY: same size, every bit pattern valid.
    let words = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(nh.public_ip) };
    let mut params =
        bpf_redir_neigh { nh_family: AF_INET6, __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: words } };
    // SAFETY: params lives on our stack for the duration of the call.
    let ret = unsafe {
        bpf_redirect_neigh(cfg.uplink_ifindex, &mut params, core::mem::size_of::<bpf_redir_neigh>() as i32, 0)
    };
    Ok(Outcome::redirected(ret, Reason::DirectRouted))
}
