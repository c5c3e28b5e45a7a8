//! `--bpf-log-drops`: one log record per dropped packet, naming the program,
//! the reason and the packet (addresses, protocol, ports, length), through
//! aya-log to the agent's own log. Off by default, and then free: the agent
//! sets aya-log's level (`AYA_LOG_LEVEL`, read-only data) to 0 before the
//! load, the verifier sees the level test as constant and removes the
//! logging code from the programs (`tests/tests/drop_log.rs` checks both).
//! When on, a flood of drops fills aya-log's ring buffer and records are
//! lost, never packets: the counters stay exact.
use aya_ebpf::programs::{TcContext, XdpContext};
use aya_log_ebpf::warn;
use overlay_common::{stats::Reason, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    ipv6::parse::is_ipv6,
    parse::{eth_ipv4, load, Ipv4Hdr},
};

/// Source and destination ports of a TCP or UDP header at `l4`, (0, 0)
/// for other protocols, fragments and short packets.
#[inline(always)]
fn ports(ctx: &TcContext, ip: &Ipv4Hdr) -> (u16, u16) {
    if (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) || ip.fragment_offset() != 0 {
        return (0, 0);
    }
    match load::<[u8; 4]>(ctx, ETH_HLEN + ip.header_len()) {
        Some(p) => (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])),
        None => (0, 0),
    }
}

/// Offsets in the fixed IPv6 header (next header, then source and
/// destination addresses back to back).
const NEXT_HDR_OFF: usize = 6;
const SRC_OFF: usize = 8;

/// Logs the drop of the packet in `ctx` by program `program`. Not inlined,
/// and each family's record in a function of its own (not inlined
/// either): a record is built on the stack, and either inlined into a
/// program whose own frame is large would push the chain of frames past
/// the verifier's 512 bytes. The three frames (the program's, this one's
/// 48 bytes, a record's) must fit under from_tunnel's own 344: hence the
/// v6 header loaded field by field and no ports in the v6 record (with
/// them the chain was 528 bytes).
#[inline(never)]
pub fn tc(ctx: &TcContext, program: &str, reason: Reason) {
    if tc4(ctx, program, reason) || tc6(ctx, program, reason) {
        return;
    }
    warn!(ctx, "{} {}: not IP, len {}", program, reason.name(), ctx.len());
}

/// [`tc`] for an IPv4 packet; false for anything else.
#[inline(never)]
fn tc4(ctx: &TcContext, program: &str, reason: Reason) -> bool {
    let Some((_, ip)) = eth_ipv4(ctx) else { return false };
    let (sport, dport) = ports(ctx, &ip);
    warn!(
        ctx,
        "{} {}: {:i}:{} -> {:i}:{} proto {} len {}",
        program,
        reason.name(),
        ip.src,
        sport,
        ip.dst,
        dport,
        ip.proto,
        ctx.len()
    );
    true
}

/// [`tc`] for an IPv6 packet; false for anything else.
#[inline(never)]
fn tc6(ctx: &TcContext, program: &str, reason: Reason) -> bool {
    // Field by field, not the whole header: this frame must stay small.
    if !is_ipv6(ctx) {
        return false;
    }
    let (Some(next_hdr), Some(src), Some(dst)) = (
        load::<u8>(ctx, ETH_HLEN + NEXT_HDR_OFF),
        load::<[u8; 16]>(ctx, ETH_HLEN + SRC_OFF),
        load::<[u8; 16]>(ctx, ETH_HLEN + SRC_OFF + 16),
    ) else {
        return false;
    };
    warn!(ctx, "{} {}: {:i} -> {:i} next header {} len {}", program, reason.name(), src, dst, next_hdr, ctx.len());
    true
}

/// Logs the XDP guard's drop of VXLAN from `src` (a stranger).
#[inline(always)]
pub fn xdp(ctx: &XdpContext, reason: Reason, src: [u8; 4], dst: [u8; 4], len: u32) {
    warn!(ctx, "xdp_guard {}: {:i} -> {:i} len {}", reason.name(), src, dst, len);
}

/// Logs the XDP guard's drop of v6 VXLAN from `src` (a stranger).
#[inline(always)]
pub fn xdp6(ctx: &XdpContext, reason: Reason, src: [u8; 16], dst: [u8; 16], len: u32) {
    warn!(ctx, "xdp_guard {}: {:i} -> {:i} len {}", reason.name(), src, dst, len);
}
