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

use crate::parse::{eth_ipv4, load, Ipv4Hdr};

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

/// Logs the drop of the packet in `ctx` by program `program`. Not inlined:
/// the record is built on the stack, and inlined into a program whose own
/// frame is large it would push the frames past the verifier's 512 bytes.
#[inline(never)]
pub fn tc(ctx: &TcContext, program: &str, reason: Reason) {
    let len = ctx.len();
    match eth_ipv4(ctx) {
        Some((_, ip)) => {
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
                len
            );
        }
        // Not IPv6 addresses either: a v6 record makes this frame too large
        // for from_tunnel's (the verifier's 512 bytes for the whole chain);
        // v6 drops are in the counters.
        None => warn!(ctx, "{} {}: not IPv4, len {}", program, reason.name(), len),
    }
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
