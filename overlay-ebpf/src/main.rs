//! Entry points only; the work is in one module per direction.
#![no_std]
#![no_main]

mod csum;
mod decap;
mod direct;
mod drop_log;
mod encap;
mod flows;
mod guard;
mod ipv6;
mod maps;
mod parse;
mod pod_guard;
mod route;
mod stats;
mod tunnel;
mod underlay;
mod verdict;
mod xdp_decap;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::{
    route::Origin,
    verdict::{Outcome, TC_ACT_SHOT},
};

/// Counts the packet (with its length on entry) under its reason, and logs
/// it when it is dropped and drop logging is on (drop_log.rs).
#[inline(always)]
fn finish(ctx: &TcContext, program: &str, len: u32, result: Result<Outcome, Outcome>) -> i32 {
    let outcome = match result {
        Ok(o) | Err(o) => o,
    };
    stats::count(outcome.reason, len);
    if outcome.action == TC_ACT_SHOT {
        drop_log::tc(ctx, program, outcome.reason);
    }
    outcome.action
}

/// TC ingress on each pod veth (the fast path) and on the pod bridge
/// (checks only): packets from local pods.
#[classifier]
pub fn from_pods(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(&ctx, "from_pods", len, encap::try_egress(&ctx, Origin::Pod))
}

/// TC egress on each pod veth: what the kernel delivers to a local pod.
#[classifier]
pub fn to_pods(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(&ctx, "to_pods", len, flows::try_to_pod(&ctx))
}

/// TC egress on the tunnel device: what the kernel routes to remote pods.
#[classifier]
pub fn from_host(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(&ctx, "from_host", len, encap::try_egress(&ctx, Origin::Host))
}

/// TC ingress on the tunnel device: VXLAN the kernel's socket received.
#[classifier]
pub fn from_tunnel(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(&ctx, "from_tunnel", len, tunnel::try_from_tunnel(&ctx))
}

/// TC ingress on the uplink: VXLAN from other nodes.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(&ctx, "from_uplink", len, decap::try_ingress(&ctx))
}

/// Optional XDP on the uplink: early drop of VXLAN from strangers.
#[xdp]
pub fn xdp_guard(ctx: XdpContext) -> u32 {
    guard::try_guard(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
