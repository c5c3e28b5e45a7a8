//! Remote node -> local pod or host: accept VXLAN only from nodes that hold
//! a lease, only for our VNI and VtepMAC, and only with an inner source in
//! a lease that names the sender's address; strip it and hand it to the pod
//! directly.
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
        BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::bpf_redirect_peer,
    btf_maps::lpm_trie::Key,
    programs::TcContext,
};
use overlay_common::{
    maps::{config_flags, Endpoint, LocalConfig, XDP_DECAP_MARK},
    stats::Reason,
    ETH_HLEN, ETH_P_IP, IPPROTO_UDP, UDP_HLEN, VXLAN_FLAG_VNI, VXLAN_HLEN,
};

use crate::{
    flows,
    ipv6::{self, parse::is_ipv6},
    maps::{ENDPOINTS, NODES, SUBNETS},
    parse::{eth_ipv4, in_subnet, load, EthHdr, Ipv4Hdr, UdpHdr, VxlanHdr},
    route::{config, decrement_ttl, set_macs},
    verdict::Outcome,
};

// FIXED_GSO keeps gso_size as it is: without it the kernel grows it by the
// 50 bytes removed and segments then exceed the pod MTU (TCP stalls).
const DECAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4) as u64;

pub fn try_ingress(ctx: &TcContext) -> Result<Outcome, Outcome> {
    if is_ipv6(ctx) {
        return ipv6::decap::try_ingress(ctx);
    }
    let Some(cfg) = config() else {
        return Ok(Outcome::pass(Reason::PassedToKernel));
    };
    if cfg.flags & config_flags::XDP_DECAP != 0 && xdp_decapsulated(ctx) {
        return after_xdp_decap(ctx, &cfg);
    }
    let not_ours = Outcome::pass(Reason::PassedNotOurs);
    let (_eth, ip) = eth_ipv4(ctx).ok_or(not_ours)?;
    if ip.proto != IPPROTO_UDP || !is_local(&cfg, ip.dst) || ip.is_fragment() {
        return Ok(not_ours);
    }
    let l4 = ETH_HLEN + ip.header_len();
    let udp: UdpHdr = load(ctx, l4).ok_or(not_ours)?;
    if u16::from_be_bytes(udp.dst_port) != cfg.port {
        return Ok(not_ours);
    }

    // Our VXLAN port from here on: anything wrong is dropped and counted.
    sender(ip.src)?;
    vxlan_header(ctx, l4 + UDP_HLEN, cfg.vni)?;
    let inner_eth_off = l4 + UDP_HLEN + VXLAN_HLEN;
    let inner = inner_frame(ctx, &cfg, ip.src, inner_eth_off)?;

    let strip = (inner_eth_off + ETH_HLEN - ETH_HLEN) as i32;
    ctx.adjust_room(-strip, BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
        .map_err(|_| Outcome::drop(Reason::DropError))?;
    Ok(deliver(ctx, &cfg, &inner))
}

/// The VXLAN header at `off` must carry the I flag and `vni`.
#[inline(always)]
pub fn vxlan_header(ctx: &TcContext, off: usize, vni: u32) -> Result<(), Outcome> {
    let malformed = Outcome::drop(Reason::DropMalformed);
    let vxlan: VxlanHdr = load(ctx, off).ok_or(malformed)?;
    if vxlan.flags & VXLAN_FLAG_VNI == 0 {
        return Err(malformed);
    }
    if vxlan.vni() != vni {
        return Err(Outcome::drop(Reason::DropBadVni));
    }
    Ok(())
}

/// Whether the XDP program decapsulated (and checked) this frame: it left
/// [`XDP_DECAP_MARK`] in the frame's metadata.
#[inline(always)]
fn xdp_decapsulated(ctx: &TcContext) -> bool {
    // SAFETY: reading a field of the context the program was given.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    let data = ctx.data();
    if meta + 4 > data {
        return false;
    }
    // SAFETY: the 4 bytes lie in the metadata area, before data (checked
    // right above, and by the verifier).
    let mark = unsafe { core::ptr::read_unaligned(meta as *const u32) };
    mark == XDP_DECAP_MARK
}

/// An inner frame the XDP program decapsulated: GRO has merged it like any
/// TCP; deliver it as our own decapsulation would. Its pkt_type came from
/// the inner destination MAC (our VtepMAC, not the uplink's), which IPv4
/// would drop as another host's.
#[inline(always)]
fn after_xdp_decap(ctx: &TcContext, cfg: &LocalConfig) -> Result<Outcome, Outcome> {
    let malformed = Outcome::drop(Reason::DropMalformed);
    let inner: Ipv4Hdr = load(ctx, ETH_HLEN).ok_or(malformed)?;
    if !inner.is_valid() {
        return Err(malformed);
    }
    ctx.change_type(PACKET_HOST).map_err(|_| Outcome::drop(Reason::DropError))?;
    Ok(deliver(ctx, cfg, &inner))
}

const PACKET_HOST: u32 = 0;

/// VXLAN addressed to `dst` is ours: the tunnel's local address (the
/// uplink's), or our lease's PublicIP when that is an address of this host.
#[inline(always)]
pub fn is_local(cfg: &LocalConfig, dst: [u8; 4]) -> bool {
    dst == cfg.local_ip || dst == cfg.public_ip
}

/// Is `addr` a PublicIP that some lease names?
#[inline(always)]
pub fn sender(addr: [u8; 4]) -> Result<(), Outcome> {
    if NODES.get_ptr(addr).is_some() {
        Ok(())
    } else {
        Err(Outcome::drop(Reason::DropUnknownSender))
    }
}

/// Loads and checks the inner frame at `eth_off` that the node at
/// `sender_ip` sent ([`check_inner`]). Returns the inner IPv4 header.
#[inline(always)]
pub fn inner_frame(
    ctx: &TcContext,
    cfg: &LocalConfig,
    sender_ip: [u8; 4],
    eth_off: usize,
) -> Result<Ipv4Hdr, Outcome> {
    let malformed = Outcome::drop(Reason::DropMalformed);
    let inner_eth: EthHdr = load(ctx, eth_off).ok_or(malformed)?;
    let inner: Ipv4Hdr = load(ctx, eth_off + ETH_HLEN).ok_or(malformed)?;
    check_inner(cfg, sender_ip, &inner_eth, &inner)?;
    Ok(inner)
}

/// The inner frame the node at `sender_ip` sent must be for our VtepMAC,
/// IPv4, and from a lease that names `sender_ip` as its PublicIP (or the
/// node itself, when a host process binds its PublicIP): a node speaks for
/// nothing else. Several leases may name one PublicIP, so the lease is
/// found from the inner source (`SUBNETS`), not from the sender.
#[inline(always)]
pub fn check_inner(cfg: &LocalConfig, sender_ip: [u8; 4], inner_eth: &EthHdr, inner: &Ipv4Hdr) -> Result<(), Outcome> {
    let malformed = Outcome::drop(Reason::DropMalformed);
    if inner_eth.dst != cfg.vtep_mac {
        return Err(Outcome::drop(Reason::DropWrongVtepMac));
    }
    if inner_eth.proto() != ETH_P_IP || !inner.is_valid() {
        return Err(malformed);
    }
    if inner.src != sender_ip && !leased_to(inner.src, sender_ip) {
        return Err(Outcome::drop(Reason::DropSpoofedSource));
    }
    Ok(())
}

/// The decapsulated packet (inner IPv4 right after the outer Ethernet
/// header) goes straight into the pod when we know the pod; otherwise the
/// host's stack routes it (to itself, or over the bridge to a pod we have
/// not learnt yet, or answers TTL expiry).
///
/// Replies of flows the kernel handled (see flows.rs) go to the kernel too,
/// and so does everything with `--kernel-forwarding`.
#[inline(always)]
pub fn deliver(ctx: &TcContext, cfg: &LocalConfig, inner: &Ipv4Hdr) -> Outcome {
    let to_host = Outcome::pass(Reason::DecapToHost);
    if inner.ttl <= 1 || cfg.flags & config_flags::KERNEL_FORWARDING != 0 {
        return to_host;
    }
    let flow = flows::key(ctx, ETH_HLEN, inner);
    let Some(ep) = endpoint(inner.dst) else {
        // A pod of ours the agent has not learnt yet (not the host's own
        // addresses): the kernel delivers it, which is no sign of NAT.
        if in_subnet(inner.dst, cfg.local_subnet, cfg.local_prefix_len) {
            flows::note_unlearnt_pod(&flow);
        }
        return to_host;
    };
    if flows::is_reply_of_kernel_flow(&flow) {
        return Outcome::pass(Reason::PassedKernelFlow);
    }
    if decrement_ttl(ctx, ETH_HLEN, inner).is_err() {
        return Outcome::drop(Reason::DropError);
    }
    // bpf_redirect_peer hands the frame to the pod as it is: it must carry
    // the pod's own MAC.
    if set_macs(ctx, &ep.mac, &cfg.bridge_mac).is_err() {
        return Outcome::drop(Reason::DropError);
    }
    // SAFETY: plain helper call.
    let ret = unsafe { bpf_redirect_peer(ep.ifindex, 0) };
    Outcome::redirected(ret, Reason::DecapToPod)
}

/// Does the lease covering `addr` name `public_ip`?
#[inline(always)]
fn leased_to(addr: [u8; 4], public_ip: [u8; 4]) -> bool {
    SUBNETS.get(&Key::new(32, addr)).is_some_and(|nh| nh.public_ip == public_ip)
}

#[inline(always)]
fn endpoint(addr: [u8; 4]) -> Option<Endpoint> {
    ENDPOINTS.get_ptr(addr).map(|p| unsafe { *p })
}
