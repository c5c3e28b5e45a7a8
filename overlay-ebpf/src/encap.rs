//! Pod or host -> remote pod: look up the next hop and send it there, in
//! VXLAN exactly as flannel.1 frames it, or unencapsulated for direct peers.
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    btf_maps::lpm_trie::Key,
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use overlay_common::{
    maps::{config_flags, LocalConfig, Mode, NextHop},
    stats::Reason,
    ETH_HLEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, VXLAN_FLAG_VNI, VXLAN_OVERHEAD,
};

use crate::{
    csum, direct, flows,
    ipv6::{self, parse::is_ipv6},
    maps::SUBNETS,
    parse::{eth_ipv4, in_subnet, load, Ipv4Hdr},
    pod_guard,
    route::{config, ingress_ifindex, router_checks, Origin},
    underlay::{self, NextHopKind},
    verdict::Outcome,
};

/// Outer IPv4 TTL: what kernel VXLAN uses when no TTL is configured.
const OUTER_TTL: u8 = 64;
/// Source ports for ECMP entropy: Linux's default ephemeral range, which
/// kernel VXLAN also uses.
const SPORT_MIN: u32 = 32768;
const SPORT_MAX: u32 = 60999;

const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    // BPF_F_ADJ_ROOM_ENCAP_L2(14): the inner MAC header's length.
    | ((ETH_HLEN as u64 & 0xff) << 56);

pub fn try_egress(ctx: &TcContext, origin: Origin) -> Result<Outcome, Outcome> {
    if is_ipv6(ctx) {
        return ipv6::encap::try_egress(ctx, origin);
    }
    let Some(cfg) = config() else {
        return Ok(Outcome::pass(Reason::PassedToKernel));
    };
    let Some((eth, ip)) = eth_ipv4(ctx) else {
        return Ok(Outcome::pass(Reason::PassedNotOurs));
    };
    if origin == Origin::Pod {
        // Like a router, forward only what is addressed to us (the gateway):
        // on a pod's veth, frames between pods of this node pass to the bridge.
        if eth.dst != cfg.bridge_mac {
            return Ok(Outcome::pass(Reason::PassedNotOurs));
        }
        pod_guard::check(ctx, &cfg, &ip)?;
        // The fast path starts only on a pod's veth, where the packet is as
        // the pod sent it. At the bridge's own ingress it may already carry
        // the bridge's netfilter (br_netfilter: a Service's DNAT, as
        // Kubernetes nodes run it), so there the kernel forwards it, through
        // the tunnel device, where the flow is recorded for its replies.
        if ingress_ifindex(ctx) == cfg.bridge_ifindex {
            return Ok(Outcome::pass(Reason::PassedToKernel));
        }
    }
    let Some(nh) = SUBNETS.get(&Key::new(32, ip.dst)).copied() else {
        // The host reaches remote pods through a cluster-wide route via the
        // tunnel device; with no lease covering the destination there is
        // nowhere to send it.
        if origin == Origin::Host
            && in_subnet(ip.dst, cfg.cluster_net, cfg.cluster_prefix_len)
            && !in_subnet(ip.dst, cfg.local_subnet, cfg.local_prefix_len)
        {
            return Err(Outcome::drop(Reason::DropNoRoute));
        }
        return Ok(Outcome::pass(Reason::PassedNotOurs));
    };
    let flow = flows::key(ctx, ETH_HLEN, &ip);
    if let Some(kernel) =
        kernel_must_see(origin, cfg.flags, || flows::is_reply_of_kernel_flow(&flow), || flows::record(&flow))
    {
        return Ok(kernel);
    }
    match Mode::from_u8(nh.mode) {
        Some(Mode::Vxlan) => vxlan(ctx, &cfg, &nh, &ip, origin),
        Some(Mode::Direct) => direct::forward(ctx, &cfg, &nh, &ip, origin),
        None => Err(Outcome::drop(Reason::DropError)),
    }
}

/// A packet to a remote pod takes the fast path unless the kernel must see
/// it: a pod's with `--kernel-forwarding`, or when it answers a flow the
/// kernel handled (`is_reply`). The host's (the kernel routed it) goes on,
/// and its flow is recorded (`record`) so that its replies come back
/// through the kernel. Shared by v4 and v6 (their flow keys differ).
#[inline(always)]
pub fn kernel_must_see(
    origin: Origin,
    flags: u32,
    is_reply: impl FnOnce() -> bool,
    record: impl FnOnce(),
) -> Option<Outcome> {
    match origin {
        Origin::Pod if flags & config_flags::KERNEL_FORWARDING != 0 => Some(Outcome::pass(Reason::PassedToKernel)),
        Origin::Pod if is_reply() => Some(Outcome::pass(Reason::PassedKernelFlow)),
        Origin::Pod => None,
        Origin::Host => {
            record();
            None
        }
    }
}

