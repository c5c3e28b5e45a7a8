//! Entry points only; the work is in one module per direction.
#![no_std]
#![no_main]

mod csum;
mod decap;
mod direct;
mod encap;
mod guard;
mod maps;
mod parse;
mod route;
mod stats;
mod underlay;
mod verdict;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::{encap::Origin, verdict::Outcome};

/// Counts the packet (with its length on entry) under its reason.
#[inline(always)]
fn finish(len: u32, result: Result<Outcome, Outcome>) -> i32 {
    let outcome = match result {
        Ok(o) | Err(o) => o,
    };
    stats::count(outcome.reason, len);
    outcome.action
}

/// TC ingress on the bridge: packets from local pods.
#[classifier]
pub fn from_pods(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(len, encap::try_egress(&ctx, Origin::Pod))
}

/// TC egress on the bridge: the host's own packets to remote pods.
#[classifier]
pub fn from_host(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(len, encap::try_egress(&ctx, Origin::Host))
}

/// TC ingress on the uplink: VXLAN from other nodes.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    let len = ctx.len();
    finish(len, decap::try_ingress(&ctx))
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
