//! What every router does to a packet it forwards.
use aya_ebpf::programs::TcContext;
use overlay_common::{maps::LocalConfig, stats::Reason, ETH_HLEN};

use crate::{csum, maps::CONFIG, parse::Ipv4Hdr, verdict::Outcome};

/// Where the packet comes from decides whether we forward it like a router
/// (TTL decremented) or send it like the host (untouched).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From a local pod (TC ingress on its veth or on the pod bridge).
    Pod,
    /// Routed by the kernel to the cluster network: the host's own packets
    /// and pod packets it forwarded (TC egress on the tunnel device).
    Host,
}

/// The local configuration, copied to the stack so one packet sees one
/// consistent version. `None` until the agent has filled it in.
#[inline(always)]
pub fn config() -> Option<LocalConfig> {
    let cfg = *CONFIG.get(0)?;
    if cfg.flags & overlay_common::maps::config_flags::READY == 0 {
        return None;
    }
    Some(cfg)
}

/// Decrements the TTL of the IPv4 header at `l3_off` (already loaded as
/// `ip`, TTL > 1 checked by the caller) and patches its checksum.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, l3_off: usize, ip: &Ipv4Hdr) -> Result<(), ()> {
    let old = u16::from_be_bytes([ip.ttl, ip.proto]);
    let new = u16::from_be_bytes([ip.ttl - 1, ip.proto]);
    let sum = csum::replace_word(u16::from_be_bytes(ip.csum), old, new).to_be_bytes();
    // TTL, protocol and checksum are adjacent (bytes 8..12): one store.
    let patch = [ip.ttl - 1, ip.proto, sum[0], sum[1]];
    ctx.store(l3_off + 8, &patch, 0).map_err(|_| ())
}

/// Addresses the frame to the next hop: destination and source MAC (the
/// first 12 bytes), one store. The redirect helpers we use after it do not
/// fill them in.
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), ()> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    ctx.store(0, &macs, 0).map_err(|_| ())
}

/// The device the program runs on (TC ingress: where the packet arrived).
#[inline(always)]
pub fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: ctx.skb.skb is the context pointer the kernel passed in.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Whether the skb is a GSO super-packet (segmented later, so its length is
/// not what goes on the wire).
#[inline(always)]
pub fn is_gso(ctx: &TcContext) -> bool {
    // SAFETY: ctx.skb.skb is the context pointer the kernel passed in.
    unsafe { (*ctx.skb.skb).gso_size != 0 }
}

/// Checks shared by both modes before the packet leaves: what does not fit
/// and what is out of hops goes to the kernel, which fragments or answers
/// with ICMP (frag-needed via the bridge's MTU, time exceeded) like any
/// router, and sends what it forwards back through our egress program.
#[inline(always)]
pub fn router_checks(
    ctx: &TcContext,
    cfg: &LocalConfig,
    ip: &Ipv4Hdr,
    origin: Origin,
    overhead: u32,
) -> Result<(), Outcome> {
    fits_uplink(ctx, cfg.uplink_mtu, origin, overhead)?;
    if origin == Origin::Pod {
        if ip.ttl <= 1 {
            return Err(Outcome::pass(Reason::PassedToKernel));
        }
        decrement_ttl(ctx, ETH_HLEN, ip).map_err(|_| Outcome::drop(Reason::DropError))?;
    }
    Ok(())
}

/// A non-GSO packet that will not fit an uplink of `uplink_mtu` once
/// `overhead` bytes are added: a pod's goes to the kernel (which fragments
/// or answers "too big"), the host's is dropped.
#[inline(always)]
pub fn fits_uplink(ctx: &TcContext, uplink_mtu: u32, origin: Origin, overhead: u32) -> Result<(), Outcome> {
    let l3_len = ctx.len().saturating_sub(ETH_HLEN as u32);
    if !is_gso(ctx) && l3_len + overhead > uplink_mtu {
        return Err(match origin {
            Origin::Pod => Outcome::pass(Reason::PassedToKernel),
            // The host's own packets already obeyed the route's MTU; one
            // that still does not fit cannot be helped here.
            Origin::Host => Outcome::drop(Reason::DropTooBig),
        });
    }
    Ok(())
}