fn vxlan(
    ctx: &TcContext,
    cfg: &LocalConfig,
    nh: &NextHop,
    ip: &Ipv4Hdr,
    origin: Origin,
) -> Result<Outcome, Outcome> {
    router_checks(ctx, cfg, ip, origin, VXLAN_OVERHEAD as u32)?;

    let hash = flow_hash(ctx, ip);
    let sport = (((hash as u64) * ((SPORT_MAX - SPORT_MIN + 1) as u64)) >> 32) as u32 + SPORT_MIN;
    // SAFETY: helper without arguments.
    let ip_id = unsafe { bpf_get_prandom_u32() } as u16;

    ctx.adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .map_err(|_| Outcome::drop(Reason::DropError))?;

    // A GSO packet longer than 64 KiB has its lengths rewritten per segment
    // by the kernel; clamp so the field does not wrap.
    let outer_len = ctx.len().saturating_sub(ETH_HLEN as u32).min(0xffff) as u16;
    let udp_len = outer_len.saturating_sub(20);
    let mut hdr = [0u8; VXLAN_OVERHEAD];
    // Outer IPv4: no options, DF clear and a varying ID, as kernel VXLAN.
    hdr[0] = 0x45;
    hdr[1] = outer_tos(ip.tos);
    hdr[2..4].copy_from_slice(&outer_len.to_be_bytes());
    hdr[4..6].copy_from_slice(&ip_id.to_be_bytes());
    hdr[8] = OUTER_TTL;
    hdr[9] = IPPROTO_UDP;
    hdr[12..16].copy_from_slice(&cfg.local_ip);
    hdr[16..20].copy_from_slice(&nh.public_ip);
    let mut ip_hdr = [0u8; 20];
    ip_hdr.copy_from_slice(&hdr[..20]);
    hdr[10..12].copy_from_slice(&csum::ipv4_header(&ip_hdr).to_be_bytes());
    // UDP, checksum 0: allowed for IPv4 (RFC 7348) and accepted by kernel
    // VXLAN; it also survives a second NAT of the outer header (flannel #1279).
    hdr[20..22].copy_from_slice(&(sport as u16).to_be_bytes());
    hdr[22..24].copy_from_slice(&cfg.port.to_be_bytes());
    hdr[24..26].copy_from_slice(&udp_len.to_be_bytes());
    // VXLAN: I flag and the VNI in the top 24 bits of the second word.
    hdr[28] = VXLAN_FLAG_VNI;
    hdr[32..36].copy_from_slice(&(cfg.vni << 8).to_be_bytes());
    // Inner Ethernet: between VtepMACs, as flannel.1 frames it.
    hdr[36..42].copy_from_slice(&nh.vtep_mac);
    hdr[42..48].copy_from_slice(&cfg.vtep_mac);
    hdr[48..50].copy_from_slice(&ETH_P_IP.to_be_bytes());
    ctx.store(ETH_HLEN, &hdr, 0).map_err(|_| Outcome::drop(Reason::DropError))?;

    Ok(underlay::send(ctx, cfg, nh.public_ip, NextHopKind::Routed, Reason::Encapsulated))
}

/// The outer TOS byte, as kernel VXLAN with no `tos` configured (flannel.1)
/// sets it (`ip_tunnel_ecn_encap`, RFC 6040's normal mode): DSCP 0, the
/// inner ECN field copied so that congestion marks on the underlay reach the
/// receiver; an inner CE goes out as ECT(0).
#[inline(always)]
fn outer_tos(inner_tos: u8) -> u8 {
    const ECN_MASK: u8 = 0b11;
    const CE: u8 = 0b11;
    const ECT_0: u8 = 0b10;
    match inner_tos & ECN_MASK {
        CE => ECT_0,
        ecn => ecn,
    }
}

/// A hash of the inner flow, for the outer source port (ECMP entropy, as
/// kernel VXLAN derives it). The skb's own hash when it has one (a local
/// socket's, which TCP changes after a timeout to try another path, as
/// with flannel.1); otherwise one of the addresses, protocol and ports,
/// which is far cheaper than having the kernel dissect the flow.
#[inline(always)]
fn flow_hash(ctx: &TcContext, ip: &Ipv4Hdr) -> u32 {
    // SAFETY: ctx.skb.skb is the context pointer the kernel passed in.
    let skb_hash = unsafe { (*ctx.skb.skb).hash };
    if skb_hash != 0 {
        return skb_hash;
    }
    let ports = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP if !ip.is_fragment() && ip.header_len() <= 60 => {
            load::<[u8; 4]>(ctx, ETH_HLEN + ip.header_len()).map_or(0, u32::from_ne_bytes)
        }
        _ => 0,
    };
    let mut h = u32::from_ne_bytes(ip.src).wrapping_mul(0x9e37_79b1);
    h = (h ^ u32::from_ne_bytes(ip.dst)).wrapping_mul(0x85eb_ca6b);
    h = (h ^ ports ^ ip.proto as u32).wrapping_mul(0xc2b2_ae35);
    // murmur3's finaliser: every input bit reaches the top bits the port
    // range is taken from.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
